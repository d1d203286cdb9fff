"""Server-sent events through a gateway, read as they come, in-process.

    python examples/streaming.py            # run main(): stream in-process, print what came
    python examples/streaming.py --serve    # the same gateway under uvicorn on 127.0.0.1:8000
                                            # then: curl -N localhost:8000/ticker/ticks?n=5

The upstream is a small ASGI app (`ticker`) that sends `n` SSE events 50 ms apart, with a
heartbeat comment between them, and a `/silent` path that waits two seconds before it
answers. The gateway proxies `/ticker` to it through `ASGIEngine` (no sockets) with a
Service read_timeout of 500 ms: the stream passes, because the timeout is between two reads,
not for the whole response; `/silent` gets a 504.

`pygateway.testing.client` streams: each event is read as soon as the upstream sends it,
so the time of each arrival is printed while the upstream is still writing.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import anyio

import pygateway as gw
from pygateway.engines import ASGIEngine
from pygateway.testing import client


async def ticker(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The upstream: `/ticks?n=N` streams N events; `/silent` answers after 2 s."""
    if scope["type"] != "http":
        return
    if scope["path"].endswith("/silent"):
        await anyio.sleep(2)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"too late"})
        return
    query = dict(p.split("=", 1) for p in scope["query_string"].decode().split("&") if "=" in p)
    count = int(query.get("n", "5"))
    headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for i in range(count):
        event = f"event: tick\nid: {i}\ndata: tick {i}\n\n".encode()
        await send({"type": "http.response.body", "body": event, "more_body": True})
        await anyio.sleep(0.025)
        # A comment: SSE clients ignore it, proxies and load balancers see traffic.
        await send({"type": "http.response.body", "body": b": heartbeat\n\n", "more_body": True})
        await anyio.sleep(0.025)
    await send({"type": "http.response.body", "body": b"event: end\ndata: bye\n\n"})


gateway = gw.Gateway(
    services=[
        gw.Service(
            name="ticker",
            url="http://ticker.internal",
            read_timeout=500,  # ms between two reads from the upstream
            retries=0,
            routes=[gw.Route(name="ticker", paths=["/ticker"])],
        )
    ],
    engine=ASGIEngine(ticker),
)


async def main() -> dict[str, Any]:
    """Stream the ticks in-process, then call the silent path; return what happened."""
    events: list[str] = []
    heartbeats = 0
    async with client(gateway) as http:
        started = time.perf_counter()
        async with http.stream("GET", "/ticker/ticks?n=5") as response:
            content_type = response.headers["content-type"]
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    elapsed = (time.perf_counter() - started) * 1000
                    print(f"{elapsed:6.1f} ms  {line[6:]}")
                elif line.startswith(":"):
                    heartbeats += 1
        silent = await http.get("/ticker/silent")
    print(f"/ticker/silent -> {silent.status_code} (read_timeout 500 ms)")
    return {
        "status": response.status_code,
        "content_type": content_type,
        "events": events,
        "heartbeats": heartbeats,
        "silent_status": silent.status_code,
    }


if __name__ == "__main__":
    if "--serve" in sys.argv:
        import uvicorn

        uvicorn.run(gateway, host="127.0.0.1", port=8000, log_level="warning")
    else:
        anyio.run(main)
