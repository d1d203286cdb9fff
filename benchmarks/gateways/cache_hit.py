"""(i) proxy-cache hits: the upstream's text/plain 200 is cached on the first request, then
every request is answered from the in-memory cache (compare with `passthrough`)."""

from __future__ import annotations

import pygateway as gw

from . import UPSTREAM_URL, engine

app = gw.Gateway(
    services=[
        gw.Service(
            name="upstream",
            url=UPSTREAM_URL,
            routes=[gw.Route(name="all", paths=["/"], plugins=[gw.plugins.ProxyCache()])],
        ),
    ],
    engine=engine(),
)
