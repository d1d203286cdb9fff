"""WebSocket connections to upstreams: the seam's second verb, `Engine.connect_websocket`.

An engine answers a WebSocket handshake with either an `UpstreamWebSocket` (the upstream
accepted: messages flow both ways until one side closes) or an `UpstreamResponse` (it
refused with an ordinary HTTP response, which the gateway relays to the client).

Two implementations serve every engine:

- over the network, with wsproto on an anyio stream (so trio works too), for every engine
  that talks to sockets (the base `Engine.connect_websocket`);
- in-process, driving an ASGI app's `websocket` scope (`ASGIEngine`, and the test client in
  `pygateway.testing`, which drives the gateway itself the same way).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from anyio.streams.tls import TLSStream

from .._exceptions import (
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from .._types import ASGIApp, Message, RawHeaders
from ._base import TLSContexts, UpstreamRequest, UpstreamResponse

if TYPE_CHECKING:
    from wsproto import WSConnection

__all__ = [
    "MessageTooBig",
    "UpstreamWebSocket",
    "WebSocketClosed",
    "connect_asgi_websocket",
    "connect_network_websocket",
]

logger = logging.getLogger("pygateway.engines")

#: The most a refusal's body may hold (it is read whole, to relay it).
_REFUSAL_BODY_LIMIT = 1024 * 1024

#: Handshake headers the WebSocket client writes itself (or that mean nothing on an upgrade).
_HANDSHAKE_OWNED = frozenset(
    {
        b"host",
        b"upgrade",
        b"connection",
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-extensions",
        b"sec-websocket-protocol",
        b"sec-websocket-accept",
        b"content-length",
        b"transfer-encoding",
    }
)


class WebSocketClosed(Exception):
    """The peer closed the WebSocket (or the connection was lost: code 1006)."""

    def __init__(self, code: int = 1000, reason: str = "") -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


class MessageTooBig(Exception):
    """A message grew past the size the receiver allows (close code 1009)."""


class UpstreamWebSocket:
    """An accepted WebSocket to the upstream: `receive()`, `send()`, `close()`, `aclose()`.

    `subprotocol` is what the upstream chose, `headers` its handshake response headers.
    Messages are whole: `str` for text, `bytes` for binary. Close it with `aclose()` in the
    task that opened it, like a response (see the engines module doc).
    """

    subprotocol: str | None = None
    headers: RawHeaders
    http_version = "1.1"
    #: Called for every frame received, control frames and parts of a message included (an
    #: idle timer is pushed back by pings too).
    activity: Callable[[], None] | None = None

    async def receive(self, max_size: int | None = None) -> str | bytes:
        """The next message; raises WebSocketClosed when the upstream closed, MessageTooBig
        (leaving the connection to be closed) when a message outgrows `max_size` bytes
        (UTF-8 bytes, for text)."""
        raise NotImplementedError

    async def send(self, message: str | bytes) -> None:
        """Send one message; raises WebSocketClosed once the upstream's side is closed."""
        raise NotImplementedError

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake (once); `aclose()` still releases the connection."""
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError


def message_size(message: str | bytes | bytearray) -> int:
    """A message's payload size in bytes (text counts as its UTF-8 encoding)."""
    if not isinstance(message, str) or message.isascii():
        return len(message)
    return len(message.encode("utf-8", "surrogatepass"))


def split_protocols(headers: RawHeaders) -> list[str]:
    """The subprotocols a handshake offers (`Sec-WebSocket-Protocol`, comma-separated)."""
    return [
        name
        for k, v in headers
        if k == b"sec-websocket-protocol"
        for name in (part.strip() for part in v.decode("latin-1").split(","))
        if name
    ]


# -- over the network ---------------------------------------------------------------------


async def connect_network_websocket(
    request: UpstreamRequest, contexts: TLSContexts
) -> UpstreamWebSocket | UpstreamResponse:
    """Open a TCP (and TLS, for https) connection and perform the client handshake; TLS
    contexts come from `contexts` (an engine's)."""
    try:
        import wsproto  # noqa: F401
    except ImportError:
        raise RuntimeError(
            "proxying WebSockets needs wsproto: pip install 'pygateway[websockets]'"
        ) from None
    stream = await _connect(request, contexts)
    try:
        answer = await _handshake(stream, request)
    except BaseException:
        await _close_stream(stream)
        raise
    if isinstance(answer, UpstreamResponse):
        await _close_stream(stream)  # a refusal is read whole: the connection is done
    return answer


