"""pygateway configurations for the shared proxy benchmark harness (../../../shared/bench).

Each module defines `app`, a `pygateway.Gateway` with one Service pointing at the harness's
upstream (`UPSTREAM_URL`, set by the harness) and one Route on `/`:

- `passthrough`: nothing else (the proxy path alone);
- `noop_plugin`: plus a global plugin whose `access` and `log` do nothing (dispatch cost);
- `balanced`: the Service names an Upstream whose one Target is that upstream, with
  passive health checks on (balancing and health accounting cost);
- `key_auth`, `rate_limiting`, `rate_limiting_redis`: behind one bundled plugin each, to
  price it against `passthrough`;
- `observed` (prometheus + http-log) and `cache_hit` (proxy-cache hits), for issue 5's costs;
- `key_auth_ratelimit` (issue 8's (b): key-auth + local rate-limiting) and
  `key_auth_ratelimit_observed` ((c): the same plus prometheus + http-log);
- `many_routes` ((d): 10,000 routes, the request matching one near the end);
- `terminate`: request-termination answers 200 with the upstream's 100-byte body itself
  (no upstream hop: gateway overhead alone, comparable to the harness's `*-hello` apps).

The harness imports them as `gateways.<module>:app` (benchmarks/run.py puts `benchmarks/`
on PYTHONPATH). `PYGW_BENCH_ENGINE=module:Class` (run.py's `--engine`) swaps the engine.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Awaitable, Callable
from typing import Any

import pygateway as gw

#: Where the harness's upstream nginx listens (the harness always sets UPSTREAM_URL).
UPSTREAM_URL = os.environ.get("UPSTREAM_URL", "http://127.0.0.1:9001")

#: The upstream's body on `/` (100 bytes); the harness checks a config answers with it.
SMALL_BODY = "0123456789" * 9 + "abcdefghi\n"


def engine() -> Any:
    """An instance of the engine class named by PYGW_BENCH_ENGINE (`module:Class`, e.g.
    `pygateway.engines:HttpxEngine`), or None for the gateway's default engine."""
    spec = os.environ.get("PYGW_BENCH_ENGINE")
    if not spec:
        return None
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)()


#: The key the wrapper of `with_api_key` adds (consumer `user-500` of `CONSUMERS`).
API_KEY = (b"apikey", b"bench-key-500")

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def consumers(count: int = 1000) -> list[gw.Consumer]:
    """`count` consumers, each with one key-auth key (`bench-key-<i>`), so the lookup runs
    in a realistically sized table."""
    return [
        gw.Consumer(username=f"user-{i}", credentials=[gw.KeyAuthCredential(key=f"bench-key-{i}")])
        for i in range(count)
    ]


def with_api_key(gateway: ASGIApp) -> ASGIApp:
    """An ASGI app adding `apikey: bench-key-500` to every HTTP request before `gateway`:
    wrk sends no credential (a list append, well under a microsecond)."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope["headers"] = [*scope["headers"], API_KEY]
        await gateway(scope, receive, send)

    return app


def observers() -> list[gw.Plugin]:
    """Prometheus (status code, latency and bandwidth metrics) and http-log batching entries
    to the harness's upstream (nginx answers any POST with 200)."""
    return [
        gw.plugins.Prometheus(
            status_code_metrics=True, latency_metrics=True, bandwidth_metrics=True
        ),
        gw.plugins.HttpLog(http_endpoint=f"{UPSTREAM_URL}/__log", queue={"max_batch_size": 100}),
    ]
