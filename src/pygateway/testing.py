"""Helpers for testing gateways (and apps behind them) in-process, with no sockets.

    async with gw.testing.client(gateway) as client:
        response = await client.get("/users/1", headers={"apikey": "s3cret"})

`client()` streams: the app runs in a task and each body chunk reaches the test as the app
sends it, so server-sent events and endless downloads can be tested without a server.

`EchoUpstream` is an ASGI app that answers with a JSON description of the request it got;
`echo_engine()` puts it behind a gateway so no upstream server is needed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl

import anyio
import anyio.abc
import anyio.lowlevel
import httpx

from ._types import ASGIApp, Message, Receive, Scope, Send
from .engines import ASGIEngine, UpstreamResponse
from .engines._websocket import ASGIWebSocket as WebSocket
from .engines._websocket import WebSocketClosed, connect_asgi_websocket

__all__ = [
    "EchoUpstream",
    "StreamingASGITransport",
    "WebSocket",
    "WebSocketClosed",
    "WebSocketRejected",
    "client",
    "echo_engine",
    "websocket_connect",
]

_ECHO_BODY_LIMIT = 64 * 1024


def client(
    app: Any,
    *,
    base_url: str = "http://gateway.test",
    client_addr: tuple[str, int] = ("127.0.0.1", 50000),
    headers: dict[str, str] | None = None,
) -> httpx.AsyncClient:
    """An `httpx.AsyncClient` bound to an ASGI app (a Gateway, or an app around one).

    Use it as `async with client(app) as http:`: inside the block responses stream (see
    `StreamingASGITransport`); a client used without `async with` gets each whole response
    at once, as httpx's own `ASGITransport` gives it.
    """
    transport = StreamingASGITransport(app, client=client_addr)
    return httpx.AsyncClient(
        transport=transport, base_url=base_url, headers=headers, trust_env=False
    )


class StreamingASGITransport(httpx.AsyncBaseTransport):
    """An httpx transport that calls an ASGI app in-process and streams its responses.

    httpx's `ASGITransport` runs the app to the end and buffers the body, so a test of an
    endless stream (server-sent events) would wait forever. Here each request runs the app
    in a task of a task group the transport opens when its client is entered
    (`async with httpx.AsyncClient(transport=...)`), and hands each body chunk over when
    the app sends it, with backpressure: the app's `send` returns once the chunk is read.

    Like a server, the app's `receive` gives `http.disconnect` once the response is complete
    or the client closed it. Closing a response before its end disconnects the app (what
    it sends next is dropped); an app still running `grace` seconds later is cancelled
    (and its sends raise `OSError`). Closing a complete response waits for the app to
    return, so work it does after the response (a gateway's log phase, background tasks)
    is done by then. Exceptions of the app are raised to the client, as `ASGITransport`
    does.

    Outside `async with` there is no task group to run apps in: each response is then read
    whole before it is returned.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        client: tuple[str, int] = ("127.0.0.1", 50000),
        root_path: str = "",
        grace: float = 1.0,
    ) -> None:
        self.app = app
        self.client = client
        self.root_path = root_path
        self.grace = grace
        self._task_group: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> StreamingASGITransport:
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        task_group, self._task_group = self._task_group, None
        if task_group is not None:
            # Only apps whose responses were never closed are left: end them.
            task_group.cancel_scope.cancel()
            await task_group.__aexit__(exc_type, exc_value, traceback)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": request.method,
            "headers": [(k.lower(), v) for k, v in request.headers.raw],
            "scheme": request.url.scheme,
            "path": request.url.path,
            "raw_path": request.url.raw_path.split(b"?")[0],
            "query_string": request.url.query,
            "server": (request.url.host, request.url.port),
            "client": self.client,
            "root_path": self.root_path,
        }
        exchange = _Exchange(self.app, scope, request.stream, self.grace)
        if self._task_group is None:
            return await exchange.whole()
        self._task_group.start_soon(exchange.run)
        try:
            await exchange.started.wait()
        except BaseException:
            await exchange.close()
            raise
        if exchange.status is None:
            await exchange.close()
            raise exchange.failure or RuntimeError("the ASGI app returned without a response")
        return httpx.Response(exchange.status, headers=exchange.headers, stream=_Stream(exchange))


