"""opentelemetry: trace each request through the gateway, W3C Trace Context in and out.

Two spans per proxied request, made with the OpenTelemetry API (the extra
`pygateway[opentelemetry]`, imported only when the plugin is built):

- a SERVER span for the gateway's handling, a child of the client's `traceparent` (or the
  root of a new trace), from the moment the request arrived until the log phase;
- a CLIENT span for the upstream call, a child of the server span; its context is what the
  upstream receives in `traceparent`.

Timing of the upstream span: its context must exist before the engine sends the request (it
is injected into the upstream headers), and a span's start cannot be moved afterwards, so it
starts in `access` (this plugin's priority, 14, puts it after nearly every other plugin, right
before the engine call) and ends in `header_filter`, the first hook that runs once the
response head is known; retries are inside it. Rebuilding it in `log` from `ctx.latencies`
would give millisecond timing and a context that did not exist when the headers left.

Exporting is the SDK's job: the plugin uses the global tracer provider, or the one given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import attrs

from .._exceptions import ConfigurationError
from .._schema import field
from .._version import __version__
from ._base import Plugin
from ._registry import register

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

    from .._context import Context
    from .._responses import Response

__all__ = ["Opentelemetry"]

#: Kong's header_type values; pygateway reads and writes W3C Trace Context only.
HEADER_TYPES = (
    "preserve",
    "ignore",
    "b3",
    "b3-single",
    "w3c",
    "jaeger",
    "ot",
    "aws",
    "gcp",
    "datadog",
)
_SUPPORTED = ("preserve", "ignore", "w3c")
_EXTRA = "pip install 'pygateway[opentelemetry]'"


def _check_header_type(value: str) -> str | None:
    if value not in HEADER_TYPES:
        return "expected one of: " + ", ".join(HEADER_TYPES)
    if value not in _SUPPORTED:
        return (
            f"header_type '{value}' is not supported by pygateway: "
            "only W3C Trace Context is (use 'preserve', 'w3c' or 'ignore')"
        )
    return None


def _check_header_name(value: str | None) -> str | None:
    if value is not None and (not value or not all(c.isalnum() or c in "-_" for c in value)):
        return f"invalid header name: '{value}'"
    return None


def _check_provider(value: Any) -> str | None:
    if value is not None and not callable(getattr(value, "get_tracer", None)):
        return f"expected an OpenTelemetry TracerProvider (got {type(value).__name__})"
    return None


def _api() -> Any:
    """The `opentelemetry.trace` module, or a ConfigurationError naming the extra."""
    try:
        from opentelemetry import trace
    except ImportError:
        raise ConfigurationError(
            f"the opentelemetry plugin needs opentelemetry-api: {_EXTRA}"
        ) from None
    return trace


@attrs.frozen(kw_only=True)
class Opentelemetry(Plugin):
    """Trace requests with OpenTelemetry; propagate W3C `traceparent`/`tracestate` upstream.

    Args:
        header_type: Kong's values; "preserve" (default) and "w3c" continue the client's
            W3C trace, "ignore" always starts a new one. Other formats are refused.
        http_response_header_for_traceid: a response header that gets the trace id.
        tracer_provider: Python only (not config): spans go to this provider instead of the
            global one (`opentelemetry.trace.set_tracer_provider`).

    Raises:
        ConfigurationError: opentelemetry-api is not installed, or a field is invalid.

    Example: `Opentelemetry(http_response_header_for_traceid="x-trace-id")`.
    """

    name = "opentelemetry"
    priority = 14

    header_type: str = field("preserve", check=_check_header_type)
    http_response_header_for_traceid: str | None = field(None, check=_check_header_name)
    tracer_provider: Any = attrs.field(
        default=None, eq=False, metadata={"checks": [_check_provider]}
    )
    _tracer: Any = attrs.field(default=None, init=False, eq=False, repr=False)

    _python_only: ClassVar[frozenset[str]] = frozenset({"tracer_provider"})

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        trace = _api()
        # Once: with the global provider this is a proxy that follows a provider set later.
        tracer = trace.get_tracer("pygateway", __version__, tracer_provider=self.tracer_provider)
        object.__setattr__(self, "_tracer", tracer)

    @classmethod
    def from_config(cls, config: dict[str, Any] | None) -> Plugin:
        unknown = [k for k in config or {} if k in cls._python_only]
        if unknown:
            raise ConfigurationError(errors=[((k,), "unknown field") for k in unknown])
        return super().from_config(config)

    def to_config(self) -> dict[str, Any]:
        config = super().to_config()
        for key in self._python_only:
            config.pop(key, None)
        return config

    async def access(self, ctx: Context) -> Response | None:
        self._start(ctx)
        return None

    async def header_filter(self, ctx: Context) -> None:
        state = ctx.plugin_state
        client: Span | None = state.get("client")
        if client is not None and ctx.tries and not state.get("client_ended"):
            _end_client(ctx, client)
            state["client_ended"] = True
        server: Span | None = state.get("server")
        if self.http_response_header_for_traceid and server is not None and ctx.response:
            trace_id = server.get_span_context().trace_id
            if trace_id:
                ctx.response.headers[self.http_response_header_for_traceid] = f"{trace_id:032x}"

    async def log(self, ctx: Context) -> None:
        state = ctx.plugin_state
        server: Span | None = state.get("server")
        if server is None:
            # Answered before access (no route, a redirect, a rewrite plugin): a server span
            # for it anyway, as a global plugin still logs the request.
            server = self._start(ctx, upstream=False)
        client: Span | None = state.get("client")
        if client is not None and ctx.tries and not state.get("client_ended"):
            # Proxied, but header_filter never ran (the client went away, say).
            _end_client(ctx, client)
        # An upstream span without a try (a later plugin answered) is never ended, so it
        # is never exported: there was no upstream call to show.
        _end_server(ctx, server)

    def _start(self, ctx: Context, *, upstream: bool = True) -> Span:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        propagator = TraceContextTextMapPropagator()
        request = ctx.request
        carrier: dict[str, str] = {}
        if self.header_type != "ignore":
            parent = request.headers.get("traceparent")
            if parent is not None:
                carrier["traceparent"] = parent
                states = request.headers.getlist("tracestate")
                if states:
                    carrier["tracestate"] = ",".join(states)
        parent_context = propagator.extract(carrier)
        tracer: Tracer = self._tracer
        server = tracer.start_span(
            _server_name(ctx),
            context=parent_context,
            kind=trace.SpanKind.SERVER,
            attributes=_server_attributes(ctx),
            # The gateway's handling began when the request arrived, not when access ran.
            start_time=int(ctx.started_at * 1e9),
        )
        state = ctx.plugin_state
        state["server"] = server
        if upstream and ctx.upstream_request is not None:
            method = ctx.upstream_request.method
            client = tracer.start_span(
                method,
                context=trace.set_span_in_context(server, parent_context),
                kind=trace.SpanKind.CLIENT,
            )
            state["client"] = client
            out: dict[str, str] = {}
            propagator.inject(out, context=trace.set_span_in_context(client, parent_context))
            # Without an SDK the spans are no-ops that carry the client's context on: then
            # there is nothing to inject, and the client's own headers go up unchanged.
            if out or self.header_type == "ignore":
                headers = ctx.upstream_request.headers
                for name in ("traceparent", "tracestate"):
                    if name in headers:
                        del headers[name]
                for name, value in out.items():
                    headers[name] = value
        return server


def _route_template(ctx: Context) -> str | None:
    route = ctx.route
    if route is None or not route.paths or len(route.paths) != 1:
        return None
    return route.paths[0]


def _server_name(ctx: Context) -> str:
    method = ctx.request.method
    route = ctx.route
    target = (route.name if route is not None else None) or _route_template(ctx)
    return f"{method} {target}" if target else method


def _server_attributes(ctx: Context) -> dict[str, Any]:
    request = ctx.request
    attributes: dict[str, Any] = {
        # The stable HTTP semantic conventions, then the older names many backends still
        # chart (Kong's spans use those).
        "http.request.method": request.method,
        "url.scheme": request.scheme,
        "url.path": request.path,
        "server.address": request.host,
        "server.port": request.port,
        "client.address": request.client_ip,
        "network.peer.address": request.peer_ip,
        "network.protocol.version": request.http_version,
        "http.method": request.method,
        "http.scheme": request.scheme,
        "http.host": request.host,
        "http.client_ip": request.client_ip,
        "net.peer.ip": request.peer_ip,
        "http.flavor": request.http_version,
        "pygateway.request.id": ctx.request_id,
    }
    agent = request.headers.get("user-agent")
    if agent is not None:
        attributes["user_agent.original"] = agent
        attributes["http.user_agent"] = agent
    template = _route_template(ctx)
    if template is not None:
        attributes["http.route"] = template
    if ctx.route is not None:
        if ctx.route.name:
            attributes["pygateway.route.name"] = ctx.route.name
        if ctx.route.id:
            attributes["pygateway.route.id"] = ctx.route.id
    if ctx.service is not None and ctx.service.name:
        attributes["pygateway.service.name"] = ctx.service.name
    return attributes


def _end_client(ctx: Context, span: Span) -> None:
    from opentelemetry.trace import Status, StatusCode

    last = ctx.tries[-1]
    service = ctx.service
    if service is not None and service.host:
        span.set_attribute("server.address", service.host)
        span.set_attribute("net.peer.name", service.host)
    span.set_attribute("network.peer.address", str(last.get("ip", "")))
    span.set_attribute("net.peer.ip", str(last.get("ip", "")))
    if last.get("port") is not None:
        span.set_attribute("server.port", int(last["port"]))
        span.set_attribute("net.peer.port", int(last["port"]))
    if ctx.upstream_request is not None:
        span.set_attribute("http.request.method", ctx.upstream_request.method)
        span.set_attribute("http.method", ctx.upstream_request.method)
        span.set_attribute("url.path", ctx.upstream_request.path)
    if len(ctx.tries) > 1:
        span.set_attribute("http.request.resend_count", len(ctx.tries) - 1)
    for number, attempt in enumerate(ctx.tries, 1):
        if "error" in attempt:
            span.add_event(
                "pygateway.upstream.try_failed",
                {
                    "pygateway.try": number,
                    "network.peer.address": str(attempt.get("ip", "")),
                    "network.peer.port": int(attempt.get("port") or 0),
                    "error.message": str(attempt["error"]),
                },
            )
    status = ctx.upstream_status
    if "error" in last:
        span.set_attribute("error.type", "upstream_error")
        span.set_status(Status(StatusCode.ERROR, str(last["error"])))
    elif status is not None:
        span.set_attribute("http.response.status_code", status)
        span.set_attribute("http.status_code", status)
        if status >= 400:  # for a client span, 4xx is an error too
            span.set_attribute("error.type", str(status))
            span.set_status(Status(StatusCode.ERROR))
    span.end()


def _end_server(ctx: Context, span: Span) -> None:
    from opentelemetry.trace import Status, StatusCode

    response = ctx.response
    status = response.status_code if response is not None else None
    if status is not None:
        span.set_attribute("http.response.status_code", status)
        span.set_attribute("http.status_code", status)
    if ctx.shared.get("upstream_failed_mid_response"):
        span.set_attribute("error.type", "upstream_failed_mid_response")
        span.set_status(Status(StatusCode.ERROR, "the upstream failed mid-response"))
    elif status is not None and status >= 500:  # for a server span, only 5xx is an error
        span.set_attribute("error.type", str(status))
        span.set_status(Status(StatusCode.ERROR))
    span.end()


register(Opentelemetry)
