"""Access logs through `logging` (`pygateway.access`), `pygateway.logging.JsonFormatter`,
the request and response sizes they report, and `pygateway run --access-log/--log-format`.
"""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from serverutil import PYTHON, ServerProcess, free_port
from upstreams import call_asgi

import pygateway as gw
import pygateway._access_log
from pygateway._access_log import access_logger
from pygateway.engines import ASGIEngine
from pygateway.logging import JsonFormatter, configure_access_log
from pygateway.testing import client, echo_engine

ALICE = gw.Consumer(username="alice", credentials=[gw.KeyAuthCredential(key="k-alice")])


def gateway_with(engine: Any = None) -> gw.Gateway:
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
        engines={"orders.internal": engine if engine is not None else echo_engine()},
    )


@pytest.fixture
def records(caplog: pytest.LogCaptureFixture) -> Iterator[list[logging.LogRecord]]:
    """The access records logged during the test (the access log on, at INFO)."""
    caplog.set_level(logging.INFO, logger="pygateway.access")
    kept: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            kept.append(record)

    handler = Keep()
    access_logger.addHandler(handler)
    try:
        yield kept
    finally:
        access_logger.removeHandler(handler)


@pytest.fixture
def restore_access_logger() -> Iterator[None]:
    """Undo what `configure_access_log` does to the logger."""
    handlers, level = list(access_logger.handlers), access_logger.level
    propagate = access_logger.propagate
    try:
        yield
    finally:
        access_logger.handlers[:] = handlers
        access_logger.setLevel(level)
        access_logger.propagate = propagate


def head_size(first_line: str, headers: list[tuple[bytes, bytes]]) -> int:
    """An HTTP/1.1 head's bytes: the first line, each header line, the blank line."""
    return len(first_line) + 2 + sum(len(k) + len(v) + 4 for k, v in headers) + 2


# -- one record per request ----------------------------------------------------------------


async def test_each_request_is_logged_once_with_its_facts(
    records: list[logging.LogRecord],
) -> None:
    gateway = gateway_with()
    async with gateway, client(gateway) as http:
        response = await http.get(
            "/private/7?full=1",
            headers={"apikey": "k-alice", "user-agent": "curl/8.5.0", "referer": "http://a/"},
        )
    assert response.status_code == 200

    [record] = records
    assert record.levelno == logging.INFO
    fields = record.access  # type: ignore[attr-defined]
    assert fields["request_id"] == response.headers["x-pygateway-request-id"]
    assert fields["status"] == 200
    assert fields["method"] == "GET"
    assert fields["uri"] == "/private/7?full=1"
    assert fields["route"] == "private"
    assert fields["service"] == "orders"
    assert fields["consumer"] == "alice"
    assert fields["client_ip"] == "127.0.0.1"
    assert fields["upstream_status"] == 200
    assert fields["source"] == "service"
    assert fields["user_agent"] == "curl/8.5.0"
    assert fields["referer"] == "http://a/"
    assert fields["request_size"] > 0
    assert fields["response_size"] > len(response.content)
    assert isinstance(fields["latency_ms"], int)
    assert fields["latency_ms"] >= fields["upstream_latency_ms"] >= 0
    message = record.getMessage()
    assert message.startswith(
        '127.0.0.1 - alice "GET /private/7?full=1 HTTP/1.1" 200 '
        f'{fields["response_size"]} "http://a/" "curl/8.5.0" '
    )
    assert message.endswith(f"ms {fields['request_id']}")


async def test_a_key_auth_refusal_and_a_request_with_no_route_are_logged(
    records: list[logging.LogRecord],
) -> None:
    gateway = gateway_with()
    async with gateway, client(gateway) as http:
        refused = await http.get("/private/7")
        missing = await http.get("/nowhere")
    assert (refused.status_code, missing.status_code) == (401, 404)

    refusal, no_route = (r.access for r in records)  # type: ignore[attr-defined]
    assert refusal["status"] == 401
    assert refusal["route"] == "private"
    assert refusal["consumer"] is None
    assert refusal["upstream_status"] is None
    assert refusal["request_id"] == refused.headers["x-pygateway-request-id"]
    assert no_route["status"] == 404
    assert no_route["route"] is None
    assert no_route["service"] is None
    assert no_route["source"] == "error"
    assert no_route["response_size"] > len(missing.content)


