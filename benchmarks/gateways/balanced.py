"""(d) Balanced passthrough: the Service names an Upstream whose one Target is the harness's
upstream, with passive health checks on: the cost of balancing and health accounting."""

from __future__ import annotations

from urllib.parse import urlsplit

import pygateway as gw

from . import UPSTREAM_URL, engine

_origin = urlsplit(UPSTREAM_URL)

app = gw.Gateway(
    upstreams=[
        gw.Upstream(
            name="origin",
            targets=[gw.Target(f"{_origin.hostname}:{_origin.port or 80}")],
            healthchecks={"passive": {"unhealthy": {"tcp_failures": 5, "http_failures": 5}}},
        )
    ],
    services=[
        gw.Service(name="upstream", host="origin", routes=[gw.Route(name="all", paths=["/"])]),
    ],
    engine=engine(),
)
