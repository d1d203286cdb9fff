"""ASGIEngine: upstreams that are ASGI apps in the same process (no sockets)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from typing import Any
from urllib.parse import unquote

import anyio

from .._exceptions import RequestRejected, UpstreamProtocolError, UpstreamTimeout
from .._types import ASGIApp, Message, RawHeaders
from ._base import Engine, UpstreamRequest, UpstreamResponse
from ._websocket import UpstreamWebSocket, connect_asgi_websocket, split_protocols

__all__ = ["ASGIEngine"]

logger = logging.getLogger("pygateway.engines")

# The exchanges the current task has open, oldest first: their task groups are nested in
# this order in the task's cancel scope stack, so only the last one may be left.
_open: ContextVar[tuple[_Exchange, ...]] = ContextVar("pygateway_asgi_open", default=())


class ASGIEngine(Engine):
    """Proxy to an ASGI application called in-process, streaming both ways.

    The app sees an ordinary `http` scope; its exceptions before the response starts become
    `UpstreamProtocolError` (a 502), as a crashed upstream would.

    The app runs in a task group that `send` opens in the calling task and the response's
    `aclose()` closes, so, as with `async with` blocks, a response must be closed in the task
    that sent its request, after any response received later (last in, first out), and
    outside any cancel scope entered since `send` returned (the runloop does all of this).
    Closing out of order raises `RuntimeError` and leaves the response open.

    Once the app has sent its last body message, `aclose()` waits for it to return, so work
    it does after the response (Starlette's background tasks) runs to completion; a response
    closed before that (the client went away, an error, not read to the end) cancels the app.
    """

    def __init__(self, app: ASGIApp, *, client: tuple[str, int] = ("127.0.0.1", 0)) -> None:
        self.app = app
        self.client = client

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        path_bytes, _, query = request.target.partition(b"?")
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": request.method,
            "scheme": request.scheme,
            "path": unquote(path_bytes.decode("latin-1")),
            "raw_path": path_bytes,
            "query_string": query,
            "root_path": "",
            "headers": list(request.headers),
            "client": self.client,
            "server": (request.host, request.port),
            "extensions": {},
        }
        return await _Exchange(self.app, scope, request).open()

    async def connect_websocket(
        self, request: UpstreamRequest
    ) -> UpstreamWebSocket | UpstreamResponse:
        """Open the app's `websocket` scope in-process (see `send` on closing order)."""
        path_bytes, _, query = request.target.partition(b"?")
        scope: dict[str, Any] = {
            "type": "websocket",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "scheme": "wss" if request.scheme == "https" else "ws",
            "path": unquote(path_bytes.decode("latin-1")),
            "raw_path": path_bytes,
            "query_string": query,
            "root_path": "",
            "headers": list(request.headers),
            "client": self.client,
            "server": (request.host, request.port),
            "subprotocols": split_protocols(request.headers),
            "extensions": {"websocket.http.response": {}},
        }
        return await connect_asgi_websocket(self.app, scope, handshake_timeout=request.read_timeout)


class _Exchange:
    """One request to the app: its task, its response stream and how to end it."""

    def __init__(self, app: ASGIApp, scope: dict[str, Any], request: UpstreamRequest) -> None:
        self.app = app
        self.scope = scope
        self.read_timeout = request.read_timeout
        self.body = aiter(request.body) if request.body is not None else None
        self.body_exhausted = request.body is None
        self.body_sent = False
        self.started = anyio.Event()
        #: The app sent its last body message: the response is complete.
        self.complete = anyio.Event()
        self.start: Message | None = None
        self.chunks_in, self.chunks_out = anyio.create_memory_object_stream[bytes](4)
        self.failure: BaseException | None = None
        #: The request body refused itself while the app read it (over a size limit).
        self.rejected: RequestRejected | None = None
        self.task_group = anyio.create_task_group()
        self.task_id = 0
        self.closed = False

    # -- the app's side ------------------------------------------------------------------

    async def receive(self) -> Message:
        if self.complete.is_set():  # the response was sent: the exchange is over (ASGI spec)
            return {"type": "http.disconnect"}
        if self.body is not None and not self.body_exhausted:
            try:
                chunk = await anext(self.body)
            except StopAsyncIteration:
                self.body_exhausted = True
            except RequestRejected as exc:
                self.rejected = exc
                raise
            else:
                return {"type": "http.request", "body": chunk, "more_body": True}
        if not self.body_sent:
            self.body_sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.complete.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.start = message
            self.started.set()
        elif message["type"] == "http.response.body":
            chunk = message.get("body", b"")
            if chunk:
                await self.chunks_in.send(chunk)
            if not message.get("more_body", False):
                self.complete.set()
                self.chunks_in.close()

    async def run(self) -> None:
        try:
            await self.app(self.scope, self.receive, self.send)
        except Exception as exc:
            self.failure = exc
            if self.complete.is_set():  # nobody else will hear of it
                logger.error("ASGI upstream failed after its response", exc_info=exc)
        finally:
            self.started.set()
            self.chunks_in.close()

    # -- the gateway's side --------------------------------------------------------------

    async def open(self) -> UpstreamResponse:
        await self.task_group.__aenter__()
        self.task_id = anyio.get_current_task().id
        _open.set((*_open.get(), self))
        self.task_group.start_soon(self.run)
        try:
            with anyio.fail_after(self.read_timeout):
                await self.started.wait()
        except TimeoutError:
            await self.close()
            raise UpstreamTimeout("ASGI upstream did not start a response in time") from None
        except BaseException:
            await self.close()
            raise
        if self.rejected is not None:
            await self.close()
            raise self.rejected
        if self.start is None:
            await self.close()
            reason = repr(self.failure) if self.failure else "the app returned without a response"
            raise UpstreamProtocolError(f"ASGI upstream failed: {reason}")
        headers = [(bytes(k).lower(), bytes(v)) for k, v in self.start.get("headers", [])]
        return _ASGIResponse(
            self, self.start["status"], headers, stream=self.stream(), on_close=self.close
        )

    async def stream(self) -> AsyncIterator[bytes]:
        while True:
            try:
                with anyio.fail_after(self.read_timeout):
                    chunk = await self.chunks_out.receive()
            except anyio.EndOfStream:
                break
            except TimeoutError:
                raise UpstreamTimeout("ASGI upstream sent nothing in time") from None
            yield chunk
        if not self.complete.is_set():
            reason = f": {self.failure!r}" if self.failure is not None else ""
            raise UpstreamProtocolError(f"ASGI upstream stopped before the response ended{reason}")

    def check_closable(self) -> None:
        """Raise (changing nothing) if leaving this exchange's task group now would corrupt
        the calling task's cancel scopes."""
        if self.closed:
            return
        if anyio.get_current_task().id != self.task_id:
            raise RuntimeError(
                "an ASGIEngine response must be closed in the task that sent its request"
            )
        if _open.get()[-1:] != (self,):
            raise RuntimeError(
                "ASGIEngine responses must be closed last-received first: close the "
                "responses received after this one before closing it"
            )

    async def close(self) -> None:
        if self.closed:
            return
        self.check_closable()
        self.closed = True
        _open.set(_open.get()[:-1])
        if not self.complete.is_set():
            self.task_group.cancel_scope.cancel()
        self.chunks_out.close()
        try:
            await self.task_group.__aexit__(None, None, None)
        finally:
            # The app is done with the request body now; close what it left unread.
            if self.body is not None and not self.body_exhausted:
                aclose: Callable[[], Awaitable[object]] | None = getattr(self.body, "aclose", None)
                if aclose is not None:
                    await aclose()


class _ASGIResponse(UpstreamResponse):
    __slots__ = ("_exchange",)

    def __init__(
        self, exchange: _Exchange, status_code: int, headers: RawHeaders, **kwargs: Any
    ) -> None:
        super().__init__(status_code, headers, **kwargs)
        self._exchange = exchange

    async def aclose(self) -> None:
        self._exchange.check_closable()  # before anything is closed
        await super().aclose()
