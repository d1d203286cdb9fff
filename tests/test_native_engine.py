"""NativeEngine: the engine conformance suite on both parsers (httptools and h11), and what
is particular to a pooling HTTP/1.1 client: keep-alive, stale connections, limits, expiry,
framing, early answers, TLS, backpressure.

Every test runs on both transports on asyncio (the asyncio.Protocol fast path, the default,
and anyio streams, forced through PYGATEWAY_NATIVE_TRANSPORT), and on trio (anyio streams).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from engine_conformance import EngineConformance, Harness, chunks
from test_engines import TLSServer, certificate
from test_upstream_tls import PKI, pki, serve_tls
from upstreams import Fault, RawServer, Reply, unaccepting_port, wait_until

from pygateway import (
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from pygateway.engines import NativeEngine, UpstreamRequest

pytestmark = pytest.mark.servers

__all__ = ["certificate", "pki"]  # fixtures shared with other modules

PARSERS = ["httptools", "h11"]
TRANSPORT = "PYGATEWAY_NATIVE_TRANSPORT"
STREAMS = "asyncio+anyio-streams"


@pytest.fixture(params=["asyncio", STREAMS, "trio"])
def anyio_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """On asyncio, both transports: the asyncio.Protocol fast path (the default) and anyio
    streams (forced through PYGATEWAY_NATIVE_TRANSPORT). Trio always runs on anyio streams."""
    if request.param == STREAMS:
        monkeypatch.setenv(TRANSPORT, "anyio")
        return "asyncio"
    monkeypatch.delenv(TRANSPORT, raising=False)
    return str(request.param)


def _skip_h11_twice() -> None:
    if os.environ.get(TRANSPORT) == "anyio":
        pytest.skip("h11 always runs on anyio streams: the asyncio run covers it")


class TestNativeEngineHttptools(EngineConformance):
    parser = "httptools"

    @pytest.fixture
    async def harness(
        self, raw_server: RawServer, closed_port: int, anyio_backend: str
    ) -> AsyncIterator[Harness]:
        if self.parser == "h11":
            _skip_h11_twice()
        raw_server.reset()
        async with NativeEngine(parser=self.parser) as engine:
            yield Harness(
                engine,
                raw_server,
                raw_server.host,
                raw_server.port,
                wire=True,
                faults=True,
                refused=("127.0.0.1", closed_port),
            )


class TestNativeEngineH11(TestNativeEngineHttptools):
    parser = "h11"


@pytest.fixture(params=PARSERS)
def parser(request: pytest.FixtureRequest, anyio_backend: str) -> str:
    if request.param == "h11":
        _skip_h11_twice()
    return str(request.param)


def _request(host: str, port: int, target: bytes = b"/", **kwargs: Any) -> UpstreamRequest:
    return UpstreamRequest(
        method=kwargs.pop("method", "GET"),
        scheme=kwargs.pop("scheme", "http"),
        host=host,
        port=port,
        target=target,
        headers=kwargs.pop("headers", [(b"host", b"upstream.test")]),
        connect_timeout=kwargs.pop("connect_timeout", 5.0),
        read_timeout=kwargs.pop("read_timeout", 5.0),
        write_timeout=kwargs.pop("write_timeout", 5.0),
        **kwargs,
    )


async def _get(engine: NativeEngine, request: UpstreamRequest) -> tuple[int, bytes]:
    with anyio.fail_after(10):
        response = await engine.send(request)
        try:
            return response.status_code, await response.read()
        finally:
            await response.aclose()


# -- a socket server scripted per connection -----------------------------------------------


class ScriptedServer:
    """127.0.0.1; each connection is given to `handler(conn, index)` in its own thread."""

    def __init__(self, handler: Callable[[socket.socket, int], None]) -> None:
        self.handler = handler
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.connections = 0
        self.finished = threading.Semaphore(0)  # released as each handler returns
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> ScriptedServer:
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sock in (self.sock, *self._conns):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(5)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            self._conns.append(conn)
            thread = threading.Thread(target=self._run, args=(conn, self.connections))
            thread.daemon = True
            thread.start()
            self._threads.append(thread)

    def _run(self, conn: socket.socket, index: int) -> None:
        try:
            conn.settimeout(5)
            self.handler(conn, index)
        except OSError:
            pass
        finally:
            conn.close()
            self.finished.release()


def read_head(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


# -- connections and pooling ---------------------------------------------------------------


async def test_a_kept_alive_connection_is_reused(raw_server: RawServer, parser: str) -> None:
    raw_server.reset()
    async with NativeEngine(parser=parser) as engine:
        before = raw_server.connections
        for _ in range(3):
            assert await _get(engine, _request(raw_server.host, raw_server.port)) == (200, b"ok")
    assert raw_server.connections == before + 1


async def test_the_http_version_is_reported(parser: str) -> None:
    def answer(conn: socket.socket, index: int) -> None:
        read_head(conn)
        conn.sendall(b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok")

    with ScriptedServer(answer) as server:
        async with NativeEngine(parser=parser) as engine:
            response = await engine.send(_request("127.0.0.1", server.port))
            await response.aclose()
    assert response.http_version == "1.0"


def _closes_on_its_second_request(conn: socket.socket, index: int) -> None:
    """The first connection answers once, then closes when the next request comes (an
    upstream closing an idle connection just as it is reused); later ones always answer."""
    read_head(conn)
    conn.sendall(OK)
    while True:
        data = conn.recv(65536)
        if index == 1 or not data:
            return
        conn.sendall(OK)


async def test_a_stale_pooled_connection_is_retried_on_a_new_one(parser: str) -> None:
    with ScriptedServer(_closes_on_its_second_request) as server:
        async with NativeEngine(parser=parser) as engine:
            for _ in range(3):
                assert await _get(engine, _request("127.0.0.1", server.port)) == (200, b"ok")
    assert server.connections == 2


async def test_a_streamed_body_is_not_sent_twice_on_a_stale_connection() -> None:
    with ScriptedServer(_closes_on_its_second_request) as server:
        async with NativeEngine() as engine:
            assert await _get(engine, _request("127.0.0.1", server.port)) == (200, b"ok")
            post = _request("127.0.0.1", server.port, method="POST", body=chunks(b"once"))
            with pytest.raises(UpstreamProtocolError, match="kept-alive"):
                await _get(engine, post)
            assert await _get(engine, _request("127.0.0.1", server.port)) == (200, b"ok")
    assert server.connections == 2


async def test_a_streamed_body_is_not_sent_on_a_connection_closed_while_idle(
    parser: str,
) -> None:
    received: list[bytes] = []

    def once(conn: socket.socket, index: int) -> None:
        data = read_head(conn)
        while data.startswith(b"POST") and not data.endswith(b"0\r\n\r\n"):
            data += conn.recv(65536)
        received.append(data)
        conn.sendall(OK)

    with ScriptedServer(once) as server:
        async with NativeEngine(parser=parser) as engine:
            assert await _get(engine, _request("127.0.0.1", server.port)) == (200, b"ok")
            await anyio.to_thread.run_sync(server.finished.acquire)
            # A body that cannot be sent twice: the dead connection is noticed beforehand.
            post = _request("127.0.0.1", server.port, method="POST", body=chunks(b"once"))
            assert await _get(engine, post) == (200, b"ok")
    assert server.connections == 2
    assert received[-1].endswith(b"4\r\nonce\r\n0\r\n\r\n")


async def test_the_pool_limit_holds_under_concurrency(raw_server: RawServer, parser: str) -> None:
    raw_server.reset()
    statuses: list[int] = []

    async def slow_body() -> AsyncIterator[bytes]:
        await anyio.sleep(0.02)  # keeps each connection busy while the others wait
        yield b"x"

    async def one(engine: NativeEngine) -> None:
        request = _request(raw_server.host, raw_server.port, method="POST", body=slow_body())
        statuses.append((await _get(engine, request))[0])

    async with NativeEngine(parser=parser, max_connections=2) as engine:
        before = raw_server.connections
        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(one, engine)
    assert statuses == [200] * 10
    assert raw_server.connections == before + 2


async def test_a_request_waiting_too_long_for_a_busy_pool_times_out(
    raw_server: RawServer,
) -> None:
    raw_server.reset()
    async with NativeEngine(max_connections=1) as engine:
        busy = await engine.send(_request(raw_server.host, raw_server.port))
        try:
            with pytest.raises(UpstreamTimeout, match="pool"):
                await engine.send(_request(raw_server.host, raw_server.port, connect_timeout=0.05))
        finally:
            await busy.aclose()
        assert await _get(engine, _request(raw_server.host, raw_server.port)) == (200, b"ok")


async def test_idle_connections_expire(raw_server: RawServer) -> None:
    raw_server.reset()
    async with NativeEngine(keepalive_expiry=0.05) as engine:
        before = raw_server.connections
        await _get(engine, _request(raw_server.host, raw_server.port))
        await anyio.sleep(0.1)
        await _get(engine, _request(raw_server.host, raw_server.port))
    assert raw_server.connections == before + 2


async def test_max_keepalive_zero_keeps_no_connection(raw_server: RawServer) -> None:
    raw_server.reset()
    async with NativeEngine(max_keepalive=0) as engine:
        before = raw_server.connections
        for _ in range(2):
            await _get(engine, _request(raw_server.host, raw_server.port))
    assert raw_server.connections == before + 2


async def test_a_response_not_read_to_the_end_closes_its_connection(
    raw_server: RawServer, parser: str
) -> None:
    raw_server.reset()
    raw_server.reply(Reply(chunks=[b"x" * 2_000_000]))
    async with NativeEngine(parser=parser) as engine:
        before = raw_server.connections
        with anyio.fail_after(10):
            response = await engine.send(_request(raw_server.host, raw_server.port))
            assert len(await anext(aiter(response.stream))) > 0
            await response.aclose()
        # The rest of that body is not read by the next request: it gets a new connection.
        assert await _get(engine, _request(raw_server.host, raw_server.port)) == (200, b"ok")
    assert raw_server.connections == before + 2


async def test_a_response_ended_by_closing_is_not_pooled(
    raw_server: RawServer, parser: str
) -> None:
    raw_server.reset()
    raw_server.reply(Reply(chunks=[b"bye"], length=False))
    async with NativeEngine(parser=parser) as engine:
        before = raw_server.connections
        assert await _get(engine, _request(raw_server.host, raw_server.port)) == (200, b"bye")
        assert await _get(engine, _request(raw_server.host, raw_server.port)) == (200, b"ok")
    assert raw_server.connections == before + 2


async def test_a_connection_close_answer_is_not_pooled(parser: str) -> None:
    def answer(conn: socket.socket, index: int) -> None:
        read_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok")
        with contextlib.suppress(OSError):
            conn.recv(1)  # holds the connection open: only the header says it is done

    with ScriptedServer(answer) as server:
        async with NativeEngine(parser=parser) as engine:
            for _ in range(2):
                assert await _get(engine, _request("127.0.0.1", server.port)) == (200, b"ok")
    assert server.connections == 2


async def test_chunked_head_204_and_304_answers_leave_the_connection_reusable(
    raw_server: RawServer, parser: str
) -> None:
    raw_server.reset()
    raw_server.reply(
        Reply(chunks=[b"a", b"b"], chunked=True),
        Reply(chunks=[b"x" * 100]),  # to a HEAD
        Reply(204),
        Reply(304, [(b"etag", b'"1"')]),
    )
    async with NativeEngine(parser=parser) as engine:
        before = raw_server.connections
        address = (raw_server.host, raw_server.port)
        assert await _get(engine, _request(*address)) == (200, b"ab")
        assert await _get(engine, _request(*address, method="HEAD")) == (200, b"")
        assert await _get(engine, _request(*address)) == (204, b"")
        assert await _get(engine, _request(*address)) == (304, b"")
        assert await _get(engine, _request(*address)) == (200, b"ok")
    assert raw_server.connections == before + 1


@pytest.mark.parametrize("late", [False, True], ids=["same-packet", "late"])
async def test_a_head_answer_followed_by_a_body_is_not_reused(parser: str, late: bool) -> None:
    sent = threading.Event()

    def answer(conn: socket.socket, index: int) -> None:
        while True:
            head = read_head(conn)
            if not head.startswith(b"HEAD"):
                conn.sendall(OK)
                continue
            # Wrongly followed by a body: with the head, or once the engine has the head.
            body = b"" if late else b"hello"
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n" + body)
            if late:
                time.sleep(0.05)
                conn.sendall(b"hello")
            sent.set()

    with ScriptedServer(answer) as server:
        async with NativeEngine(parser=parser) as engine:
            head = _request("127.0.0.1", server.port, method="HEAD")
            assert await _get(engine, head) == (200, b"")
            await anyio.to_thread.run_sync(sent.wait, 5)
            # Had that connection been reused, "hello" would be read as this answer's start.
            assert await _get(engine, _request("127.0.0.1", server.port)) == (200, b"ok")
    assert server.connections == 2


async def test_informational_responses_are_skipped(parser: str) -> None:
    def answer(conn: socket.socket, index: int) -> None:
        while True:
            read_head(conn)
            conn.sendall(
                b"HTTP/1.1 100 Continue\r\n\r\n"
                b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>\r\n\r\n"
                b"HTTP/1.1 201 Created\r\nx-final: yes\r\ncontent-length: 4\r\n\r\ndone"
            )

    with ScriptedServer(answer) as server:
        async with NativeEngine(parser=parser) as engine:
            for _ in range(2):
                response = await engine.send(_request("127.0.0.1", server.port))
                assert await response.read() == b"done"
                await response.aclose()
                assert response.status_code == 201
                assert response.headers == [(b"x-final", b"yes"), (b"content-length", b"4")]
    assert server.connections == 1


def _refuse(conn: socket.socket, index: int) -> None:
    read_head(conn)
    conn.sendall(b"HTTP/1.1 413 Too Large\r\nconnection: close\r\ncontent-length: 3\r\n\r\nbig")
    conn.shutdown(socket.SHUT_WR)


async def test_an_answer_sent_before_the_body_is_taken_is_returned(parser: str) -> None:
    closed = anyio.Event()

    async def uploading() -> AsyncIterator[bytes]:
        try:
            while True:
                await anyio.sleep(0.005)  # a client sending its body at its own pace
                yield b"x" * 1024
        finally:
            closed.set()

    with ScriptedServer(_refuse) as server:
        async with NativeEngine(parser=parser) as engine:
            post = _request("127.0.0.1", server.port, method="POST", body=uploading())
            assert await _get(engine, post) == (413, b"big")
    assert closed.is_set()


async def test_an_answer_sent_while_a_write_is_blocked_never_hangs(
    parser: str, anyio_backend: str
) -> None:
    # The upstream stops reading and closes while the engine waits for its buffers to
    # drain. trio still reads the 413 from the socket; asyncio's transport drops what it
    # had not read when the write fails (HttpxEngine too): then it is a 502.
    closed = anyio.Event()

    async def endless() -> AsyncIterator[bytes]:
        try:
            while True:
                await anyio.lowlevel.checkpoint()
                yield b"x" * 65536
        finally:
            closed.set()

    with ScriptedServer(_refuse) as server:
        async with NativeEngine(parser=parser) as engine:
            post = _request("127.0.0.1", server.port, method="POST", body=endless())
            try:
                assert await _get(engine, post) == (413, b"big")
            except UpstreamProtocolError:
                assert anyio_backend == "asyncio"
    assert closed.is_set()


async def test_a_request_body_is_sent_as_it_comes(raw_server: RawServer, parser: str) -> None:
    # The second chunk is produced only once the upstream holds the first.
    raw_server.reset()

    async def body() -> AsyncIterator[bytes]:
        yield b"first"
        await wait_until(lambda: b"first" in raw_server.partial)
        yield b"second"

    async with NativeEngine(parser=parser) as engine:
        post = _request(raw_server.host, raw_server.port, b"/slow", method="POST", body=body())
        assert await _get(engine, post) == (200, b"ok")
    assert raw_server.received[-1].body == b"firstsecond"
    assert raw_server.received[-1].framing == "chunked"


async def test_a_response_body_is_relayed_as_it_comes(parser: str) -> None:
    more = threading.Event()

    def answer(conn: socket.socket, index: int) -> None:
        read_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\none\r\n")
        more.wait(5)
        conn.sendall(b"3\r\ntwo\r\n0\r\n\r\n")

    with ScriptedServer(answer) as server:
        async with NativeEngine(parser=parser) as engine:
            with anyio.fail_after(5):
                response = await engine.send(_request("127.0.0.1", server.port))
                stream = aiter(response.stream)
                assert await anext(stream) == b"one"
                more.set()
                assert await anext(stream) == b"two"
                await response.aclose()


async def test_a_stalled_body_is_an_upstream_timeout(parser: str) -> None:
    def stall(conn: socket.socket, index: int) -> None:
        read_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
        with contextlib.suppress(OSError):
            conn.recv(1)

    with ScriptedServer(stall) as server:
        async with NativeEngine(parser=parser) as engine:
            with anyio.fail_after(5):
                response = await engine.send(_request("127.0.0.1", server.port, read_timeout=0.1))
                try:
                    with pytest.raises(UpstreamTimeout):
                        await response.read()
                finally:
                    await response.aclose()


@pytest.mark.parametrize("size", [5, 100_000])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_body_read_beforehand_is_sent_whole(
    raw_server: RawServer, size: int, framing: str
) -> None:
    raw_server.reset()
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    headers = [(b"host", b"u")]
    if framing == "content-length":
        headers.append((b"content-length", b"%d" % size))
    post = _request(
        raw_server.host, raw_server.port, method="POST", headers=headers, body=chunks(data)
    )
    assert await post.read() == data  # now held in request.content
    async with NativeEngine() as engine:
        assert await _get(engine, post) == (200, b"ok")
    assert raw_server.received[-1].body == data
    assert raw_server.received[-1].framing == framing


async def test_a_body_unlike_its_content_length_is_refused(raw_server: RawServer) -> None:
    raw_server.reset()
    headers = [(b"host", b"u"), (b"content-length", b"10")]
    async with NativeEngine() as engine:
        for parts in ([b"short"], [b"much too long"]):
            post = _request(
                raw_server.host,
                raw_server.port,
                method="POST",
                headers=headers,
                body=chunks(*parts),
            )
            with pytest.raises(UpstreamProtocolError, match="content-length"):
                await engine.send(post)
        assert await _get(engine, _request(raw_server.host, raw_server.port)) == (200, b"ok")


async def test_a_header_that_would_smuggle_a_request_is_refused(raw_server: RawServer) -> None:
    raw_server.reset()
    headers = [(b"host", b"u"), (b"x-evil", b"1\r\n\r\nGET /smuggled HTTP/1.1")]
    async with NativeEngine() as engine:
        with pytest.raises(UpstreamProtocolError):
            await engine.send(_request(raw_server.host, raw_server.port, headers=headers))
        for method in ("GET / HTTP/1.1\r\nx:", "GET\r\n"):
            with pytest.raises(UpstreamProtocolError, match="method"):
                await engine.send(_request(raw_server.host, raw_server.port, method=method))
        with pytest.raises(UpstreamProtocolError):
            await engine.send(_request(raw_server.host, raw_server.port, b"/a\r\nx: y"))
    assert raw_server.received == []


async def test_a_refused_port_is_a_connect_error(closed_port: int) -> None:
    async with NativeEngine() as engine:
        with pytest.raises(UpstreamConnectError) as caught:
            await engine.send(_request("127.0.0.1", closed_port))
    assert not isinstance(caught.value, UpstreamTimeout)
    assert caught.value.status_code == 502


async def test_an_unknown_host_is_a_connect_error() -> None:
    async with NativeEngine() as engine:
        with anyio.fail_after(10), pytest.raises(UpstreamConnectError):
            await engine.send(_request("no-such-host.invalid", 80))


async def test_a_connect_that_never_completes_times_out() -> None:
    with unaccepting_port() as port:
        if port is None:
            pytest.skip("this platform completes connects to a full accept queue")
        async with NativeEngine() as engine:
            with anyio.fail_after(5), pytest.raises(UpstreamConnectTimeout) as caught:
                await engine.send(_request("127.0.0.1", port, connect_timeout=0.2))
    assert caught.value.status_code == 504


async def test_the_target_is_sent_exactly(raw_server: RawServer, parser: str) -> None:
    raw_server.reset()
    target = b"/x/../y/%zz?q=%22a%22&r=<b>"
    async with NativeEngine(parser=parser) as engine:
        await _get(engine, _request(raw_server.host, raw_server.port, target))
    assert (
        raw_server.received[-1].head
        == b"GET " + target + b" HTTP/1.1\r\nhost: upstream.test\r\n\r\n"
    )


async def test_the_engine_can_be_closed_and_used_again(raw_server: RawServer) -> None:
    engine = NativeEngine()
    for _ in range(2):
        assert await _get(engine, _request(raw_server.host, raw_server.port)) == (200, b"ok")
        await engine.aclose()


async def test_a_response_closed_after_the_engine_closes_its_connection(
    raw_server: RawServer,
) -> None:
    raw_server.reset()
    engine = NativeEngine()
    before = raw_server.connections
    response = await engine.send(_request(raw_server.host, raw_server.port))
    await engine.aclose()
    assert await response.read() == b"ok"
    await response.aclose()  # not pooled in a closed engine: closed
    assert await _get(engine, _request(raw_server.host, raw_server.port)) == (200, b"ok")
    await engine.aclose()
    assert raw_server.connections == before + 2


async def test_many_concurrent_requests_all_succeed(raw_server: RawServer, parser: str) -> None:
    raw_server.reset()
    bodies: list[bytes] = []

    async def one(engine: NativeEngine, i: int) -> None:
        _, body = await _get(engine, _request(raw_server.host, raw_server.port, b"/%d" % i))
        bodies.append(body)

    engine = NativeEngine(parser=parser, max_connections=10)
    async with engine, anyio.create_task_group() as tg:
        for i in range(100):
            tg.start_soon(one, engine, i)
    assert bodies == [b"ok"] * 100
    assert sorted(r.target for r in raw_server.received) == sorted(b"/%d" % i for i in range(100))


def test_the_options_are_checked() -> None:
    with pytest.raises(ValueError, match="parser"):
        NativeEngine(parser="llhttp")
    with pytest.raises(ValueError, match="max_connections"):
        NativeEngine(max_connections=0)
    assert NativeEngine().parser == "httptools"  # installed with the test extra
    assert NativeEngine(parser="h11").parser == "h11"


async def test_failures_leave_the_pool_usable(raw_server: RawServer, parser: str) -> None:
    raw_server.reset()
    async with NativeEngine(parser=parser, max_connections=1) as engine:
        for fault in (Fault.RESET, Fault.MALFORMED, Fault.TRUNCATED):
            raw_server.reply(fault)
            with anyio.fail_after(5), pytest.raises(UpstreamError):
                await _get(engine, _request(raw_server.host, raw_server.port))
        # With one connection allowed, a leaked slot would make this wait forever.
        assert await _get(engine, _request(raw_server.host, raw_server.port)) == (200, b"ok")


# -- TLS -----------------------------------------------------------------------------------


def _tls_request(port: int, server_name: str, *, verify: bool, **kwargs: Any) -> UpstreamRequest:
    return _request(
        "127.0.0.1",
        port,
        scheme="https",
        headers=[(b"host", server_name.encode())],
        server_name=server_name,
        tls_verify=verify,
        **kwargs,
    )


async def test_a_tls_connection_is_opened_per_server_name(
    certificate: tuple[Path, Path], parser: str
) -> None:
    with TLSServer(*certificate) as server:
        async with NativeEngine(parser=parser) as engine:
            for name in ("a.test", "b.test", "a.test", "b.test"):
                request = _tls_request(server.port, name, verify=False)
                assert await _get(engine, request) == (200, b"ok")
    # Same address, two names: each name got its own handshake, then its connection reused.
    assert server.server_names == ["a.test", "b.test"]


async def test_the_certificate_is_checked_against_the_server_name(
    certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))  # trust the test certificate
    with TLSServer(*certificate) as server:
        async with NativeEngine() as engine:
            assert await _get(engine, _tls_request(server.port, "a.test", verify=True)) == (
                200,
                b"ok",
            )
            with pytest.raises(UpstreamConnectError, match="certificate"):
                await engine.send(_tls_request(server.port, "b.test", verify=True))


async def test_the_ca_certificates_given_replace_the_system_store(pki: PKI) -> None:
    with serve_tls(pki, pki.server) as server:
        async with NativeEngine() as engine:
            trusted = _tls_request(
                server.port, "localhost", verify=True, ca_certificates=(pki.ca.cert,)
            )
            assert (await _get(engine, trusted))[0] == 200
            other = _tls_request(
                server.port, "localhost", verify=True, ca_certificates=(pki.other_ca.cert,)
            )
            with pytest.raises(UpstreamConnectError, match="certificate"):
                await engine.send(other)


async def test_a_client_certificate_is_presented_to_an_mtls_upstream(pki: PKI, parser: str) -> None:
    with serve_tls(pki, pki.server, client_ca=pki.ca) as server:
        async with NativeEngine(parser=parser) as engine:
            ca = (pki.ca.cert,)
            for client in (pki.client_a, pki.client_b):
                request = _tls_request(
                    server.port,
                    "localhost",
                    verify=True,
                    ca_certificates=ca,
                    client_certificate=(client.cert, client.key),
                )
                _, body = await _get(engine, request)
                assert (
                    json.loads(body)["client_subject"]
                    == client.certificate.subject.rfc4514_string()[3:]
                )
            without = _tls_request(server.port, "localhost", verify=True, ca_certificates=ca)
            with anyio.fail_after(5), pytest.raises(UpstreamError):
                await _get(engine, without)


# -- transports and backpressure -----------------------------------------------------------


async def test_connections_are_asyncio_protocols_on_asyncio_unless_anyio_is_asked(
    raw_server: RawServer, anyio_backend: str
) -> None:
    raw_server.reset()
    for engine, fast in [
        (NativeEngine(), anyio_backend == "asyncio" and os.environ.get(TRANSPORT) != "anyio"),
        (NativeEngine(transport="anyio"), False),
        (NativeEngine(parser="h11"), False),
    ]:
        async with engine:
            assert await _get(engine, _request(raw_server.host, raw_server.port)) == (200, b"ok")
            (conn,) = [conn for pool in engine._pools.values() for conn in pool.idle]
            assert (conn.proto is not None) == fast, engine


def test_the_transport_options_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="transport"):
        NativeEngine(transport="uvloop")
    with pytest.raises(ValueError, match="httptools"):
        NativeEngine(parser="h11", transport="asyncio")
    monkeypatch.delenv(TRANSPORT, raising=False)
    assert NativeEngine().transport == "asyncio"
    assert NativeEngine(parser="h11").transport == "anyio"
    monkeypatch.setenv(TRANSPORT, "anyio")
    assert NativeEngine().transport == "anyio"
    assert NativeEngine(transport="asyncio").transport == "asyncio"  # the option wins
    monkeypatch.setenv(TRANSPORT, "asyncio")
    assert NativeEngine(parser="h11").transport == "anyio"  # no fast path for h11


class _Firehose:
    """Answers with a body far bigger than any buffer, counting what it could send, and
    stops once a send has been blocked for a while (the client stopped reading)."""

    SIZE = 64 * 1024 * 1024

    def __init__(self) -> None:
        self.sent = 0
        self.blocked = threading.Event()

    def __call__(self, conn: socket.socket, index: int) -> None:
        read_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % self.SIZE)
        conn.settimeout(0.3)
        piece = b"x" * 65536
        try:
            while self.sent < self.SIZE:
                conn.sendall(piece)
                self.sent += len(piece)
        except TimeoutError:
            self.blocked.set()


async def test_a_response_body_not_consumed_stops_the_upstream(parser: str) -> None:
    firehose = _Firehose()
    with ScriptedServer(firehose) as server:
        async with NativeEngine(parser=parser) as engine:
            response = await engine.send(_request("127.0.0.1", server.port))
            try:  # the body is not read
                await wait_until(firehose.blocked.is_set)
            finally:
                await response.aclose()
    # Socket buffers hold a few MiB at most: the engine did not take the rest in memory.
    assert firehose.sent < 16 * 1024 * 1024


async def test_a_request_body_the_upstream_does_not_take_is_a_write_timeout(
    parser: str,
) -> None:
    produced = 0
    done = threading.Event()

    async def endless() -> AsyncIterator[bytes]:
        nonlocal produced
        while True:
            await anyio.lowlevel.checkpoint()
            produced += 65536
            yield b"x" * 65536

    def never_reads(conn: socket.socket, index: int) -> None:
        read_head(conn)
        done.wait(10)  # holds the connection, reading nothing more

    with ScriptedServer(never_reads) as server:
        async with NativeEngine(parser=parser) as engine:
            post = _request(
                "127.0.0.1", server.port, method="POST", body=endless(), write_timeout=0.3
            )
            try:
                with anyio.fail_after(10), pytest.raises(UpstreamTimeout, match="write"):
                    await engine.send(post)
            finally:
                done.set()
    assert produced < 32 * 1024 * 1024  # waited for the upstream rather than buffering


async def test_a_large_body_is_handed_on_in_pieces_of_at_most_64_kib(parser: str) -> None:
    size = 4 * 1024 * 1024

    def answer(conn: socket.socket, index: int) -> None:
        read_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size + b"x" * size)

    with ScriptedServer(answer) as server:
        async with NativeEngine(parser=parser) as engine:
            response = await engine.send(_request("127.0.0.1", server.port))
            try:
                pieces = [len(chunk) async for chunk in response.stream]
            finally:
                await response.aclose()
    assert sum(pieces) == size
    assert max(pieces) <= 65536
