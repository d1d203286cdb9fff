"""Server-sent events: how long after the upstream writes an event does the client read it?

    python benchmarks/sse_latency.py                      # 500 events, 10 ms apart
    python benchmarks/sse_latency.py --events 2000 --every 0.005 --servers uvicorn,hypercorn-trio

The upstream (tests/test_streaming.py `sse_upstream`, under uvicorn) puts `time.time()` in
each event as it writes it; the client (httpx, in this process) subtracts it from
`time.time()` when it has read the event's `data:` line. Same machine, same clock. Measured
directly against the upstream and through the gateway (tests/test_streaming.py's gateway
module, Service `plain`, no plugins; `plugged`: key-auth, rate-limiting, correlation-id,
prometheus, http-log and a header-only response-transformer), under each server named.

Prints p50, p99 and max per-event delay in milliseconds, and the first event's delay.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
# The upstream and the gateway module are the streaming tests' own.
sys.path.insert(0, str(ROOT / "tests"))

from test_streaming import (  # noqa: E402
    API_KEY,
    SERVERS,
    gateway_server,
    parse_events,
    sse_upstream_server,
)


def measure(url: str, headers: dict[str, str] | None = None) -> list[float]:
    """Per-event delays (ms) of one stream, in the order the events came."""
    delays: list[float] = []
    with (
        httpx.Client(timeout=60, trust_env=False) as http,
        http.stream("GET", url, headers=headers) as response,
    ):
        response.raise_for_status()
        for name, data in parse_events(response.iter_lines()):
            if name == "tick":
                delays.append((time.time() - json.loads(data)["t"]) * 1000)
            elif name == "end":
                break
    return delays


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def report(label: str, delays: list[float]) -> None:
    print(
        f"{label:42} n={len(delays):5}  first={delays[0]:7.2f}  "
        f"p50={statistics.median(delays):6.2f}  p99={percentile(delays, 0.99):6.2f}  "
        f"max={max(delays):7.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--every", type=float, default=0.01, help="seconds between events")
    parser.add_argument("--servers", default="uvicorn", help=f"comma-separated: {list(SERVERS)}")
    args = parser.parse_args()
    query = f"events?n={args.events}&every={args.every}"
    with (
        tempfile.TemporaryDirectory() as directory,
        sse_upstream_server() as upstream,
    ):
        measure(f"{upstream.url}/{query.replace(str(args.events), '20', 1)}")  # warm-up
        report("direct (no gateway)", measure(f"{upstream.url}/{query}"))
        for server in args.servers.split(","):
            with gateway_server(server, Path(directory), upstream) as gateway:
                measure(f"{gateway.url}/plain/events?n=20&every={args.every}")  # warm-up
                report(f"gateway under {server}", measure(f"{gateway.url}/plain/{query}"))
                report(
                    f"gateway under {server}, 6 plugins",
                    measure(f"{gateway.url}/plugged/{query}", {"apikey": API_KEY}),
                )


if __name__ == "__main__":
    main()