async def _connect(request: UpstreamRequest, contexts: TLSContexts) -> anyio.abc.ByteStream:
    try:
        with anyio.fail_after(request.connect_timeout):
            stream: anyio.abc.ByteStream = await anyio.connect_tcp(request.host, request.port)
            if request.scheme == "https":
                context = contexts.get(
                    (request.tls_verify, request.ca_certificates, request.client_certificate)
                )
                try:
                    stream = await TLSStream.wrap(
                        stream,
                        hostname=request.server_name or request.host,
                        ssl_context=context,
                        standard_compatible=False,
                    )
                except BaseException:
                    await _close_stream(stream)
                    raise
    except TimeoutError:
        raise UpstreamConnectTimeout("timed out connecting to the upstream") from None
    except ssl.SSLError as exc:
        raise UpstreamConnectError(f"TLS handshake with the upstream failed: {exc}") from exc
    except OSError as exc:
        raise UpstreamConnectError(f"could not connect to the upstream: {exc}") from exc
    return stream


async def _close_stream(stream: anyio.abc.ByteStream) -> None:
    with anyio.CancelScope(shield=True):
        try:
            await anyio.aclose_forcefully(stream)
        except Exception:
            logger.debug("closing an upstream WebSocket stream failed", exc_info=True)


async def _handshake(
    stream: anyio.abc.ByteStream, request: UpstreamRequest
) -> UpstreamWebSocket | UpstreamResponse:
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, RejectConnection, RejectData, Request
    from wsproto.utilities import RemoteProtocolError

    connection = WSConnection(ConnectionType.CLIENT)
    host = next((v for k, v in request.headers if k == b"host"), request.host.encode())
    greeting = Request(
        host=host.decode("latin-1"),
        target=request.target.decode("latin-1"),
        extra_headers=[(k, v) for k, v in request.headers if k not in _HANDSHAKE_OWNED],
        subprotocols=split_protocols(request.headers),
    )
    await _write(stream, connection.send(greeting), request.write_timeout)
    refusal: RejectConnection | None = None
    body: list[bytes] = []
    size = 0
    try:
        with anyio.fail_after(request.read_timeout):
            while True:
                for event in connection.events():
                    if isinstance(event, AcceptConnection):
                        return _NetworkWebSocket(
                            stream, connection, event.subprotocol, list(event.extra_headers),
                            request.write_timeout,
                        )  # fmt: skip
                    if isinstance(event, RejectConnection):
                        refusal = event
                        if not event.has_body:
                            return _refusal(event.status_code, event.headers, b"")
                    elif isinstance(event, RejectData):
                        size += len(event.data)
                        if size > _REFUSAL_BODY_LIMIT:
                            raise UpstreamProtocolError("the upstream's refusal is too large")
                        body.append(bytes(event.data))
                        if event.body_finished:
                            assert refusal is not None
                            return _refusal(refusal.status_code, refusal.headers, b"".join(body))
                try:
                    data = await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    raise UpstreamProtocolError(
                        "the upstream closed the connection during the WebSocket handshake"
                    ) from None
                connection.receive_data(data)
    except TimeoutError:
        raise UpstreamTimeout("the upstream did not answer the WebSocket handshake") from None
    except RemoteProtocolError as exc:
        raise UpstreamProtocolError(f"invalid WebSocket handshake response: {exc}") from exc


def _lowered(headers: Sequence[tuple[bytes, bytes]]) -> RawHeaders:
    return [(bytes(k).lower(), bytes(v)) for k, v in headers]


def _refusal(status: int, headers: Sequence[tuple[bytes, bytes]], body: bytes) -> UpstreamResponse:
    # The gateway frames the body it relays itself.
    framing = (b"content-length", b"transfer-encoding")
    kept = [(k, v) for k, v in _lowered(headers) if k not in framing]
    return UpstreamResponse(status, kept, content=body)


async def _write(stream: anyio.abc.ByteStream, data: bytes, write_timeout: float) -> None:
    try:
        with anyio.fail_after(write_timeout):
            await stream.send(data)
    except TimeoutError:
        raise UpstreamTimeout("timed out writing to the upstream") from None
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
        raise UpstreamProtocolError(f"the upstream connection broke: {exc}") from exc


