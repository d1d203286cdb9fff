"""(e) key-auth: passthrough behind key-auth with 1,000 consumers, each with a key.

wrk sends no credential, so a small ASGI wrapper adds `apikey: bench-key-500` to every
request (a list append, well under a microsecond) before the gateway sees it.
"""

from __future__ import annotations

from typing import Any

import pygateway as gw

from . import UPSTREAM_URL, engine

gateway = gw.Gateway(
    services=[
        gw.Service(
            name="upstream",
            url=UPSTREAM_URL,
            routes=[gw.Route(name="all", paths=["/"], plugins=[gw.plugins.KeyAuth()])],
        ),
    ],
    consumers=[
        gw.Consumer(username=f"user-{i}", credentials=[gw.KeyAuthCredential(key=f"bench-key-{i}")])
        for i in range(1000)
    ],
    engine=engine(),
)

_KEY = (b"apikey", b"bench-key-500")


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        scope["headers"] = [*scope["headers"], _KEY]
    await gateway(scope, receive, send)
