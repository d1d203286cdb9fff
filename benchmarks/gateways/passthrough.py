"""(a) Passthrough: one Service, one Route on `/`, no plugins, default settings."""

from __future__ import annotations

import pygateway as gw

from . import UPSTREAM_URL, engine

app = gw.Gateway(
    services=[
        gw.Service(name="upstream", url=UPSTREAM_URL, routes=[gw.Route(name="all", paths=["/"])]),
    ],
    engine=engine(),
)
