"""The log entry every logging plugin sends: Kong's basic serializer, in the same shape.

`serialize_json(ctx)` writes it for a finished request as JSON (`serialize(ctx)` gives it as
a dict): `request`, `response`, `latencies` (Kong's key names: `request` = the whole
request, `proxy` = waiting for the upstream, `kong` = the gateway's own share), `route`,
`service`, `consumer`, `authenticated_entity`, `client_ip`, `started_at` (epoch
milliseconds), `upstream_uri`, `upstream_status`, `tries` and `source`.

Secrets never reach a log: the `Authorization`, `Proxy-Authorization`, `Cookie` and
`Set-Cookie` headers read "REDACTED", the consumer is logged without its credentials, the
authenticated credential by its id only, and no entity carries its plugins' configs.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from .._exceptions import ConfigurationError

if TYPE_CHECKING:
    from .._context import Context
    from .._headers import Headers

__all__ = [
    "REDACTED",
    "REDACTED_HEADERS",
    "check_custom_fields",
    "headers_dict",
    "headers_json",
    "latencies",
    "require",
    "serialize",
    "serialize_json",
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
    """Kong's log entry for the request `ctx` describes (call it in the `log` phase), as a
    fresh dict the caller may change: `serialize_json`'s, decoded."""
    entry: dict[str, Any] = json.loads(serialize_json(ctx))
    return entry


#: The entry without its entities, keys in the order of Kong's serializer; `%s` marks a
#: value already in JSON.
_ENTRY = (
    '{"request":{"id":%s,"uri":%s,"url":%s,"querystring":%s,"method":%s,"headers":%s,'
    '"size":%d%s},'
    '"upstream_uri":%s,"upstream_status":%s,'
    '"response":{"status":%d,"headers":%s,"size":%d},'
    '"latencies":{"proxy":%s,"kong":%s,"request":%s},'
    '"tries":%s,"client_ip":%s,"started_at":%d,"source":%s'
)
_TLS = ',"tls":{"version":null,"cipher":null,"client_verify":"NONE"}'
_AUTHENTICATED = ',"authenticated_entity":{"id":%s,"consumer_id":%s}'
#: As `json.dumps(..., separators=(",", ":"), default=str)`, made once.
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)
#: A str as a JSON string, escaped as `_ENCODER` escapes it.
_string = json.encoder.encode_basestring_ascii


def serialize_json(ctx: Context) -> bytes:
    """Kong's log entry for the request `ctx` describes, as compact JSON: what the loggers
    send. The bytes are `json.dumps(entry, separators=(",", ":"))`'s.

    It runs on every logged request, so the entry is written out rather than built as
    dicts and then encoded (which cost about four times as much): the route, service and
    consumer, half of it, are encoded once per entity (`_entity_member`), and headers
    with nothing to escape are copied as they are (`headers_json`).
    """
    request = ctx.request
    response = ctx.response
    upstream = ctx.upstream_request
    uri = request.raw_path + (f"?{request.query_string}" if request.query_string else "")
    upstream_uri = ""
    if upstream is not None and ctx.service is not None:
        query = upstream.query_string
        upstream_uri = upstream.path + (f"?{query}" if query else "")
    total = ctx.latencies.get("request", 0)
    waiting = ctx.latencies.get("upstream")
    text = _ENTRY % (
        _string(ctx.request_id),
        _string(uri),
        _string(f"{request.scheme}://{_authority(request.host, request.port)}{uri}"),
        _ENCODER.encode(request.query_params) if request.query_string else "{}",
        _string(request.method),
        headers_json(request.headers),
        ctx.request_size,
        _TLS if request.scheme == "https" else "",
        _string(upstream_uri),
        # A string, as Kong's (nginx's variable); "" when no upstream answered.
        _string(str(ctx.upstream_status) if ctx.upstream_status is not None else ""),
        response.status_code if response is not None else 0,
        headers_json(response.headers) if response is not None else "{}",
        ctx.response_size,
        # As `latencies(ctx)` gives them.
        waiting if waiting is not None else -1,
        max(0, total - (waiting or 0)),
        total,
        "[" + ",".join(map(_flat_object, ctx.tries)) + "]",
        _string(request.client_ip),
        int(ctx.started_at * 1000),
        _string(response.source if response is not None else "error"),
    )
    parts = [text]
    if ctx.route is not None:
        parts.append(_entity_member("route", ctx.route))
    if ctx.service is not None:
        parts.append(_entity_member("service", ctx.service))
    if ctx.consumer is not None:
        parts.append(_entity_member("consumer", ctx.consumer))
    if ctx.credential is not None:
        consumer_id = ctx.consumer.id if ctx.consumer is not None else None
        parts.append(_AUTHENTICATED % (_nullable(ctx.credential.id), _nullable(consumer_id)))
    parts.append("}")
    return "".join(parts).encode()


