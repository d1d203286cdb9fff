"""What plugins see and may change during one request: Kong's PDK in Python terms.

`ctx.request` is the client's request as received (read-only); `ctx.upstream_request` is
what will be sent upstream (method, path, query, headers, body: all writable in `access`);
`ctx.response` is the response on its way to the client (writable in `header_filter`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import anyio

from ._headers import Headers
from ._headers import _checked_value as _value
from ._types import Message, Receive

if TYPE_CHECKING:
    from ._entities import Consumer, Credential, Route, Service
    from ._gateway import Gateway
    from ._snapshot import Snapshot
    from .plugins._base import Plugin

__all__ = ["ClientDisconnect", "Context", "Request", "ResponseState", "UpstreamRequestState"]

CONSUMER_HEADERS = (
    b"x-consumer-id",
    b"x-consumer-custom-id",
    b"x-consumer-username",
    b"x-credential-identifier",
    b"x-anonymous-consumer",
    b"x-consumer-groups",
)


#: What `Context.authenticate` sets (and so clears first).
_IDENTITY = frozenset(CONSUMER_HEADERS[:5])


class ClientDisconnect(Exception):
    """The client went away (while its request body was read, or the response was sent)."""


class _Body:
    """The client's request body, read from ASGI `receive` once: streamed or buffered.

    `has_body` is None when only the first `http.request` message can tell (HTTP/2 and
    HTTP/3 requests need no Content-Length): `probe()` reads it.
    """

    __slots__ = (
        "buffered",
        "complete",
        "disconnected",
        "done",
        "first",
        "has_body",
        "length",
        "receive",
        "received",
        "released",
        "started",
    )

    def __init__(
        self, receive: Receive, has_body: bool | None, length: bytes | None = None
    ) -> None:
        self.receive = receive
        self.has_body = has_body
        #: The client's Content-Length, when it framed the body with one.
        self.length = length
        self.buffered: bytes | None = b"" if has_body is False else None
        self.started = False
        self.complete = has_body is False
        #: The upstream answered without reading the body: nobody will read it now.
        self.released = False
        #: The client went away while the body was read (an engine may report that as
        #: an upstream failure: it is not one).
        self.disconnected = False
        #: The first message, read by `probe()` and not streamed yet.
        self.first: Message | None = None
        #: Set once the body was read completely, or released (see `settled`).
        self.done: anyio.Event | None = None
        #: Body bytes read from the client so far.
        self.received = 0

    @property
    def settled(self) -> bool:
        """Nothing will read from `receive` for the body any more."""
        return self.complete or self.released

    def _finish(self) -> None:
        self.complete = True
        if self.done is not None:
            self.done.set()

    async def probe(self) -> bool:
        """Whether there is a body; reads the first message if only that can tell."""
        if self.has_body is None:
            if self.buffered is not None:
                self.has_body = bool(self.buffered)
            else:
                message = await self.receive()
                if message["type"] == "http.disconnect":
                    self.disconnected = True
                    raise ClientDisconnect()
                if message.get("body") or message.get("more_body", False):
                    self.has_body = True
                    self.first = message
                else:
                    self.has_body = False
                    self.buffered = b""
                    self._finish()
        return self.has_body

    def release(self) -> None:
        """The upstream answered without starting to read the body: stop waiting for it."""
        if not self.started and not self.complete and self.buffered is None:
            self.released = True
            self.first = None
            if self.done is not None:
                self.done.set()

    async def stream(self) -> AsyncIterator[bytes]:
        if self.buffered is not None:
            if self.buffered:
                yield self.buffered
            return
        if self.released:
            raise RuntimeError("the request body is gone: the upstream answered without it")
        if self.started:
            raise RuntimeError("the request body was already streamed upstream")
        self.started = True
        while True:
            if self.first is not None:
                message, self.first = self.first, None
            else:
                message = await self.receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                raise ClientDisconnect()
            chunk = message.get("body", b"")
            more = message.get("more_body", False)
            if not more:
                self._finish()
            if chunk:
                self.received += len(chunk)
                yield chunk
            if not more:
                return

    async def read(self) -> bytes:
        if self.buffered is None:
            self.buffered = b"".join([c async for c in self.stream()])
        return self.buffered


class Request:
    """The client's request, as the gateway received it."""

    __slots__ = (
        "_body",
        "_query",
        "client_ip",
        "headers",
        "host",
        "http_version",
        "method",
        "path",
        "peer_ip",
        "port",
        "query_string",
        "raw_path",
        "scheme",
        "websocket",
    )

    def __init__(
        self,
        *,
        method: str,
        scheme: str,
        host: str,
        port: int,
        path: str,
        raw_path: str,
        query_string: str,
        headers: Headers,
        client_ip: str,
        peer_ip: str,
        body: _Body,
        http_version: str = "1.1",
        websocket: bool = False,
    ) -> None:
        self.method = method
        self.scheme = scheme
        self.host = host
        self.port = port
        #: The normalized path the router matched (below any mount root_path).
        self.path = path
        #: The path as the client sent it (still percent-encoded, not normalized).
        self.raw_path = raw_path
        self.query_string = query_string
        self.headers = headers
        #: The client's address after the `trusted_ips` / real-IP rules.
        self.client_ip = client_ip
        #: The address of the connecting peer.
        self.peer_ip = peer_ip
        #: "1.0", "1.1", "2" or "3", as the ASGI server reports it.
        self.http_version = http_version
        #: A WebSocket handshake (`scheme` is still http or https, as in Kong).
        self.websocket = websocket
        self._body = body
        self._query: dict[str, str | list[str]] | None = None

    @property
    def query_params(self) -> dict[str, str | list[str]]:
        """Query arguments; a repeated argument gives a list (as Kong's get_query)."""
        if self._query is None:
            query: dict[str, str | list[str]] = {}
            for key, value in parse_qsl(self.query_string, keep_blank_values=True):
                if key in query:
                    previous = query[key]
                    query[key] = (
                        [*previous, value] if isinstance(previous, list) else [previous, value]
                    )
                else:
                    query[key] = value
            self._query = query
        return self._query

    async def body(self) -> bytes:
        """The whole request body. Reading it buffers it; it is still sent upstream."""
        return await self._body.read()

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.path}>"


