"""What every engine must do, as a reusable test suite.

An engine is transparent (DESIGN.md, "Extension points"): it sends exactly the target and
headers it is given, adds nothing, keeps no cookies, follows no redirects, does not decode
bodies, and translates failures into `UpstreamConnectError` / `UpstreamTimeout` /
`UpstreamProtocolError`. To check an engine, subclass `EngineConformance` in a test module
and provide a `harness` fixture returning a `Harness`: the engine plus an upstream it can
reach that records what it receives and answers with scripted `Reply`s or `Fault`s.

    class TestMyEngine(EngineConformance):
        @pytest.fixture
        async def harness(self, raw_server):
            async with MyEngine() as engine:
                yield Harness(engine, raw_server, raw_server.host, raw_server.port, wire=True)

Cases that need something an upstream cannot show (wire framing for an in-process engine,
faults for a function) skip with the reason.
"""

from __future__ import annotations

import gzip
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import pytest
from upstreams import Fault, ReceivedRequest, Reply

from pygateway import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from pygateway.engines import Engine, UpstreamRequest, UpstreamResponse

__all__ = ["ASGIRecorder", "EngineConformance", "Harness", "MockRecorder", "Recorder"]

RawHeaders = list[tuple[bytes, bytes]]

# Request targets an engine must send byte for byte: dot segments, doubled and encoded
# slashes, lower-case and invalid escapes, odd query strings.
TARGETS = [
    b"/",
    b"/plain/path",
    b"/a/../b/./c",
    b"/a//b///c",
    b"/a%2Fb%2fc",
    b"/%7Euser/%e2%82%ac/%41",
    b"/q?a=1&a=2&b=%2F&c=%zz&d=a+b&e&=f",
    b"/q?x='\"{}|^`<>",
    b"/semi;colon=1/x?y=%20%2520",
    b"/p?",
]


class Recorder(Protocol):
    """An upstream that records requests and answers from a script."""

    received: list[ReceivedRequest]

    def reply(self, *answers: Reply | Fault) -> None: ...

    def reset(self) -> None: ...


@dataclass
class Harness:
    """An engine under test and an upstream it reaches at `host:port`.

    `wire`: the upstream sees real HTTP/1.1 bytes (framing, malformed responses, refused
    connections can be observed). `faults`: the upstream can hang, reset or cut a response.
    `refused`: an address whose connections are refused, when that means anything.
    """

    engine: Engine
    upstream: Recorder
    host: str
    port: int
    scheme: str = "http"
    wire: bool = False
    faults: bool = False
    refused: tuple[str, int] | None = None

    def request(
        self,
        target: bytes = b"/",
        *,
        method: str = "GET",
        headers: Iterable[tuple[bytes, bytes]] | None = None,
        body: AsyncIterator[bytes] | None = None,
        read_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        host: str | None = None,
        port: int | None = None,
    ) -> UpstreamRequest:
        return UpstreamRequest(
            method=method,
            scheme=self.scheme,
            host=host or self.host,
            port=port or self.port,
            target=target,
            headers=list(headers) if headers is not None else [(b"host", b"upstream.test")],
            body=body,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            write_timeout=5.0,
        )

    async def exchange(self, request: UpstreamRequest) -> tuple[UpstreamResponse, bytes]:
        """Send, read the whole body, close."""
        with anyio.fail_after(10):
            response = await self.engine.send(request)
            try:
                body = await response.read()
            finally:
                await response.aclose()
        return response, body


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        await anyio.lowlevel.checkpoint()
        yield part


async def drain(stream: AsyncIterable[bytes], into: list[bytes]) -> None:
    async for chunk in stream:
        into.append(chunk)


def _named(headers: RawHeaders, *names: bytes) -> RawHeaders:
    return [(k.lower(), v) for k, v in headers if k.lower() in names]


# -- in-process recorders (the counterparts of upstreams.RawServer) ------------------------


class _Script:
    def __init__(self) -> None:
        self.received: list[ReceivedRequest] = []
        self._queue: deque[Reply | Fault] = deque()

    def reply(self, *answers: Reply | Fault) -> None:
        self._queue.extend(answers)

    def reset(self) -> None:
        self._queue.clear()
        self.received.clear()

    def _next(self) -> Reply | Fault:
        return self._queue.popleft() if self._queue else Reply()


