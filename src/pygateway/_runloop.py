"""The life of one HTTP request, as one readable function: `handle_http`.

    rewrite (global plugins) -> route -> access (plugins by priority, scope resolved lazily)
    -> balance + engine.send (retrying connect failures) -> response / header_filter /
    body_filter (streamed) -> log (after the last byte)

A plugin that answers early skips the remaining `access` handlers; header_filter, body_filter
and log of every applicable plugin still run. A plugin that raises becomes a 500.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import anyio
import anyio.lowlevel

from ._context import ClientDisconnect, Context, Request, ResponseState, UpstreamRequestState, _Body
from ._exceptions import UpstreamConnectError, UpstreamError
from ._headers import Headers
from ._proxy import join_upstream_path, real_client_ip, request_headers, response_headers
from ._responses import ErrorResponse, Response, error_response
from .engines import UpstreamRequest, UpstreamResponse
from .routing import normalize_path

if TYPE_CHECKING:
    from ._entities import Service, Target
    from ._gateway import Gateway
    from ._snapshot import Snapshot
    from ._types import ASGIApp, Receive, Scope, Send
    from .plugins._base import Plugin

__all__ = ["handle_http"]

logger = logging.getLogger("pygateway.runloop")

_DEFAULT_PORTS = {"http": 80, "https": 443}
_HEX = frozenset("0123456789abcdefABCDEF")


def _route_path(scope: Scope) -> tuple[str, str, str]:
    """(normalized path, raw path, root_path) below the mount point; `%2F` kept encoded."""
    root_path: str = scope.get("root_path", "")
    raw = scope.get("raw_path")
    if raw is not None:
        raw_path = raw.decode("latin-1").partition("?")[0]
        if root_path:
            below = _below_root(raw_path, root_path)
            if below is not None:
                raw_path = below
    else:
        path: str = scope["path"]
        if root_path and path.startswith(root_path) and path[len(root_path) :][:1] in ("", "/"):
            path = path[len(root_path) :]
        raw_path = quote(path, safe="/:@!$&'()*+,;=-._~")
    if not raw_path.startswith("/"):
        raw_path = "/" + raw_path
    return normalize_path(raw_path), raw_path, root_path


def _below_root(raw_path: str, root_path: str) -> str | None:
    """What follows the segments of `raw_path` that percent-decode to `root_path`, if any.

    `root_path` is decoded (the mount point an app such as Starlette matched), so the client
    may have encoded it differently: `/%61pi/users` is below `/api`.
    """
    want = root_path.encode("utf-8", "surrogateescape")
    got = bytearray()
    i = 0
    while len(got) < len(want) and i < len(raw_path):
        escape = raw_path[i + 1 : i + 3]
        if raw_path[i] == "%" and len(escape) == 2 and all(c in _HEX for c in escape):
            got.append(int(escape, 16))
            i += 3
        else:
            got.append(ord(raw_path[i]))
            i += 1
    rest = raw_path[i:]
    if got != want or rest[:1] not in ("", "/"):
        return None
    return rest


def _host_and_port(scope: Scope, headers: list[tuple[bytes, bytes]]) -> tuple[str, int, str]:
    """(host without port, port, Host header as sent)."""
    server = scope.get("server") or ("", None)
    scheme = scope.get("scheme", "http")
    host_header = ""
    for k, v in headers:
        if k == b"host":
            host_header = v.decode("latin-1")
            break
    host, port = host_header, None
    if host.startswith("["):
        end = host.find("]")
        rest = host[end + 1 :]
        host = host[: end + 1]
        if rest.startswith(":") and rest[1:].isdigit():
            port = int(rest[1:])
    elif ":" in host:
        name, _, p = host.rpartition(":")
        if p.isdigit():
            host, port = name, int(p)
    if not host:
        host = str(server[0] or "")
    if port is None:
        port = server[1] if server[1] else _DEFAULT_PORTS.get(scheme, 80)
    return host.lower().rstrip("."), int(port), host_header


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
    path, raw_path, root_path = _route_path(scope)
    host, port, host_header = _host_and_port(scope, headers)
    scheme = scope.get("scheme", "http")
    peer = (scope.get("client") or ("", 0))[0] or ""
    client_ip = real_client_ip(
        peer, headers, settings.trusted_ips, settings.real_ip_header, settings.real_ip_recursive
    )
    has_body = any(
        (k == b"content-length" and v.strip() not in (b"0", b"")) or k == b"transfer-encoding"
        for k, v in headers
    )
    body = _Body(receive, has_body)
    request = Request(
        method=scope.get("method", "GET"),
        scheme=scheme,
        host=host,
        port=port,
        path=path,
        raw_path=raw_path,
        query_string=scope.get("query_string", b"").decode("latin-1"),
        headers=Headers(headers),
        client_ip=client_ip,
        peer_ip=peer,
        body=body,
    )
    request_id = secrets.token_hex(16)
    ctx = Context(gateway, request, request_id)
    collected: list[Plugin] = []
    answer: Response | None = None

    for plugin in snapshot.rewrite_plugins:
        answer = await _phase(ctx, plugin, plugin.rewrite, ctx)
        if answer is not None:
            break

    match = None
    if answer is None:
        match = snapshot.router.match(request.method, host, port, request.path, headers)
        if match is None and fallback is not None:
            await fallback(scope, receive, send)
            return

    if match is None:
        collected.extend(snapshot.global_plugins)
        if answer is None:
            answer = _error(ctx, 404, "no Route matched with those values")
    else:
        route, service = match.route, match.service
        ctx.route, ctx.service = route, service
        ctx.uri_captures = match.captures
        ctx.matched_prefix = match.matched
        if (
            scheme == "http"
            and "http" not in route.protocols
            and not (
                settings.trusted_ips.contains(peer)
                and request.headers.get("x-forwarded-proto", "").lower() == "https"
            )
        ):
            answer = _https_redirect(ctx, route.https_redirect_status_code, host_header)
        upstream_path = join_upstream_path(
            service.path if service else None,
            path,
            match.matched,
            route.strip_path,
            route.path_handling,
        )
        upstream_headers = Headers(request_headers(headers))
        ctx.upstream_request = UpstreamRequestState(
            request.method, upstream_path, request.query_string, upstream_headers
        )
        for entry in snapshot.plans[id(route)]:
            resolved = entry.resolve(ctx.consumer.id if ctx.consumer is not None else None)
            if resolved is None:
                continue
            collected.append(resolved)
            if answer is None and type(resolved).implements("access"):
                answer = await _phase(ctx, resolved, resolved.access, ctx)
        if answer is None and service is None:
            answer = _error(ctx, 503, "no Service found with those values")

    if answer is not None:
        await _answer(ctx, answer, collected, started, send)
    else:
        assert ctx.service is not None
        try:
            async with anyio.create_task_group() as tg:
                watch = _DisconnectWatch(body, receive, tg.cancel_scope, ctx)
                tg.start_soon(watch.run)
                await _proxy(ctx, ctx.service, collected, started, host_header, root_path, send)
                if not watch.finished:
                    # Servers answer receive() with http.disconnect once the response is
                    # complete, which ends the watch cheaply; cancel it only if it lingers.
                    await anyio.lowlevel.checkpoint()
                    if not watch.finished:
                        tg.cancel_scope.cancel()
        except* (ClientDisconnect, OSError):
            # The client went away (while we read its body, or sent to it).
            ctx.shared["client_disconnected"] = True
        if ctx.shared.get("client_disconnected") and ctx.response is None:
            ctx.response = ResponseState(499, Headers(), "error")
    ctx.latencies["request"] = _ms(started)
    await _log(ctx, collected)


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


def _https_redirect(ctx: Context, status: int, host_header: str) -> Response:
    if status == 426:
        return _error(
            ctx,
            426,
            "Please use HTTPS protocol",
            {"connection": "Upgrade", "upgrade": "TLS/1.2, HTTP/1.1"},
        )
    target = ctx.request.raw_path + (
        f"?{ctx.request.query_string}" if ctx.request.query_string else ""
    )
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
    """Cancel the upstream exchange if the client goes away (once its body was read)."""

    __slots__ = ("body", "ctx", "finished", "receive", "scope")

    def __init__(
        self, body: _Body, receive: Receive, scope: anyio.CancelScope, ctx: Context
    ) -> None:
        self.body = body
        self.receive = receive
        self.scope = scope
        self.ctx = ctx
        self.finished = False

    async def run(self) -> None:
        try:
            if not self.body.complete:
                self.body.done = anyio.Event()
                await self.body.done.wait()
            while True:
                message = await self.receive()
                if message["type"] == "http.disconnect":
                    if not self.ctx.response_sent:
                        self.ctx.shared["client_disconnected"] = True
                        self.scope.cancel()
                    return
        finally:
            self.finished = True


async def _answer(
    ctx: Context, answer: Response, collected: list[Plugin], started: float, send: Send
) -> None:
    """Send a response the gateway made itself (a plugin's, or an error)."""
    settings = ctx.gateway.settings
    source = "error" if isinstance(answer, ErrorResponse) else "exit"
    headers = answer.headers
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
    if "content-length" in headers:
        del headers["content-length"]
    status = ctx.response.status_code
    # HEAD, 1xx, 204 and 304 answers carry no body (and 204s no Content-Length, as Kong's).
    bodyless = ctx.request.method == "HEAD" or status < 200 or status in (204, 304)
    if not bodyless:
        headers["content-length"] = str(len(body))
    await send({"type": "http.response.start", "status": status, "headers": headers.raw})
    ctx.response_sent = True
    await send({"type": "http.response.body", "body": b"" if bodyless else body})


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


def _targets(ctx: Context, service: Service) -> tuple[str, int, str | None, Target | None]:
    """Where the next try goes: (host, port, host header override, balanced target)."""
    snapshot = ctx.gateway.snapshot
    assert service.host is not None
    assert service.port is not None
    balanced = snapshot.upstreams.get(service.host)
    if balanced is None:
        return service.host, service.port, None, None
    upstream, balancer = balanced
    target = balancer.select(ctx)
    if target is None:
        return "", 0, None, None
    return target.host, target.port, upstream.host_header, target


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
    if state.body is not None:
        state.headers["content-length"] = str(len(state.body))
        if "transfer-encoding" in state.headers:
            del state.headers["transfer-encoding"]
    content = _request_body(state, body)
    target = state.path + (f"?{state.query_string}" if state.query_string else "")
    engine = gateway.engine_for(service)
    forwarded = _forwarded_headers(ctx, host_header, root_path)
    response: UpstreamResponse | None = None
    tries = service.retries + 1
    for attempt in range(tries):
        host, port, host_override, _ = _targets(ctx, service)
        if not host:
            await _answer(
                ctx,
                _error(ctx, 503, "failure to get a peer from the ring-balancer"),
                collected,
                started,
                send,
            )
            return
        headers = state.headers.raw + forwarded
        headers.append(
            (
                b"host",
                _upstream_host(
                    route.preserve_host, host_header, host_override, host, port, service.protocol
                ),
            )
        )
        outgoing = UpstreamRequest(
            method=state.method,
            scheme=service.protocol,
            host=host,
            port=port,
            target=target.encode("latin-1"),
            headers=headers,
            body=content,
            connect_timeout=service.connect_timeout / 1000,
            write_timeout=service.write_timeout / 1000,
            read_timeout=service.read_timeout / 1000,
            tls_verify=bool(service.tls_verify)
            if service.tls_verify is not None
            else settings.tls_verify,
            server_name=host_override or host,
        )
        ctx.latencies.setdefault("proxy", _ms(started))
        sent_at = time.perf_counter()
        ctx.tries.append({"ip": host, "port": port})
        try:
            response = await engine.send(outgoing)
            break
        except UpstreamConnectError as exc:
            ctx.tries[-1]["error"] = str(exc)
            # The next target gets the body again, unless part of a client stream is gone.
            replayable = state.body is not None or body.buffered is not None or not body.started
            if attempt + 1 < tries and replayable:
                content = _request_body(state, body)
                continue
            await _answer(ctx, _error(ctx, exc.status_code, exc.message), collected, started, send)
            return
        except UpstreamError as exc:
            ctx.tries[-1]["error"] = str(exc)
            await _answer(ctx, _error(ctx, exc.status_code, exc.message), collected, started, send)
            return
    assert response is not None
    try:
        ctx.latencies["upstream"] = _ms(sent_at)
        await _relay(ctx, response, collected, send)
    finally:
        await response.aclose()


async def _replay(content: bytes) -> Any:
    yield content


def _request_body(state: UpstreamRequestState, body: _Body) -> Any:
    """A fresh iterator over the body for one try (None when there is no body)."""
    if state.body is not None:
        return _replay(state.body)
    return body.stream() if body.has_body else None


def _upstream_host(
    preserve: bool, host_header: str, override: str | None, host: str, port: int, scheme: str
) -> bytes:
    if preserve and host_header:
        return host_header.encode("latin-1")
    name = override or host
    if ":" in name and not name.startswith("["):
        name = f"[{name}]"
    if override is None and port != _DEFAULT_PORTS.get(scheme):
        name = f"{name}:{port}"
    return name.encode("latin-1")


def _forwarded_headers(ctx: Context, host_header: str, root_path: str) -> list[tuple[bytes, bytes]]:
    settings = ctx.gateway.settings
    request = ctx.request
    trusted = settings.trusted_ips.contains(request.peer_ip)
    client = request.headers
    xff = ", ".join(client.getlist("x-forwarded-for"))
    out: list[tuple[str, str]] = [
        ("x-forwarded-for", f"{xff}, {request.peer_ip}" if xff else request.client_ip),
        ("x-real-ip", request.client_ip),
    ]
    prefix = root_path + (
        ctx.matched_prefix
        if ctx.route and ctx.route.strip_path and ctx.matched_prefix not in ("", "/")
        else ""
    )
    own = {
        "x-forwarded-proto": request.scheme,
        "x-forwarded-host": request.host,
        "x-forwarded-port": str(request.port),
        "x-forwarded-path": root_path + request.raw_path,
        "x-forwarded-prefix": prefix,
    }
    for name, value in own.items():
        if trusted and name in client:
            value = client[name]
        if value:
            out.append((name, value))
    # Headers the gateway sets replace the client's copies (the Via chain is carried over).
    passed_on = ctx.upstream_request.headers if ctx.upstream_request is not None else Headers()
    if settings.server_tokens:
        via = ", ".join(client.getlist("via"))
        token = f"1.1 {settings.server_token}"
        out.append(("via", f"{via}, {token}" if via else token))
        if "via" in passed_on:
            del passed_on["via"]
    if settings.request_id_upstream:
        out.append(("x-pygateway-request-id", ctx.request_id))
        if "x-pygateway-request-id" in passed_on:
            del passed_on["x-pygateway-request-id"]
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in out]


