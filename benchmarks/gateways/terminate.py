"""(c) The gateway answering by itself: request-termination 200 with the 100-byte body.

No upstream hop, so its throughput is the gateway's own per-request cost on top of the ASGI
server: compare it with the harness's `uvicorn-hello` / `granian-hello`.
"""

from __future__ import annotations

import pygateway as gw

from . import SMALL_BODY, UPSTREAM_URL, engine

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
                        gw.plugins.RequestTermination(
                            status_code=200, body=SMALL_BODY, content_type="text/plain"
                        ),
                    ],
                ),
            ],
        ),
    ],
    engine=engine(),
)
