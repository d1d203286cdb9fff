"""HttpxEngine: upstream HTTP through httpx transports (the only module that imports httpx).

Transparent on purpose: it calls the transport directly, so there is no cookie jar, no
environment proxies, no default headers and no decoding; each (scheme, host, port, TLS
settings) gets its own keep-alive pool.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from typing import Any

import httpx

from .._exceptions import (
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from ._base import Engine, UpstreamRequest, UpstreamResponse

__all__ = ["HttpxEngine"]


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except httpx.ConnectTimeout as exc:
        raise UpstreamConnectTimeout(str(exc) or "connect timeout") from exc
    except httpx.ConnectError as exc:
        raise UpstreamConnectError(str(exc) or "connection failed") from exc
    except httpx.TimeoutException as exc:
        raise UpstreamTimeout(str(exc) or type(exc).__name__) from exc
    except httpx.TransportError as exc:
        raise UpstreamProtocolError(str(exc) or type(exc).__name__) from exc


class _Body(httpx.AsyncByteStream):
    def __init__(self, body: AsyncIterable[bytes]) -> None:
        self._body = body

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._body:
            yield chunk


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
        self._transports: dict[tuple[str, str, int, bool], httpx.AsyncHTTPTransport] = {}

    def _transport(self, request: UpstreamRequest) -> httpx.AsyncHTTPTransport:
        key = (request.scheme, request.host, request.port, request.tls_verify)
        transport = self._transports.get(key)
        if transport is None:
            verify: ssl.SSLContext | bool = request.tls_verify
            if request.scheme == "https" and request.tls_verify:
                verify = ssl.create_default_context()
            transport = httpx.AsyncHTTPTransport(
                verify=verify,
                limits=self._limits,
                http2=self._http2,
                trust_env=False,
                retries=0,
            )
            self._transports[key] = transport
        return transport

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        headers = request.headers
        stream: httpx.AsyncByteStream = httpx.ByteStream(b"")
        if request.body is not None:
            stream = _Body(request.body)
            if not any(k == b"content-length" for k, _ in headers):
                headers = [*headers, (b"transfer-encoding", b"chunked")]
        # httpx would normalize dot segments and re-quote the target; httpcore's `target`
        # extension sends it byte for byte.
        url = httpx.URL(scheme=request.scheme, host=request.host, port=request.port, path="/")
        extensions: dict[str, Any] = {"target": request.target}
        if request.server_name and request.server_name != request.host:
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
        transport = self._transport(request)
        try:
            with _translated():
                response = await transport.handle_async_request(outgoing)
        except UpstreamError:
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        raw_headers = [(k.lower(), v) for k, v in response.headers.raw]
        version = response.extensions.get("http_version", b"HTTP/1.1")
        return UpstreamResponse(
            response.status_code,
            raw_headers,
            stream=_raw(response.stream),
            on_close=response.aclose,
            http_version=version.decode("ascii", "replace").removeprefix("HTTP/"),
        )

    async def aclose(self) -> None:
        transports, self._transports = self._transports, {}
        for transport in transports.values():
            await transport.aclose()


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
