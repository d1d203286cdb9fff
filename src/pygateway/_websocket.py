"""WebSocket proxying: the handshake is an ordinary request, the rest a relay of messages.

A `websocket` scope goes through the same run loop as an HTTP request (rewrite, route,
access, balance, retries), with two differences:

- whatever the gateway answers over HTTP (a plugin's refusal, a 404, a 502, the upstream's
  own refusal) goes out as ASGI's `websocket.http.response` when the server supports it, and
  as a close before accepting otherwise (which servers turn into a 403);
- once the upstream accepts, `relay` accepts the client with the upstream's subprotocol and
  passes messages both ways until either side closes, then closes the other with the same
  code and reason.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio

from ._exceptions import UpstreamError
from .engines._websocket import MessageTooBig, UpstreamWebSocket, WebSocketClosed, message_size

if TYPE_CHECKING:
    from ._context import Context
    from ._headers import Headers
    from ._types import Message, Receive, Scope, Send

__all__ = ["DEFAULT_MAX_MESSAGE_SIZE", "WebSocketRefusal", "relay"]

logger = logging.getLogger("pygateway.websocket")

#: The largest message relayed either way unless a `websocket-size-limit` plugin says
#: otherwise (uvicorn's and websockets' own default).
DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024

#: Close codes that describe a connection lost, never sent in a close frame.
_NOT_SENDABLE = frozenset({1005, 1006, 1015})

#: Response headers the server writes for an accepted handshake (or that make no sense on
#: a 101): never relayed from the upstream's.
_ACCEPT_OWNED = frozenset(
    {
        b"connection",
        b"upgrade",
        b"content-length",
        b"transfer-encoding",
        b"sec-websocket-accept",
        b"sec-websocket-protocol",
        b"sec-websocket-extensions",
        b"date",
        b"server",
    }
)


class WebSocketRefusal:
    """The server's `send` for a handshake the gateway answers with an HTTP response.

    `http.response.*` messages become `websocket.http.response.*` where the server supports
    that extension (the body in one message), else one `websocket.close` before accepting
    (the server answers 403); `websocket.*` messages pass through.
    """

    __slots__ = ("body", "send", "supported")

    def __init__(self, scope: Scope, send: Send) -> None:
        self.send = send
        self.supported = "websocket.http.response" in (scope.get("extensions") or {})
        self.body: list[bytes] = []

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.supported:
                await self.send({**message, "type": "websocket.http.response.start"})
            else:
                await self.send({"type": "websocket.close", "code": 1008})
        elif kind == "http.response.body":
            # Refusals are small; some servers (granian) take their body in one message.
            self.body.append(message.get("body", b""))
            if self.supported and not message.get("more_body", False):
                body = b"".join(self.body)
                await self.send({"type": "websocket.http.response.body", "body": body})
        else:
            await self.send(message)


def accept_headers(headers: Headers) -> list[tuple[bytes, bytes]]:
    """The response headers to accept the client's handshake with."""
    return [(k, v) for k, v in headers.raw if k not in _ACCEPT_OWNED]


async def relay(
    ctx: Context,
    upstream: UpstreamWebSocket,
    receive: Receive,
    send: Send,
    *,
    idle_timeout: float,
    client_limit: int = DEFAULT_MAX_MESSAGE_SIZE,
    upstream_limit: int = DEFAULT_MAX_MESSAGE_SIZE,
) -> int:
    """Pass messages both ways until a side closes, is silent for `idle_timeout` seconds in
    both directions (the upstream's pings count, the client's are the server's business),
    or sends a message over its limit; then close the other side too.

    Returns the payload bytes sent to the client; those from the client count into
    `ctx.request_size`. `ctx.shared["websocket"]` gets message counts and who closed.
    """
    #: Why the relay ended: (who, code, reason), who is client, upstream or both.
    ended: tuple[str, int, str] | None = None
    stats = ctx.shared.setdefault("websocket", {"client_messages": 0, "upstream_messages": 0})
    counted = ctx.request._body
    sent = 0
    async with anyio.create_task_group() as tg:
        scope = tg.cancel_scope

        def touch() -> None:
            scope.deadline = anyio.current_time() + idle_timeout

        def end(who: str, code: int, reason: str) -> None:
            nonlocal ended
            if ended is None:
                ended = (who, code, reason)
            scope.cancel()

        async def from_client() -> None:
            while True:
                message = await receive()
                kind = message["type"]
                if kind == "websocket.disconnect":
                    end("client", message.get("code") or 1005, message.get("reason") or "")
                    return
                if kind != "websocket.receive":
                    continue
                data: str | bytes | None = message.get("text")
                if data is None:
                    data = message.get("bytes") or b""
                size = message_size(data)
                if size > client_limit:
                    end("both", 1009, "message too big")
                    return
                touch()
                counted.received += size
                stats["client_messages"] += 1
                try:
                    await upstream.send(data)
                except (WebSocketClosed, UpstreamError):
                    # The upstream's side is closed or broken: its reader says how.
                    return

        async def from_upstream() -> None:
            nonlocal sent
            while True:
                try:
                    data = await upstream.receive(upstream_limit)
                except WebSocketClosed as closed:
                    end("upstream", closed.code, closed.reason)
                    return
                except MessageTooBig:
                    end("both", 1009, "message too big")
                    return
                except UpstreamError:
                    end("upstream", 1006, "")
                    return
                touch()
                stats["upstream_messages"] += 1
                key = "text" if isinstance(data, str) else "bytes"
                try:
                    await send({"type": "websocket.send", key: data})
                except OSError:
                    end("client", 1006, "")
                    return
                sent += message_size(data)

        async def guarded(direction: Callable[[], Awaitable[None]]) -> None:
            try:
                await direction()
            except Exception:
                logger.exception("relaying a WebSocket failed (request %s)", ctx.request_id)
                end("both", 1011, "")

        touch()
        upstream.activity = touch  # pings and parts of messages count as activity too
        tg.start_soon(guarded, from_client)
        tg.start_soon(guarded, from_upstream)
    who, code, reason = ended or ("both", 1001, "idle timeout")
    stats["closed_by"] = who
    stats["close_code"] = code
    if who != "upstream":
        # A client gone without a close frame (1006): the upstream hears it is going away.
        await upstream.close(1001 if code == 1006 else code, reason)
        if who == "client":
            return sent
    elif code == 1006:
        # The upstream's connection was lost: 1014 is the registered "bad gateway" code.
        code, reason = 1014, "upstream connection lost"
    elif not _sendable(code):
        code, reason = (1000, "") if code in _NOT_SENDABLE else (1011, "")
    try:
        await send({"type": "websocket.close", "code": code, "reason": reason})
    except Exception:
        logger.debug("closing the client's WebSocket failed", exc_info=True)
    return sent


def _sendable(code: int) -> bool:
    """Whether a close frame may carry `code` (RFC 6455 section 7.4)."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999
