"""cors: Cross-Origin Resource Sharing headers, and answers to preflight requests (Kong's).

A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered by the
gateway with `200` and the `Access-Control-Allow-*` headers, unless `preflight_continue`
hands it to the upstream. Every other response gets `Access-Control-Allow-Origin`,
`-Allow-Credentials` and `-Expose-Headers` in `header_filter`, whoever produced it (the
upstream, another plugin, an error).

Origins are matched as Kong matches them: an entry made only of `A-Za-z0-9.:/-` is an exact
origin (`https://example.com`, default ports ignored), any other entry is a regular
expression over the whole host (or over `scheme://host:port` when the entry has a `:`).
Where Kong is unsafe, this is stricter:

- a regular expression must match the *whole* subject (`re.fullmatch`): Kong anchors only
  the ends of the pattern, so in `a\\.com|b\\.com` its first branch also matches
  `a.com.attacker.net`;
- with all origins allowed (`origins` unset, `[]` or containing `*`) and `credentials`,
  Kong reflects any `Origin` with `Access-Control-Allow-Credentials: true`, which lets every
  website read credentialed responses. Here such a configuration answers
  `Access-Control-Allow-Origin: *` without `Access-Control-Allow-Credentials` (browsers
  then refuse credentialed requests) and logs a warning when the plugin is built;
- the opaque origin `null` (sandboxed frames, `file:` pages, any site can produce it)
  matches only an exact `null` entry, never a regular expression;
- an `Origin` that is not `scheme://host[:port]` nor a bare host never matches an entry.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import attrs

from .. import _schema
from .._exceptions import ConfigurationError, PathPart
from .._responses import Response
from ._base import Plugin
from ._registry import register

if TYPE_CHECKING:
    from .._context import Context
    from .._headers import Headers

__all__ = ["Cors"]

logger = logging.getLogger("pygateway.plugins.cors")

Method = Literal["GET", "HEAD", "PUT", "PATCH", "POST", "DELETE", "OPTIONS", "TRACE", "CONNECT"]
METHODS: tuple[Method, ...] = (
    "GET",
    "HEAD",
    "PUT",
    "PATCH",
    "POST",
    "DELETE",
    "OPTIONS",
    "TRACE",
    "CONNECT",
)

# Kong: an entry with a character outside this set is a regular expression.
_PLAIN = re.compile(r"[A-Za-z0-9.:/-]+")
# A serialized origin (RFC 6454): scheme "://" host [":" port], nothing else.
_ORIGIN = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://"
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)"
    r"(?::(?P<port>[0-9]{1,5}))?"
)
# What Kong keeps as is when it finds no `//host` in an Origin: `example.com`, `null`.
_BARE = re.compile(r"[A-Za-z0-9._:-]+")
_DEFAULT_PORTS = {"http": "80", "https": "443"}
_FORBIDDEN = re.compile(r"[\r\n\x00]")


@attrs.frozen
class _Origin:
    """An origin as compared: `domain` (`scheme://host[:port]`, default port dropped) and
    `host` (what host-only patterns match)."""

    domain: str
    host: str


def _normalize(origin: str) -> _Origin | None:
    """The origin to compare, or None if it is neither a serialized origin nor a bare host."""
    m = _ORIGIN.fullmatch(origin)
    if m is None:
        if _BARE.fullmatch(origin):
            return _Origin(origin, origin)  # Kong: no host part, kept verbatim
        return None
    # Scheme and host are case-insensitive (browsers send them in lower case).
    scheme, host, port = m["scheme"].lower(), m["host"].lower(), m["port"]
    if port is not None:
        if int(port) > 65535:
            return None
        if port == _DEFAULT_PORTS.get(scheme):
            port = None
    return _Origin(f"{scheme}://{host}" + (f":{port}" if port else ""), host)


@attrs.frozen
class _Entry:
    """One compiled `origins` entry."""

    exact: str | None = None  # a normalized domain, or "null"
    pattern: re.Pattern[str] | None = None
    by_host: bool = False


@attrs.frozen
class _Compiled:
    allow_all: bool  # no origins, or just "*"
    any_star: bool  # "*" among other entries: all allowed when the request has an Origin
    fixed: str | None  # a single plain entry: sent as is, whatever the request's Origin
    entries: tuple[_Entry, ...]
    allow_headers: str | None
    expose_headers: str | None
    allow_methods: str
    max_age: str | None


def _check_header_values(value: Sequence[str] | None) -> str | None:
    for item in value or ():
        if _FORBIDDEN.search(item):
            return f"invalid value '{item}': must not contain CR, LF or NUL"
    return None


@attrs.frozen(kw_only=True)
class Cors(Plugin):
    """Add CORS headers to responses and answer preflight requests (Kong's `cors`).

    Args:
        origins: allowed origins: `*`, exact origins (`https://app.example.com`), or
            regular expressions (`(.*\\.)?example\\.com`). Unset or empty: all origins.
        methods: `Access-Control-Allow-Methods` of preflight answers (all nine by default).
        headers: `Access-Control-Allow-Headers`; unset: the preflight's
            `Access-Control-Request-Headers` is echoed.
        exposed_headers: `Access-Control-Expose-Headers` of actual responses.
        credentials: send `Access-Control-Allow-Credentials: true` (never with all
            origins allowed: see the module notes).
        max_age: `Access-Control-Max-Age` of preflight answers, in seconds.
        preflight_continue: proxy preflight requests to the upstream instead of answering.
        private_network: answer `Access-Control-Allow-Private-Network: true` to a preflight
            that asks `Access-Control-Request-Private-Network: true`.
        allow_origin_absent: add the headers to responses to requests without `Origin`.

    Raises:
        ConfigurationError: an origin that is neither `*` nor a valid regular expression,
            an unknown method, a header value with CR/LF/NUL.

    Example: `Cors(origins=["https://app.example.com"], credentials=True, max_age=3600)`.
    """

    name = "cors"
    priority = 2000
    scopes = frozenset({"global", "service", "route"})

    origins: Sequence[str] | None = None
    headers: Sequence[str] | None = _schema.field(None, check=_check_header_values)
    exposed_headers: Sequence[str] | None = _schema.field(None, check=_check_header_values)
    methods: Sequence[Method] | None = METHODS
    max_age: float | None = None
    credentials: bool = False
    private_network: bool = False
    preflight_continue: bool = False
    allow_origin_absent: bool = True
    _compiled: Any = attrs.field(default=None, init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        object.__setattr__(self, "_compiled", self._compile())
        compiled: _Compiled = self._compiled
        if self.credentials and (compiled.allow_all or compiled.any_star):
            logger.warning(
                "cors: credentials=true with all origins allowed: answering "
                "'Access-Control-Allow-Origin: *' without 'Access-Control-Allow-Credentials' "
                "(Kong would reflect any Origin, which lets every site read credentialed "
                "responses); list the allowed origins instead"
            )

    def _compile(self) -> _Compiled:
        errors: list[tuple[tuple[PathPart, ...], str]] = []
        origins = tuple(self.origins or ())
        entries: list[_Entry] = []
        for i, entry in enumerate(origins):
            if entry == "*":
                continue
            if _PLAIN.fullmatch(entry):
                normalized = _normalize(entry)
                entries.append(_Entry(exact=normalized.domain if normalized else entry))
                continue
            try:
                pattern = re.compile(entry)
            except (re.error, ValueError):
                errors.append((("origins", i), f"'{entry}' is not a valid regex"))
                continue
            entries.append(_Entry(pattern=pattern, by_host=":" not in entry))
        if errors:
            raise ConfigurationError(errors=errors)
        fixed = None
        if len(origins) == 1 and _PLAIN.fullmatch(origins[0]):
            fixed = origins[0]
        methods = self.methods
        return _Compiled(
            allow_all=not origins or origins == ("*",),
            any_star="*" in origins,
            fixed=fixed,
            entries=tuple(entries),
            allow_headers=",".join(self.headers) if self.headers else None,
            expose_headers=",".join(self.exposed_headers) if self.exposed_headers else None,
            allow_methods=",".join(methods) if methods is not None else ",".join(METHODS),
            max_age=_number(self.max_age) if self.max_age is not None else None,
        )

    async def access(self, ctx: Context) -> Response | None:
        request = ctx.request
        origin = request.headers.get("origin")
        if (
            request.method != "OPTIONS"
            or not origin
            or "access-control-request-method" not in request.headers
        ):
            return None
        # Kong: a preflight's answer is complete here (or the upstream's): header_filter
        # must not add to it.
        ctx.plugin_state["preflight"] = True
        if self.preflight_continue:
            return None
        response = Response(200)
        headers = response.headers
        self._allow_origin(headers, origin, add_vary=False)
        compiled: _Compiled = self._compiled
        if compiled.allow_headers is not None:
            headers["access-control-allow-headers"] = compiled.allow_headers
        else:
            requested = request.headers.get("access-control-request-headers")
            if requested is not None:
                headers["access-control-allow-headers"] = requested
        headers["access-control-allow-methods"] = compiled.allow_methods
        if compiled.max_age is not None:
            headers["access-control-max-age"] = compiled.max_age
        if (
            self.private_network
            and request.headers.get("access-control-request-private-network") == "true"
        ):
            headers["access-control-allow-private-network"] = "true"
        return response

    async def header_filter(self, ctx: Context) -> None:
        if ctx.plugin_state.get("preflight"):
            return
        origin = ctx.request.headers.get("origin") or None
        if origin is None and not self.allow_origin_absent:
            return
        assert ctx.response is not None
        headers = ctx.response.headers
        self._allow_origin(headers, origin, add_vary=True)
        compiled: _Compiled = self._compiled
        if compiled.expose_headers is not None:
            headers["access-control-expose-headers"] = compiled.expose_headers

    def _allow_origin(self, headers: Headers, origin: str | None, *, add_vary: bool) -> None:
        """Set Access-Control-Allow-Origin (and -Credentials, Vary) for `origin`.

        `add_vary`: add `Vary: Origin` to the Vary an upstream may have sent (header_filter)
        rather than set it on the gateway's own answer (a preflight).
        """
        compiled: _Compiled = self._compiled
        if compiled.allow_all or (compiled.any_star and origin):
            # Never with credentials: see the module notes. The answer does not depend on
            # the Origin, so no Vary.
            headers["access-control-allow-origin"] = "*"
            return
        # From here the answer may depend on the Origin (Kong adds Vary even for a single
        # fixed origin: caches key on it).
        if add_vary:
            _add_vary_origin(headers)
        else:
            headers["vary"] = "Origin"
        allowed = compiled.fixed if compiled.fixed is not None else self._match(origin)
        if allowed is not None:
            headers["access-control-allow-origin"] = allowed
        elif "access-control-allow-origin" in headers:
            del headers["access-control-allow-origin"]
        if self.credentials:
            # As Kong, also when no origin matched: without Allow-Origin it grants nothing.
            headers["access-control-allow-credentials"] = "true"

    def _match(self, origin: str | None) -> str | None:
        """The normalized origin to allow, if `origin` matches an entry."""
        if not origin:
            return None
        compiled: _Compiled = self._compiled
        if origin == "null":
            # Opaque origins are all "null": only an explicit entry allows them.
            return "null" if any(e.exact == "null" for e in compiled.entries) else None
        normalized = _normalize(origin)
        if normalized is None:
            return None
        for entry in compiled.entries:
            if entry.pattern is not None:
                subject = normalized.host if entry.by_host else normalized.domain
                if entry.pattern.fullmatch(subject):
                    return normalized.domain
            elif entry.exact == normalized.domain:
                return normalized.domain
        return None


def _add_vary_origin(headers: Headers) -> None:
    for value in headers.getlist("vary"):
        tokens = {t.strip().lower() for t in value.split(",")}
        if "origin" in tokens or "*" in tokens:
            return
    headers.add("vary", "Origin")


def _number(value: float) -> str:
    """As Lua's tostring: `23`, `1.5`."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


register(Cors)