class UpstreamRequestState:
    """The request that will be sent upstream; plugins change it in `access`."""

    __slots__ = ("body", "headers", "method", "path", "query_string")

    def __init__(self, method: str, path: str, query_string: str, headers: Headers) -> None:
        self.method = method
        #: The upstream path (service path joined with the request path, per path_handling).
        self.path = path
        self.query_string = query_string
        self.headers = headers
        #: Set to bytes to replace the body sent upstream (Content-Length is fixed for you).
        self.body: bytes | None = None


class ResponseState:
    """The response on its way to the client."""

    __slots__ = ("body", "headers", "source", "status_code")

    def __init__(self, status_code: int, headers: Headers, source: str) -> None:
        self.status_code = status_code
        self.headers = headers
        #: "service" (from the upstream), "exit" (a plugin answered) or "error" (the gateway).
        self.source = source
        #: The whole body, only in the `response` phase.
        self.body: bytes | None = None


class Context:
    """Per-request state handed to every plugin phase."""

    __slots__ = (
        "_plugin_states",
        "balancer_cookie",
        "consumer",
        "credential",
        "current_plugin",
        "gateway",
        "latencies",
        "matched_prefix",
        "request",
        "request_id",
        "response",
        "response_body_sent",
        "response_sent",
        "route",
        "service",
        "shared",
        "snapshot",
        "started_at",
        "tries",
        "upstream_request",
        "upstream_status",
        "uri_captures",
    )

    def __init__(
        self,
        gateway: Gateway,
        request: Request,
        request_id: str,
        snapshot: Snapshot | None = None,
    ) -> None:
        self.gateway = gateway
        #: The configuration this request runs on, start to end (even if it is swapped).
        self.snapshot = snapshot if snapshot is not None else gateway.snapshot
        self.request = request
        self.request_id = request_id
        self.started_at = time.time()
        self.route: Route | None = None
        self.service: Service | None = None
        self.consumer: Consumer | None = None
        self.credential: Credential | None = None
        self.uri_captures: dict[str, str] = {}
        self.matched_prefix = ""
        self.upstream_request: UpstreamRequestState | None = None
        self.response: ResponseState | None = None
        #: True once the last part of the response was handed to the server.
        self.response_sent = False
        #: Response body bytes the server took, None if it took no response head (set
        #: for the log phase).
        self.response_body_sent: int | None = None
        self.upstream_status: int | None = None
        #: Shared by every plugin during this request (Kong's `kong.ctx.shared`).
        self.shared: dict[str, Any] = {}
        #: Milliseconds: `proxy` (gateway before the upstream), `upstream`, `response`.
        self.latencies: dict[str, int] = {}
        #: One entry per upstream attempt: {"ip", "port", "error"?}.
        self.tries: list[dict[str, Any]] = []
        self.current_plugin: Plugin | None = None
        #: (Set-Cookie value, cookie value) when cookie hashing gave this client a cookie.
        self.balancer_cookie: tuple[str, str] | None = None
        self._plugin_states: dict[int, dict[str, Any]] = {}

    @property
    def plugin_state(self) -> dict[str, Any]:
        """State private to the running plugin for this request (Kong's `kong.ctx.plugin`)."""
        key = id(self.current_plugin)
        state = self._plugin_states.get(key)
        if state is None:
            state = self._plugin_states[key] = {}
        return state

    @property
    def request_size(self) -> int:
        """The request's bytes, as nginx's `request_length` counts them: request line,
        headers and the body bytes read (the head as HTTP/1.1 frames it: ASGI servers do
        not tell how many bytes they read)."""
        request = self.request
        # "GET /path HTTP/1.1\r\n"
        size = len(request.method) + len(request.raw_path) + 9 + len(request.http_version)
        if request.query_string:
            size += len(request.query_string) + 1
        size += sum(len(k) + len(v) + 4 for k, v in request.headers.raw) + 2
        return size + request._body.received

    @property
    def response_size(self) -> int:
        """The response's bytes, as nginx's `bytes_sent` counts them: status line, headers
        and the body bytes sent, also when the client left halfway (0 when no response
        head was sent). Known in the log phase."""
        response = self.response
        if response is None or self.response_body_sent is None:
            return 0
        size = 17 + sum(len(k) + len(v) + 4 for k, v in response.headers.raw) + 2
        return size + self.response_body_sent

    def authenticate(
        self,
        consumer: Consumer | None,
        credential: Credential | None = None,
        *,
        anonymous: bool = False,
    ) -> None:
        """Record who is calling, and tell the upstream (X-Consumer-* headers).

        Plugins that run after this one see `ctx.consumer`, and plugin configurations scoped
        to that consumer apply to them.
        """
        self.consumer = consumer
        self.credential = credential
        if self.upstream_request is None:
            return
        # On the raw list, in one pass: this runs for every authenticated request.
        raw = self.upstream_request.headers.raw
        for k, _ in raw:
            if k in _IDENTITY:
                raw[:] = [(k, v) for k, v in raw if k not in _IDENTITY]
                break
        raw += _identity_headers(self.snapshot, consumer, credential, anonymous)

    def __repr__(self) -> str:
        return f"<Context {self.request_id} {self.request!r}>"