class _Exchange:
    """One request to the app: its task, the chunks it sends, and how it ends."""

    def __init__(
        self, app: ASGIApp, scope: Scope, body: httpx.AsyncByteStream, grace: float
    ) -> None:
        self.app = app
        self.scope = scope
        self.body = aiter(body)
        self.body_read = False
        self.grace = grace
        self.head = scope["method"] == "HEAD"
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.started = anyio.Event()
        #: The response is complete, or the client closed it: `receive` says disconnect.
        self.disconnected = anyio.Event()
        self.complete = False
        #: The app returned (or failed, or was cancelled).
        self.done = anyio.Event()
        self.failure: Exception | None = None
        self.reported = False
        # No buffer: the app's send returns when the client has the chunk.
        self.chunks_in, self.chunks_out = anyio.create_memory_object_stream[bytes](0)
        self.cancel_scope = anyio.CancelScope()

    async def receive(self) -> Message:
        if not self.body_read and not self.disconnected.is_set():
            try:
                chunk = await anext(self.body)
            except StopAsyncIteration:
                self.body_read = True
                return {"type": "http.request", "body": b"", "more_body": False}
            return {"type": "http.request", "body": chunk, "more_body": True}
        await self.disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            if self.started.is_set():
                raise RuntimeError("http.response.start sent twice")
            self.status = int(message["status"])
            self.headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
            self.started.set()
        elif message["type"] == "http.response.body":
            if self.complete:
                raise RuntimeError("http.response.body sent after the response ended")
            if not self.started.is_set():
                raise RuntimeError("http.response.body sent before http.response.start")
            chunk = bytes(message.get("body", b""))
            if self.disconnected.is_set():
                await self._dropped()
                return
            if chunk and not self.head:
                try:
                    await self.chunks_in.send(chunk)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    await self._dropped()
                    return
            if not message.get("more_body", False):
                self.complete = True
                self.chunks_in.close()
                self.disconnected.set()

    async def _dropped(self) -> None:
        """A body message after the client left: dropped, as servers before ASGI 2.4 do, so
        the app learns of it from `receive` (a gateway then cancels its upstream read);
        once the grace time is over and the app is being cancelled, an `OSError`.

        No cancellation lands here before that: a gateway cancelled while it holds an
        upstream chunk would leave the engine's stream half-read."""
        if self.cancel_scope.cancel_called:
            raise OSError("the client closed the response")
        await anyio.lowlevel.cancel_shielded_checkpoint()

    async def run(self) -> None:
        try:
            with self.cancel_scope:
                await self.app(self.scope, self.receive, self.send)
        except Exception as exc:
            self.failure = exc
        finally:
            self.chunks_in.close()
            self.started.set()
            self.done.set()

    async def finish(self) -> None:
        """After the last chunk: wait for the app to return, and raise what it raised."""
        await self.done.wait()
        if self.failure is not None and not self.reported:
            self.reported = True
            raise self.failure

    async def close(self) -> None:
        """Close the response: wait for a complete one's app to return; otherwise tell the
        app the client left and give it `grace` seconds to end before cancelling it. The
        wait is shielded: a test cancelled while it reads still ends the app it started."""
        self.chunks_out.close()
        if self.complete:
            await self.finish()
            return
        self.disconnected.set()
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(self.grace):
                await self.done.wait()
            self.cancel_scope.cancel()
            await self.done.wait()

    async def whole(self) -> httpx.Response:
        """Run the app to its end and return the whole response (no task group to run
        it in while the response is read)."""
        chunks: list[bytes] = []
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(self.run)
            with self.chunks_out:
                async for chunk in self.chunks_out:
                    chunks.append(chunk)
        if self.failure is not None:
            raise self.failure
        if self.status is None:
            raise RuntimeError("the ASGI app returned without a response")
        return httpx.Response(self.status, headers=self.headers, content=b"".join(chunks))


class _Stream(httpx.AsyncByteStream):
    """The response body: chunks as the app sends them. An iterator, not a generator, so
    that nothing is left for the garbage collector when a test stops reading early."""

    def __init__(self, exchange: _Exchange) -> None:
        self._exchange = exchange

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self._exchange.chunks_out.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            await self._exchange.finish()
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        await self._exchange.close()


