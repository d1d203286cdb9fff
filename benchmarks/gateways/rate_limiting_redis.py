"""(g) rate-limiting, redis policy: as `rate_limiting`, with the counters in the Redis at
127.0.0.1:6379 (one atomic script call per request)."""

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
                    plugins=[
                        gw.plugins.RateLimiting(
                            second=10**9,
                            hour=10**12,
                            limit_by="ip",
                            policy="redis",
                            redis={"host": "127.0.0.1", "port": 6379},
                            fault_tolerant=False,
                        )
                    ],
                )
            ],
        ),
    ],
    engine=engine(),
)