_IDENTITY_HEADERS = "pygateway.context.identity_headers"
#: Consumer/credential pairs whose identity headers a snapshot keeps (beyond, it forgets
#: them all: a plugin authenticating with consumers made per request cannot grow it).
IDENTITY_CACHE_MAX = 4096

_Identity = tuple[tuple[bytes, bytes], ...]


def _identity_headers(
    snapshot: Snapshot, consumer: Consumer | None, credential: Credential | None, anonymous: bool
) -> _Identity:
    """The X-Consumer-* headers `authenticate` adds for this consumer and credential, checked
    and encoded once per snapshot (the entities are kept with them, so their ids stay
    theirs)."""
    cache: dict[tuple[int, int, bool], tuple[object, object, _Identity]] | None = (
        snapshot.derived.get(_IDENTITY_HEADERS)
    )
    if cache is None:
        cache = snapshot.derived[_IDENTITY_HEADERS] = {}
    key = (id(consumer), id(credential), anonymous)
    cached = cache.get(key)
    if cached is not None and cached[0] is consumer and cached[1] is credential:
        return cached[2]
    made: list[tuple[bytes, bytes]] = []
    if consumer is not None:
        made.append((b"x-consumer-id", _value("x-consumer-id", consumer.id or "")))
        if consumer.custom_id:
            made.append(
                (b"x-consumer-custom-id", _value("x-consumer-custom-id", consumer.custom_id))
            )
        if consumer.username:
            made.append((b"x-consumer-username", _value("x-consumer-username", consumer.username)))
    if credential is not None:
        made.append(
            (b"x-credential-identifier", _value("x-credential-identifier", credential.identifier))
        )
    if anonymous:
        made.append((b"x-anonymous-consumer", b"true"))
    if len(cache) >= IDENTITY_CACHE_MAX:
        cache.clear()
    headers = tuple(made)
    cache[key] = (consumer, credential, headers)
    return headers
