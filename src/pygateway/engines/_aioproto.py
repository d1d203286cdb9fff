"""NativeEngine's fast path on asyncio (and uvloop): connections on an `asyncio.Protocol`.

Why: on asyncio, anyio streams and cancel scopes cost about a third of a small request's
CPU. Here the loop's own transport does the socket work (uvloop's is in C), bytes are
handed over through one future per wait, and a timeout is one `loop.call_later` armed only
when a wait is actually needed. Trio, and the h11 parser, keep the anyio path in
`_native.py`; both paths share the pool, the parsers and the error rules.

Backpressure both ways: reading pauses once `_HIGH_WATER` bytes wait for the consumer (a
large body is never buffered), and a write waits while the transport says it is full.
"""

from __future__ import annotations

import asyncio
import math
import ssl
from typing import TYPE_CHECKING, cast

from .._exceptions import UpstreamProtocolError, UpstreamTimeout
from ._base import UpstreamRequest
from ._http11 import (
    HEAD_LIMIT,
    MalformedResponse,
    ResponseParser,
    StaleConnection,
    WriteFailed,
    chunk_frame,
    early_answer,
    last_chunk,
)

if TYPE_CHECKING:
    from ._native import _Connection

__all__ = ["UpstreamProtocol", "open_connection", "read_head", "write_request"]

#: Bytes received and not yet taken before reading pauses, and resumes.
_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024
#: Bytes handed over per read at most, as anyio's path reads them: a body goes on in pieces
#: of this size, whatever the loop's own reads were.
_READ_SIZE = 65536
#: Bodies up to this size are written in one piece with what precedes them.
_JOIN_LIMIT = 16384


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


