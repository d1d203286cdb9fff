"""NativeEngine: HTTP/1.1 to upstreams written directly on anyio streams (asyncio and trio).

Why not httpx: its connection pool rescans every connection on each request, which costs
milliseconds under concurrency. Here each (scheme, address, TLS setting) pool is a deque of
idle connections and a counter, so checking one out is O(1), and a request is one write
and, for small answers, one read. The wire format and the two response parsers (httptools,
h11) live in `_http11.py`. On asyncio (and uvloop) with httptools, connections are built on
an `asyncio.Protocol` instead (`_aioproto.py`: about a third less CPU per request); the
pool, the framing and the error rules are the same on both roads.

What it copies from HttpxEngine is the behaviour: one pool per scheme, host, port, TLS
server name and TLS settings; the target and headers sent byte for byte; `transfer-encoding:
chunked` added only for a body without a length; foreign errors translated at the seam.
"""

from __future__ import annotations

import asyncio
import math
import os
import select
import socket
import ssl
import time
from collections import deque

import anyio
import anyio.abc

from .._exceptions import (
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from .._types import RawHeaders
from . import _aioproto
from ._base import Engine, TLSContexts, TLSSetting, UpstreamRequest, UpstreamResponse
from ._http11 import (
    HEAD_LIMIT,
    MalformedResponse,
    ResponseParser,
    chunk_frame,
    early_answer,
    last_chunk,
    parser_factory,
    request_head,
)
from ._http11 import StaleConnection as _Stale
from ._http11 import WriteFailed as _WriteFailed
from ._websocket import UpstreamWebSocket, connect_network_websocket

__all__ = ["NativeEngine"]

_PoolKey = tuple[str, str, int, str | None, TLSSetting | None]

_READ_SIZE = 65536
#: Bodies up to this size are written in one piece with what precedes them (one syscall);
#: bigger ones are written as they are, never copied.
_JOIN_LIMIT = 16384
#: A dead connection is any of these (ssl.SSLError is an OSError).
_BROKEN = (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError)


def _reason(exc: BaseException, default: str) -> str:
    """The messages along the chain of causes (anyio's "All connection attempts failed" says
    little without the one below it)."""
    parts: list[str] = []
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            break
        if str(seen) and str(seen) not in parts:
            parts.append(str(seen))
        seen = seen.__cause__ or seen.__context__
    return ": ".join(parts) or default


async def _close(conn: _Connection) -> None:
    if conn.proto is not None:
        conn.proto.close()
        return
    with anyio.CancelScope(shield=True):
        try:
            await conn.stream.aclose()
        except (*_BROKEN, anyio.EndOfStream):
            pass


def _readable(sock: socket.socket) -> bool:
    """Has the peer sent something (or closed)? One non-blocking poll."""
    try:
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            return bool(poller.poll(0))
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


class _Connection:
    """An anyio stream (`stream`), or on asyncio's fast path an `_aioproto.UpstreamProtocol`
    (`proto`; then `stream` is unused)."""

    __slots__ = ("expires", "proto", "received", "reused", "sock", "stream", "tls")

    def __init__(
        self,
        stream: anyio.abc.ByteStream | None,
        tls: bool,
        proto: _aioproto.UpstreamProtocol | None = None,
    ) -> None:
        self.stream: anyio.abc.ByteStream = stream  # type: ignore[assignment]
        self.proto = proto
        if proto is not None:
            transport = proto.transport
            self.sock: socket.socket | None = (
                None if transport is None else transport.get_extra_info("socket")
            )
        else:
            assert stream is not None
            self.sock = stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
        self.tls = tls
        self.reused = False
        self.received = 0  # bytes received for the current request
        self.expires = 0.0

    def is_dead(self) -> bool:
        """Readable while idle means closed by the upstream (or sent unasked-for bytes).
        A protocol's socket is polled too: the loop may not have seen the close yet."""
        if self.proto is not None and self.proto.ready():
            return True
        return self.sock is not None and _readable(self.sock)

    def answered_early(self) -> bool:
        """Has the upstream sent something while the request body is still going out?

        Not asked of TLS connections: a TLS 1.3 session ticket makes the socket readable
        with nothing for the application, and reading would wait for the response."""
        return self.sock is not None and not self.tls and _readable(self.sock)


class _Pool:
    """The connections to one (scheme, address, TLS setting): idle ones in a deque (the most
    recently used on the right, reused first), and a count of all that are open."""

    __slots__ = (
        "closed",
        "count",
        "expiry",
        "idle",
        "last_used",
        "limit",
        "max_idle",
        "proto",
        "server_name",
        "ssl_context",
        "waiters",
    )

    def __init__(
        self,
        limit: int | None,
        max_idle: int,
        expiry: float,
        ssl_context: ssl.SSLContext | None,
        server_name: str | None,
        proto: bool,
    ) -> None:
        self.proto = proto  # connections on asyncio's fast path, when on asyncio
        self.limit = limit
        self.max_idle = max_idle
        self.expiry = expiry
        self.ssl_context = ssl_context
        self.server_name = server_name
        self.idle: deque[_Connection] = deque()
        self.count = 0  # open connections: idle, in use and being opened
        self.waiters: deque[anyio.Event] = deque()
        self.closed = False
        self.last_used = time.monotonic()

    async def acquire(self, request: UpstreamRequest, *, fresh: bool) -> _Connection:
        """An idle connection (unless `fresh`), else a new one within the limit, else wait.

        Expiry is checked here, lazily: the oldest idle connections are on the left. An idle
        connection is polled before it is reused (one syscall, as httpcore does): readable
        means the upstream closed it, or sent bytes nobody asked for.
        """
        idle = self.idle
        while True:
            if idle:
                now = time.monotonic()
                while idle and idle[0].expires <= now:
                    await self.discard(idle.popleft())
            if idle and not fresh:
                conn = idle.pop()
                if conn.is_dead():
                    await self.discard(conn)
                    continue
                return conn
            if self.limit is None or self.count < self.limit:
                self.count += 1
                try:
                    return await self._connect(request)
                except BaseException:
                    self.count -= 1
                    self._wake()
                    raise
            if idle:  # at the limit, and a new connection is wanted: make room
                await self.discard(idle.popleft())
                continue
            await self._wait(request.connect_timeout)

    async def _connect(self, request: UpstreamRequest) -> _Connection:
        tls = self.ssl_context is not None
        try:
            with anyio.fail_after(request.connect_timeout):
                if self.proto and _on_asyncio():
                    protocol = await _aioproto.open_connection(
                        request.host, request.port, self.ssl_context, self.server_name
                    )
                    return _Connection(None, tls, protocol)
                return _Connection(await self._connect_stream(request), tls)
        except TimeoutError as exc:  # before OSError: it is one
            raise UpstreamConnectTimeout(_reason(exc, "connect timeout")) from exc
        except (*_BROKEN, anyio.EndOfStream, ValueError) as exc:
            # Refused, unreachable, DNS, TLS handshake (a certificate refused), a bad name.
            raise UpstreamConnectError(_reason(exc, "connection failed")) from exc

    async def _connect_stream(self, request: UpstreamRequest) -> anyio.abc.ByteStream:
        if self.ssl_context is None:
            return await anyio.connect_tcp(request.host, request.port)
        # SNI and the certificate check use the server name; no close_notify wait.
        return await anyio.connect_tcp(
            request.host,
            request.port,
            tls=True,
            ssl_context=self.ssl_context,
            tls_hostname=self.server_name,
            tls_standard_compatible=False,
        )

    async def _wait(self, patience: float) -> None:
        """Wait for a connection to come back or close (a pool timeout is `connect_timeout`,
        as HttpxEngine's)."""
        event = anyio.Event()
        self.waiters.append(event)
        try:
            with anyio.fail_after(patience):
                await event.wait()
        except BaseException as exc:
            if event.is_set():
                self._wake()  # woken while leaving: the next one may have the connection
            else:
                self.waiters.remove(event)
            if isinstance(exc, TimeoutError):
                raise UpstreamTimeout(
                    f"pool timeout: all {self.limit} connections to this upstream are busy"
                ) from None
            raise

    def _wake(self) -> None:
        if self.waiters:
            self.waiters.popleft().set()

    def keep(self, conn: _Connection) -> bool:
        """Put a connection whose exchange completed back (False: no room, close it)."""
        if self.closed or len(self.idle) >= self.max_idle:
            return False
        conn.reused = True
        conn.expires = time.monotonic() + self.expiry
        self.idle.append(conn)
        self._wake()
        return True

    async def discard(self, conn: _Connection) -> None:
        self.count -= 1
        self._wake()
        await _close(conn)

    async def aclose(self) -> None:
        self.closed = True
        while self.waiters:  # they open connections of their own, closed after use
            self.waiters.popleft().set()
        while self.idle:
            await self.discard(self.idle.pop())


def _on_asyncio() -> bool:
    """Is an asyncio loop (uvloop's too) running this task? (False on trio.)"""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _framing(headers: RawHeaders) -> tuple[int | None, bool, bool]:
    """(content-length, a transfer-encoding given, connection: close asked) from headers."""
    length: int | None = None
    encoded = close = False
    for name, value in headers:
        if len(name) not in (10, 14, 17):  # connection, content-length, transfer-encoding
            continue
        name = name.lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            encoded = True
        elif name == b"connection":
            close = close or b"close" in value.lower()
    return length, encoded, close


def _expire_in(scope: anyio.CancelScope, seconds: float) -> None:
    """Move the scope's deadline to `seconds` from now, unless it is already within 10 ms of
    that: moving it reschedules a timer, a good part of the cost of a small request, and
    with equal write and read timeouts (the usual case) the head's write and read share one.
    """
    deadline = anyio.current_time() + seconds
    if abs(scope.deadline - deadline) > 0.01:
        scope.deadline = deadline


async def _send(stream: anyio.abc.ByteStream, data: bytes) -> None:
    try:
        await stream.send(data)
    except _BROKEN as exc:
        raise _WriteFailed() from exc


async def _early_answer(conn: _Connection, parser: ResponseParser) -> None:
    """Read what the upstream sent while the body was going out. Raises _WriteFailed when
    that is the final answer, or the end of the connection (sending more is pointless)."""
    try:
        data = await conn.stream.receive(_READ_SIZE)
    except anyio.EndOfStream:
        data = b""
    except _BROKEN as exc:
        raise _WriteFailed() from exc
    conn.received += len(data)
    early_answer(parser, data)


async def _write_request(
    conn: _Connection,
    parser: ResponseParser,
    scope: anyio.CancelScope,
    request: UpstreamRequest,
    head: bytes,
    length: int | None,
    chunked: bool,
) -> None:
    """Write the head and the body; each write must finish within `write_timeout`, but the
    time spent waiting for the next body chunk (a slow client) is not counted."""
    stream = conn.stream
    body = request.body
    if body is None:
        await _send(stream, head)
        return
    content = request.content
    if content is not None:  # already read: one write when small, no copy when not
        if length is not None and len(content) != length:
            raise UpstreamProtocolError(
                f"the body is {len(content)} bytes but its content-length says {length}"
            )
        if len(content) <= _JOIN_LIMIT:
            if chunked:
                content = chunk_frame(content) + last_chunk() if content else last_chunk()
            await _send(stream, head + content)
        elif chunked:
            await _send(stream, head + b"%x\r\n" % len(content))
            await _send(stream, content)
            await _send(stream, b"\r\n" + last_chunk())
        else:
            await _send(stream, head)
            await _send(stream, content)
        return
    await _send(stream, head)
    timeout = request.write_timeout
    sent = 0
    iterator = aiter(body)
    finished = False
    try:
        scope.deadline = math.inf
        async for chunk in iterator:
            if not chunk:
                continue
            sent += len(chunk)
            if length is not None and sent > length:
                raise UpstreamProtocolError(f"the body is longer than its content-length {length}")
            _expire_in(scope, timeout)
            if conn.answered_early():
                await _early_answer(conn, parser)
            if not chunked:
                await _send(stream, chunk)
            elif len(chunk) <= _JOIN_LIMIT:
                await _send(stream, chunk_frame(chunk))
            else:
                await _send(stream, b"%x\r\n" % len(chunk))
                await _send(stream, chunk)
                await _send(stream, b"\r\n")
            scope.deadline = math.inf
        finished = True
    finally:
        if not finished:  # stopped early: close the source now, not at garbage collection
            close = getattr(iterator, "aclose", None)
            if close is not None:
                await close()
    _expire_in(scope, timeout)
    if chunked:
        await _send(stream, last_chunk())
    elif length is not None and sent != length:
        raise UpstreamProtocolError(f"the body is {sent} bytes but its content-length is {length}")


async def _read_head(
    conn: _Connection,
    parser: ResponseParser,
    scope: anyio.CancelScope,
    read_timeout: float,
    deadline_set: bool,
) -> None:
    """Read until the final response head is parsed (1xx responses are skipped).

    `deadline_set`: the scope's deadline is already `read_timeout` from now (give or take
    the time a head took to write), so the first read need not look at the clock.
    """
    stream = conn.stream
    while parser.status is None:
        if not deadline_set:
            _expire_in(scope, read_timeout)
        deadline_set = False
        try:
            data = await stream.receive(_READ_SIZE)
        except anyio.EndOfStream:
            data = b""
        except _BROKEN as exc:
            if conn.reused and not conn.received:
                raise _Stale() from exc
            raise UpstreamProtocolError(_reason(exc, "connection reset")) from exc
        try:
            if not data:
                if conn.reused and not conn.received:
                    raise _Stale()
                parser.feed_eof()
            else:
                conn.received += len(data)
                parser.feed(data)
        except MalformedResponse as exc:
            raise UpstreamProtocolError(str(exc)) from exc
        if conn.received > HEAD_LIMIT and parser.status is None:
            raise UpstreamProtocolError(f"the response head is over {HEAD_LIMIT} bytes")


class _ResponseBody:
    """The body of one response, as an async iterator of the chunks as they arrive.

    The connection goes back to the pool once the whole body has been received, if both
    sides allow keep-alive; a body left unfinished when the response is closed, or broken,
    closes its connection (whatever was left on it is of no use to the next request).
    """

    __slots__ = ("_conn", "_failed", "_keep", "_parser", "_pool", "_timeout")

    def __init__(
        self,
        pool: _Pool,
        conn: _Connection,
        parser: ResponseParser,
        keep: bool,
        timeout: float,
    ) -> None:
        self._pool = pool
        self._conn: _Connection | None = conn
        self._parser = parser
        self._keep = keep
        self._timeout = timeout
        self._failed = False

    def __aiter__(self) -> _ResponseBody:
        return self

    @property
    def exhausted(self) -> bool:
        """The whole body was handed over (see `UpstreamResponse`)."""
        return self._parser.done and not self._parser.body

    async def __anext__(self) -> bytes:
        parser = self._parser
        while True:
            pending = parser.body
            if pending:
                parser.body = []
                return pending[0] if len(pending) == 1 else b"".join(pending)
            if parser.done:
                await self._release()
                raise StopAsyncIteration
            if self._failed or self._conn is None:
                raise StopAsyncIteration
            await self._receive(self._conn)

    async def _receive(self, conn: _Connection) -> None:
        parser = self._parser
        self._failed = True  # until this read ends well (a cancelled read leaves it so)
        if conn.proto is not None:
            await _aioproto.receive_body(conn, parser, self._timeout)
            self._failed = False
            return
        try:
            with anyio.fail_after(self._timeout):
                data = await conn.stream.receive(_READ_SIZE)
        except TimeoutError as exc:  # before OSError: it is one
            raise UpstreamTimeout(_reason(exc, "read timeout")) from exc
        except anyio.EndOfStream:
            data = b""
        except _BROKEN as exc:
            raise UpstreamProtocolError(_reason(exc, "connection reset")) from exc
        try:
            if data:
                parser.feed(data)
            else:
                parser.feed_eof()
        except MalformedResponse as exc:
            raise UpstreamProtocolError(str(exc)) from exc
        self._failed = False

    async def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        parser = self._parser
        reusable = parser.done and parser.reusable and self._keep and not self._failed
        if reusable and self._pool.keep(conn):
            return
        await self._pool.discard(conn)

    async def aclose(self) -> None:
        await self._release()


class NativeEngine(Engine):
    """Send upstream requests over HTTP/1.1, on anyio streams (asyncio or trio).

    Args:
        max_connections: open connections per upstream pool (None: no limit); a request
            finding them all busy waits up to its `connect_timeout`, then `UpstreamTimeout`.
        max_keepalive: idle connections kept per pool.
        keepalive_expiry: seconds an idle connection is kept.
        parser: "httptools" (fast, C; an optional dependency), "h11" (pure Python, always
            installed), or None: httptools when it can be imported, else h11.
        transport: "asyncio": on asyncio (and uvloop), connections are built on an
            `asyncio.Protocol`, about a third less CPU per request (needs httptools);
            "anyio": anyio streams everywhere; None (the default): the environment variable
            PYGATEWAY_NATIVE_TRANSPORT if set, else "asyncio" with httptools and "anyio"
            with h11. On trio, connections are always anyio streams.

    A pool is kept per (scheme, host, port, TLS server name, tls_verify, CA certificates,
    client certificate), as in HttpxEngine. Raises ValueError for a bad option and
    ImportError for `parser="httptools"` without httptools.

        engine = NativeEngine(max_connections=100)
        gateway = gw.Gateway(services=[...], engine=engine)
    """

    def __init__(
        self,
        *,
        max_connections: int | None = 1000,
        max_keepalive: int = 200,
        keepalive_expiry: float = 60.0,
        parser: str | None = None,
        transport: str | None = None,
    ) -> None:
        if max_connections is not None and max_connections < 1:
            raise ValueError(f"max_connections must be at least 1 or None (got {max_connections})")
        if max_keepalive < 0:
            raise ValueError(f"max_keepalive must be 0 or more (got {max_keepalive})")
        if keepalive_expiry < 0:
            raise ValueError(f"keepalive_expiry must be 0 or more (got {keepalive_expiry})")
        self.parser, self._make_parser = parser_factory(parser)
        if transport is None:
            transport = os.environ.get("PYGATEWAY_NATIVE_TRANSPORT") or None
            if transport is None:
                transport = "asyncio" if self.parser == "httptools" else "anyio"
            elif transport == "asyncio" and self.parser != "httptools":
                transport = "anyio"  # the variable asks for the fast path where it exists
        if transport not in ("asyncio", "anyio"):
            raise ValueError(f"transport must be 'asyncio', 'anyio' or None (got {transport!r})")
        if transport == "asyncio" and self.parser != "httptools":
            raise ValueError("transport='asyncio' needs parser='httptools'")
        self.transport = transport
        self._tls = TLSContexts()
        self._max_connections = max_connections
        self._max_keepalive = max_keepalive
        self._keepalive_expiry = keepalive_expiry
        self._pools: dict[_PoolKey, _Pool] = {}
        self._next_sweep = time.monotonic() + keepalive_expiry

    def __repr__(self) -> str:
        return f"<NativeEngine parser={self.parser!r} transport={self.transport!r}>"

    def _pool(self, request: UpstreamRequest) -> _Pool:
        # A TLS connection is bound to the name it was opened (SNI) and verified for, and to
        # the client certificate it presented: each name and TLS setting has its own pool.
        server_name: str | None = None
        tls: TLSSetting | None = None
        if request.scheme == "https":
            server_name = request.server_name or request.host
            tls = (request.tls_verify, request.ca_certificates, request.client_certificate)
        key = (request.scheme, request.host, request.port, server_name, tls)
        pool = self._pools.get(key)
        if pool is None:
            context = None if tls is None else self._tls.get(tls)
            pool = self._pools[key] = _Pool(
                self._max_connections,
                self._max_keepalive,
                self._keepalive_expiry,
                context,
                server_name,
                self.transport == "asyncio",
            )
        return pool

    async def _sweep(self, now: float) -> None:
        """Close the pools nobody used for `keepalive_expiry` seconds: targets come and go
        (DNS, service discovery), and idle expiry is only checked when a pool is used."""
        self._next_sweep = now + self._keepalive_expiry
        idle_since = now - self._keepalive_expiry
        stale = [
            key
            for key, pool in self._pools.items()
            if pool.count == len(pool.idle) and pool.last_used < idle_since
        ]
        for key in stale:
            await self._pools.pop(key).aclose()

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        now = time.monotonic()
        if now >= self._next_sweep:
            await self._sweep(now)
        try:
            length, encoded, close = _framing(request.headers)
            # A body with no length goes chunked; HttpxEngine adds the header the same way.
            chunked = request.body is not None and length is None
            head = request_head(
                request.method, request.target, request.headers, chunked and not encoded
            )
        except ValueError as exc:
            raise UpstreamProtocolError(f"invalid request: {exc}") from exc
        pool = self._pool(request)
        pool.last_used = now
        # Sent again on a new connection if a kept-alive one proves stale: only a body that
        # is held whole can be.
        replayable = request.body is None or request.content is not None
        fresh = False
        while True:
            conn = await pool.acquire(request, fresh=fresh)
            try:
                return await self._exchange(pool, conn, request, head, length, chunked, close)
            except _Stale as exc:
                if fresh or not replayable:
                    raise UpstreamProtocolError(
                        "the upstream closed a kept-alive connection before answering"
                    ) from exc
                fresh = True

    async def _exchange(
        self,
        pool: _Pool,
        conn: _Connection,
        request: UpstreamRequest,
        head: bytes,
        length: int | None,
        chunked: bool,
        close: bool,
    ) -> UpstreamResponse:
        parser = self._make_parser(request.method)
        conn.received = 0
        if conn.proto is not None:
            return await self._exchange_proto(
                pool, conn, request, parser, head, length, chunked, close
            )
        write_failed = False
        phase = "write"
        try:
            # One cancel scope for the write and the head; its deadline moves with the phase.
            deadline = anyio.current_time() + request.write_timeout
            with anyio.CancelScope(deadline=deadline) as scope:
                try:
                    await _write_request(conn, parser, scope, request, head, length, chunked)
                except _WriteFailed:
                    # The upstream may have answered and closed before taking the whole
                    # body (a 413, a 401): read that answer rather than fail.
                    write_failed = True
                phase = "read"
                # With no body the write was one small send: the deadline still stands.
                same = request.body is None and request.write_timeout == request.read_timeout
                await _read_head(conn, parser, scope, request.read_timeout, same)
            if scope.cancelled_caught:
                raise UpstreamTimeout(f"{phase} timeout")
        except BaseException:
            await pool.discard(conn)
            raise
        assert parser.status is not None
        keep = not (write_failed or close)
        body = _ResponseBody(pool, conn, parser, keep, request.read_timeout)
        return UpstreamResponse(
            parser.status, parser.headers, stream=body, http_version=parser.http_version
        )

    async def _exchange_proto(
        self,
        pool: _Pool,
        conn: _Connection,
        request: UpstreamRequest,
        parser: ResponseParser,
        head: bytes,
        length: int | None,
        chunked: bool,
        close: bool,
    ) -> UpstreamResponse:
        """`_exchange` on asyncio's fast path: each wait times itself (no cancel scope)."""
        write_failed = False
        try:
            try:
                await _aioproto.write_request(conn, parser, request, head, length, chunked)
            except _WriteFailed:
                write_failed = True  # read the answer the upstream gave, as above
            await _aioproto.read_head(conn, parser, request.read_timeout)
        except BaseException:
            await pool.discard(conn)
            raise
        assert parser.status is not None
        keep = not (write_failed or close)
        body = _ResponseBody(pool, conn, parser, keep, request.read_timeout)
        return UpstreamResponse(
            parser.status, parser.headers, stream=body, http_version=parser.http_version
        )

    async def connect_websocket(
        self, request: UpstreamRequest
    ) -> UpstreamWebSocket | UpstreamResponse:
        """A WebSocket over the network, with this engine's TLS contexts."""
        return await connect_network_websocket(request, self._tls)

    async def aclose(self) -> None:
        """Close idle connections; those in use close when their response is closed. The
        engine can be used again afterwards (with new pools)."""
        pools, self._pools = self._pools, {}
        self._tls = TLSContexts()
        for pool in pools.values():
            await pool.aclose()
