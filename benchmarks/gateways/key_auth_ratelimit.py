"""Issue 8's (b): key-auth (1,000 consumers) and rate-limiting with the local policy, by
consumer (Kong's default), in second and hour windows whose limits are never reached.

The plugins sit on the Route, as a Kong user would configure one protected API. `build()`
is shared with `key_auth_ratelimit_observed`, so (c) is exactly (b) plus its observers.
"""

from __future__ import annotations

from collections.abc import Sequence

import pygateway as gw

from . import UPSTREAM_URL, ASGIApp, consumers, engine, with_api_key


def build(global_plugins: Sequence[gw.Plugin] = ()) -> ASGIApp:
    gateway = gw.Gateway(
        services=[
            gw.Service(
                name="upstream",
                url=UPSTREAM_URL,
                routes=[
                    gw.Route(
                        name="all",
                        paths=["/"],
                        plugins=[
                            gw.plugins.KeyAuth(),
                            gw.plugins.RateLimiting(
                                second=10**9, hour=10**12, limit_by="consumer", policy="local"
                            ),
                        ],
                    )
                ],
            ),
        ],
        consumers=consumers(),
        plugins=list(global_plugins),
        engine=engine(),
    )
    return with_api_key(gateway)


app = build()
