"""(h) Observed passthrough: prometheus (status code, latency and bandwidth metrics) and
http-log, batching entries to the harness's upstream (nginx answers any POST with 200)."""

from __future__ import annotations

import pygateway as gw

from . import UPSTREAM_URL, engine, observers

app = gw.Gateway(
    services=[
        gw.Service(name="upstream", url=UPSTREAM_URL, routes=[gw.Route(name="all", paths=["/"])]),
    ],
    plugins=observers(),
    engine=engine(),
)
