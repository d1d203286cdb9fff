"""(h) Observed passthrough: prometheus (status code, latency and bandwidth metrics) and
http-log, batching entries to the harness's upstream (nginx answers any POST with 200)."""

from __future__ import annotations

import pygateway as gw

from . import UPSTREAM_URL, engine

app = gw.Gateway(
    services=[
        gw.Service(name="upstream", url=UPSTREAM_URL, routes=[gw.Route(name="all", paths=["/"])]),
    ],
    plugins=[
        gw.plugins.Prometheus(
            status_code_metrics=True, latency_metrics=True, bandwidth_metrics=True
        ),
        gw.plugins.HttpLog(http_endpoint=f"{UPSTREAM_URL}/__log", queue={"max_batch_size": 100}),
    ],
    engine=engine(),
)
