"""The engine seam: how the runloop talks to upstreams.

An engine turns one `UpstreamRequest` (raw byte headers, an async byte stream for the body)
into one `UpstreamResponse` (status, raw headers, an async byte stream), and nothing else:
it never follows redirects, decompresses, adds headers or keeps cookies, and it sends exactly
the target it is given. Failures are translated at the seam into `UpstreamError` subclasses.

Close every response you get (`await response.aclose()`) as if it were an `async with`
block opened by `send`: in the task that sent the request, most recent response first, and
not from inside a cancel scope entered after `send` returned. An engine may keep a task group
open from `send` to `aclose` (ASGIEngine runs the app in one); the runloop closes this way.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs

from .._exceptions import UpstreamConnectError
from .._types import RawHeaders

if TYPE_CHECKING:
    from ._websocket import UpstreamWebSocket

__all__ = ["Engine", "UpstreamRequest", "UpstreamResponse"]


@attrs.define(slots=True)
class UpstreamRequest:
    """What to send upstream. `target` is the request target: path plus `?query`, as bytes."""

    method: str
    scheme: str
    host: str
    port: int
    target: bytes
    headers: RawHeaders
    #: The request body, or None when the request has none. With a `content-length` header
    #: it is sent as is, otherwise chunked.
    body: AsyncIterable[bytes] | None = None
    connect_timeout: float = 60.0
    write_timeout: float = 60.0
    read_timeout: float = 60.0
    tls_verify: bool = True
    #: Host name for TLS SNI and certificate checks (defaults to `host`).
    server_name: str | None = None
    #: PEM texts of the only CAs to trust (with `tls_verify`); empty: the system's store.
    ca_certificates: tuple[str, ...] = ()
    #: (certificate chain PEM, private key PEM) to present when the upstream asks (mTLS).
    client_certificate: tuple[str, str] | None = None
    extensions: dict[str, Any] = attrs.field(factory=dict)
    #: The whole body once `read()` was awaited.
    content: bytes | None = None

    async def read(self) -> bytes:
        """Read the whole body (once); afterwards `content` holds it and `body` replays it."""
        if self.content is None:
            self.content = (
                b"" if self.body is None else b"".join([chunk async for chunk in self.body])
            )
            self.body = _Replay(self.content)
        return self.content

    @property
    def url(self) -> str:
        default = 443 if self.scheme == "https" else 80
        netloc = self.host if self.port == default else f"{self.host}:{self.port}"
        if ":" in self.host and not self.host.startswith("["):
            netloc = f"[{self.host}]" if self.port == default else f"[{self.host}]:{self.port}"
        return f"{self.scheme}://{netloc}{self.target.decode('latin-1')}"


def load_cert_chain(context: ssl.SSLContext, cert: str, key: str) -> None:
    """Load a certificate chain and its private key, given as PEM texts, into `context`.

    The ssl module reads them from files only: they are written to a private temporary
    directory (mode 0700) and deleted as soon as they are loaded. Raises `ssl.SSLError` as
    `SSLContext.load_cert_chain` does, and ValueError for an encrypted key (there is no
    passphrase to give it, and OpenSSL must not prompt for one on the terminal).
    """
    with tempfile.TemporaryDirectory(prefix="pygateway-tls-") as directory:
        cert_file = os.path.join(directory, "cert.pem")
        key_file = os.path.join(directory, "key.pem")
        for path, text in ((cert_file, cert), (key_file, key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                file.write(text)
        context.load_cert_chain(cert_file, key_file, password=_no_passphrase)


def client_ssl_context(
    verify: bool, authorities: tuple[str, ...], client: tuple[str, str] | None
) -> ssl.SSLContext:
    """A client-side TLS context for one setting.

    `authorities`, when given, replace the system's store (Kong's semantics for a service's
    CA certificates); `client` is a (certificate chain, key) pair, sent whenever the server
    asks, verified or not. Unusable material raises `UpstreamConnectError` (a 502).
    """
    try:
        if not verify:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        elif authorities:
            context = ssl.create_default_context(cadata="\n".join(authorities))
        else:
            context = ssl.create_default_context()
        if client is not None:
            load_cert_chain(context, *client)
    except (ssl.SSLError, ValueError) as exc:
        raise UpstreamConnectError(f"unusable TLS settings: {exc}") from exc
    return context


#: What a client TLS context is built from: (tls_verify, CA PEM texts, (cert, key) or None).
TLSSetting = tuple[bool, tuple[str, ...], tuple[str, str] | None]


class TLSContexts:
    """One client context per distinct TLS setting, built when first needed and kept for
    the owner's life (an engine's: the system store is read when its context is built)."""

    __slots__ = ("_contexts",)

    def __init__(self) -> None:
        self._contexts: dict[TLSSetting, ssl.SSLContext] = {}

    def get(self, setting: TLSSetting) -> ssl.SSLContext:
        context = self._contexts.get(setting)
        if context is None:
            context = self._contexts[setting] = client_ssl_context(*setting)
        return context


def _no_passphrase() -> bytes:
    raise ValueError("encrypted keys are not supported")


class _Replay:
    __slots__ = ("content",)

    def __init__(self, content: bytes) -> None:
        self.content = content

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self.content:
            yield self.content


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover


class _One:
    """A body of one chunk, `exhausted` once it was handed over."""

    __slots__ = ("content", "exhausted")

    def __init__(self, content: bytes) -> None:
        self.content = content
        self.exhausted = False

    def __aiter__(self) -> _One:
        return self

    async def __anext__(self) -> bytes:
        if self.exhausted:
            raise StopAsyncIteration
        self.exhausted = True
        return self.content


def exhausted(stream: AsyncIterable[bytes]) -> bool:
    """Whether `stream` says it handed over its last chunk (an optional `exhausted`
    attribute of engines' body streams): the relay then ends the response with that chunk
    rather than with an empty message after it."""
    return getattr(stream, "exhausted", False) is True


class UpstreamResponse:
    """The upstream's answer: `status_code`, raw `headers`, and `stream` (async bytes).

    A `stream` may have an `exhausted` attribute, true once the chunk it last gave was its
    last one (the gateway then sends that chunk as the end of the response).

    `UpstreamResponse(200, [(b"content-type", b"text/plain")], content=b"hi")` builds one
    directly (handy in `MockEngine` handlers). `on_close` runs once, on `aclose()`.

    Close it like an `async with` block opened by `Engine.send`: in the sending task, after
    any response received later, outside cancel scopes entered since (see the module doc).
    """

    __slots__ = ("_closed", "_on_close", "headers", "http_version", "status_code", "stream")

    def __init__(
        self,
        status_code: int,
        headers: RawHeaders | None = None,
        *,
        stream: AsyncIterable[bytes] | None = None,
        content: bytes | None = None,
        on_close: Callable[[], Awaitable[None]] | None = None,
        http_version: str = "1.1",
    ) -> None:
        self.status_code = status_code
        self.headers: RawHeaders = list(headers or [])
        if stream is None:
            stream = _One(content) if content else _empty()
        self.stream = stream
        self.http_version = http_version
        self._on_close = on_close
        self._closed = False

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.stream])

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            # A stream left half-read is closed now, not whenever it is garbage collected.
            close_stream = getattr(self.stream, "aclose", None)
            if close_stream is not None:
                await close_stream()
        finally:
            if self._on_close is not None:
                await self._on_close()

    def __repr__(self) -> str:
        return f"<UpstreamResponse [{self.status_code}]>"


class Engine:
    """Base class of engines. Implement `send`; override `aclose` if you hold resources.

    Callers close each response in the task that sent it, last received first (see the
    module doc), so an engine may hold a task group or cancel scope from `send` to `aclose`.
    """

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        raise NotImplementedError(
            f"{type(self).__name__}.send() must be implemented: take an UpstreamRequest, "
            "return an UpstreamResponse, raise UpstreamError subclasses on failure"
        )

    async def connect_websocket(
        self, request: UpstreamRequest
    ) -> UpstreamWebSocket | UpstreamResponse:
        """Perform a WebSocket handshake: the accepted connection, or the upstream's refusal.

        `request` is the handshake (GET, no body); its `Sec-WebSocket-Protocol` header holds
        the subprotocols offered. The default opens a connection over the network (wsproto,
        on anyio streams), with the request's timeouts and TLS settings.
        """
        from ._websocket import connect_network_websocket

        return await connect_network_websocket(request, TLSContexts())

    async def aclose(self) -> None:
        """Release connections and other resources. The gateway calls it on shutdown."""

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