async def test_a_client_that_went_away_is_logged_as_499(
    records: list[logging.LogRecord],
) -> None:
    async def upstream(scope: Any, receive: Any, send: Any) -> None:
        await anyio.sleep_forever()

    gateway = gateway_with(ASGIEngine(upstream))
    with anyio.fail_after(5):
        result = await call_asgi(gateway, "/orders", disconnect=True)
    assert result.status == 0

    [record] = records
    assert record.access["status"] == 499  # type: ignore[attr-defined]
    assert record.access["response_size"] == 0  # type: ignore[attr-defined]
    assert ' "GET /orders HTTP/1.1" 499 0 ' in record.getMessage()


async def test_a_disabled_access_log_builds_nothing(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(ctx: gw.Context) -> dict[str, Any]:
        raise AssertionError("access fields built while the access log is off")

    monkeypatch.setattr(pygateway._access_log, "access_fields", broken)
    caplog.set_level(logging.WARNING, logger="pygateway.access")
    gateway = gateway_with()
    async with gateway, client(gateway) as http:
        response = await http.get("/orders/1")
    assert response.status_code == 200
    assert not [r for r in caplog.records if r.name == "pygateway.access"]


async def test_quotes_and_control_characters_are_escaped_in_the_message(
    records: list[logging.LogRecord],
) -> None:
    gateway = gateway_with()
    result = await call_asgi(
        gateway,
        "/orders",
        raw_path=b'/orders/"x"',
        headers=[(b"user-agent", b'evil" 200 "\\ \xc3\xa9'), (b"referer", b"a\tb")],
    )
    assert result.status == 200

    [record] = records
    message = record.getMessage()
    assert '"GET /orders/\\x22x\\x22 HTTP/1.1"' in message
    assert '"a\\x09b" "evil\\x22 200 \\x22\\x5C \\xC3\\xA9"' in message
    # The fields keep the values themselves.
    assert record.access["user_agent"] == 'evil" 200 "\\ é'  # type: ignore[attr-defined]


# -- sizes ---------------------------------------------------------------------------------


async def test_the_request_size_counts_the_body_bytes_read(
    records: list[logging.LogRecord],
) -> None:
    gateway = gateway_with()
    framed = [(b"content-length", b"1000")]
    result = await call_asgi(gateway, "/orders", method="POST", headers=framed, body=[b"a" * 1000])
    assert result.status == 200
    assert json.loads(result.body)["body_length"] == 1000
    # No Content-Length: only the bytes read tell the body's size.
    chunked = [(b"transfer-encoding", b"chunked")]
    result = await call_asgi(
        gateway, "/orders", method="POST", headers=chunked, body=[b"b" * 300] * 3
    )
    assert json.loads(result.body)["body_length"] == 900
    # Heads of the same size, with bodies nobody read (no route: nothing is proxied).
    await call_asgi(gateway, "/absent", method="POST", headers=framed, body=[b"a" * 1000])
    await call_asgi(gateway, "/absent", method="POST", headers=chunked, body=[b"b" * 900])

    sizes = [r.access["request_size"] for r in records]  # type: ignore[attr-defined]
    read_framed, read_chunked, unread_framed, unread_chunked = sizes
    assert read_framed - unread_framed == 1000
    assert read_chunked - unread_chunked == 900


async def test_the_request_size_counts_the_head_as_http_1_1_frames_it(
    records: list[logging.LogRecord],
) -> None:
    gateway = gateway_with()
    framed = [(b"content-length", b"5")]
    await call_asgi(
        gateway, "/orders", query=b"a=1", method="POST", headers=framed, body=[b"hello"]
    )

    [record] = records
    host = [(b"host", b"gateway.test")]
    head = head_size("POST /orders?a=1 HTTP/1.1", host + framed)
    assert record.access["request_size"] == head + 5  # type: ignore[attr-defined]


async def test_the_response_size_counts_a_streamed_body_without_content_length(
    records: list[logging.LogRecord],
) -> None:
    async def upstream(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(5):
            await send({"type": "http.response.body", "body": b"x" * 700, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    gateway = gateway_with(ASGIEngine(upstream))
    result = await call_asgi(gateway, "/orders")
    assert result.status == 200
    assert result.header("content-length") is None
    assert len(result.body) == 3500

    [record] = records
    expected = head_size("HTTP/1.1 200 OK", result.headers) + 3500
    assert record.access["response_size"] == expected  # type: ignore[attr-defined]
    assert f'"GET /orders HTTP/1.1" 200 {expected} ' in record.getMessage()


async def test_the_response_size_counts_what_was_sent_before_the_client_left(
    records: list[logging.LogRecord],
) -> None:
    async def upstream(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(5):
            await send({"type": "http.response.body", "body": b"x" * 700, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    gateway = gateway_with(ASGIEngine(upstream))
    sent: list[dict[str, Any]] = []
    requested, gone = [False], anyio.Event()

    async def receive() -> dict[str, Any]:
        if not requested[0]:
            requested[0] = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and len(sent) == 3:
            gone.set()
            raise OSError("the client is gone")  # as servers do for a closed connection
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/orders",
        "raw_path": b"/orders",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"gateway.test")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    async with gateway:
        await gateway(scope, receive, send)

    [record] = records
    head = head_size("HTTP/1.1 200 OK", sent[0]["headers"])
    assert record.access["response_size"] == head + 2 * 700  # type: ignore[attr-defined]


# -- JsonFormatter -------------------------------------------------------------------------


def formatted(formatter: logging.Formatter, emit: Any) -> list[dict[str, Any]]:
    """What `emit(logger)` logs, through a handler with `formatter`, parsed line by line."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger("tests.access_log.json")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        emit(logger)
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    return [json.loads(line) for line in lines]


def test_a_header_with_undecodable_bytes_is_still_logged_as_json(
    records: list[logging.LogRecord],
) -> None:
    gateway = gateway_with()

    async def run() -> None:
        await call_asgi(gateway, "/orders", headers=[(b"user-agent", b"evil\xff")])

    anyio.run(run)
    [record] = records
    stream = io.BytesIO()
    handler = logging.StreamHandler(io.TextIOWrapper(stream, encoding="utf-8", write_through=True))
    handler.setFormatter(JsonFormatter())
    handler.handleError = lambda record: pytest.fail("the record could not be written")  # type: ignore[method-assign]
    handler.emit(record)
    line = json.loads(stream.getvalue())
    assert line["user_agent"].startswith("evil")


async def test_json_lines_carry_the_access_fields_at_the_top_level(
    records: list[logging.LogRecord],
) -> None:
    gateway = gateway_with()
    async with gateway, client(gateway) as http:
        response = await http.get("/private/1", headers={"apikey": "k-alice"})

    [record] = records
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert list(entry)[:4] == ["time", "level", "logger", "message"]
    assert entry["level"] == "INFO"
    assert entry["logger"] == "pygateway.access"
    assert entry["message"] == record.getMessage()
    assert entry["request_id"] == response.headers["x-pygateway-request-id"]
    assert entry["status"] == 200
    assert entry["consumer"] == "alice"
    assert entry["route"] == "private"
    assert "access" not in entry
    when = datetime.fromisoformat(entry["time"].replace("Z", "+00:00"))
    assert abs(when.timestamp() - record.created) < 0.001
    assert entry["time"].endswith("Z")
    assert len(entry["time"]) == len("2026-11-26T12:34:05.123Z")


def test_json_lines_carry_extra_fields_exceptions_and_stacks() -> None:
    def emit(logger: logging.Logger) -> None:
        logger.info("order %s placed", 7, extra={"order": {"id": 7}, "level": "forged"})
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("it failed")
        logger.warning("here", stack_info=True)

    plain, failed, stacked = formatted(JsonFormatter(), emit)
    assert plain["message"] == "order 7 placed"
    assert plain["order"] == {"id": 7}
    assert plain["level"] == "INFO"  # the record's own keys win
    assert "exception" not in plain
    # None of LogRecord's own attributes leak out.
    assert not {"args", "msg", "levelno", "pathname", "exc_info", "created"} & set(plain)
    assert failed["level"] == "ERROR"
    assert failed["exception"].startswith("Traceback (most recent call last):")
    assert failed["exception"].endswith("ValueError: boom")
    assert stacked["stack"].startswith("Stack (most recent call last):")


def test_json_lines_rename_keys_stringify_odd_values_and_keep_unicode() -> None:
    class Odd:
        def __str__(self) -> str:
            return "odd!"

    def emit(logger: logging.Logger) -> None:
        logger.info("café", extra={"thing": Odd(), "client_ip": "10.0.0.1"})

    renamed = JsonFormatter(rename={"time": "@timestamp", "client_ip": "remote_addr"})
    [entry] = formatted(renamed, emit)
    assert "time" not in entry
    assert entry["@timestamp"].endswith("Z")
    assert entry["remote_addr"] == "10.0.0.1"
    assert entry["thing"] == "odd!"

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.handle(logging.makeLogRecord({"msg": "café", "levelname": "INFO"}))
    assert '"message": "café"' in stream.getvalue()
    handler.setFormatter(JsonFormatter(ensure_ascii=True))
    handler.handle(logging.makeLogRecord({"msg": "café", "levelname": "INFO"}))
    assert '"message": "caf\\u00e9"' in stream.getvalue()


async def test_configure_access_log_prints_one_json_line_per_request(
    restore_access_logger: None,
) -> None:
    stream = io.StringIO()
    configure_access_log(stream)
    configure_access_log(stream)  # again: still one handler
    gateway = gateway_with()
    async with gateway, client(gateway) as http:
        first = await http.get("/orders/1")
        await http.get("/nowhere")

    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    entries = [json.loads(line) for line in lines]
    assert entries[0]["request_id"] == first.headers["x-pygateway-request-id"]
    assert [e["status"] for e in entries] == [200, 404]
    assert access_logger.propagate is False


async def test_configure_access_log_as_text_writes_the_time_and_the_line(
    restore_access_logger: None,
) -> None:
    stream = io.StringIO()
    configure_access_log(stream, json=False)
    gateway = gateway_with()
    async with gateway, client(gateway) as http:
        await http.get("/orders/1")

    [line] = stream.getvalue().splitlines()
    assert re.match(
        r'\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} 127\.0\.0\.1 - - "GET /orders/1 HTTP/1\.1" 200 ',
        line,
    ), line


# -- pygateway run -------------------------------------------------------------------------


def _config(directory: Path) -> Path:
    path = directory / "kong.json"
    path.write_text(
        json.dumps(
            {
                "_format_version": "3.0",
                "services": [
                    {
                        "name": "blocked",
                        "url": "http://127.0.0.1:9",
                        "routes": [{"name": "maintenance", "paths": ["/api"]}],
                        "plugins": [
                            {"name": "request-termination", "config": {"status_code": 503}}
                        ],
                    }
                ],
            }
        )
    )
    return path


def _serve_and_call(argv: list[str], paths: list[str]) -> tuple[list[str], str]:
    """Run `pygateway run` with `argv`, GET `paths`, stop it; (request ids, its output)."""
    port = free_port()
    server = ServerProcess([PYTHON, "-m", "pygateway", "run", *argv, "--port", str(port)], port)
    ids = []
    with server, httpx.Client(base_url=server.url, timeout=30, trust_env=False) as http:
        for path in paths:
            response = http.get(path)
            assert response.status_code in (404, 503), server.describe()
            ids.append(response.headers["x-pygateway-request-id"])
        # A graceful stop lets the requests' tasks (and their log lines) finish.
        assert server.stop() is not None
    return ids, server.output()


@pytest.mark.servers
def test_run_logs_each_request_as_a_text_line_by_default(tmp_path: Path) -> None:
    ids, output = _serve_and_call([str(_config(tmp_path))], ["/api/x?y=1", "/nowhere"])

    lines = [line for line in output.splitlines() if "HTTP/1.1" in line]
    assert len(lines) == 2, output
    assert '127.0.0.1 - - "GET /api/x?y=1 HTTP/1.1" 503 ' in lines[0]
    assert lines[0].startswith("INFO:")
    assert lines[0].endswith(ids[0])
    assert '"GET /nowhere HTTP/1.1" 404 ' in lines[1]


@pytest.mark.servers
def test_run_with_log_format_json_logs_json_lines_from_every_worker(tmp_path: Path) -> None:
    argv = [str(_config(tmp_path)), "--log-format", "json", "--workers", "2"]
    ids, output = _serve_and_call(argv, ["/api/x"] * 4)

    entries = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    # Every line is JSON: uvicorn's own too.
    assert len(entries) == len(output.splitlines()), output
    access = [e for e in entries if e["logger"] == "pygateway.access"]
    assert sorted(e["request_id"] for e in access) == sorted(ids)
    assert {(e["status"], e["route"], e["service"]) for e in access} == {
        (503, "maintenance", "blocked")
    }
    assert any(e["logger"].startswith("uvicorn") for e in entries)


@pytest.mark.servers
def test_run_with_no_access_log_logs_no_requests(tmp_path: Path) -> None:
    ids, output = _serve_and_call([str(_config(tmp_path)), "--no-access-log"], ["/api/x"])

    assert ids
    assert "Application startup complete" in output
    assert "HTTP/1.1" not in output
    assert ids[0] not in output


def test_run_help_lists_the_logging_options() -> None:
    result = subprocess.run(
        [PYTHON, "-m", "pygateway", "run", "--help"], capture_output=True, text=True, timeout=30
    )
    assert "--access-log, --no-access-log" in result.stdout
    assert "--log-format {text,json}" in result.stdout
