"""Issue 8's (d): passthrough with 10,000 routes on one Service.

The routes are distinct: `/svc<i>/v1` prefixes, every fourth one also restricted to the
host `api<i>.example.com`. The benchmarked request (`GET /` on 127.0.0.1, as wrk and the
harness send it) matches route 9,990, near the end of the configuration, on its host and
`/`: a router that scanned the routes in order would pay for nearly all of them. Compare
its throughput with `passthrough` (one route): the budget is within 5%.
"""

from __future__ import annotations

import pygateway as gw

from . import UPSTREAM_URL, engine

COUNT = 10_000
TARGET = 9_990


def route(i: int) -> gw.Route:
    if i == TARGET:
        return gw.Route(name=f"r{i}", paths=["/"], hosts=["127.0.0.1", "localhost"])
    if i % 4 == 0:
        return gw.Route(name=f"r{i}", paths=[f"/svc{i}/v1"], hosts=[f"api{i}.example.com"])
    return gw.Route(name=f"r{i}", paths=[f"/svc{i}/v1"])


app = gw.Gateway(
    services=[
        gw.Service(name="upstream", url=UPSTREAM_URL, routes=[route(i) for i in range(COUNT)]),
    ],
    engine=engine(),
)
