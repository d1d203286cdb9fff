"""(f) rate-limiting, local policy: passthrough counted per client IP in second and hour
windows whose limits are never reached (the counting, not the refusing, is measured)."""

from __future__ import annotations

import pygateway as gw

from . import UPSTREAM_URL, engine

app = gw.Gateway(
    services=[
        gw.Service(
            name="upstream",
            url=UPSTREAM_URL,
            routes=[
                gw.Route(
                    name="all",
                    paths=["/"],
                    plugins=[gw.plugins.RateLimiting(second=10**9, hour=10**12, limit_by="ip")],
                )
            ],
        ),
    ],
    engine=engine(),
)
