"""The log entry every logging plugin sends: Kong's basic serializer, in the same shape.

`serialize(ctx)` builds a JSON-able dict from a finished request: `request`, `response`,
`latencies` (Kong's key names: `request` = the whole request, `proxy` = waiting for the
upstream, `kong` = the gateway's own share), `route`, `service`, `consumer`,
`authenticated_entity`, `client_ip`, `started_at` (epoch milliseconds), `upstream_uri`,
`upstream_status`, `tries` and `source`.

Secrets never reach a log: the `Authorization`, `Proxy-Authorization`, `Cookie` and
`Set-Cookie` headers read "REDACTED", the consumer is logged without its credentials, the
authenticated credential by its id only, and no entity carries its plugins' configs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._exceptions import ConfigurationError

if TYPE_CHECKING:
    from .._context import Context
    from .._headers import Headers

__all__ = [
    "REDACTED",
    "REDACTED_HEADERS",
    "check_custom_fields",
    "latencies",
    "require",
    "serialize",
]

REDACTED = "REDACTED"
#: Headers whose values are replaced by "REDACTED" in a log entry (request and response).
REDACTED_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})


def check_custom_fields(value: Any) -> str | None:
    """`custom_fields_by_lua` runs Lua in Kong: there is no Lua here, so it is refused."""
    if value:
        return "not supported: pygateway does not run Lua"
    return None


def require(config: dict[str, Any] | None, *names: str) -> None:
    """Refuse a declarative config that lacks one of the required fields `names` (Kong's
    message), before the class is built without them."""
    missing = [name for name in names if (config or {}).get(name) is None]
    if missing:
        raise ConfigurationError(errors=[((name,), "required field missing") for name in missing])


def serialize(ctx: Context) -> dict[str, Any]:
    """Kong's log entry for the request `ctx` describes (call it in the `log` phase)."""
    from .._config import entity_fields

    request = ctx.request
    response = ctx.response
    upstream = ctx.upstream_request
    uri = request.raw_path + (f"?{request.query_string}" if request.query_string else "")
    entry: dict[str, Any] = {
        "request": {
            "id": ctx.request_id,
            "uri": uri,
            "url": f"{request.scheme}://{_authority(request.host, request.port)}{uri}",
            "querystring": dict(request.query_params),
            "method": request.method,
            "headers": headers_dict(request.headers),
            "size": ctx.request_size,
        },
        "upstream_uri": (
            upstream.path + (f"?{upstream.query_string}" if upstream.query_string else "")
            if upstream is not None and ctx.service is not None
            else ""
        ),
        # A string, as Kong's (nginx's variable); "" when no upstream answered.
        "upstream_status": str(ctx.upstream_status) if ctx.upstream_status is not None else "",
        "response": {
            "status": response.status_code if response is not None else 0,
            "headers": headers_dict(response.headers) if response is not None else {},
            "size": ctx.response_size,
        },
        "latencies": latencies(ctx),
        "tries": [dict(t) for t in ctx.tries],
        "client_ip": request.client_ip,
        "started_at": int(ctx.started_at * 1000),
        "source": response.source if response is not None else "error",
    }
    if request.scheme == "https":
        entry["request"]["tls"] = {"version": None, "cipher": None, "client_verify": "NONE"}
    if ctx.route is not None:
        entry["route"] = entity_fields(ctx.route, skip=("plugins",))
    if ctx.service is not None:
        entry["service"] = entity_fields(ctx.service, skip=("routes", "plugins"))
    if ctx.consumer is not None:
        entry["consumer"] = entity_fields(ctx.consumer, skip=("credentials", "plugins", "acls"))
    if ctx.credential is not None:
        entry["authenticated_entity"] = {
            "id": ctx.credential.id,
            "consumer_id": ctx.consumer.id if ctx.consumer is not None else None,
        }
    return entry


def headers_dict(headers: Headers) -> dict[str, str | list[str]]:
    """Lower-cased names; a repeated header gives a list (Kong's `get_headers`); the
    credential-bearing ones are redacted."""
    out: dict[str, str | list[str]] = {}
    for raw_name, raw_value in headers.raw:
        name = raw_name.decode("latin-1").lower()
        value = REDACTED if name in REDACTED_HEADERS else raw_value.decode("latin-1")
        previous = out.get(name)
        if previous is None:
            out[name] = value
        elif isinstance(previous, list):
            previous.append(value)
        else:
            out[name] = [previous, value]
    return out


def _authority(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def latencies(ctx: Context) -> dict[str, int]:
    """Kong's `latencies` (ms): `request` (all of it), `proxy` (waiting for the upstream, -1
    when there was none) and `kong` (the gateway's own share)."""
    total = ctx.latencies.get("request", 0)
    waiting = ctx.latencies.get("upstream")
    return {
        # Kong says -1 when no upstream was waited for (the request never got there).
        "proxy": waiting if waiting is not None else -1,
        "kong": max(0, total - (waiting or 0)),
        "request": total,
    }
