"""The engine conformance suite (tests/engine_conformance.py) for every bundled engine, and
what is particular to each: HttpxEngine against real sockets, ASGIEngine in-process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest
from engine_conformance import (
    ASGIRecorder,
    EngineConformance,
    Harness,
    MockRecorder,
    chunks,
)
from upstreams import (
    Fault,
    RawServer,
    Reply,
    refused_port,
    unaccepting_port,
    wait_until,
)

from pygateway import (
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from pygateway.engines import (
    ASGIEngine,
    Engine,
    HttpxEngine,
    MockEngine,
    UpstreamRequest,
    UpstreamResponse,
)

pytestmark = pytest.mark.servers


@pytest.fixture(scope="module")
def raw_server() -> Iterator[RawServer]:
    with RawServer() as server:
        yield server


@pytest.fixture(scope="module")
def closed_port() -> Iterator[int]:
    with refused_port() as port:
        yield port


class TestHttpxEngine(EngineConformance):
    @pytest.fixture
    async def harness(self, raw_server: RawServer, closed_port: int) -> AsyncIterator[Harness]:
        raw_server.reset()
        async with HttpxEngine() as engine:
            yield Harness(
                engine,
                raw_server,
                raw_server.host,
                raw_server.port,
                wire=True,
                faults=True,
                refused=("127.0.0.1", closed_port),
            )


class TestASGIEngine(EngineConformance):
    @pytest.fixture
    async def harness(self) -> AsyncIterator[Harness]:
        recorder = ASGIRecorder()
        async with ASGIEngine(recorder) as engine:
            yield Harness(engine, recorder, "upstream.test", 80, faults=True)


class TestMockEngine(EngineConformance):
    @pytest.fixture
    async def harness(self) -> AsyncIterator[Harness]:
        recorder = MockRecorder()
        async with MockEngine(recorder) as engine:
            yield Harness(engine, recorder, "upstream.test", 80)


def _request(host: str, port: int, target: bytes = b"/", **kwargs: Any) -> UpstreamRequest:
    return UpstreamRequest(
        method=kwargs.pop("method", "GET"),
        scheme="http",
        host=host,
        port=port,
        target=target,
        headers=kwargs.pop("headers", [(b"host", b"upstream.test")]),
        **kwargs,
    )


# -- HttpxEngine ---------------------------------------------------------------------------


async def test_httpx_engine_times_out_a_connect_that_never_completes() -> None:
    with unaccepting_port() as port:
        if port is None:
            pytest.skip("this platform completes connects to a full accept queue")
        async with HttpxEngine() as engine:
            with anyio.fail_after(5), pytest.raises(UpstreamConnectTimeout) as caught:
                await engine.send(_request("127.0.0.1", port, connect_timeout=0.2))
    assert isinstance(caught.value, UpstreamTimeout)
    assert caught.value.status_code == 504


async def test_httpx_engine_reuses_a_kept_alive_connection(raw_server: RawServer) -> None:
    raw_server.reset()
    async with HttpxEngine() as engine:
        before = raw_server.connections
        for _ in range(3):
            response = await engine.send(_request(raw_server.host, raw_server.port))
            assert await response.read() == b"ok"
            await response.aclose()
    assert raw_server.connections == before + 1


async def test_httpx_engine_reports_the_http_version(raw_server: RawServer) -> None:
    async with HttpxEngine() as engine:
        response = await engine.send(_request(raw_server.host, raw_server.port))
        await response.aclose()
    assert response.http_version == "1.1"


async def test_httpx_engine_recovers_after_the_upstream_closed_a_pooled_connection(
    raw_server: RawServer,
) -> None:
    raw_server.reset()
    raw_server.reply(Reply(chunks=[b"bye"], length=False))
    async with HttpxEngine() as engine:
        for expected in (b"bye", b"ok"):
            response = await engine.send(_request(raw_server.host, raw_server.port))
            assert await response.read() == expected
            await response.aclose()


async def test_httpx_engine_sends_a_request_body_as_it_comes(raw_server: RawServer) -> None:
    # The second chunk is produced only once the upstream holds the first: if the engine
    # waited for the whole body, this would never finish.
    raw_server.reset()

    async def body() -> AsyncIterator[bytes]:
        yield b"first"
        await wait_until(lambda: b"first" in raw_server.partial)
        yield b"second"

    async with HttpxEngine() as engine:
        with anyio.fail_after(5):
            response = await engine.send(
                _request(raw_server.host, raw_server.port, b"/slow", method="POST", body=body())
            )
            await response.aclose()
    assert raw_server.received[-1].body == b"firstsecond"
    assert raw_server.received[-1].framing == "chunked"


async def test_httpx_engine_send_to_a_refused_port_says_connect_error(closed_port: int) -> None:
    async with HttpxEngine() as engine:
        with pytest.raises(UpstreamConnectError) as caught:
            await engine.send(_request("127.0.0.1", closed_port))
    assert not isinstance(caught.value, UpstreamTimeout)
    assert caught.value.status_code == 502


async def test_httpx_engine_sends_exactly_a_target_httpx_would_rewrite(
    raw_server: RawServer,
) -> None:
    raw_server.reset()
    target = b"/x/../y/%zz?q=%22a%22&r=<b>"
    async with HttpxEngine() as engine:
        response = await engine.send(_request(raw_server.host, raw_server.port, target))
        await response.aclose()
    assert raw_server.received[-1].target == target
    assert raw_server.received[-1].head.startswith(b"GET " + target + b" HTTP/1.1\r\n")


async def test_httpx_engine_can_be_closed_and_used_again(raw_server: RawServer) -> None:
    engine = HttpxEngine()
    for _ in range(2):
        response = await engine.send(_request(raw_server.host, raw_server.port))
        await response.read()
        await response.aclose()
        await engine.aclose()


# -- ASGIEngine ----------------------------------------------------------------------------


async def test_asgi_engine_gives_the_app_a_decoded_path_and_the_raw_one() -> None:
    scopes: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scopes.append(dict(scope))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async with ASGIEngine(app, client=("10.1.2.3", 4567)) as engine:
        response = await engine.send(_request("svc.internal", 8080, b"/a%2Fb/%C3%A9?x=1"))
        await response.aclose()
    scope = scopes[0]
    assert scope["path"] == "/a/b/é"
    assert scope["raw_path"] == b"/a%2Fb/%C3%A9"
    assert scope["query_string"] == b"x=1"
    assert scope["server"] == ("svc.internal", 8080)
    assert scope["client"] == ("10.1.2.3", 4567)


async def test_asgi_engine_streams_the_response_as_the_app_sends_it() -> None:
    more = anyio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"one", "more_body": True})
        await more.wait()
        await send({"type": "http.response.body", "body": b"two"})

    async with ASGIEngine(app) as engine:
        with anyio.fail_after(5):
            response = await engine.send(_request("u", 80))
            stream = aiter(response.stream)
            assert await anext(stream) == b"one"
            more.set()
            assert await anext(stream) == b"two"
            await response.aclose()


async def test_asgi_engine_streams_the_request_body_to_the_app() -> None:
    got_first = anyio.Event()
    received: list[bytes] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            received.append(message.get("body", b""))
            if message.get("body"):
                got_first.set()
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def body() -> AsyncIterator[bytes]:
        yield b"first"
        await got_first.wait()
        yield b"second"

    async with ASGIEngine(app) as engine:
        with anyio.fail_after(5):
            response = await engine.send(_request("u", 80, method="POST", body=body()))
            await response.aclose()
    assert b"".join(received) == b"firstsecond"


async def test_asgi_engine_app_exception_after_the_head_truncates_the_stream() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise RuntimeError("boom")

    async with ASGIEngine(app) as engine:
        response = await engine.send(_request("u", 80))
        try:
            with pytest.raises(UpstreamProtocolError):
                await response.read()
        finally:
            await response.aclose()


async def test_asgi_engine_closing_early_cancels_the_app() -> None:
    cancelled = anyio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            while True:
                await send({"type": "http.response.body", "body": b"x", "more_body": True})
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise

    async with ASGIEngine(app) as engine:
        with anyio.fail_after(5):
            response = await engine.send(_request("u", 80))
            await anext(aiter(response.stream))
            await response.aclose()
            await cancelled.wait()


async def test_asgi_engine_times_out_a_slow_body_chunk() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x", "more_body": True})
        await anyio.sleep_forever()

    async with ASGIEngine(app) as engine:
        with anyio.fail_after(5):
            response = await engine.send(_request("u", 80, read_timeout=0.1))
            try:
                with pytest.raises(UpstreamTimeout):
                    await response.read()
            finally:
                await response.aclose()


# -- MockEngine ----------------------------------------------------------------------------


async def test_mock_engine_reads_the_body_before_calling_the_handler() -> None:
    engine = MockEngine(lambda request: UpstreamResponse(200, content=request.content or b""))
    response = await engine.send(_request("u", 80, method="POST", body=chunks(b"a", b"b")))
    assert await response.read() == b"ab"
    assert engine.requests[0].content == b"ab"


async def test_mock_engine_accepts_async_handlers_and_passes_their_errors() -> None:
    async def handler(request: UpstreamRequest) -> UpstreamResponse:
        if request.target == b"/fail":
            raise UpstreamConnectError("refused by the test")
        return UpstreamResponse(201)

    engine = MockEngine(handler)
    assert (await engine.send(_request("u", 80))).status_code == 201
    with pytest.raises(UpstreamConnectError):
        await engine.send(_request("u", 80, b"/fail"))
    assert [r.target for r in engine.requests] == [b"/", b"/fail"]


async def test_the_base_engine_says_what_to_implement() -> None:
    with pytest.raises(NotImplementedError, match="UpstreamRequest"):
        await Engine().send(_request("u", 80))


def test_upstream_request_url_brackets_ipv6_and_omits_default_ports() -> None:
    assert _request("::1", 80).url == "http://[::1]/"
    assert _request("::1", 8080).url == "http://[::1]:8080/"
    assert _request("example.com", 80, b"/a?b").url == "http://example.com/a?b"


async def test_fault_servers_are_usable_standalone() -> None:
    # The RawServer's default answer can itself be a fault (used by the proxy tests).
    with RawServer(default=Fault.RESET) as server:
        async with HttpxEngine() as engine:
            with pytest.raises(UpstreamProtocolError):
                await engine.send(_request(server.host, server.port))
