"""A gateway built in code, in front of an in-process echo upstream.

    python examples/basic_gateway.py               # serve on http://127.0.0.1:8080 (uvicorn)
    python examples/basic_gateway.py --requests    # send a few requests in-process, print them

The upstream is `pygateway.testing.EchoUpstream`, an ASGI app that answers with a JSON
description of the request it received, so you can see exactly what the gateway forwarded.
Point `url=` at a real service and drop `engines=` to proxy over the network instead.
"""

from __future__ import annotations

import argparse

import anyio

import pygateway as gw
from pygateway.testing import client, echo_engine

gateway = gw.Gateway(
    services=[
        gw.Service(
            name="echo",
            url="http://echo.internal/v1",
            routes=[
                # A prefix route: /echo/hello is proxied to /v1/hello (strip_path=True).
                gw.Route(name="echo", paths=["/echo"]),
                # A regex route, anchored at the start; named groups become ctx.uri_captures.
                gw.Route(
                    name="user",
                    paths=[r"~/users/(?<user_id>\d+)$"],
                    methods=["GET"],
                    strip_path=False,
                ),
                # A route answered by the gateway itself, never proxied.
                gw.Route(
                    name="legacy",
                    paths=["/legacy"],
                    plugins=[gw.plugins.RequestTermination(status_code=410, message="Gone")],
                ),
            ],
        ),
    ],
    # Requests for the host "echo.internal" go to an in-process ASGI app, not the network.
    engines={"echo.internal": echo_engine()},
)


async def main() -> list[tuple[str, int, str]]:
    """Send a few requests through the gateway in-process; print and return what came back."""
    results: list[tuple[str, int, str]] = []
    async with gateway, client(gateway) as http:
        response = await http.get("/echo/hello", params={"x": "1"})
        echoed = response.json()
        results.append(("GET /echo/hello?x=1", response.status_code, echoed["path"]))

        response = await http.post("/echo", content=b"hi there")
        results.append(("POST /echo", response.status_code, response.json()["body"]))

        response = await http.get("/users/42")
        results.append(("GET /users/42", response.status_code, response.json()["path"]))

        response = await http.get("/legacy")
        results.append(("GET /legacy", response.status_code, response.json()["message"]))

        response = await http.get("/nowhere")
        results.append(("GET /nowhere", response.status_code, response.json()["message"]))

    for request, status, detail in results:
        print(f"{request:<22} -> {status}  {detail}")
    return results


def serve(host: str, port: int) -> None:
    import uvicorn  # pip install 'pygateway[server]'

    # proxy_headers=False: the gateway applies its own trusted_ips rules to X-Forwarded-For.
    uvicorn.run(gateway, host=host, port=port, proxy_headers=False)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", action="store_true", help="run main() and exit")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    if args.requests:
        anyio.run(main)
    else:
        serve(args.host, args.port)