def _reply_headers(reply: Reply, method: str) -> tuple[RawHeaders, list[bytes]]:
    headers = list(reply.headers)
    content = [c for c in reply.chunks if c]
    if reply.length and not reply.chunked and reply.status not in (204, 304):
        headers.append((b"content-length", b"%d" % sum(len(c) for c in content)))
    if method == "HEAD" or reply.status in (204, 304):
        content = []
    return headers, content


class ASGIRecorder(_Script):
    """An ASGI app that records requests (target = raw_path + query) and plays the script.

    Faults: SILENT never answers, RESET raises before answering, MALFORMED returns without
    starting a response, TRUNCATED raises in the middle of the body.
    """

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        query = scope.get("query_string", b"")
        target = scope["raw_path"] + (b"?" + query if query else b"")
        headers = [(bytes(k), bytes(v)) for k, v in scope["headers"]]
        self.received.append(
            ReceivedRequest(scope["method"], target, headers, bytes(body), None, b"")
        )
        answer = self._next()
        if answer is Fault.SILENT:
            await anyio.sleep_forever()
        elif answer is Fault.RESET:
            raise ConnectionResetError("the test upstream reset the connection")
        elif answer is Fault.MALFORMED:
            return
        elif answer is Fault.TRUNCATED:
            start = [(b"content-length", b"100000")]
            await send({"type": "http.response.start", "status": 200, "headers": start})
            await send({"type": "http.response.body", "body": b"x" * 1000, "more_body": True})
            raise ConnectionResetError("the test upstream died mid-body")
        assert isinstance(answer, Reply)
        headers_out, content = _reply_headers(answer, scope["method"])
        await send({"type": "http.response.start", "status": answer.status, "headers": headers_out})
        for chunk in content:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


class MockRecorder(_Script):
    """A MockEngine handler that records requests and plays the script (no faults)."""

    def __call__(self, request: UpstreamRequest) -> UpstreamResponse:
        assert request.content is not None
        self.received.append(
            ReceivedRequest(
                request.method, request.target, list(request.headers), request.content, None, b""
            )
        )
        answer = self._next()
        assert isinstance(answer, Reply), "MockRecorder plays replies only"
        headers, content = _reply_headers(answer, request.method)

        async def stream() -> AsyncIterator[bytes]:
            for chunk in content:
                yield chunk

        return UpstreamResponse(answer.status, headers, stream=stream())


# -- the suite -----------------------------------------------------------------------------