class EchoUpstream:
    """An ASGI upstream that describes the request it received, as JSON.

    Special paths (anywhere after the route prefix is stripped):

    - `/status/<code>`: answer with that status (204 and 304 with no body);
    - `/bytes/<n>`: a body of n bytes (`?chunk=<size>` streams it in chunks of that size);
    - `/delay/<ms>`: wait before answering.

    The JSON has `method`, `path`, `raw_path`, `query`, `headers` (name -> list of values),
    `body` (text, up to 64 KiB), `body_length`, `body_sha256` and `client`.

    A WebSocket is accepted with the first subprotocol offered and echoes every message;
    the text `close:<code>:<reason>` makes it close with that code and reason.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] == "websocket":
            await _echo_websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            return
        digest = hashlib.sha256()
        length = 0
        head = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            digest.update(chunk)
            length += len(chunk)
            if len(head) < _ECHO_BODY_LIMIT:
                head.extend(chunk[: _ECHO_BODY_LIMIT - len(head)])
            if not message.get("more_body", False):
                break
        path: str = scope["path"]
        parts = path.rstrip("/").split("/")
        status = 200
        if len(parts) >= 2 and parts[-2] == "delay" and parts[-1].isdigit():
            await anyio.sleep(int(parts[-1]) / 1000)
        if len(parts) >= 2 and parts[-2] == "status" and parts[-1].isdigit():
            status = int(parts[-1])
        query = scope.get("query_string", b"").decode("latin-1")
        if len(parts) >= 2 and parts[-2] == "bytes" and parts[-1].isdigit():
            size = int(parts[-1])
            chunk_size = int(dict(parse_qsl(query)).get("chunk", 0) or size or 1)
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", b"application/octet-stream"),
                        (b"content-length", str(size).encode()),
                    ],
                }
            )
            block = bytes(range(256)) * (chunk_size // 256 + 1)
            sent = 0
            while sent < size:
                n = min(chunk_size, size - sent)
                await send({"type": "http.response.body", "body": block[:n], "more_body": True})
                sent += n
            await send({"type": "http.response.body", "body": b""})
            return
        headers: dict[str, list[str]] = {}
        for k, v in scope.get("headers", []):
            headers.setdefault(k.decode("latin-1"), []).append(v.decode("latin-1"))
        raw_path = scope.get("raw_path") or path.encode()
        payload = {
            "method": scope["method"],
            "path": path,
            "raw_path": raw_path.decode("latin-1"),
            "query": query,
            "headers": headers,
            "body": bytes(head).decode("utf-8", "replace"),
            "body_length": length,
            "body_sha256": digest.hexdigest(),
            "client": list(scope["client"]) if scope.get("client") else None,
        }
        if status in (204, 304):
            # These have no body (and a 204 no Content-Length): a real server would break
            # the connection sending one.
            await send({"type": "http.response.start", "status": status, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        data = json.dumps(payload).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(data)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": data})


async def _echo_websocket(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()  # websocket.connect
    accept: Message = {"type": "websocket.accept"}
    if scope.get("subprotocols"):
        accept["subprotocol"] = scope["subprotocols"][0]
    await send(accept)
    while True:
        message = await receive()
        if message["type"] != "websocket.receive":
            return
        text = message.get("text")
        if text is not None and text.startswith("close:"):
            _, code, reason = text.split(":", 2)
            await send({"type": "websocket.close", "code": int(code), "reason": reason})
            return
        if text is not None:
            await send({"type": "websocket.send", "text": text})
        else:
            await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})


class WebSocketRejected(Exception):
    """The handshake was answered with HTTP instead of accepted: `response` says how."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"WebSocket handshake refused with {response.status_code}")
        self.response = response


@contextlib.asynccontextmanager
async def websocket_connect(
    app: Any,
    path: str = "/",
    *,
    subprotocols: Sequence[str] = (),
    headers: dict[str, str] | None = None,
    base_url: str = "ws://gateway.test",
    client_addr: tuple[str, int] = ("127.0.0.1", 50000),
) -> AsyncIterator[WebSocket]:
    """Open a WebSocket to an ASGI app in this process (a Gateway, or an app around one).

        async with gw.testing.websocket_connect(gateway, "/chat") as ws:
            await ws.send("hello")
            assert await ws.receive() == "hello"

    `receive()` gives whole messages (`str` for text, `bytes` for binary) and raises
    `WebSocketClosed` (with `code` and `reason`) once the app closed; `close(code, reason)`
    closes from the client's side. A refused handshake raises `WebSocketRejected`, whose
    `response` is the HTTP answer (a plugin's 401, a 404, ...). Leaving the block closes
    with 1000 if nobody closed yet.
    """
    url = httpx.URL(base_url).join(path)
    secure = url.scheme in ("wss", "https")
    raw = [(b"host", url.netloc)]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    if subprotocols:
        raw.append((b"sec-websocket-protocol", ", ".join(subprotocols).encode("latin-1")))
    scope: dict[str, Any] = {
        "type": "websocket",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "scheme": "wss" if secure else "ws",
        "path": url.path,
        "raw_path": url.raw_path.partition(b"?")[0],
        "query_string": url.query,
        "root_path": "",
        "headers": raw,
        "client": client_addr,
        "server": (url.host, url.port or (443 if secure else 80)),
        "subprotocols": list(subprotocols),
        "extensions": {"websocket.http.response": {}},
    }
    answer = await connect_asgi_websocket(app, scope)
    if isinstance(answer, UpstreamResponse):
        content = await answer.read()
        await answer.aclose()
        raise WebSocketRejected(
            httpx.Response(answer.status_code, headers=answer.headers, content=content)
        )
    try:
        yield answer
    finally:
        try:
            await answer.close(1000)
        finally:
            await answer.aclose()


def echo_engine() -> ASGIEngine:
    """An engine whose every upstream is an `EchoUpstream`."""
    return ASGIEngine(EchoUpstream())
