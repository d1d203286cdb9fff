"""(e) key-auth: passthrough behind key-auth with 1,000 consumers, each with a key.

wrk sends no credential, so a small ASGI wrapper adds `apikey: bench-key-500` to every
request (a list append, well under a microsecond) before the gateway sees it.
"""

from __future__ import annotations

import pygateway as gw

from . import UPSTREAM_URL, consumers, engine, with_api_key

gateway = gw.Gateway(
    services=[
        gw.Service(
            name="upstream",
            url=UPSTREAM_URL,
            routes=[gw.Route(name="all", paths=["/"], plugins=[gw.plugins.KeyAuth()])],
        ),
    ],
    consumers=consumers(),
    engine=engine(),
)

app = with_api_key(gateway)
