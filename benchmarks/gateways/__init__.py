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
- `terminate`: request-termination answers 200 with the upstream's 100-byte body itself
  (no upstream hop: gateway overhead alone, comparable to the harness's `*-hello` apps).

The harness imports them as `gateways.<module>:app` (benchmarks/run.py puts `benchmarks/`
on PYTHONPATH). `PYGW_BENCH_ENGINE=module:Class` (run.py's `--engine`) swaps the engine.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

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
