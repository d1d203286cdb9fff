"""The gateway inside a Starlette app: mounted under /api, or in front of it as middleware.

    python examples/mounted_in_starlette.py          # run main(): requests in-process
    uvicorn mounted_in_starlette:app --app-dir examples --no-proxy-headers
    uvicorn mounted_in_starlette:wrapped --app-dir examples --no-proxy-headers

The same works with FastAPI (`app.mount("/api", gateway)`), which is a Starlette app.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

import pygateway as gw
from pygateway.testing import client, echo_engine

gateway = gw.Gateway(
    services=[
        gw.Service(
            name="users",
            url="http://users.internal",
            routes=[gw.Route(name="users", paths=["/users"])],
        )
    ],
    engines={"users.internal": echo_engine()},
)


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    # Starlette does not send lifespan events to mounted apps. The gateway would start
    # lazily on its first request anyway; starting it here makes start-up failures show
    # at boot and closes upstream connections on shutdown.
    async with gateway:
        yield


# 1. Mounted: /api/users/1 reaches the gateway as /users/1 (the mount point is the ASGI
#    root_path); everything else under /api that matches no route gets the gateway's 404.
app = Starlette(
    routes=[Route("/health", health), Mount("/api", app=gateway)],
    lifespan=lifespan,
)

# 2. Middleware: the gateway sees every request first; those that match no route fall
#    through to the wrapped app untouched. The lifespan is chained for you.
wrapped = gw.GatewayMiddleware(Starlette(routes=[Route("/health", health)]), gateway)


async def main() -> dict[str, tuple[int, str]]:
    results: dict[str, tuple[int, str]] = {}
    async with gateway:
        async with client(app) as http:
            response = await http.get("/health")
            results["mounted: /health"] = (response.status_code, response.json()["status"])
            response = await http.get("/api/users/1")
            echoed = response.json()
            results["mounted: /api/users/1"] = (response.status_code, echoed["path"])
            prefix = echoed["headers"]["x-forwarded-prefix"][0]
            results["mounted: X-Forwarded-Prefix"] = (response.status_code, prefix)
            response = await http.get("/api/nothing")
            results["mounted: /api/nothing"] = (response.status_code, response.json()["message"])

        async with client(wrapped) as http:
            response = await http.get("/users/1")
            results["middleware: /users/1"] = (response.status_code, response.json()["path"])
            response = await http.get("/health")
            results["middleware: /health"] = (response.status_code, response.json()["status"])
            response = await http.get("/nothing")
            results["middleware: /nothing"] = (response.status_code, response.text)

    for key, (status, detail) in results.items():
        print(f"{key:<30} -> {status}  {detail}")
    return results


if __name__ == "__main__":
    anyio.run(main)