async def _relay(
    ctx: Context, upstream: UpstreamResponse, collected: list[Plugin], send: Send
) -> None:
    """Stream the upstream response to the client through the filter phases."""
    settings = ctx.gateway.settings
    ctx.upstream_status = upstream.status_code
    headers = Headers(response_headers(upstream.headers))
    if upstream.status_code in (204, 304) and "content-length" in headers:
        # No body follows whatever it says (a 304 may give the 200's size), but ASGI servers
        # take it as the body's length: uvicorn would fail the response and drop the client.
        del headers["content-length"]
    ctx.response = ResponseState(upstream.status_code, headers, "service")
    if settings.server_tokens:
        via = ", ".join(headers.getlist("via"))
        token = f"{upstream.http_version} {settings.server_token}"
        headers["via"] = f"{via}, {token}" if via else token
    if settings.latency_tokens:
        headers["x-pygateway-upstream-latency"] = str(ctx.latencies.get("upstream", 0))
        headers["x-pygateway-proxy-latency"] = str(ctx.latencies.get("proxy", 0))
    if settings.request_id_header:
        headers["x-pygateway-request-id"] = ctx.request_id
    buffered = [p for p in collected if type(p).implements("response")]
    filters = [p for p in collected if type(p).implements("body_filter")]
    head = ctx.request.method == "HEAD"
    if buffered:
        ctx.response.body = await upstream.read()
        for plugin in buffered:
            await _filter_phase(ctx, plugin, plugin.response, ctx)
        for plugin in collected:
            if type(plugin).implements("header_filter"):
                await _filter_phase(ctx, plugin, plugin.header_filter, ctx)
        data = ctx.response.body or b""
        for plugin in filters:
            data = await _filter_phase(ctx, plugin, plugin.body_filter, ctx, data, True) or b""
        if "content-length" in headers:
            del headers["content-length"]
        if not head:
            headers["content-length"] = str(len(data))
        await send(
            {
                "type": "http.response.start",
                "status": ctx.response.status_code,
                "headers": headers.raw,
            }
        )
        ctx.response_sent = True
        await send({"type": "http.response.body", "body": data})
        return
    for plugin in collected:
        if type(plugin).implements("header_filter"):
            await _filter_phase(ctx, plugin, plugin.header_filter, ctx)
    if filters and "content-length" in headers:
        del headers["content-length"]
    await send(
        {"type": "http.response.start", "status": ctx.response.status_code, "headers": headers.raw}
    )
    try:
        async for chunk in upstream.stream:
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
    await send({"type": "http.response.body", "body": tail})


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