class _NetworkWebSocket(UpstreamWebSocket):
    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        connection: WSConnection,
        subprotocol: str | None,
        headers: RawHeaders,
        write_timeout: float,
    ) -> None:
        self.stream = stream
        self.connection = connection
        self.subprotocol = subprotocol
        self.headers = headers
        self.write_timeout = write_timeout
        # Pongs (from the reading task) and messages (from the writing one) share the socket.
        self.lock = anyio.Lock()
        self.closed = False

    async def _send_event(self, event: Any) -> None:
        async with self.lock:
            await _write(self.stream, self.connection.send(event), self.write_timeout)

    async def receive(self, max_size: int | None = None) -> str | bytes:
        from wsproto.connection import ConnectionState
        from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
        from wsproto.utilities import RemoteProtocolError

        parts: list[Any] = []
        size = 0
        while True:
            for event in self.connection.events():
                if self.activity is not None:
                    self.activity()
                if isinstance(event, TextMessage | BytesMessage):
                    size += message_size(event.data)
                    if max_size is not None and size > max_size:
                        raise MessageTooBig(f"message larger than {max_size} bytes")
                    parts.append(event.data)
                    if event.message_finished:
                        if isinstance(event, TextMessage):
                            return "".join(parts)
                        return b"".join(parts)
                elif isinstance(event, Ping):
                    await self._send_event(event.response())
                elif isinstance(event, CloseConnection):
                    if self.connection.state is ConnectionState.REMOTE_CLOSING:
                        try:
                            await self._send_event(event.response())
                        except Exception:
                            logger.debug("answering the upstream's close failed", exc_info=True)
                    self.closed = True
                    raise WebSocketClosed(event.code, event.reason or "")
            try:
                data: bytes | None = await self.stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                data = None
            try:
                self.connection.receive_data(data)
            except RemoteProtocolError as exc:
                self.closed = True
                raise WebSocketClosed(1002, "protocol error") from exc

    async def send(self, message: str | bytes) -> None:
        from wsproto.connection import ConnectionState
        from wsproto.events import BytesMessage, TextMessage
        from wsproto.utilities import LocalProtocolError

        async with self.lock:
            # The upstream may have closed meanwhile (its close is read by the other task).
            if self.connection.state is not ConnectionState.OPEN:
                raise WebSocketClosed(1006, "")
            try:
                event = (
                    TextMessage(data=message)
                    if isinstance(message, str)
                    else BytesMessage(data=message)
                )
                data = self.connection.send(event)
            except LocalProtocolError as exc:
                raise WebSocketClosed(1006, "") from exc
            await _write(self.stream, data, self.write_timeout)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        from wsproto.connection import ConnectionState
        from wsproto.events import CloseConnection

        if self.closed or self.connection.state is not ConnectionState.OPEN:
            return
        self.closed = True
        try:
            await self._send_event(CloseConnection(code=code, reason=reason or None))
        except Exception:
            logger.debug("sending a close to the upstream failed", exc_info=True)

    async def aclose(self) -> None:
        from wsproto.connection import ConnectionState

        if self.connection.state is ConnectionState.LOCAL_CLOSING:
            # Our close is out: give the upstream a moment to answer it, so that it sees a
            # clean closing handshake rather than a reset.
            with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                try:
                    while self.connection.state is ConnectionState.LOCAL_CLOSING:
                        data = await self.stream.receive()
                        self.connection.receive_data(data)
                        for _ in self.connection.events():
                            pass
                except Exception:
                    pass
        await _close_stream(self.stream)


# -- in-process ---------------------------------------------------------------------------


async def connect_asgi_websocket(
    app: ASGIApp, scope: dict[str, Any], *, handshake_timeout: float | None = None
) -> ASGIWebSocket | UpstreamResponse:
    """Open `app`'s `websocket` scope as a client would: accepted, or the HTTP refusal.

    The app runs in a task group entered here and left by `aclose()` (of the session, or
    of the refusal response): close it in this task, before anything opened earlier.
    """
    session = ASGIWebSocket(app, scope)
    return await session.open(handshake_timeout)


