"""HttpxEngine: upstream HTTP through httpx transports (the only module that imports httpx).

Transparent on purpose: it calls the transport directly, so there is no cookie jar, no
environment proxies, no default headers and no decoding; each (scheme, host, port, TLS
server name and settings) gets its own keep-alive pool, so a connection made for one server
name, or presenting one client certificate, is never reused for another.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from typing import Any

import httpx

from .._exceptions import (
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from ._base import Engine, TLSContexts, TLSSetting, UpstreamRequest, UpstreamResponse
from ._websocket import UpstreamWebSocket, connect_network_websocket

__all__ = ["HttpxEngine"]


_PoolKey = tuple[str, str, int, str | None, TLSSetting | None]


class _Pool:
    """The keep-alive pool of one (scheme, address, TLS setting), with its use."""

    __slots__ = ("in_flight", "last_used", "transport")

    def __init__(self, transport: httpx.AsyncHTTPTransport) -> None:
        self.transport = transport
        self.in_flight = 0
        self.last_used = time.monotonic()


def _reason(exc: BaseException, default: str) -> str:
    """The first message along the chain of causes (trio's wrappers often have none)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        if str(seen):
            return str(seen)
        seen = seen.__cause__ or seen.__context__
    return default


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except httpx.ConnectTimeout as exc:
        raise UpstreamConnectTimeout(_reason(exc, "connect timeout")) from exc
    except httpx.ConnectError as exc:
        raise UpstreamConnectError(_reason(exc, "connection failed")) from exc
    except httpx.TimeoutException as exc:
        raise UpstreamTimeout(_reason(exc, type(exc).__name__)) from exc
    except httpx.TransportError as exc:
        raise UpstreamProtocolError(_reason(exc, type(exc).__name__)) from exc


class _Body(httpx.AsyncByteStream):
    """The request body for httpcore; `aclose()` closes the source if it was left unread."""

    def __init__(self, body: AsyncIterable[bytes]) -> None:
        # An iterator, not a generator over it: nothing is left for the garbage collector
        # to finalize when httpcore stops reading early.
        self._body = aiter(body)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._body

    async def aclose(self) -> None:
        close = getattr(self._body, "aclose", None)
        if close is not None:
            await close()


async def _raw(stream: httpx.AsyncByteStream) -> AsyncIterator[bytes]:
    with _translated():
        async for chunk in stream:
            yield chunk


class HttpxEngine(Engine):
    """Send upstream requests with httpx (HTTP/1.1; `http2=True` needs `httpx[http2]`).

    `max_connections` / `max_keepalive` bound each upstream's pool; idle connections close
    after `keepalive_expiry` seconds.
    """

    def __init__(
        self,
        *,
        max_connections: int | None = 1000,
        max_keepalive: int = 200,
        keepalive_expiry: float = 60.0,
        http2: bool = False,
    ) -> None:
        self._limits = httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_keepalive,
            keepalive_expiry=keepalive_expiry,
        )
        self._http2 = http2
        self._keepalive_expiry = keepalive_expiry
        self._transports: dict[_PoolKey, _Pool] = {}
        self._tls = TLSContexts()
        self._next_sweep = time.monotonic() + keepalive_expiry

    def _pool(self, request: UpstreamRequest) -> _Pool:
        # httpcore pools connections by (scheme, host, port): a TLS connection is bound to
        # the name it was opened (SNI) and verified for, and to the client certificate it
        # presented, so each name and each TLS setting needs a pool of its own.
        server_name: str | None = None
        tls: TLSSetting | None = None
        if request.scheme == "https":
            server_name = request.server_name or request.host
            tls = (request.tls_verify, request.ca_certificates, request.client_certificate)
        key = (request.scheme, request.host, request.port, server_name, tls)
        pool = self._transports.get(key)
        if pool is None:
            transport = httpx.AsyncHTTPTransport(
                verify=False if tls is None else self._tls.get(tls),
                limits=self._limits,
                http2=self._http2,
                trust_env=False,
                retries=0,
            )
            pool = self._transports[key] = _Pool(transport)
        return pool

    async def _sweep(self, now: float) -> None:
        """Close the pools nobody used for `keepalive_expiry` seconds: targets come and go
        (DNS, service discovery), and httpcore only expires a pool's idle connections when
        that pool is used again."""
        self._next_sweep = now + self._keepalive_expiry
        idle_since = now - self._keepalive_expiry
        stale = [
            key
            for key, pool in self._transports.items()
            if pool.in_flight == 0 and pool.last_used < idle_since
        ]
        for key in stale:
            await self._transports.pop(key).transport.aclose()

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        headers = request.headers
        stream: httpx.AsyncByteStream = httpx.ByteStream(b"")
        body: _Body | None = None
        if request.body is not None:
            stream = body = _Body(request.body)
            if not any(k == b"content-length" for k, _ in headers):
                headers = [*headers, (b"transfer-encoding", b"chunked")]
        # httpx would normalize dot segments and re-quote the target; httpcore's `target`
        # extension sends it byte for byte.
        url = httpx.URL(scheme=request.scheme, host=request.host, port=request.port, path="/")
        extensions: dict[str, Any] = {"target": request.target}
        if request.scheme == "https" and request.server_name:
            # The name sent as SNI is the one the certificate is checked against.
            extensions["sni_hostname"] = request.server_name
        extensions["timeout"] = {
            "connect": request.connect_timeout,
            "read": request.read_timeout,
            "write": request.write_timeout,
            "pool": request.connect_timeout,
        }
        outgoing = httpx.Request(
            request.method, url, headers=headers, stream=stream, extensions=extensions
        )
        now = time.monotonic()
        if now >= self._next_sweep:
            await self._sweep(now)
        pool = self._pool(request)
        pool.in_flight += 1
        pool.last_used = now
        try:
            with _translated():
                response = await pool.transport.handle_async_request(outgoing)
        except BaseException:
            pool.in_flight -= 1
            if body is not None:
                await body.aclose()
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        raw_headers = [(k.lower(), v) for k, v in response.headers.raw]
        version = response.extensions.get("http_version", b"HTTP/1.1")

        async def close() -> None:
            pool.in_flight -= 1
            pool.last_used = time.monotonic()
            try:
                await response.aclose()
            finally:
                if body is not None:
                    await body.aclose()

        return UpstreamResponse(
            response.status_code,
            raw_headers,
            stream=_raw(response.stream),
            on_close=close,
            http_version=version.decode("ascii", "replace").removeprefix("HTTP/"),
        )

    async def connect_websocket(
        self, request: UpstreamRequest
    ) -> UpstreamWebSocket | UpstreamResponse:
        """A WebSocket over the network, with this engine's TLS contexts."""
        return await connect_network_websocket(request, self._tls)

    async def aclose(self) -> None:
        pools, self._transports = self._transports, {}
        self._tls = TLSContexts()
        for pool in pools.values():
            await pool.transport.aclose()


def asgi_client(
    app: Any,
    *,
    base_url: str,
    client: tuple[str, int],
    headers: dict[str, str] | None = None,
) -> httpx.AsyncClient:
    """An httpx client that calls an ASGI app in-process (used by `pygateway.testing`)."""
    transport = httpx.ASGITransport(app=app, client=client)
    return httpx.AsyncClient(
        transport=transport, base_url=base_url, headers=headers, trust_env=False
    )
