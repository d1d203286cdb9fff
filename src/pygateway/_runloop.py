"""The life of one HTTP request, as one readable function: `handle_http`.

    rewrite (global plugins) -> route -> access (plugins by priority, scope resolved lazily)
    -> balance + engine.send (retrying on another peer) -> response / header_filter /
    body_filter (streamed) -> log (after the last byte)

A plugin that answers early skips the remaining `access` handlers; header_filter, body_filter
and log of every applicable plugin still run. A plugin that raises becomes a 500.

One error boundary wraps the request: an exception that escapes it becomes an answer while
nothing was sent (an UpstreamError its 502/504, anything else a logged 500), or leaves a
started response unfinished; a client that went away is logged as 499; the log phase always
runs. Only the server's own cancellation propagates.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import anyio
import anyio.lowlevel

from ._access_log import access_logger, log_access
from ._context import ClientDisconnect, Context, Request, ResponseState, UpstreamRequestState, _Body
from ._exceptions import RequestRejected, UpstreamConnectError, UpstreamError, UpstreamTimeout
from ._headers import Headers
from ._proxy import (
    body_framing,
    escape_path,
    escape_query,
    forwarded_headers,
    host_and_port,
    join_upstream_path,
    real_client_ip,
    request_headers,
    response_headers,
    route_path,
    upstream_host,
    via_token,
)
from ._responses import ErrorResponse, Response, error_response
from ._websocket import DEFAULT_MAX_MESSAGE_SIZE, WebSocketRefusal, accept_headers, relay
from .engines import UpstreamRequest, UpstreamResponse
from .engines._base import exhausted
from .engines._websocket import UpstreamWebSocket

if TYPE_CHECKING:
    from ._entities import Service
    from ._gateway import Gateway
    from ._snapshot import Snapshot
    from ._types import ASGIApp, Message, Receive, Scope, Send
    from .balancers import Peer
    from .balancers._health import Outcome
    from .plugins._base import Plugin

__all__ = ["handle_http"]

logger = logging.getLogger("pygateway.runloop")

_FRAMING = (b"content-length", b"transfer-encoding")


async def handle_http(
    gateway: Gateway,
    snapshot: Snapshot,
    scope: Scope,
    receive: Receive,
    send: Send,
    fallback: ASGIApp | None = None,
) -> None:
    started = time.perf_counter()
    settings = gateway.settings
    headers: list[tuple[bytes, bytes]] = list(scope.get("headers") or [])
    path, raw_path, root_path = route_path(scope)
    host, port, host_header = host_and_port(scope, headers)
    scheme = scope.get("scheme", "http")
    websocket = scope["type"] == "websocket"
    plain_send = send
    if websocket:
        connect = await receive()
        if connect["type"] != "websocket.connect":
            return  # the client left before the handshake
        # The handshake is a GET with no body; HTTP answers to it go out as ASGI says.
        scheme = "https" if scheme == "wss" else "http"
        offered = scope.get("subprotocols")
        if offered and not any(k == b"sec-websocket-protocol" for k, _ in headers):
            # Some servers (uvicorn with wsproto) keep the offer out of the headers.
            headers.append((b"sec-websocket-protocol", ", ".join(offered).encode("latin-1")))
        send = WebSocketRefusal(scope, send)
        body = _Body(receive, False)
    else:
        body = _Body(receive, *body_framing(scope, headers))
    peer = (scope.get("client") or ("", 0))[0] or ""
    client_ip = real_client_ip(
        peer, headers, settings.trusted_ips, settings.real_ip_header, settings.real_ip_recursive
    )
    request = Request(
        method=scope.get("method", "GET"),
        scheme=scheme,
        host=host,
        port=port,
        path=path,
        raw_path=raw_path,
        query_string=scope.get("query_string", b"").decode("latin-1"),
        headers=Headers.wrap(headers),
        client_ip=client_ip,
        peer_ip=peer,
        body=body,
        http_version=scope.get("http_version", "1.1"),
        websocket=websocket,
    )
    request_id = secrets.token_hex(16)
    ctx = Context(gateway, request, request_id, snapshot)
    collected: list[Plugin] = []
    downstream = _Downstream(send)
    fall_through = False
    # The one error boundary of a request: whatever fails becomes an answer if nothing was
    # sent yet, and the log phase runs in any case.
    try:
        fall_through = await _serve(
            ctx, collected, started, host_header, root_path, downstream, fallback is not None
        )
    except anyio.get_cancelled_exc_class():
        raise
    except Exception as exc:
        await _fail(ctx, exc, collected, started, downstream)
    finally:
        if not fall_through:
            if ctx.shared.get("client_disconnected") and not downstream.delivered:
                ctx.response = ResponseState(499, Headers(), "error")
            ctx.latencies["request"] = _ms(started)
            if downstream.delivered:
                ctx.response_body_sent = downstream.body_sent
            await _log(ctx, collected)
            if access_logger.isEnabledFor(logging.INFO):
                log_access(ctx)
    if fall_through:
        assert fallback is not None
        if websocket:
            await fallback(scope, _prepend(connect, receive), plain_send)
        else:
            await fallback(scope, _replay_receive(body, receive), send)


def _prepend(first: Message, receive: Receive) -> Receive:
    """`receive` giving `first` (a message the gateway took already) before the rest."""
    pending = [first]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


def _replay_receive(body: _Body, receive: Receive) -> Receive:
    """`receive` for an app the request falls through to, with any body read replayed."""
    if not body.started:
        return receive
    pending: list[Message] = [
        {"type": "http.request", "body": body.buffered or b"", "more_body": False}
    ]

    async def replay() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replay


class _Downstream:
    """The server's `send`, remembering how far the response got; the server failing to
    send (an OSError: the client's connection is gone) becomes ClientDisconnect."""

    __slots__ = ("body_sent", "delivered", "send", "started")

    def __init__(self, send: Send) -> None:
        self.send = send
        #: Body bytes the server took.
        self.body_sent = 0
        #: The response started: no other can be sent.
        self.started = False
        #: The server took the response's start (the client may have its status).
        self.delivered = False

    async def __call__(self, message: Message) -> None:
        start = message["type"] == "http.response.start"
        if start:
            self.started = True
        try:
            await self.send(message)
        except OSError as exc:
            raise ClientDisconnect() from exc
        if start:
            self.delivered = True
        else:
            self.body_sent += len(message.get("body", b""))


async def _serve(
    ctx: Context,
    collected: list[Plugin],
    started: float,
    host_header: str,
    root_path: str,
    send: _Downstream,
    can_fall_through: bool,
) -> bool:
    """Everything from rewrite to the last byte; True if the request should fall through."""
    snapshot = ctx.snapshot
    request = ctx.request
    settings = ctx.gateway.settings
    scheme = "https" if request.scheme == "https" else "http"
    answer: Response | None = None

    for plugin in snapshot.rewrite_plugins[scheme]:
        try:
            answer = await _phase(ctx, plugin, plugin.rewrite, ctx)
        except ClientDisconnect:
            # Nobody to answer; the global plugins still log the request.
            ctx.shared["client_disconnected"] = True
            collected.extend(snapshot.global_plugins[scheme])
            return False
        if answer is not None:
            break

    match = None
    if answer is None:
        match = snapshot.router.match(
            request.method, request.host, request.port, request.path, request.headers.raw
        )
        if match is None and can_fall_through:
            return True

    if match is None:
        collected.extend(snapshot.global_plugins[scheme])
        if answer is None:
            answer = _error(ctx, 404, "no Route matched with those values")
    else:
        route, service = match.route, match.service
        ctx.route, ctx.service = route, service
        ctx.uri_captures = match.captures
        ctx.matched_prefix = match.matched
        protocols = route.protocols
        if not request.websocket and "http" not in protocols and "https" not in protocols:
            # A WebSocket-only route (ws/wss): Kong answers before collecting its plugins.
            collected.extend(snapshot.global_plugins[scheme])
            answer = _error(
                ctx, 426, "Upgrade Required", {"connection": "Upgrade", "upgrade": "websocket"}
            )
        elif (
            request.scheme == "http"
            and "http" not in protocols
            and not (request.websocket and "ws" in protocols)
            and not (
                settings.trusted_ips.contains(request.peer_ip)
                and request.headers.get("x-forwarded-proto", "").lower() == "https"
            )
        ):
            # Kong answers before collecting the route's plugins: only global ones run.
            collected.extend(snapshot.global_plugins[scheme])
            answer = _https_redirect(ctx, route.https_redirect_status_code, host_header, root_path)
        else:
            upstream_path = join_upstream_path(
                service.path if service else None,
                request.path,
                match.matched,
                route.strip_path,
                route.path_handling,
            )
            upstream_headers = Headers.wrap(request_headers(request.headers.raw))
            ctx.upstream_request = UpstreamRequestState(
                request.method, upstream_path, request.query_string, upstream_headers
            )
            gone = False
            for entry in snapshot.plans[id(route), scheme]:
                resolved = entry.resolve(ctx.consumer.id if ctx.consumer is not None else None)
                if resolved is None:
                    continue
                collected.append(resolved)
                if answer is None and not gone and type(resolved).implements("access"):
                    try:
                        answer = await _phase(ctx, resolved, resolved.access, ctx)
                    except ClientDisconnect:
                        # Nobody to answer; the remaining plugins are still collected, to log.
                        ctx.shared["client_disconnected"] = True
                        gone = True
            if gone:
                return False
            if answer is None and service is None:
                answer = _error(ctx, 503, "no Service found with those values")

    if answer is not None:
        await _answer(ctx, answer, collected, started, send)
        return False
    assert ctx.service is not None
    if request.websocket:
        # No body to watch: the relay reads `receive` itself once the upstream accepted.
        await _proxy(ctx, ctx.service, collected, started, host_header, root_path, send)
        return False
    proxying = _proxy(ctx, ctx.service, collected, started, host_header, root_path, send)
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # trio
        await _watched(ctx, proxying)
    else:
        await _watched_on_asyncio(ctx, loop, proxying)
    return False


#: Seconds a request is in flight before the gateway starts watching for its client leaving
#: (on asyncio): most requests are over sooner and never pay for a watching task.
WATCH_AFTER = 0.1


async def _watched_on_asyncio(
    ctx: Context, loop: asyncio.AbstractEventLoop, proxying: Awaitable[None]
) -> None:
    """Run `proxying`, cancelled if the client goes away.

    The watch starts after WATCH_AFTER seconds, from a timer, as a plain asyncio task, and
    cancels this task natively (a task group, even a cancel scope, costs more than most of
    a request): the CancelledError it causes is recognised and swallowed here, as a cancel
    scope would.
    """
    body = ctx.request._body
    current = asyncio.current_task()
    assert current is not None
    watch: _DisconnectWatch | None = None
    task: asyncio.Task[None] | None = None

    def start() -> None:
        nonlocal task, watch
        watch = _DisconnectWatch(body, body.receive, current.cancel, ctx)
        task = loop.create_task(watch.run())

    timer = loop.call_later(WATCH_AFTER, start)
    try:
        await proxying
    except asyncio.CancelledError:
        # Ours alone (no other cancellation pending): the client left, nothing to answer.
        if watch is None or not watch.fired or current.uncancel() > 0:
            raise
    finally:
        timer.cancel()
        if task is not None and not task.done():
            task.cancel()


async def _watched(ctx: Context, proxying: Awaitable[None]) -> None:
    """Run `proxying` beside a task that cancels it if the client goes away."""
    body = ctx.request._body
    failure: Exception | None = None
    async with anyio.create_task_group() as tg:
        watch = _DisconnectWatch(body, body.receive, tg.cancel_scope.cancel, ctx)
        tg.start_soon(watch.run)
        try:
            await proxying
        except Exception as exc:
            # Raised outside the task group, so the boundary gets it, not an ExceptionGroup.
            failure = exc
            tg.cancel_scope.cancel()
        else:
            if not watch.finished:
                # Servers answer receive() with http.disconnect once the response is
                # complete, which ends the watch cheaply; cancel it only if it lingers.
                await anyio.lowlevel.checkpoint()
                if not watch.finished:
                    tg.cancel_scope.cancel()
    if failure is not None:
        raise failure


def _unwrap(exc: BaseException) -> BaseException:
    """The one exception inside (nested) single-exception groups."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _is_disconnect(exc: BaseException) -> bool:
    if isinstance(exc, ClientDisconnect):
        return True
    if isinstance(exc, BaseExceptionGroup):
        _, rest = exc.split(ClientDisconnect)
        return rest is None
    return False


async def _fail(
    ctx: Context, exc: Exception, collected: list[Plugin], started: float, send: _Downstream
) -> None:
    """The error boundary: answer for an exception that escaped the request, if still can."""
    cause = _unwrap(exc)
    if (
        _is_disconnect(cause)
        or ctx.shared.get("client_disconnected")
        or ctx.request._body.disconnected
    ):
        ctx.shared["client_disconnected"] = True
        return
    if isinstance(cause, RequestRejected):
        answer = _error(ctx, cause.status_code, cause.message)
    elif isinstance(cause, UpstreamError):
        logger.warning("upstream failed (request %s): %s", ctx.request_id, cause)
        answer = _error(ctx, cause.status_code, cause.message)
    else:
        logger.exception("unexpected error (request %s)", ctx.request_id)
        answer = _error(ctx, 500, "An unexpected error occurred")
    if send.started:
        # Headers are gone already: the response is left unfinished, so the client sees a
        # truncated body rather than a complete-looking one.
        if isinstance(cause, UpstreamError):
            ctx.shared["upstream_failed_mid_response"] = True
        return
    try:
        await _answer(ctx, answer, collected, started, send)
    except ClientDisconnect:
        ctx.shared["client_disconnected"] = True
    except Exception:
        logger.exception("could not send the error answer (request %s)", ctx.request_id)


async def _phase(
    ctx: Context, plugin: Plugin, method: Callable[..., Awaitable[Any]], *args: Any
) -> Any:
    """Run one plugin phase; an exception becomes Kong's 500 (and is logged)."""
    ctx.current_plugin = plugin
    try:
        return await method(*args)
    except anyio.get_cancelled_exc_class():
        raise
    except ClientDisconnect:
        raise
    except RequestRejected as exc:
        return _error(ctx, exc.status_code, exc.message)
    except Exception:
        logger.exception(
            "plugin %r failed in %s (request %s)",
            plugin.name,
            getattr(method, "__name__", "?"),
            ctx.request_id,
        )
        return _error(ctx, 500, "An unexpected error occurred")
    finally:
        ctx.current_plugin = None


def _error(
    ctx: Context, status: int, message: str, headers: dict[str, str] | None = None
) -> Response:
    return error_response(
        status, message, ctx.request_id, accept=ctx.request.headers.get("accept"), headers=headers
    )


def _https_redirect(ctx: Context, status: int, host_header: str, root_path: str) -> Response:
    if status == 426:
        return _error(
            ctx,
            426,
            "Please use HTTPS protocol",
            {"connection": "Upgrade", "upgrade": "TLS/1.2, HTTP/1.1"},
        )
    target = quote(root_path, safe="/:@!$&'()*+,;=~") + ctx.request.raw_path
    if ctx.request.query_string:
        target += f"?{ctx.request.query_string}"
    host = (
        host_header.rpartition(":")[0]
        if ":" in host_header and not host_header.endswith("]")
        else host_header
    )
    location = f"https://{host or ctx.request.host}{target}"
    return _error(ctx, status, "Please use HTTPS protocol", {"location": location})


def _ms(since: float) -> int:
    return int((time.perf_counter() - since) * 1000)


class _DisconnectWatch:
    """Cancel the upstream exchange if the client goes away (`cancel` is called, `fired`
    set).

    It listens once nothing else reads `receive`: after the request body was read, or
    released because the upstream answered without reading it.
    """

    __slots__ = ("body", "cancel", "ctx", "finished", "fired", "receive")

    def __init__(
        self, body: _Body, receive: Receive, cancel: Callable[[], object], ctx: Context
    ) -> None:
        self.body = body
        self.receive = receive
        self.cancel = cancel
        self.ctx = ctx
        self.finished = False
        self.fired = False

    async def run(self) -> None:
        try:
            if not self.body.settled:
                self.body.done = anyio.Event()
                await self.body.done.wait()
            while True:
                # Any further http.request message (a body nobody reads) is discarded.
                message = await self.receive()
                if message["type"] == "http.disconnect":
                    if not self.ctx.response_sent:
                        self.ctx.shared["client_disconnected"] = True
                        self.fired = True
                        self.cancel()
                    return
        except Exception:
            logger.debug("receive() failed while watching for a disconnect", exc_info=True)
        finally:
            self.finished = True


async def _answer(
    ctx: Context, answer: Response, collected: list[Plugin], started: float, send: Send
) -> None:
    """Send a response the gateway made itself (a plugin's, or an error)."""
    settings = ctx.gateway.settings
    if isinstance(answer, ErrorResponse):
        source = "error"
        raw = list(answer.headers.raw)
    else:
        # A plugin's headers: the server frames the response, hop-by-hop ones are not ours.
        source = "exit"
        raw = response_headers(answer.headers.raw)
    headers = Headers.wrap(raw)
    ctx.response = ResponseState(answer.status_code, headers, source)
    if settings.server_tokens and "server" not in headers:
        headers["server"] = settings.server_token
    if settings.latency_tokens:
        headers["x-pygateway-response-latency"] = str(_ms(started))
    if settings.request_id_header:
        headers["x-pygateway-request-id"] = ctx.request_id
    body = answer.body
    for plugin in collected:
        if type(plugin).implements("header_filter"):
            await _filter_phase(ctx, plugin, plugin.header_filter, ctx)
    filters = [p for p in collected if type(p).implements("body_filter")]
    for plugin in filters:
        body = await _filter_phase(ctx, plugin, plugin.body_filter, ctx, body, True) or b""
    has_body = _frame(ctx, body, keep_length=False)
    await send(
        {
            "type": "http.response.start",
            "status": ctx.response.status_code,
            "headers": ctx.response.headers.raw,
        }
    )
    ctx.response_sent = True
    await send({"type": "http.response.body", "body": body if has_body else b""})


def _frame(ctx: Context, body: bytes | None, *, keep_length: bool) -> bool:
    """Make the framing headers of `ctx.response` fit what will be sent (after header_filter,
    whatever status it chose); True if a body follows.

    `body` is the whole body when it is buffered (None when it is streamed); `keep_length`:
    the headers' Content-Length is the upstream's, for a body nothing changed.
    1xx, 204 and 304 have no body and no Content-Length (ASGI servers take one as the length
    of what follows: a 304's would break the connection); HEAD has no body and keeps the
    length a GET would get; otherwise a buffered body gets its own length.
    """
    response = ctx.response
    assert response is not None
    status = response.status_code
    raw = response.headers.raw
    bodyless = status < 200 or status in (204, 304)
    head = ctx.request.method == "HEAD"
    keep = False
    length: int | None = None
    if bodyless:
        pass
    elif head:
        keep = keep_length
        if not keep and body is not None and response.source != "service":
            length = len(body)  # the gateway's own answer: the length a GET would get
    elif body is not None:
        length = len(body)
    else:
        keep = keep_length
    drop = (b"transfer-encoding",) if keep else _FRAMING
    for k, _ in raw:
        if k in drop:
            raw[:] = [(k, v) for k, v in raw if k not in drop]
            break
    if length is not None:
        raw.append((b"content-length", str(length).encode()))
    return not bodyless and not head


async def _filter_phase(
    ctx: Context, plugin: Plugin, method: Callable[..., Awaitable[Any]], *args: Any
) -> Any:
    """header_filter/body_filter: the response has started, so errors are logged only."""
    ctx.current_plugin = plugin
    try:
        return await method(*args)
    except anyio.get_cancelled_exc_class():
        raise
    except Exception:
        logger.exception(
            "plugin %r failed in %s (request %s)",
            plugin.name,
            getattr(method, "__name__", "?"),
            ctx.request_id,
        )
        return args[1] if len(args) > 1 else None
    finally:
        ctx.current_plugin = None


async def _proxy(
    ctx: Context,
    service: Service,
    collected: list[Plugin],
    started: float,
    host_header: str,
    root_path: str,
    send: Send,
) -> None:
    gateway = ctx.gateway
    settings = gateway.settings
    request = ctx.request
    route = ctx.route
    assert route is not None
    assert ctx.upstream_request is not None
    state = ctx.upstream_request
    body = request._body
    if state.body is None and body.has_body is None:
        await body.probe()
    # Framing comes from the body alone, never from headers a plugin left behind.
    if state.body is not None:
        length: bytes | None = str(len(state.body)).encode()
    elif body.started and body.buffered is not None:
        length = str(len(body.buffered)).encode()
    else:
        length = body.length
    content = _request_body(state, body)
    query = state.query_string
    query = escape_query(query, "latin-1" if query == request.query_string else "utf-8")
    target = (escape_path(state.path) + (f"?{query}" if query else "")).encode("ascii")
    engine = gateway.engine_for(service)
    options = ctx.snapshot.send_options(service, settings.tls_verify)
    forwarded = forwarded_headers(ctx, host_header, root_path)
    # What the gateway sets replaces any copy a plugin set; a Host a plugin set is used.
    owned = {k for k, _ in forwarded}
    owned.update(_FRAMING)
    owned.add(b"host")
    plugin_host = state.headers.get_bytes(b"host")
    passed_on = [(k, v) for k, v in state.headers.raw if k not in owned]
    passed_on += forwarded
    if length is not None:
        passed_on.append((b"content-length", length))
    pool = ctx.snapshot.pools.get(service.host or "")
    if pool is not None and pool.due <= time.monotonic():
        await gateway.refresh_names(pool)  # target names to resolve again (once per TTL)
    tried: list[Peer] = []
    tries = service.retries + 1
    for attempt in range(tries):
        peer: Peer | None = None
        if pool is None:
            assert service.host is not None
            assert service.port is not None
            host, port, hostname, host_override = service.host, service.port, service.host, None
        else:
            peer = pool.select(ctx, tried)
            if peer is None:
                reason = (
                    "name resolution failed"
                    if pool.dns_error
                    else "failure to get a peer from the ring-balancer"
                )
                await _answer(ctx, _error(ctx, 503, reason), collected, started, send)
                return
            tried.append(peer)
            host, port, hostname = peer.ip, peer.port, peer.hostname
            host_override = pool.upstream.host_header
        headers = [*passed_on]
        headers.append(
            (
                b"host",
                plugin_host
                if plugin_host is not None
                else upstream_host(
                    route.preserve_host,
                    host_header,
                    host_override,
                    hostname,
                    port,
                    service.protocol,
                ),
            )
        )
        outgoing = UpstreamRequest(
            method=state.method,
            host=host,
            port=port,
            target=target,
            headers=headers,
            body=content,
            server_name=host_override or hostname,
            **options,
        )
        ctx.latencies.setdefault("proxy", _ms(started))
        sent_at = time.perf_counter()
        ctx.tries.append({"ip": host, "port": port})
        try:
            if request.websocket:
                response = await engine.connect_websocket(outgoing)
            else:
                response = await engine.send(outgoing)
        except UpstreamError as exc:
            ctx.tries[-1]["error"] = str(exc)
            if body.disconnected:
                # The client went away while its body was sent: not the upstream's fault.
                if peer is not None and pool is not None:
                    pool.release(peer, outcome=None, status=None, elapsed=None)
                raise ClientDisconnect() from exc
            if peer is not None and pool is not None:
                failure: Outcome = "timeout" if isinstance(exc, UpstreamTimeout) else "tcp_failure"
                pool.release(peer, outcome=failure, status=None, elapsed=_since(sent_at))
            if attempt + 1 < tries and _retryable(exc, state, body):
                content = _request_body(state, body)
                continue
            await _answer(ctx, _error(ctx, exc.status_code, exc.message), collected, started, send)
            return
        except BaseException:
            if peer is not None and pool is not None:
                pool.release(peer, outcome=None, status=None, elapsed=None)
            raise
        break
    else:  # pragma: no cover - the loop either breaks with a response or returns
        raise AssertionError("unreachable")
    elapsed = _since(sent_at)
    # An upstream that answered without reading the body will not read it: let the
    # disconnect watch have `receive`.
    body.release()
    try:
        ctx.latencies["upstream"] = _ms(sent_at)
        if isinstance(response, UpstreamWebSocket):
            await _relay_websocket(ctx, service, response, collected, send)
        else:
            await _relay(ctx, response, collected, started, send)
    finally:
        try:
            await response.aclose()
        finally:
            if peer is not None and pool is not None:
                status = 101 if isinstance(response, UpstreamWebSocket) else response.status_code
                pool.release(peer, outcome=None, status=status, elapsed=elapsed)


_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})