def _nullable(value: str | None) -> str:
    return "null" if value is None else _string(value)


def _flat_object(obj: dict[str, Any]) -> str:
    """A dict of str keys and str or int values (a try) as JSON, as `_ENCODER` writes it,
    without its set-up cost; anything else goes to `_ENCODER`."""
    members = []
    for key, value in obj.items():
        kind = type(value)
        if type(key) is not str or (kind is not str and kind is not int):
            return _ENCODER.encode(obj)
        members.append(f"{_string(key)}:{_string(value) if kind is str else value}")
    return "{" + ",".join(members) + "}"


#: What each entity leaves out of its entry: its children, plugins and secrets.
_LEFT_OUT = {
    "route": ("plugins",),
    "service": ("routes", "plugins"),
    "consumer": ("credentials", "plugins", "acls"),
}
#: How many entities `_entity_member` keeps encoded before it starts over.
MAX_CACHED_ENTITIES = 10_000
#: id(entity) -> (entity, its member); holding the entity keeps its id from being reused
#: by another object while the member is cached.
_entity_members: dict[int, tuple[Any, str]] = {}


def _entity_member(key: str, entity: Any) -> str:
    """`,"<key>":<the entity's own fields as JSON>`, encoded once per entity.

    Entities are frozen, so their JSON never changes, and a str is immutable, so entries
    share nothing one could change for another. The cache holds the entities requests
    named lately (configured ones, or consumers a plugin made), never anything a client
    sent: at most `MAX_CACHED_ENTITIES`, after which it is emptied (so that entities of
    replaced configurations do not accumulate).
    """
    cached = _entity_members.get(id(entity))
    if cached is not None and cached[0] is entity:
        return cached[1]
    from .._config import entity_fields

    member = f',"{key}":' + _ENCODER.encode(entity_fields(entity, skip=_LEFT_OUT[key]))
    if len(_entity_members) >= MAX_CACHED_ENTITIES:
        _entity_members.clear()
    _entity_members[id(entity)] = (entity, member)
    return member


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


_REDACTED_NAMES = frozenset(name.encode() for name in REDACTED_HEADERS)
#: The bytes a JSON string escapes, but `"`: control characters, `\`, DEL and non-ASCII.
_ESCAPED = bytes(range(0x20)) + b"\\" + bytes(range(0x7F, 0x100))


def headers_json(headers: Headers) -> str:
    """`headers_dict(headers)` as JSON, as `_ENCODER` writes it.

    In the usual case (lower-case names, none repeated, values in printable ASCII without
    `"` or `\\`) JSON leaves names and values as they are, so they are joined as they
    are, in a few C calls rather than a decode and an escape per string.
    """
    raw = headers.raw
    if not raw:
        return "{}"
    names = dict(raw)
    if len(names) == len(raw) and b"".join(names).islower():
        if not _REDACTED_NAMES.isdisjoint(names):
            raw = [(k, b"REDACTED") if k in _REDACTED_NAMES else (k, v) for k, v in raw]
        body = b'","'.join(map(b'":"'.join, raw))
        if body.count(b'"') == 4 * len(raw) - 2 and body.translate(None, _ESCAPED) == body:
            return '{"' + body.decode("ascii") + '"}'
    return _ENCODER.encode(headers_dict(headers))


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