class ASGIWebSocket(UpstreamWebSocket):
    """A WebSocket to an ASGI app in this process, the client's end of its `websocket` scope."""

    def __init__(self, app: ASGIApp, scope: dict[str, Any]) -> None:
        self.app = app
        self.scope = scope
        self.to_app, self.app_inbox = anyio.create_memory_object_stream[Message](16)
        self.app_outbox, self.from_app = anyio.create_memory_object_stream[Message](16)
        self.task_group = anyio.create_task_group()
        self.headers: RawHeaders = []
        self.failure: BaseException | None = None
        self.closed = False
        self.close_sent = False
        self.finished = False
        self.done = anyio.Event()

    # -- the app's side ------------------------------------------------------------------

    async def _app_receive(self) -> Message:
        try:
            return await self.app_inbox.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            return {"type": "websocket.disconnect", "code": 1006}

    async def _app_send(self, message: Message) -> None:
        if self.finished:
            raise OSError("the WebSocket is closed")
        try:
            await self.app_outbox.send(message)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            raise OSError("the WebSocket is closed") from None

    async def _run(self) -> None:
        try:
            await self.app(self.scope, self._app_receive, self._app_send)
        except Exception as exc:
            self.failure = exc
            logger.debug("ASGI WebSocket app failed", exc_info=True)
        finally:
            self.finished = True
            self.done.set()
            self.app_outbox.close()
            self.app_inbox.close()  # what the client sends now has nowhere to go

    # -- the client's side ---------------------------------------------------------------

    async def open(self, handshake_timeout: float | None) -> ASGIWebSocket | UpstreamResponse:
        await self.task_group.__aenter__()
        self.task_group.start_soon(self._run)
        try:
            with anyio.fail_after(handshake_timeout):
                answer = await self._handshake()
        except TimeoutError:
            await self.aclose()
            raise UpstreamTimeout("the ASGI WebSocket app did not answer the handshake") from None
        except BaseException:
            await self.aclose()
            raise
        if answer is not self:
            await self.aclose()  # a refusal: the app is done
        return answer

    async def _handshake(self) -> ASGIWebSocket | UpstreamResponse:
        await self.to_app.send({"type": "websocket.connect"})
        first = await self._next()
        if first is None:
            failure = f": {self.failure!r}" if self.failure else ""
            raise UpstreamProtocolError(f"ASGI WebSocket app ended the handshake{failure}")
        kind = first["type"]
        if kind == "websocket.accept":
            self.subprotocol = first.get("subprotocol")
            self.headers = _lowered(first.get("headers", []))
            return self
        if kind == "websocket.close":
            # ASGI: closing before accepting refuses the handshake with a 403.
            return UpstreamResponse(403, [])
        if kind == "websocket.http.response.start":
            body: list[bytes] = []
            while (message := await self._next()) is not None:
                body.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            return _refusal(first["status"], _lowered(first.get("headers", [])), b"".join(body))
        raise UpstreamProtocolError(f"ASGI WebSocket app sent {kind!r} before accepting")

    async def _next(self) -> Message | None:
        try:
            return await self.from_app.receive()
        except anyio.EndOfStream:
            return None

    async def receive(self, max_size: int | None = None) -> str | bytes:
        message = await self._next()
        if message is None:
            # The app returned without closing: a server would close the connection.
            raise WebSocketClosed(1011 if self.failure else 1000, "")
        kind = message["type"]
        if kind == "websocket.close":
            self.closed = True
            raise WebSocketClosed(message.get("code") or 1000, message.get("reason") or "")
        if kind != "websocket.send":
            raise UpstreamProtocolError(f"ASGI WebSocket app sent {kind!r} after accepting")
        data: str | bytes | None = message.get("text")
        if data is None:
            data = message.get("bytes") or b""
        if max_size is not None and message_size(data) > max_size:
            raise MessageTooBig(f"message larger than {max_size} bytes")
        return data

    async def send(self, message: str | bytes) -> None:
        if self.closed:
            raise WebSocketClosed(1006, "")
        key = "text" if isinstance(message, str) else "bytes"
        try:
            await self.to_app.send({"type": "websocket.receive", key: message})
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            raise WebSocketClosed(1006, "") from None

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.close_sent:
            return
        self.close_sent = True
        # An app that stopped reading may never take it: it is not waited for long.
        with anyio.move_on_after(1):
            try:
                await self.to_app.send(
                    {"type": "websocket.disconnect", "code": code, "reason": reason}
                )
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass

    async def aclose(self) -> None:
        if self.task_group is None:
            return
        task_group, self.task_group = self.task_group, None  # type: ignore[assignment]
        try:
            self.to_app.close()
            if self.close_sent:
                # An app told of the disconnect gets a moment to finish on its own.
                with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                    await self.done.wait()
        finally:
            task_group.cancel_scope.cancel()
            try:
                await task_group.__aexit__(None, None, None)
            finally:
                for stream in (self.from_app, self.app_inbox, self.app_outbox):
                    stream.close()
