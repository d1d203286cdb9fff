"""Seeing what a gateway does: access logs, metrics and a log collector, together.

    python examples/observability.py

The script starts a tiny HTTP log collector on 127.0.0.1, builds a gateway in front of an
in-process echo upstream with two global plugins, `Prometheus` (metrics) and `HttpLog`
(Kong's log entry of every request, sent to the collector in batches), turns the access
log on (one JSON line per request on stdout), sends a few requests in-process, and prints
the metrics and what the collector received.

In production, the same three pieces are: `pygateway run --log-format json` (or
`pygateway.logging.configure_access_log()` in your app), `--status-port` for `/metrics`,
and an `http_endpoint` pointing at your log pipeline. See docs/observability.md.
"""

from __future__ import annotations

import http.server
import json
import logging
import sys
import threading
from typing import Any

import anyio

import pygateway as gw
from pygateway import metrics
from pygateway.logging import JsonFormatter
from pygateway.testing import client, echo_engine

ALICE = gw.Consumer(username="alice", credentials=[gw.KeyAuthCredential(key="alice-key")])

REQUESTS = [
    ("GET", "/orders/1", {}),
    ("GET", "/orders/2?expand=items", {}),
    ("GET", "/private/report", {}),  # no key: key-auth answers 401
    ("GET", "/private/report", {"apikey": "alice-key"}),
    ("GET", "/nowhere", {}),  # no route: 404
]


class Collector:
    """An HTTP server on 127.0.0.1 that keeps the log entries posted to it."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        entries = self.entries

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                # A batch (max_batch_size above 1) is a JSON array of entries.
                entries.extend(body if isinstance(body, list) else [body])
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass  # quiet: the gateway's access log is what we want to see

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/logs"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Collector:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def build_gateway(collector_url: str) -> gw.Gateway:
    return gw.Gateway(
        services=[
            gw.Service(
                name="orders",
                url="http://orders.internal",
                routes=[
                    gw.Route(name="orders-api", paths=["/orders"]),
                    gw.Route(name="private", paths=["/private"], plugins=[gw.plugins.KeyAuth()]),
                ],
            )
        ],
        consumers=[ALICE],
        plugins=[
            # Global: they see every request, those with no route included.
            gw.plugins.Prometheus(
                status_code_metrics=True, latency_metrics=True, bandwidth_metrics=True
            ),
            gw.plugins.HttpLog(
                http_endpoint=collector_url,
                # Up to 10 entries per POST, sent at most 1 s after the first one waited.
                queue={"max_batch_size": 10, "max_coalescing_delay": 1},
            ),
        ],
        engines={"orders.internal": echo_engine()},
    )


def metric_lines(text: str, *names: str) -> list[str]:
    """The sample lines of the named metrics in Prometheus' text format."""
    return [line for line in text.splitlines() if line.startswith(names)]


async def main() -> dict[str, Any]:
    """Send the requests; print and return responses, request counts and collected entries."""
    # The access log, with the standard logging module: a handler with pygateway's JSON
    # formatter on the `pygateway.access` logger. (`pygateway.logging.configure_access_log()`
    # does the same in one call; `pygateway run --log-format json` does it for you.)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    access_log = logging.getLogger("pygateway.access")
    access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)

    responses: list[tuple[str, int, str]] = []
    try:
        with Collector() as collector:
            gateway = build_gateway(collector.url)
            print("-- access log (one JSON line per request, from pygateway.access):")
            async with gateway, client(gateway) as http:
                for method, path, headers in REQUESTS:
                    response = await http.request(method, path, headers=headers)
                    request_id = response.headers["x-pygateway-request-id"]
                    responses.append((f"{method} {path}", response.status_code, request_id))
                # The status app serves /metrics (`pygateway run --status-port` runs it).
                async with client(metrics.app(gateway)) as status:
                    scraped = (await status.get("/metrics")).text
            # Leaving `async with gateway` flushed the http-log queue to the collector.
            collected = list(collector.entries)
    finally:
        access_log.removeHandler(handler)
        access_log.setLevel(logging.NOTSET)

    print("\n-- responses:")
    for request, status_code, request_id in responses:
        print(f"  {request:30} -> {status_code}  request id {request_id}")

    print("\n-- metrics (GET /metrics on the status app):")
    counted = metric_lines(scraped, "pygateway_http_requests_total{", "pygateway_bandwidth_bytes{")
    for line in counted:
        print(f"  {line}")

    print(f"\n-- the collector received {len(collected)} http-log entries:")
    for entry in collected:
        route = (entry.get("route") or {}).get("name", "-")
        consumer = (entry.get("consumer") or {}).get("username", "-")
        print(
            f"  {entry['request']['method']} {entry['request']['uri']} -> "
            f"{entry['response']['status']} route={route} consumer={consumer} "
            f"latency={entry['latencies']['request']}ms"
        )

    requests_by_code: dict[str, float] = {}
    for line in metric_lines(scraped, "pygateway_http_requests_total{"):
        code = line.split('code="', 1)[1].split('"', 1)[0]
        requests_by_code[code] = requests_by_code.get(code, 0) + float(line.rsplit(" ", 1)[1])
    return {
        "responses": responses,
        "requests by code": requests_by_code,
        "collected": [(e["request"]["id"], e["response"]["status"]) for e in collected],
    }


if __name__ == "__main__":
    anyio.run(main)
