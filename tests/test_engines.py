"""The engine conformance suite (tests/engine_conformance.py) for every bundled engine, and
what is particular to each: HttpxEngine against real sockets, ASGIEngine in-process."""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
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
    unaccepting_port,
    wait_until,
)

from pygateway import (
    Gateway,
    Service,
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from pygateway import Route as GwRoute
from pygateway.engines import (
    ASGIEngine,
    Engine,
    HttpxEngine,
    MockEngine,
    UpstreamRequest,
    UpstreamResponse,
)
from pygateway.testing import client

pytestmark = pytest.mark.servers


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


class TLSServer:
    """HTTPS on 127.0.0.1 (a certificate for `a.test` only), recording each handshake's SNI."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self.context.sni_callback = self._sni
        self.server_names: list[str | None] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.threads: list[threading.Thread] = []
        self.conns: list[socket.socket] = []

    def _sni(self, conn: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> None:
        self.server_names.append(name)

    def __enter__(self) -> TLSServer:
        self.threads.append(threading.Thread(target=self._accept, daemon=True))
        self.threads[0].start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sock in (self.sock, *self.conns):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the threads blocked on it
            sock.close()
        for thread in self.threads:
            thread.join(5)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            with self.context.wrap_socket(conn, server_side=True) as tls:
                data = b""
                while True:
                    chunk = tls.recv(4096)
                    if not chunk:
                        return
                    data += chunk
                    while b"\r\n\r\n" in data:
                        _, data = data.split(b"\r\n\r\n", 1)
                        tls.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        except (OSError, ssl.SSLError):
            return


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate (its own CA) for the name `a.test`."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
            "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out", str(cert),
            "-days", "2", "-subj", "/CN=a.test", "-addext", "subjectAltName=DNS:a.test",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def _tls_request(port: int, server_name: str, *, verify: bool) -> UpstreamRequest:
    return UpstreamRequest(
        method="GET",
        scheme="https",
        host="127.0.0.1",
        port=port,
        target=b"/",
        headers=[(b"host", server_name.encode())],
        server_name=server_name,
        tls_verify=verify,
        connect_timeout=5,
        read_timeout=5,
    )


async def test_httpx_engine_opens_a_tls_connection_per_server_name(
    certificate: tuple[Path, Path],
) -> None:
    with TLSServer(*certificate) as server:
        async with HttpxEngine() as engine:
            for name in ("a.test", "b.test", "a.test", "b.test"):
                response = await engine.send(_tls_request(server.port, name, verify=False))
                assert await response.read() == b"ok"
                await response.aclose()
    # Same address, two names: each name got its own handshake, then its connection reused.
    assert server.server_names == ["a.test", "b.test"]


async def test_httpx_engine_checks_the_certificate_against_the_server_name(
    certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))  # trust the test certificate
    with TLSServer(*certificate) as server:
        async with HttpxEngine() as engine:
            response = await engine.send(_tls_request(server.port, "a.test", verify=True))
            assert await response.read() == b"ok"
            await response.aclose()
            # A connection to the same address verified for a.test is no proof for b.test.
            with pytest.raises(UpstreamConnectError, match="certificate"):
                await engine.send(_tls_request(server.port, "b.test", verify=True))


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


async def test_asgi_engine_lets_the_app_finish_after_its_last_body_message() -> None:
    finished: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})
        for _ in range(3):  # work after the response, as a background task does
            await anyio.lowlevel.checkpoint()
        finished.append("after the response")

    async with ASGIEngine(app) as engine:
        with anyio.fail_after(5):
            response = await engine.send(_request("u", 80))
            assert await response.read() == b"done"
            await response.aclose()
    assert finished == ["after the response"]


async def test_asgi_engine_runs_a_starlette_background_task_to_completion() -> None:
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    ran: list[str] = []

    async def job() -> None:
        await anyio.sleep(0.01)  # still running when the gateway has relayed the response
        ran.append("job")

    async def endpoint(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok", background=BackgroundTask(job))

    app = Starlette(routes=[Route("/", endpoint)])
    gateway = Gateway(
        services=[Service(url="http://app.internal", routes=[GwRoute(paths=["/"])])],
        engine=ASGIEngine(app),
    )
    async with client(gateway) as http:
        response = await http.get("/")
    assert (response.status_code, response.text) == (200, "ok")
    assert ran == ["job"]


async def test_asgi_engine_an_app_failing_after_its_response_leaves_the_response_whole(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"a", b"b", b"c"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"d"})
        raise RuntimeError("background work failed")

    async with ASGIEngine(app) as engine:
        with anyio.fail_after(5):
            response = await engine.send(_request("u", 80))
            try:
                assert await response.read() == b"abcd"
            finally:
                await response.aclose()
    assert any("after its response" in r.getMessage() for r in caplog.records)


async def test_asgi_engine_closes_a_request_body_the_app_left_unread() -> None:
    closed = anyio.Event()

    async def body() -> AsyncIterator[bytes]:
        try:
            yield b"first"
            yield b"second"
        finally:
            closed.set()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()  # one chunk, then answers without the rest
        await send({"type": "http.response.start", "status": 413, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async with ASGIEngine(app) as engine:
        with anyio.fail_after(5):
            response = await engine.send(_request("u", 80, method="POST", body=body()))
            assert response.status_code == 413
            assert not closed.is_set()
            await response.aclose()
    assert closed.is_set()


async def test_asgi_engine_answers_a_receive_after_the_response_with_a_disconnect() -> None:
    after: list[Any] = []

    async def body() -> AsyncIterator[bytes]:
        yield b"first"
        await anyio.sleep_forever()  # a client that never sends the rest
        yield b"never"  # pragma: no cover

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"early"})
        after.append(await receive())

    async with ASGIEngine(app) as engine:
        with anyio.fail_after(5):
            response = await engine.send(_request("u", 80, method="POST", body=body()))
            assert await response.read() == b"early"
            await response.aclose()
    assert after == [{"type": "http.disconnect"}]


async def test_asgi_engine_refuses_to_close_responses_out_of_order_and_stays_usable() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": scope["raw_path"]})

    async with ASGIEngine(app) as engine:
        with anyio.fail_after(5):
            first = await engine.send(_request("u", 80, b"/first"))
            second = await engine.send(_request("u", 80, b"/second"))
            with pytest.raises(RuntimeError, match="last-received first"):
                await first.aclose()
            # Nothing was closed: both still work, and closing in order is fine.
            assert await first.read() == b"/first"
            assert await second.read() == b"/second"
            await second.aclose()
            await first.aclose()
            await first.aclose()  # closing twice is harmless
            third = await engine.send(_request("u", 80, b"/third"))
            assert await third.read() == b"/third"
            await third.aclose()


async def test_asgi_engine_refuses_to_close_a_response_in_another_task() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    errors: list[BaseException] = []

    async def close_elsewhere(response: UpstreamResponse) -> None:
        try:
            await response.aclose()
        except RuntimeError as exc:
            errors.append(exc)

    async with ASGIEngine(app) as engine:
        with anyio.fail_after(5):
            response = await engine.send(_request("u", 80))
            async with anyio.create_task_group() as tg:
                tg.start_soon(close_elsewhere, response)
            assert [str(e) for e in errors] == [
                "an ASGIEngine response must be closed in the task that sent its request"
            ]
            assert await response.read() == b"ok"
            await response.aclose()


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
