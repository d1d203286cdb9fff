"""From the client's request to the upstream request: paths, client IPs and headers.

Kong's rules, as plain functions: the route path below a mount point, host and port, body
framing, v0/v1 path joining, `trusted_ips` and the real-IP header, hop-by-hop removal,
X-Forwarded-* / X-Real-IP / Via, the upstream Host.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import quote

from ._exceptions import ConfigurationError
from ._types import RawHeaders, Scope
from .routing import normalize_path

if TYPE_CHECKING:
    from ._context import Context

__all__ = [
    "TrustedIPs",
    "body_framing",
    "escape_path",
    "escape_query",
    "forwarded_headers",
    "host_and_port",
    "join_upstream_path",
    "request_headers",
    "response_headers",
    "route_path",
    "upstream_host",
    "via_token",
]

_DEFAULT_PORTS = {"http": 80, "https": 443}
_HEX = frozenset("0123456789abcdefABCDEF")

_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Set by the gateway only, never taken from the client.
_GATEWAY_SET = frozenset(
    {
        b"host",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"x-forwarded-path",
        b"x-forwarded-prefix",
        b"x-real-ip",
        b"x-credential-identifier",
        b"x-anonymous-consumer",
        # What auth plugins (oauth2, acl) tell the upstream about the caller.
        b"x-authenticated-userid",
        b"x-authenticated-scope",
        b"x-authenticated-groups",
        b"expect",
    }
)


class TrustedIPs:
    """Kong's `trusted_ips`: the peers whose X-Forwarded-* / real-IP headers are believed."""

    def __init__(self, networks: Iterable[str] = ()) -> None:
        nets = []
        for i, net in enumerate(networks):
            try:
                nets.append(ipaddress.ip_network(net.strip(), strict=False))
            except ValueError:
                raise ConfigurationError(
                    f"invalid ip or cidr range: '{net}'", path=("trusted_ips", i)
                ) from None
        self.networks = tuple(nets)
        self.contains = functools.lru_cache(maxsize=4096)(self._contains)

    def _contains(self, ip: str) -> bool:
        if not self.networks or not ip:
            return False
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr.version == net.version and addr in net for net in self.networks)

    def __bool__(self) -> bool:
        return bool(self.networks)


def real_client_ip(
    peer: str, headers: RawHeaders, trusted: TrustedIPs, header: bytes, recursive: bool
) -> str:
    """nginx's realip module as Kong configures it: only a trusted peer may name the client."""
    if not trusted or not trusted.contains(peer):
        return peer
    values = [v.decode("latin-1") for k, v in headers if k == header]
    if not values:
        return peer
    addresses = [a.strip() for a in ",".join(values).split(",") if a.strip()]
    if not addresses:
        return peer
    if not recursive:
        return addresses[-1] if _is_ip(addresses[-1]) else peer
    for address in reversed(addresses):
        if not _is_ip(address):
            return peer  # nginx gives up on a value it cannot parse
        if not trusted.contains(address):
            return address
    return addresses[0]


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def join_upstream_path(
    base: str | None, req_path: str, matched: str, strip_path: bool, handling: str
) -> str:
    """The upstream path for a request, per Kong's path_handling `v0` (default) or `v1`."""
    base = base or "/"
    postfix = req_path[len(matched) :] if strip_path else req_path
    if handling == "v1":
        if not strip_path:
            return base + req_path[1:]
        if base.endswith("/") and postfix.startswith("/"):
            return base[:-1] + postfix
        return base + postfix
    if base.endswith("/"):
        if strip_path:
            if postfix == "":
                if base == "/":
                    return "/"
                return base if req_path.endswith("/") else base[:-1]
            if postfix.startswith("/"):
                return base[:-1] + postfix
            return base + postfix
        return base + req_path[1:]
    if strip_path:
        if postfix == "":
            return base + "/" if len(req_path) > 1 and req_path.endswith("/") else base
        if postfix.startswith("/"):
            return base + postfix
        return base + "/" + postfix
    if req_path == "/":
        return base
    return base + req_path


