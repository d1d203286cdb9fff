"""`/metrics` for a gateway: the prometheus plugin's registry in Prometheus' text format.

    from pygateway import metrics
    status = metrics.app(gateway)   # an ASGI app: GET /metrics

Serve it apart from the proxy (`pygateway run --status-port 8100` does, on 127.0.0.1), as
Kong serves it on its Status API. With `PROMETHEUS_MULTIPROC_DIR` set (prometheus-client's
multiprocess mode, for `--workers N`), it adds up what every worker process wrote there.
Needs the extra: `pip install 'pygateway[prometheus]'`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import anyio.to_thread

from ._types import null_lifespan
from .plugins._prometheus import gateway_registry, health_collector, require_prometheus_client

if TYPE_CHECKING:
    from ._gateway import Gateway
    from ._types import ASGIApp, Receive, Scope, Send

__all__ = ["app", "render"]

_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def render(gateway: Gateway | None, accept: str = "") -> tuple[bytes, str]:
    """The exposition (body, content type) for a scrape with this Accept header.

    With `PROMETHEUS_MULTIPROC_DIR` set, the counters and histograms come from every
    process's files; upstream health is this process's gateway's (None: no gateway here).
    """
    client = require_prometheus_client()
    from prometheus_client.exposition import choose_encoder

    if os.environ.get(_MULTIPROC_ENV):
        from prometheus_client import multiprocess

        registry = client.CollectorRegistry(auto_describe=True)
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        if gateway is not None:
            registry.register(health_collector(gateway))
    elif gateway is not None:
        registry = gateway_registry(gateway)
    else:
        registry = client.CollectorRegistry()
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


def app(gateway: Gateway | None) -> ASGIApp:
    """An ASGI app serving `GET /metrics` for `gateway` (404 elsewhere, 405 for other
    methods); it answers the ASGI lifespan too, so a server can run it on its own.

    `gateway=None` serves only what worker processes wrote to `PROMETHEUS_MULTIPROC_DIR`
    (a supervisor process has no gateway of its own).

    Raises ConfigurationError if prometheus-client is not installed.
    """
    require_prometheus_client()
    multiprocess = bool(os.environ.get(_MULTIPROC_ENV))

    async def metrics_app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await null_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if scope.get("path") != "/metrics":
            await _plain(send, 404, b"Not Found\n")
            return
        method = scope.get("method", "GET")
        if method not in ("GET", "HEAD"):
            await _plain(send, 405, b"Method Not Allowed\n", [(b"allow", b"GET, HEAD")])
            return
        accept = ""
        for key, value in scope.get("headers") or []:
            if key == b"accept":
                accept = value.decode("latin-1")
        if multiprocess:
            # Reads a file per process and metric: keep it off the event loop.
            body, content_type = await anyio.to_thread.run_sync(render, gateway, accept)
        else:
            body, content_type = render(gateway, accept)
        headers = [
            (b"content-type", content_type.encode("latin-1")),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})

    return metrics_app


async def _plain(
    send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