class EngineConformance:
    """Behaviour every engine must show. Subclasses provide the `harness` fixture."""

    # -- what is sent ----------------------------------------------------------------------

    @pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.decode("latin-1"))
    async def test_the_request_target_is_sent_byte_for_byte(
        self, harness: Harness, target: bytes
    ) -> None:
        if target.endswith(b"?") and not harness.wire:
            pytest.skip("an ASGI scope cannot tell an empty query from no query")
        await harness.exchange(harness.request(target))
        assert harness.upstream.received[-1].target == target

    async def test_the_method_is_sent_as_given(self, harness: Harness) -> None:
        await harness.exchange(harness.request(b"/m", method="PURGE"))
        assert harness.upstream.received[-1].method == "PURGE"

    async def test_no_header_is_added_to_the_request(self, harness: Harness) -> None:
        headers = [(b"host", b"upstream.test"), (b"x-only", b"this")]
        await harness.exchange(harness.request(b"/h", headers=headers))
        # No user-agent, accept, accept-encoding, connection or framing headers.
        assert harness.upstream.received[-1].headers == headers

    async def test_request_header_order_and_duplicates_are_preserved(
        self, harness: Harness
    ) -> None:
        headers = [
            (b"x-b", b"1"),
            (b"host", b"upstream.test"),
            (b"x-a", b"2"),
            (b"x-b", b"3"),
            (b"cookie", b"a=1"),
            (b"cookie", b"b=2"),
            (b"accept-encoding", b"gzip"),
        ]
        await harness.exchange(harness.request(b"/h", headers=headers))
        received = harness.upstream.received[-1].headers
        # HTTP/1.1 clients may move Host first (RFC 9112 3.2); everything else keeps its place.
        assert [h for h in received if h[0] != b"host"] == [h for h in headers if h[0] != b"host"]
        assert [h for h in received if h[0] == b"host"] == [(b"host", b"upstream.test")]

    # -- what comes back -------------------------------------------------------------------

    async def test_response_header_order_and_duplicates_are_preserved(
        self, harness: Harness
    ) -> None:
        sent = [
            (b"X-B", b"1"),
            (b"Set-Cookie", b"a=1; Path=/"),
            (b"X-A", b"2"),
            (b"Set-Cookie", b"b=2"),
            (b"x-b", b"3"),
        ]
        harness.upstream.reply(Reply(headers=sent))
        response, body = await harness.exchange(harness.request())
        assert response.status_code == 200
        assert body == b"ok"
        names = (b"x-a", b"x-b", b"set-cookie")
        assert _named(response.headers, *names) == _named(sent, *names)

    async def test_a_gzipped_body_is_passed_through_still_compressed(
        self, harness: Harness
    ) -> None:
        compressed = gzip.compress(b"hello gateway " * 200)
        harness.upstream.reply(Reply(headers=[(b"content-encoding", b"gzip")], chunks=[compressed]))
        response, body = await harness.exchange(
            harness.request(headers=[(b"host", b"u"), (b"accept-encoding", b"gzip")])
        )
        assert body == compressed
        assert (b"content-encoding", b"gzip") in response.headers

    async def test_cookies_set_by_the_upstream_are_not_sent_back(self, harness: Harness) -> None:
        harness.upstream.reply(Reply(headers=[(b"set-cookie", b"session=s3cret; Path=/")]))
        await harness.exchange(harness.request(b"/login"))
        await harness.exchange(harness.request(b"/next"))
        assert harness.upstream.received[-1].get(b"cookie") is None

    @pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
    async def test_redirects_are_returned_not_followed(self, harness: Harness, status: int) -> None:
        harness.upstream.reply(Reply(status, [(b"location", b"/elsewhere")], [b"moved"]))
        before = len(harness.upstream.received)
        response, body = await harness.exchange(harness.request(b"/old", method="POST"))
        assert response.status_code == status
        assert (b"location", b"/elsewhere") in response.headers
        assert body == b"moved"
        assert len(harness.upstream.received) == before + 1

    async def test_a_response_with_content_length_keeps_its_framing(self, harness: Harness) -> None:
        harness.upstream.reply(Reply(chunks=[b"abc", b"defg"]))
        response, body = await harness.exchange(harness.request())
        assert body == b"abcdefg"
        if harness.wire:
            assert (b"content-length", b"7") in response.headers
            assert b"transfer-encoding" not in dict(response.headers)

    async def test_a_chunked_response_is_dechunked_and_says_so(self, harness: Harness) -> None:
        harness.upstream.reply(Reply(chunks=[b"abc", b"", b"defg", b"h" * 70000], chunked=True))
        response, body = await harness.exchange(harness.request())
        assert body == b"abcdefg" + b"h" * 70000
        if harness.wire:
            assert (b"transfer-encoding", b"chunked") in response.headers
            assert b"content-length" not in dict(response.headers)

    async def test_a_response_ended_by_closing_the_connection_is_read_to_the_end(
        self, harness: Harness
    ) -> None:
        if not harness.wire:
            pytest.skip("only a connection can be closed to end a body")
        harness.upstream.reply(Reply(chunks=[b"until ", b"close"], length=False))
        _, body = await harness.exchange(harness.request())
        assert body == b"until close"

    async def test_a_head_response_has_no_body_whatever_its_content_length(
        self, harness: Harness
    ) -> None:
        harness.upstream.reply(Reply(chunks=[b"x" * 1234]))
        response, body = await harness.exchange(harness.request(method="HEAD"))
        assert response.status_code == 200
        assert body == b""
        assert (b"content-length", b"1234") in response.headers
        # The connection (if any) is still usable.
        _, body = await harness.exchange(harness.request())
        assert body == b"ok"

    @pytest.mark.parametrize("status", [204, 304])
    async def test_no_content_and_not_modified_have_no_body(
        self, harness: Harness, status: int
    ) -> None:
        harness.upstream.reply(Reply(status, [(b"etag", b'"v1"')]))
        response, body = await harness.exchange(harness.request())
        assert response.status_code == status
        assert body == b""
        _, body = await harness.exchange(harness.request())
        assert body == b"ok"

    async def test_a_4xx_or_5xx_is_an_ordinary_response(self, harness: Harness) -> None:
        harness.upstream.reply(Reply(503, chunks=[b"busy"]))
        response, body = await harness.exchange(harness.request())
        assert (response.status_code, body) == (503, b"busy")

    # -- request bodies --------------------------------------------------------------------

    async def test_a_body_with_content_length_is_sent_with_that_length(
        self, harness: Harness
    ) -> None:
        data = [b"a" * 1000, b"b" * 70000, b"c"]
        headers = [(b"host", b"u"), (b"content-length", b"71001")]
        request = harness.request(b"/up", method="POST", headers=headers, body=chunks(*data))
        await harness.exchange(request)
        received = harness.upstream.received[-1]
        assert received.body == b"".join(data)
        assert received.headers == headers
        if harness.wire:
            assert received.framing == "content-length"

    async def test_a_body_without_content_length_is_sent_chunked(self, harness: Harness) -> None:
        data = [b"first ", b"", b"second " * 10000]
        request = harness.request(b"/up", method="PUT", body=chunks(*data))
        await harness.exchange(request)
        received = harness.upstream.received[-1]
        assert received.body == b"".join(data)
        if harness.wire:
            assert received.framing == "chunked"
            assert received.get(b"content-length") is None

    async def test_a_request_without_body_has_no_framing(self, harness: Harness) -> None:
        await harness.exchange(harness.request(b"/nobody", method="POST"))
        received = harness.upstream.received[-1]
        assert received.body == b""
        assert received.framing is None

    # -- failures --------------------------------------------------------------------------

    async def test_a_refused_connection_is_an_upstream_connect_error(
        self, harness: Harness
    ) -> None:
        if harness.refused is None:
            pytest.skip("this engine makes no connections")
        host, port = harness.refused
        with anyio.fail_after(5), pytest.raises(UpstreamConnectError):
            await harness.engine.send(harness.request(host=host, port=port))

    async def test_an_upstream_that_never_answers_is_an_upstream_timeout(
        self, harness: Harness
    ) -> None:
        if not harness.faults:
            pytest.skip("this upstream cannot misbehave")
        harness.upstream.reply(Fault.SILENT)
        with anyio.fail_after(5), pytest.raises(UpstreamTimeout) as caught:
            await harness.engine.send(harness.request(read_timeout=0.2))
        assert not isinstance(caught.value, UpstreamConnectError)

    async def test_a_reset_connection_is_an_upstream_protocol_error(self, harness: Harness) -> None:
        if not harness.faults:
            pytest.skip("this upstream cannot misbehave")
        harness.upstream.reply(Fault.RESET)
        with anyio.fail_after(5), pytest.raises(UpstreamProtocolError):
            await harness.engine.send(harness.request())

    async def test_a_malformed_response_is_an_upstream_protocol_error(
        self, harness: Harness
    ) -> None:
        if not harness.faults:
            pytest.skip("this upstream cannot misbehave")
        harness.upstream.reply(Fault.MALFORMED)
        with anyio.fail_after(5), pytest.raises(UpstreamProtocolError):
            await harness.engine.send(harness.request())

    async def test_a_body_cut_short_fails_while_streaming(self, harness: Harness) -> None:
        if not harness.faults:
            pytest.skip("this upstream cannot misbehave")
        harness.upstream.reply(Fault.TRUNCATED)
        with anyio.fail_after(5):
            response = await harness.engine.send(harness.request())
            try:
                assert response.status_code == 200
                received: list[bytes] = []
                with pytest.raises(UpstreamProtocolError):
                    await drain(response.stream, received)
                assert 0 < len(b"".join(received)) < 100000
            finally:
                await response.aclose()

    async def test_failures_are_only_ever_upstream_errors(self, harness: Harness) -> None:
        # After any failure the engine still works (no poisoned pool or state).
        if harness.faults:
            for fault in (Fault.RESET, Fault.MALFORMED):
                harness.upstream.reply(fault)
                with anyio.fail_after(5), pytest.raises(UpstreamError):
                    await harness.engine.send(harness.request())
        _, body = await harness.exchange(harness.request())
        assert body == b"ok"
