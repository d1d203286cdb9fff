"""The request's error boundary: whatever fails, the client gets an answer if nothing was sent
yet, a started response is left unfinished, a client that left is logged as 499, the log
phase always runs, and nothing but the server's own cancellation escapes to the server.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar

import anyio
import attrs
import pytest
from upstreams import call_asgi

import pygateway as gw
from pygateway.engines import ASGIEngine, MockEngine, UpstreamRequest, UpstreamResponse
from pygateway.testing import echo_engine

UNEXPECTED = "An unexpected error occurred"

LOGGED: list[gw.Context] = []


@attrs.frozen
class Logs(gw.Plugin):
    """Runs last in access, keeps every context its log phase sees."""

    name: ClassVar[str] = "errors-test-logs"
    priority: ClassVar[int] = -1000

    async def log(self, ctx: gw.Context) -> None:
        LOGGED.append(ctx)


@attrs.frozen
class ReadsBody(gw.Plugin):
    name: ClassVar[str] = "errors-test-reads-body"
    priority: ClassVar[int] = 500

    async def access(self, ctx: gw.Context) -> None:
        await ctx.request.body()


@attrs.frozen
class GlobalReadsBody(gw.Plugin):
    name: ClassVar[str] = "errors-test-global-reads-body"

    async def rewrite(self, ctx: gw.Context) -> None:
        await ctx.request.body()


@attrs.frozen
class Buffers(gw.Plugin):
    """A `response` phase: the whole upstream body is read before anything is sent."""

    name: ClassVar[str] = "errors-test-buffers"
    fail: bool = False

    async def response(self, ctx: gw.Context) -> None:
        if self.fail:
            raise RuntimeError("response phase bug")


@pytest.fixture
def logged() -> Iterator[list[gw.Context]]:
    LOGGED.clear()
    yield LOGGED
    LOGGED.clear()


def gateway(engine: Any, *plugins: gw.Plugin) -> gw.Gateway:
    return gw.Gateway(
        services=[gw.Service(host="upstream.test", routes=[gw.Route(paths=["/"])])],
        engine=engine,
        plugins=[Logs(), *plugins],
    )


def status_logged(logged: list[gw.Context]) -> int:
    assert len(logged) == 1
    assert logged[0].response is not None
    return logged[0].response.status_code


def raising(exc: Exception) -> MockEngine:
    def handler(request: UpstreamRequest) -> UpstreamResponse:
        raise exc

    return MockEngine(handler)


# -- before the response started: an answer --------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        RuntimeError("engine bug"),
        # OSErrors an engine forgot to translate are bugs too, not a client that left.
        ConnectionRefusedError("untranslated"),
        TimeoutError("untranslated"),
    ],
    ids=["RuntimeError", "ConnectionRefusedError", "TimeoutError"],
)
async def test_an_engine_raising_a_foreign_exception_is_a_logged_500(
    exc: Exception, logged: list[gw.Context], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="pygateway.runloop"):
        result = await call_asgi(gateway(raising(exc)), "/")
    assert result.status == 500
    assert json.loads(result.body)["message"] == UNEXPECTED
    assert result.complete
    assert status_logged(logged) == 500
    assert any(r.exc_info and r.exc_info[1] is exc for r in caplog.records)


async def test_an_upstream_failure_while_a_response_plugin_reads_the_body_is_its_answer(
    logged: list[gw.Context],
) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"part"
        raise gw.UpstreamTimeout("read timed out")

    engine = MockEngine(lambda request: UpstreamResponse(200, stream=body()))
    result = await call_asgi(gateway(engine, Buffers()), "/")
    assert result.status == 504
    assert json.loads(result.body)["message"] == "The upstream server is timing out"
    assert status_logged(logged) == 504


async def test_a_response_plugin_that_raises_before_anything_was_sent_is_a_500(
    logged: list[gw.Context],
) -> None:
    result = await call_asgi(gateway(echo_engine(), Buffers(fail=True)), "/")
    assert result.status == 500
    assert json.loads(result.body)["message"] == UNEXPECTED
    assert status_logged(logged) == 500


async def test_a_plugin_setting_a_path_that_is_not_latin_1_is_not_a_crash(
    logged: list[gw.Context],
) -> None:
    @attrs.frozen
    class SetsPath(gw.Plugin):
        name: ClassVar[str] = "errors-test-sets-path"

        async def access(self, ctx: gw.Context) -> None:
            assert ctx.upstream_request is not None
            ctx.upstream_request.path = "/名前"

    result = await call_asgi(gateway(echo_engine(), SetsPath()), "/")
    assert result.status == 200
    assert json.loads(result.body)["raw_path"] == "/%E5%90%8D%E5%89%8D"
    assert status_logged(logged) == 200


# -- after the response started: an unfinished response --------------------------------------


async def test_a_failure_after_the_response_started_leaves_it_unfinished(
    logged: list[gw.Context], caplog: pytest.LogCaptureFixture
) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"first part"
        raise RuntimeError("engine bug mid-body")

    engine = MockEngine(lambda request: UpstreamResponse(200, stream=body()))
    with caplog.at_level(logging.ERROR, logger="pygateway.runloop"):
        result = await call_asgi(gateway(engine), "/")
    assert result.status == 200
    assert result.body == b"first part"
    assert not result.complete
    assert status_logged(logged) == 200
    assert any("engine bug mid-body" in str(r.exc_info and r.exc_info[1]) for r in caplog.records)


# -- the client going away -------------------------------------------------------------------


async def test_a_client_leaving_while_an_access_plugin_reads_the_body_is_logged_as_499(
    logged: list[gw.Context],
) -> None:
    engine = MockEngine(lambda request: UpstreamResponse(200, content=b"ok"))
    result = await call_asgi(
        gateway(engine, ReadsBody()),
        "/",
        method="POST",
        headers=[(b"content-length", b"10")],
        body=[b"abc"],
        body_ends=False,
        disconnect=True,
    )
    assert result.status == 0
    # `Logs` comes after the plugin that was reading: it is still collected, and logs.
    assert status_logged(logged) == 499
    assert engine.requests == []


async def test_a_client_leaving_while_a_rewrite_plugin_reads_the_body_is_logged_as_499(
    logged: list[gw.Context],
) -> None:
    result = await call_asgi(
        gateway(echo_engine(), GlobalReadsBody()),
        "/",
        method="POST",
        headers=[(b"content-length", b"10")],
        body=[b"abc"],
        body_ends=False,
        disconnect=True,
    )
    assert result.status == 0
    assert status_logged(logged) == 499


async def test_the_server_failing_to_send_is_a_client_disconnect(
    logged: list[gw.Context],
) -> None:
    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "headers": [(b"host", b"gateway.test")],
        "client": ("127.0.0.1", 5000),
        "server": ("gateway.test", 80),
    }

    async def receive() -> dict[str, Any]:
        await anyio.sleep_forever()
        raise AssertionError  # pragma: no cover

    async def send(message: dict[str, Any]) -> None:
        raise OSError("connection reset by peer")

    with anyio.fail_after(5):
        await gateway(echo_engine())(scope, receive, send)
    assert status_logged(logged) == 499


async def test_a_client_leaving_is_noticed_when_the_upstream_never_reads_the_body(
    logged: list[gw.Context],
) -> None:
    cancelled = anyio.Event()

    async def upstream(scope: Any, receive: Any, send: Any) -> None:
        # Answers at once and streams forever, never reading the request body.
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            while True:
                await send({"type": "http.response.body", "body": b"tick", "more_body": True})
                await anyio.sleep(0.001)
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise

    gone = anyio.Event()
    with anyio.fail_after(5):
        result = await call_asgi(
            gateway(ASGIEngine(upstream)),
            "/",
            method="POST",
            headers=[(b"content-length", b"2")],
            body=[b"hi"],
            disconnect=gone,
            sink=lambda _: gone.set(),
        )
        await cancelled.wait()
    assert result.status == 200
    assert not result.complete
    assert logged[0].shared.get("client_disconnected") is True


async def test_a_cancellation_from_outside_is_not_swallowed(logged: list[gw.Context]) -> None:
    started = anyio.Event()

    async def upstream(scope: Any, receive: Any, send: Any) -> None:
        started.set()
        await anyio.sleep_forever()

    app = gateway(ASGIEngine(upstream))
    scope = anyio.CancelScope()

    async def request() -> None:
        with scope:
            await call_asgi(app, "/")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(request)
            await started.wait()
            scope.cancel()
    # The cancellation reached the scope that asked for it.
    assert scope.cancelled_caught
    # The log phase still ran.
    assert len(logged) == 1


@attrs.frozen
class Refusing(gw.Plugin):
    name = "refusing"

    async def access(self, ctx: gw.Context) -> gw.Response | None:
        raise gw.RequestRejected("Request size limit exceeded", status_code=413)


async def test_a_plugin_raising_request_rejected_answers_its_status_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gateway = gw.Gateway(
        services=[
            gw.Service(
                name="s",
                url="http://echo.internal",
                routes=[gw.Route(paths=["/"], plugins=[Refusing()])],
            )
        ],
        engines={"echo.internal": echo_engine()},
    )
    result = await call_asgi(gateway, "/")
    assert result.status == 413
    assert json.loads(result.body)["message"] == "Request size limit exceeded"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_request_rejected_while_the_upstream_reads_it_is_answered_not_blamed() -> None:
    async def body_limit(request: UpstreamRequest) -> UpstreamResponse:
        # What a body stream over a size limit raises inside the engine.
        raise gw.RequestRejected("too big", status_code=413)

    gateway = gw.Gateway(
        upstreams=[
            gw.Upstream(
                name="up.internal",
                targets=[gw.Target("10.0.0.1:80")],
                healthchecks={"passive": {"unhealthy": {"tcp_failures": 1}}},
            )
        ],
        services=[gw.Service(name="s", host="up.internal", routes=[gw.Route(paths=["/"])])],
        engine=MockEngine(body_limit),
    )
    result = await call_asgi(gateway, "/", method="POST", body=[b"0123456789"])
    assert result.status == 413
    assert json.loads(result.body)["message"] == "too big"
    assert gateway.upstream_health("up.internal")["data"][0]["health"] == "HEALTHY"