def _retryable(exc: UpstreamError, state: UpstreamRequestState, body: _Body) -> bool:
    """Whether a failed try may go to the next target.

    A connect failure sent nothing, so any request may go again; after that, only an
    idempotent one (as nginx), and only if its body can be sent again: none, set by a
    plugin, or buffered, not a client stream that is partly gone.
    """
    replayable = state.body is not None or body.buffered is not None or not body.started
    if not replayable:
        return False
    return isinstance(exc, UpstreamConnectError) or state.method in _IDEMPOTENT


def _since(started: float) -> float:
    return time.perf_counter() - started


async def _replay(content: bytes) -> Any:
    yield content


def _request_body(state: UpstreamRequestState, body: _Body) -> Any:
    """A fresh iterator over the body for one try (None when there is no body)."""
    if state.body is not None:
        return _replay(state.body)
    return body.stream() if body.has_body else None


def _response_head(ctx: Context, upstream: UpstreamResponse | UpstreamWebSocket) -> Headers:
    """The upstream's headers minus hop-by-hop ones, plus the gateway's, built in one pass."""
    settings = ctx.gateway.settings
    raw = response_headers(upstream.headers)
    added: list[tuple[bytes, bytes]] = []
    if settings.server_tokens:
        via = b", ".join([v for k, v in raw if k == b"via"])
        token = via_token(upstream.http_version.encode("latin-1"), settings.server_token)
        added.append((b"via", via + b", " + token if via else token))
    if settings.latency_tokens:
        latencies = ctx.latencies
        added.append((b"x-pygateway-upstream-latency", b"%d" % latencies.get("upstream", 0)))
        added.append((b"x-pygateway-proxy-latency", b"%d" % latencies.get("proxy", 0)))
    if settings.request_id_header:
        added.append((b"x-pygateway-request-id", ctx.request_id.encode("latin-1")))
    if ctx.balancer_cookie is not None:
        raw.append((b"set-cookie", ctx.balancer_cookie[0].encode("latin-1")))
    if added:
        names = {k for k, _ in added}
        if any(k in names for k, _ in raw):
            raw = [(k, v) for k, v in raw if k not in names]
        raw += added
    return Headers.wrap(raw)