def _wake(waiter: asyncio.Future[bool] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(True)


class UpstreamProtocol(asyncio.Protocol):
    """One connection's bytes: what was received and not yet taken, its end, and whether
    writing may go on. One task uses it at a time (the pool hands it to one request)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[bool] | None = None
        self._read_paused = False
        self._write_paused = False

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast("asyncio.Transport", transport)

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > _HIGH_WATER and not self._read_paused and self.transport:
            self._read_paused = True
            self.transport.pause_reading()
        _wake(self._waiter)

    def eof_received(self) -> bool | None:
        self._eof = True
        _wake(self._waiter)
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        if exc is not None:
            self._error = exc
        _wake(self._waiter)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        _wake(self._waiter)

    # -- for the engine --

    def ready(self) -> bool:
        """Bytes or the end arrived (asked of an idle connection: it is of no use)."""
        return bool(self._chunks) or self._eof

    async def _wait(self, patience: float) -> None:
        """Until a callback above wakes it; TimeoutError after `patience` seconds."""
        loop = self._loop
        waiter = self._waiter = loop.create_future()
        timer = None if math.isinf(patience) else loop.call_later(patience, _expire, waiter)
        try:
            woken = await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()
        if not woken:
            raise TimeoutError()

    async def receive(self, patience: float) -> bytes:
        """Up to `_READ_SIZE` of the bytes received (waiting for some), b"" at the end.
        Raises TimeoutError, or OSError when the connection broke."""
        chunks = self._chunks
        while not chunks:
            if self._error is not None:
                raise ConnectionError(str(self._error) or "connection reset") from self._error
            if self._eof:
                return b""
            await self._wait(patience)
        data = chunks[0]
        if len(data) > _READ_SIZE:
            chunks[0] = data[_READ_SIZE:]
            data = data[:_READ_SIZE]
        else:
            taken, size = 1, len(data)
            while taken < len(chunks) and size + len(chunks[taken]) <= _READ_SIZE:
                size += len(chunks[taken])
                taken += 1
            if taken > 1:
                data = b"".join(chunks[:taken])
            del chunks[:taken]
        self._buffered -= len(data)
        if self._read_paused and self._buffered <= _LOW_WATER and self.transport is not None:
            self._read_paused = False
            self.transport.resume_reading()
        return data

    async def send(self, data: bytes, patience: float) -> None:
        """Write `data`, then wait while the transport is full, unless the upstream starts
        answering (the caller reads that answer). Raises TimeoutError, or OSError."""
        transport = self.transport
        if transport is None or self._eof or transport.is_closing():
            raise ConnectionError("the connection is closed")
        transport.write(data)
        while self._write_paused and not self.ready():
            await self._wait(patience)
        if self._error is not None:
            raise ConnectionError(str(self._error) or "connection reset") from self._error

    def close(self) -> None:
        """Close now: no flush of what an upstream that stopped reading never took, and no
        wait for a TLS close_notify (as anyio's tls_standard_compatible=False)."""
        if self.transport is not None:
            self.transport.abort()


async def open_connection(
    host: str, port: int, ssl_context: ssl.SSLContext | None, server_name: str | None
) -> UpstreamProtocol:
    """Connect (and shake hands, with TLS: SNI and the certificate check use `server_name`).
    The caller bounds it with `connect_timeout`."""
    loop = asyncio.get_running_loop()
    if ssl_context is None:
        _, protocol = await loop.create_connection(UpstreamProtocol, host, port)
    else:
        _, protocol = await loop.create_connection(
            UpstreamProtocol, host, port, ssl=ssl_context, server_hostname=server_name
        )
    return protocol


# -- one exchange: the same steps as _native.py's anyio path --------------------------------


async def _send(protocol: UpstreamProtocol, data: bytes, patience: float) -> None:
    try:
        await protocol.send(data, patience)
    except TimeoutError as exc:  # before OSError: it is one
        raise UpstreamTimeout("write timeout") from exc
    except OSError as exc:
        raise WriteFailed() from exc


async def _early_answer(conn: _Connection, parser: ResponseParser, patience: float) -> None:
    """As `_native._early_answer`: the final answer (or the end) stops the body."""
    assert conn.proto is not None
    try:
        data = await conn.proto.receive(patience)
    except TimeoutError as exc:  # before OSError: it is one
        raise UpstreamTimeout("write timeout") from exc
    except OSError as exc:
        raise WriteFailed() from exc
    conn.received += len(data)
    early_answer(parser, data)


async def write_request(
    conn: _Connection,
    parser: ResponseParser,
    request: UpstreamRequest,
    head: bytes,
    length: int | None,
    chunked: bool,
) -> None:
    """Write the head and the body; each write must finish within `write_timeout` (the wait
    for the next body chunk, a slow client, is not counted). Raises WriteFailed."""
    protocol = conn.proto
    assert protocol is not None
    timeout = request.write_timeout
    body = request.body
    if body is None:
        await _send(protocol, head, timeout)
        return
    content = request.content
    if content is not None:
        if length is not None and len(content) != length:
            raise UpstreamProtocolError(
                f"the body is {len(content)} bytes but its content-length says {length}"
            )
        if len(content) <= _JOIN_LIMIT:
            if chunked:
                content = chunk_frame(content) + last_chunk() if content else last_chunk()
            await _send(protocol, head + content, timeout)
        elif chunked:
            await _send(protocol, head + b"%x\r\n" % len(content), timeout)
            await _send(protocol, content, timeout)
            await _send(protocol, b"\r\n" + last_chunk(), timeout)
        else:
            await _send(protocol, head, timeout)
            await _send(protocol, content, timeout)
        return
    await _send(protocol, head, timeout)
    sent = 0
    iterator = aiter(body)
    finished = False
    try:
        async for chunk in iterator:
            if not chunk:
                continue
            sent += len(chunk)
            if length is not None and sent > length:
                raise UpstreamProtocolError(f"the body is longer than its content-length {length}")
            if protocol.ready() or conn.answered_early():
                await _early_answer(conn, parser, timeout)
            if not chunked:
                await _send(protocol, chunk, timeout)
            elif len(chunk) <= _JOIN_LIMIT:
                await _send(protocol, chunk_frame(chunk), timeout)
            else:
                await _send(protocol, b"%x\r\n" % len(chunk) + chunk + b"\r\n", timeout)
        finished = True
    finally:
        if not finished:  # stopped early: close the source now, not at garbage collection
            close = getattr(iterator, "aclose", None)
            if close is not None:
                await close()
    if chunked:
        await _send(protocol, last_chunk(), timeout)
    elif length is not None and sent != length:
        raise UpstreamProtocolError(f"the body is {sent} bytes but its content-length is {length}")


async def read_head(conn: _Connection, parser: ResponseParser, read_timeout: float) -> None:
    """Read until the final response head is parsed (1xx responses are skipped). Raises
    StaleConnection when a reused connection ends before any byte."""
    protocol = conn.proto
    assert protocol is not None
    while parser.status is None:
        try:
            data = await protocol.receive(read_timeout)
        except TimeoutError as exc:  # before OSError: it is one
            raise UpstreamTimeout("read timeout") from exc
        except OSError as exc:
            if conn.reused and not conn.received:
                raise StaleConnection() from exc
            raise UpstreamProtocolError(str(exc) or "connection reset") from exc
        try:
            if not data:
                if conn.reused and not conn.received:
                    raise StaleConnection()
                parser.feed_eof()
            else:
                conn.received += len(data)
                parser.feed(data)
        except MalformedResponse as exc:
            raise UpstreamProtocolError(str(exc)) from exc
        if conn.received > HEAD_LIMIT and parser.status is None:
            raise UpstreamProtocolError(f"the response head is over {HEAD_LIMIT} bytes")


async def receive_body(conn: _Connection, parser: ResponseParser, patience: float) -> None:
    """Feed the parser the next bytes of the body."""
    assert conn.proto is not None
    try:
        data = await conn.proto.receive(patience)
    except TimeoutError as exc:  # before OSError: it is one
        raise UpstreamTimeout("read timeout") from exc
    except OSError as exc:
        raise UpstreamProtocolError(str(exc) or "connection reset") from exc
    try:
        if data:
            parser.feed(data)
        else:
            parser.feed_eof()
    except MalformedResponse as exc:
        raise UpstreamProtocolError(str(exc)) from exc