#: Connection header values that list no header to drop (what nearly every client and
#: upstream sends): no second pass over the headers is needed for them. Exactly Kong's:
#: it clears the listed headers unless the value is one of these, lower-case.
_PLAIN_CONNECTION = frozenset({b"keep-alive", b"close", b"upgrade"})


def _connection_listed(headers: RawHeaders) -> frozenset[bytes]:
    listed: set[bytes] = set()
    for k, v in headers:
        if k == b"connection":
            listed.update(t.strip().lower() for t in v.split(b","))
    return frozenset(listed)


def _forged(name: bytes) -> bool:
    """A name that WSGI/CGI upstreams read as a gateway-set or consumer identity header
    (`X_Consumer_Username` and `X-Consumer-Username` are the same `HTTP_X_CONSUMER_USERNAME`)."""
    alias = name.replace(b"_", b"-")
    return alias in _GATEWAY_SET or alias.startswith(b"x-consumer-")


def request_headers(client: RawHeaders) -> RawHeaders:
    """The client's headers minus hop-by-hop, Connection-listed, gateway-set and consumer
    identity headers (also when spelled with underscores); Content-Length dropped when
    Transfer-Encoding is present."""
    out = []
    listing = chunked = False  # Connection lists more names; Transfer-Encoding came
    for k, v in client:
        if k in _HOP_BY_HOP:
            if k == b"connection":
                listing = listing or v not in _PLAIN_CONNECTION
            elif k == b"transfer-encoding":
                chunked = True
            continue
        if k in _GATEWAY_SET or k.startswith(b"x-consumer-"):
            continue
        if b"_" in k and _forged(k):
            continue
        out.append((k, v))
    if listing or (chunked and any(k == b"content-length" for k, _ in out)):
        return _unlisted(out, client)
    return out


def _unlisted(kept: RawHeaders, sent: RawHeaders) -> RawHeaders:
    """`kept` minus the headers `sent`'s Connection lists, and minus Content-Length when
    `sent` had a Transfer-Encoding (names lower-case)."""
    listed = _connection_listed(sent)
    chunked = any(k == b"transfer-encoding" for k, _ in sent)
    return [(k, v) for k, v in kept if k not in listed and not (chunked and k == b"content-length")]


# What a request target may carry as is: RFC 3986 pchar and "/" in the path (a "%" only as
# the start of an escape); in the query anything visible but "#".
_PATH_UNSAFE = re.compile(r"[^A-Za-z0-9\-._~!$&'()*+,;=:@/%]+|%(?![0-9A-Fa-f]{2})")
_QUERY_UNSAFE = re.compile(r"[^\x21-\x22\x24-\x7e]+")


def _percent(text: str, encoding: str) -> str:
    return "".join(f"%{b:02X}" for b in text.encode(encoding, "surrogatepass"))


def escape_path(path: str) -> str:
    """An upstream path made safe to send: starts with `/`; characters outside the path's
    safe set (`?`, `#`, space, controls, non-ASCII...) percent-encoded as UTF-8; `%XX`
    escapes kept."""
    if not path.startswith("/"):
        path = "/" + path
    if _PATH_UNSAFE.search(path) is None:
        return path
    return _PATH_UNSAFE.sub(lambda m: _percent(m.group(0), "utf-8"), path)


def escape_query(query: str, encoding: str = "utf-8") -> str:
    """A query string made safe to send: `#`, space, controls and non-ASCII characters
    percent-encoded (as `encoding`); everything else (`&`, `=`, `%XX`...) kept."""
    if _QUERY_UNSAFE.search(query) is None:
        return query
    return _QUERY_UNSAFE.sub(lambda m: _percent(m.group(0), encoding), query)