async def _relay(
    ctx: Context, upstream: UpstreamResponse, collected: list[Plugin], started: float, send: Send
) -> None:
    """Send the upstream response to the client through the filter phases."""
    ctx.upstream_status = upstream.status_code
    headers = _response_head(ctx, upstream)
    ctx.response = ResponseState(upstream.status_code, headers, "service")
    buffered = [p for p in collected if type(p).implements("response")]
    filters = [p for p in collected if type(p).implements("body_filter")]
    if buffered:
        original = ctx.response.body = await upstream.read()
        for plugin in buffered:
            failed = await _phase(ctx, plugin, plugin.response, ctx)
            if isinstance(failed, ErrorResponse):
                await _answer(ctx, failed, collected, started, send)
                return
        for plugin in collected:
            if type(plugin).implements("header_filter"):
                await _filter_phase(ctx, plugin, plugin.header_filter, ctx)
        data = ctx.response.body or b""
        for plugin in filters:
            data = await _filter_phase(ctx, plugin, plugin.body_filter, ctx, data, True) or b""
        has_body = _frame(ctx, data, keep_length=data is original)
        await send(
            {
                "type": "http.response.start",
                "status": ctx.response.status_code,
                "headers": ctx.response.headers.raw,
            }
        )
        ctx.response_sent = True
        await send({"type": "http.response.body", "body": data if has_body else b""})
        return
    for plugin in collected:
        if type(plugin).implements("header_filter"):
            await _filter_phase(ctx, plugin, plugin.header_filter, ctx)
    has_body = _frame(ctx, None, keep_length=not filters)
    await send(
        {
            "type": "http.response.start",
            "status": ctx.response.status_code,
            "headers": ctx.response.headers.raw,
        }
    )
    if has_body:
        stream = upstream.stream
        try:
            async for chunk in stream:
                if not filters and exhausted(stream):
                    # The last chunk ends the response: no empty message after it.
                    ctx.response_sent = True
                    await send({"type": "http.response.body", "body": chunk})
                    return
                for plugin in filters:
                    chunk = await _filter_phase(ctx, plugin, plugin.body_filter, ctx, chunk, False)
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except UpstreamError as exc:
            # Headers are gone already: all we can do is end the response unfinished, so the
            # client sees a truncated body rather than a complete-looking one.
            logger.warning("upstream failed mid-response (request %s): %s", ctx.request_id, exc)
            ctx.shared["upstream_failed_mid_response"] = True
            return
    tail = b""
    for plugin in filters:
        tail = await _filter_phase(ctx, plugin, plugin.body_filter, ctx, tail, True) or b""
    ctx.response_sent = True
    await send({"type": "http.response.body", "body": tail if has_body else b""})


