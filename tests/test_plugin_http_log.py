"""The bundled http-log plugin, after Kong's spec for it (03-http-log), against a real
collector on 127.0.0.1."""

from __future__ import annotations

import base64
import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from upstreams import refused_port, wait_until

import pygateway as gw
from pygateway._config import dump, load
from pygateway._exceptions import ConfigurationError
from pygateway.plugins._http_log import HttpLog
from pygateway.plugins._queue import LogQueue
from pygateway.testing import client, echo_engine


class Collector:
    """An HTTP server that records what it is sent. Requests wait for `gate` to be set;
    the first `failures` requests are answered 500."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, str], Any]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.waiting = 0
        self.failures = 0
        self.lock = threading.Lock()
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with collector.lock:
                    collector.waiting += 1
                collector.gate.wait(30)
                with collector.lock:
                    collector.waiting -= 1
                    failing = collector.failures > 0
                    if failing:
                        collector.failures -= 1
                    else:
                        collector.posts.append(
                            (self.command, dict(self.headers.items()), json.loads(body))
                        )
                self.send_response(500 if failing else 200)
                self.send_header("content-length", "0")
                self.end_headers()

            do_POST = do_PUT = do_PATCH = _handle

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/logs"

    @property
    def entries(self) -> list[dict[str, Any]]:
        with self.lock:
            out: list[dict[str, Any]] = []
            for _, _, body in self.posts:
                out.extend(body if isinstance(body, list) else [body])
            return out


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    thread = threading.Thread(target=c.server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield c
    finally:
        c.gate.set()
        c.server.shutdown()
        c.server.server_close()


def gateway_with(plugin: HttpLog) -> gw.Gateway:
    return gw.Gateway(
        services=[
            gw.Service(
                name="echo",
                url="http://echo.internal",
                routes=[gw.Route(name="r", paths=["/"], plugins=[plugin])],
            )
        ],
        engines={"echo.internal": echo_engine()},
    )


def queue_of(gateway: gw.Gateway, plugin: HttpLog) -> LogQueue:
    queue = gateway.shared[("http-log", plugin)]
    assert isinstance(queue, LogQueue)
    return queue


async def test_every_entry_of_a_burst_is_delivered_in_batches(collector: Collector) -> None:
    plugin = HttpLog(
        http_endpoint=collector.url,
        queue={"max_batch_size": 50, "max_coalescing_delay": 0.05},
    )
    gateway = gateway_with(plugin)
    async with gateway, client(gateway) as http:

        async def burst(worker: int) -> None:
            for i in range(100):
                response = await http.get(f"/w{worker}/{i}")
                assert response.status_code == 200

        async with anyio.create_task_group() as tg:
            for worker in range(10):
                tg.start_soon(burst, worker)
        await wait_until(lambda: len(collector.entries) == 1000)
        assert queue_of(gateway, plugin).dropped == 0
    entries = collector.entries
    assert len({e["request"]["id"] for e in entries}) == 1000
    assert {e["request"]["uri"] for e in entries} == {
        f"/w{w}/{i}" for w in range(10) for i in range(100)
    }
    assert all(isinstance(body, list) for _, _, body in collector.posts)
    assert all(len(body) <= 50 for _, _, body in collector.posts)
    assert len(collector.posts) < 1000
    assert (
        queue_of(gateway, plugin).dropped == 0 if ("http-log", plugin) in gateway.shared else True
    )


async def test_a_batch_is_sent_as_soon_as_it_is_full(collector: Collector) -> None:
    plugin = HttpLog(
        http_endpoint=collector.url, queue={"max_batch_size": 5, "max_coalescing_delay": 60}
    )
    gateway = gateway_with(plugin)
    async with gateway, client(gateway) as http:
        for i in range(7):
            await http.get(f"/{i}")
        await wait_until(lambda: len(collector.posts) == 1)  # not after 60 s
        assert [e["request"]["uri"] for e in collector.entries] == [f"/{i}" for i in range(5)]
        assert len(queue_of(gateway, plugin)) == 2  # the rest waits for the delay


async def test_requests_complete_while_the_collector_holds_the_connection(
    collector: Collector,
) -> None:
    collector.gate.clear()
    plugin = HttpLog(http_endpoint=collector.url, queue={"max_coalescing_delay": 0})
    gateway = gateway_with(plugin)
    async with gateway, client(gateway) as http:
        for i in range(20):
            response = await http.get(f"/{i}")
            assert response.status_code == 200
        # Every request finished, and the collector still holds the first batch.
        await wait_until(lambda: collector.waiting == 1)
        assert not collector.gate.is_set()
        assert collector.posts == []
        collector.gate.set()
        await wait_until(lambda: len(collector.entries) == 20)


async def test_requests_succeed_with_the_collector_down_and_the_entry_is_given_up() -> None:
    with refused_port() as port:
        plugin = HttpLog(
            http_endpoint=f"http://127.0.0.1:{port}/",
            queue={"max_retry_time": 0.2, "initial_retry_delay": 0.01, "max_retry_delay": 0.05},
        )
        gateway = gateway_with(plugin)
        async with gateway, client(gateway) as http:
            response = await http.get("/")
            assert response.status_code == 200
            queue = queue_of(gateway, plugin)
            await wait_until(lambda: queue.failed_batches == 1)


async def test_stopping_the_gateway_gives_up_a_failing_batch_instead_of_retrying_it() -> None:
    with refused_port() as port:
        plugin = HttpLog(http_endpoint=f"http://127.0.0.1:{port}/")  # retries for 60 s
        gateway = gateway_with(plugin)
        async with gateway, client(gateway) as http:
            response = await http.get("/")
            assert response.status_code == 200
            queue = queue_of(gateway, plugin)
        assert queue.failed_batches == 1
        assert len(queue) == 0


async def test_a_full_queue_drops_entries_instead_of_waiting(
    collector: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    collector.gate.clear()
    plugin = HttpLog(
        http_endpoint=collector.url, queue={"max_entries": 5, "max_coalescing_delay": 0}
    )
    gateway = gateway_with(plugin)
    async with gateway, client(gateway) as http:
        response = await http.get("/first")
        queue = queue_of(gateway, plugin)
        await wait_until(lambda: collector.waiting == 1)  # the sender is stuck on entry 1
        for i in range(20):
            response = await http.get(f"/{i}")
            assert response.status_code == 200
        assert len(queue) == 5
        assert queue.dropped == 15
        full = [r for r in caplog.records if "is full" in r.getMessage()]
        assert len(full) == 1  # once per interval, not once per entry
        collector.gate.set()
        await wait_until(lambda: len(collector.entries) == 6)


async def test_a_failed_batch_is_retried_until_the_collector_takes_it(
    collector: Collector,
) -> None:
    collector.failures = 2
    plugin = HttpLog(
        http_endpoint=collector.url, queue={"max_coalescing_delay": 0, "initial_retry_delay": 0.01}
    )
    gateway = gateway_with(plugin)
    async with gateway, client(gateway) as http:
        await http.get("/once")
        await wait_until(lambda: len(collector.entries) == 1)
    assert collector.failures == 0
    assert collector.entries[0]["request"]["uri"] == "/once"


async def test_a_single_entry_is_sent_as_an_object_with_the_configured_method_and_headers(
    collector: Collector,
) -> None:
    endpoint = collector.url.replace("http://", "http://user:pass@")
    plugin = HttpLog(
        http_endpoint=endpoint,
        method="PUT",
        headers={"X-Custom": "yes"},
        queue={"max_coalescing_delay": 0},
    )
    gateway = gateway_with(plugin)
    async with gateway, client(gateway) as http:
        await http.get("/one", headers={"authorization": "Bearer client-secret"})
        await wait_until(lambda: len(collector.posts) == 1)
    method, headers, body = collector.posts[0]
    assert method == "PUT"
    assert isinstance(body, dict)
    assert body["request"]["uri"] == "/one"
    assert body["request"]["headers"]["authorization"] == "REDACTED"
    lowered = {k.lower(): v for k, v in headers.items()}
    assert lowered["content-type"] == "application/json"
    assert lowered["x-custom"] == "yes"
    assert lowered["authorization"] == "Basic " + base64.b64encode(b"user:pass").decode()


async def test_queued_entries_are_flushed_when_the_gateway_stops(collector: Collector) -> None:
    plugin = HttpLog(
        http_endpoint=collector.url,
        queue={"max_batch_size": 100, "max_coalescing_delay": 3600},
    )
    gateway = gateway_with(plugin)
    async with gateway, client(gateway) as http:
        for i in range(3):
            await http.get(f"/{i}")
        assert collector.posts == []
    assert len(collector.posts) == 1
    assert len(collector.entries) == 3
    assert queue_of(gateway, plugin).closing


async def test_a_restarted_gateway_logs_through_a_new_queue(collector: Collector) -> None:
    plugin = HttpLog(http_endpoint=collector.url)
    gateway = gateway_with(plugin)
    async with gateway, client(gateway) as http:
        await http.get("/first")
    async with gateway, client(gateway) as http:
        await http.get("/second")
    assert [e["request"]["uri"] for e in collector.entries] == ["/first", "/second"]


async def test_deprecated_queue_size_and_flush_timeout_stand_in_for_the_queue_fields() -> None:
    plugin = HttpLog(http_endpoint="http://c.test/", queue_size=7, flush_timeout=0.5)
    assert plugin.effective_queue.max_batch_size == 7
    assert plugin.effective_queue.max_coalescing_delay == 0.5


# -- configuration ----------------------------------------------------------------------


def test_defaults_are_kongs() -> None:
    plugin = HttpLog(http_endpoint="http://c.test/")
    assert (plugin.method, plugin.content_type) == ("POST", "application/json")
    assert (plugin.timeout, plugin.keepalive) == (10000, 60000)
    q = plugin.queue
    assert (q.max_batch_size, q.max_coalescing_delay, q.max_entries) == (1, 1, 10000)
    assert (q.max_retry_time, q.initial_retry_delay, q.max_retry_delay) == (60, 0.01, 60)
    assert HttpLog.priority == 12


def test_declarative_config_round_trips() -> None:
    config = {
        "_format_version": "3.0",
        "plugins": [
            {
                "name": "http-log",
                "config": {
                    "http_endpoint": "http://c.test/logs",
                    "headers": {"X-Token": "t"},
                    "queue": {"max_batch_size": 10},
                },
            }
        ],
    }
    loaded = load(config)
    plugin = loaded.plugins[0]
    plugin = plugin.plugin if isinstance(plugin, gw.Scoped) else plugin
    assert isinstance(plugin, HttpLog)
    assert plugin.queue.max_batch_size == 10
    assert load(dump(loaded)) == loaded


@pytest.mark.parametrize(
    ("config", "path", "message"),
    [
        ({}, ("http_endpoint",), None),
        ({"http_endpoint": "not a url"}, ("http_endpoint",), "invalid url"),
        ({"http_endpoint": "http://c/", "method": "GET"}, ("method",), None),
        (
            {"http_endpoint": "http://c/", "headers": {"Host": "x"}},
            ("headers",),
            "cannot contain 'Host' header",
        ),
        (
            {"http_endpoint": "http://c/", "headers": {"content-length": "1"}},
            ("headers",),
            "cannot contain 'Content-Length' header",
        ),
        (
            {"http_endpoint": "http://c/", "queue": {"max_batch_size": 0}},
            ("queue", "max_batch_size"),
            "value should be between 1 and 1000000",
        ),
        (
            {"http_endpoint": "http://c/", "custom_fields_by_lua": {"a": "return 1"}},
            ("custom_fields_by_lua",),
            None,
        ),
    ],
)
def test_invalid_config_is_refused_with_the_field_path(
    config: dict[str, Any], path: tuple[str, ...], message: str | None
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        HttpLog.from_config(config)
    paths = [p for p, _ in caught.value.errors]
    assert path in paths, caught.value.errors
    if message is not None:
        assert message in str(caught.value)


def test_userinfo_and_an_authorization_header_are_not_both_allowed() -> None:
    with pytest.raises(ConfigurationError, match="both an 'Authorization' header"):
        HttpLog(http_endpoint="http://u:p@c.test/", headers={"Authorization": "x"})


_NEVER_CLOSED = """
import sys

import anyio

import pygateway as gw
from pygateway.testing import client, echo_engine

plugin = gw.plugins.HttpLog(
    http_endpoint=sys.argv[1], queue={"max_batch_size": 100, "max_coalescing_delay": 3600}
)
gateway = gw.Gateway(
    services=[gw.Service(name="s", url="http://echo.internal", routes=[gw.Route(paths=["/"])])],
    plugins=[plugin],
    engines={"echo.internal": echo_engine()},
)


async def main() -> None:
    async with client(gateway) as http:  # started by its first request, never closed
        for i in range(3):
            assert (await http.get(f"/{i}")).status_code == 200


anyio.run(main)
"""


def test_entries_of_a_gateway_never_closed_are_sent_when_the_interpreter_exits(
    collector: Collector, tmp_path: Path
) -> None:
    script = tmp_path / "never_closed.py"
    script.write_text(_NEVER_CLOSED)
    done = subprocess.run(
        [sys.executable, str(script), collector.url], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert [e["request"]["uri"] for e in collector.entries] == ["/0", "/1", "/2"]
    assert len(collector.posts) == 1  # one batch, sent at exit