def response_headers(upstream: RawHeaders) -> RawHeaders:
    """The upstream's response headers minus hop-by-hop and Connection-listed ones; names are
    lower-cased (engines may hand them over as the upstream spelled them)."""
    out = []
    listing = chunked = False  # Connection lists more names; Transfer-Encoding came
    for k, v in upstream:
        k = k.lower()
        if k in _HOP_BY_HOP:
            if k == b"connection":
                listing = listing or v not in _PLAIN_CONNECTION
            elif k == b"transfer-encoding":
                chunked = True
            continue
        out.append((k, v))
    if listing or (chunked and any(k == b"content-length" for k, _ in out)):
        return _unlisted(out, [(k.lower(), v) for k, v in upstream])
    return out


def route_path(scope: Scope) -> tuple[str, str, str]:
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


def host_and_port(scope: Scope, headers: list[tuple[bytes, bytes]]) -> tuple[str, int, str]:
    """(host without port, port the connection arrived on, Host header as sent).

    The port is the server's (Kong matches `net.dst.port`), else the Host header's, else the
    scheme's default.
    """
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
    if server[1]:
        port = server[1]
    elif port is None:
        port = _DEFAULT_PORTS.get(scheme, 80)
    return host.lower().rstrip("."), int(port), host_header


def body_framing(
    scope: Scope, headers: list[tuple[bytes, bytes]]
) -> tuple[bool | None, bytes | None]:
    """(whether the request has a body, or None if only reading it can tell; the client's
    Content-Length when it framed the body with one)."""
    length: bytes | None = None
    chunked = False
    for k, v in headers:
        if k == b"content-length":
            if length is None:
                length = v.strip()
        elif k == b"transfer-encoding":
            chunked = True
    if chunked:
        return True, None
    if length is not None:
        return length not in (b"0", b""), length
    if scope.get("http_version", "1.1") in ("1.0", "1.1"):
        return False, None
    # HTTP/2 and HTTP/3 need neither header: the first http.request message will tell.
    return None, None


def upstream_host(
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


#: The client's headers `forwarded_headers` reads (X-Forwarded-For and Via are carried
#: over; the others only from a trusted peer).
_FORWARDED_IN = frozenset(
    {
        b"x-forwarded-for",
        b"via",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"x-forwarded-path",
        b"x-forwarded-prefix",
    }
)


def forwarded_headers(ctx: Context, host_header: str, root_path: str) -> list[tuple[bytes, bytes]]:
    """X-Forwarded-*, X-Real-IP, Via and the request id, as the upstream gets them."""
    settings = ctx.gateway.settings
    request = ctx.request
    given: dict[bytes, list[bytes]] = {}
    for k, v in request.headers.raw:
        if k in _FORWARDED_IN:
            given.setdefault(k, []).append(v)
    client_ip = request.client_ip.encode("latin-1")
    xff = b", ".join(given.get(b"x-forwarded-for", ()))
    out = [
        (b"x-forwarded-for", xff + b", " + request.peer_ip.encode("latin-1") if xff else client_ip),
        (b"x-real-ip", client_ip),
    ]
    route = ctx.route
    prefix = ctx.matched_prefix if route and route.strip_path else ""
    own = (
        (b"x-forwarded-proto", request.scheme),
        (b"x-forwarded-host", request.host),
        (b"x-forwarded-port", str(request.port)),
        (b"x-forwarded-path", root_path + request.raw_path),
        (b"x-forwarded-prefix", root_path + (prefix if prefix != "/" else "")),
    )
    trusted = len(given) > (b"x-forwarded-for" in given) + (b"via" in given) and (
        settings.trusted_ips.contains(request.peer_ip)
    )
    for name, text in own:
        value = given[name][0] if trusted and name in given else text.encode("latin-1")
        if value:
            out.append((name, value))
    if settings.server_tokens:
        # The gateway's Via replaces the client's, carrying its chain over.
        via = b", ".join(given.get(b"via", ()))
        token = via_token(b"1.1", settings.server_token)
        out.append((b"via", via + b", " + token if via else token))
    if settings.request_id_upstream:
        out.append((b"x-pygateway-request-id", ctx.request_id.encode("latin-1")))
    return out


@functools.lru_cache(maxsize=16)
def via_token(version: bytes, server_token: str) -> bytes:
    return version + b" " + server_token.encode("latin-1")