async def _relay_websocket(
    ctx: Context,
    service: Service,
    upstream: UpstreamWebSocket,
    collected: list[Plugin],
    send: Send,
) -> None:
    """Accept the client's handshake as the upstream accepted ours, then relay messages."""
    assert isinstance(send, _Downstream)
    ctx.upstream_status = 101
    ctx.response = ResponseState(101, _response_head(ctx, upstream), "service")
    for plugin in collected:
        if type(plugin).implements("header_filter"):
            await _filter_phase(ctx, plugin, plugin.header_filter, ctx)
    accept: Message = {"type": "websocket.accept", "headers": accept_headers(ctx.response.headers)}
    if upstream.subprotocol:
        accept["subprotocol"] = upstream.subprotocol
    await send(accept)
    send.started = send.delivered = True
    ctx.response_sent = True
    limits = ctx.shared.get("websocket_limits", {})
    try:
        send.body_sent += await relay(
            ctx,
            upstream,
            ctx.request._body.receive,
            send.send,
            idle_timeout=service.read_timeout / 1000,
            client_limit=limits.get("client", DEFAULT_MAX_MESSAGE_SIZE),
            upstream_limit=limits.get("upstream", DEFAULT_MAX_MESSAGE_SIZE),
        )
    except BaseException:
        # Cancelled (the server shutting down, say): the upstream still hears a close.
        with anyio.CancelScope(shield=True), anyio.move_on_after(1):
            await upstream.close(1001, "")
        raise


async def _log(ctx: Context, collected: list[Plugin]) -> None:
    for plugin in collected:
        if type(plugin).implements("log"):
            ctx.current_plugin = plugin
            try:
                await plugin.log(ctx)
            except Exception:
                logger.exception(
                    "plugin %r failed in log (request %s)", plugin.name, ctx.request_id
                )
            finally:
                ctx.current_plugin = None
