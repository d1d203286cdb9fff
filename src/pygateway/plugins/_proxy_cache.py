"""proxy-cache: answer repeated requests from a cache of upstream responses (Kong's).

access looks the request up: a fresh entry answers at once (`X-Cache-Status: Hit`, no
upstream call); otherwise the request goes on (`Miss`, or `Refresh` for a stale entry).
header_filter decides whether the upstream's response may be stored, and only then does
body_filter collect its body, up to `max_body_size` (beyond it, storing is given up: the
response is never buffered). The entry is written in the log phase, once the response was
sent, so a slow store never delays it.

Entries live in memory (`strategy="memory"`) or in a Redis every worker and node shares
(`strategy="redis"`, Kong Enterprise's). A Redis that cannot be reached never fails a
request: it goes upstream, and is stored nowhere (see `ProxyCache`'s `bypass_on_err`).

Stricter than Kong, so that a shared cache never leaks one client's response to another:
the upstream's `Vary` is honoured, a response with `Set-Cookie` or
`Cache-Control: private|no-store` is never stored, and a request carrying `Authorization`
or `Cookie` is not served from an entry shared by several clients.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import math
import time
from collections.abc import Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl

import attrs

from .._exceptions import ConfigurationError, PathPart
from .._responses import Response
from .._schema import FrozenMap, Record, field
from ..stores import RedisConfig, StoreError
from ._base import Plugin
from ._cache_store import (
    DEFAULT_DICTIONARY,
    CachedResponse,
    CacheStore,
    cache_store,
    purge,
    purge_all,
    redis_cache_store,
)
from ._registry import register

if TYPE_CHECKING:
    from .._context import Context
    from .._gateway import Gateway
    from .._headers import Headers

__all__ = ["Memory", "ProxyCache", "purge", "purge_all"]

logger = logging.getLogger("pygateway.plugins.proxy_cache")

_RESPONSE_HEADERS = ("age", "X-Cache-Status", "X-Cache-Key")
# Never stored: framing, the gateway's per-request headers, and the cache's own.
_NOT_STORED = frozenset(
    {b"content-length", b"transfer-encoding", b"age", b"x-cache-status", b"x-cache-key"}
)
# Headers that name who is calling: such a request gets no entry shared with others.
_PERSONAL = ("authorization", "cookie")


def _positive(value: int | None) -> str | None:
    if value is not None and value <= 0:
        return "value must be greater than 0"
    return None


def _non_empty(value: Sequence[Any]) -> str | None:
    return None if value else "length must be at least 1"


def _check_codes(value: Sequence[int]) -> str | None:
    if not value:
        return "length must be at least 1"
    for code in value:
        if not 100 <= code <= 900:
            return "value should be between 100 and 900"
    return None


def _check_response_headers(value: Mapping[str, bool]) -> str | None:
    for key in value:
        if key not in _RESPONSE_HEADERS:
            return f"unknown field '{key}' (expected one of: {', '.join(_RESPONSE_HEADERS)})"
    return None


@attrs.frozen(kw_only=True)
class Memory(Record):
    """The memory strategy's options: which dictionary (store) entries go to."""

    dictionary_name: str = DEFAULT_DICTIONARY


@attrs.frozen(kw_only=True)
class ProxyCache(Plugin):
    """Cache upstream responses and answer repeated requests from the cache.

        ProxyCache(cache_ttl=60, content_type=["application/json"])
        ProxyCache(strategy="redis", redis={"host": "redis.internal"}, bypass_on_err=True)

    With `strategy="memory"` entries go to the gateway's store named by
    `memory.dictionary_name` (see `MemoryCacheStore` for its bounds); with `"redis"`, to
    the Redis `redis` names (Kong's redis record), shared by every gateway using it.
    `await purge(gateway, key)` and `await purge_all(gateway)` drop entries.

    When Redis cannot be reached (or answers a lookup later than `redis.timeout`), the
    request goes upstream and nothing is stored; the error is logged once per 30 s. With
    `bypass_on_err` the client sees `X-Cache-Status: Bypass`; without it (the default) no
    cache header at all, as with Kong's proxy-cache when its store fails. Never a 5xx.

    pygateway's fields beyond Kong's: `max_body_size` (bytes; a larger body is passed on but
    not stored) and `cache_authorized` (serve requests carrying Authorization or Cookie from
    entries shared by clients: off by default).
    """

    name = "proxy-cache"
    priority = 100

    strategy: Literal["memory", "redis"] = "memory"
    response_code: Sequence[int] = field((200, 301, 404), check=_check_codes)
    request_method: Sequence[Literal["HEAD", "GET", "POST", "PATCH", "PUT"]] = field(
        ("GET", "HEAD"), check=_non_empty
    )
    content_type: Sequence[str] = field(("text/plain", "application/json"), check=_non_empty)
    cache_ttl: int = field(300, check=_positive)
    storage_ttl: int | None = field(None, check=_positive)
    cache_control: bool = False
    ignore_uri_case: bool = False
    vary_query_params: Sequence[str] | None = None
    vary_headers: Sequence[str] | None = None
    response_headers: Mapping[str, bool] = field(
        FrozenMap((k, True) for k in _RESPONSE_HEADERS), check=_check_response_headers
    )
    memory: Memory = attrs.field(factory=Memory)
    redis: RedisConfig = attrs.field(factory=RedisConfig)
    bypass_on_err: bool = False
    max_body_size: int = field(1024 * 1024, check=_positive)
    cache_authorized: bool = False

    _content_types: tuple[tuple[str, str, frozenset[tuple[str, str]]], ...] = attrs.field(
        init=False, eq=False, repr=False, default=()
    )

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        # Header names in their case-insensitive form once, not per request.
        if self.vary_headers is not None:
            object.__setattr__(self, "vary_headers", tuple(h.lower() for h in self.vary_headers))
        object.__setattr__(self, "_content_types", tuple(_media_type(t) for t in self.content_type))
        errors: list[tuple[tuple[PathPart, ...], str]] = []
        if self.strategy == "redis":
            if not self.redis.host:
                errors.append((("redis", "host"), "required field missing"))
            if importlib.util.find_spec("coredis") is None:
                errors.append(
                    (
                        ("strategy",),
                        "the redis strategy needs coredis >= 6: install pygateway[redis]",
                    )
                )
        if errors:
            raise ConfigurationError(errors=errors)

    def store(self, gateway: Gateway) -> CacheStore:
        """The store this configuration caches in (per gateway, per dictionary or Redis)."""
        if self.strategy == "redis":
            return redis_cache_store(gateway, self.redis)
        return cache_store(gateway, self.memory.dictionary_name)

    def _show(self, header: str) -> bool:
        return bool(self.response_headers.get(header, True))

    # -- access: look up, answer a fresh entry ---------------------------------------------

    async def access(self, ctx: Context) -> Response | None:
        state = ctx.plugin_state
        request = ctx.request
        method = request.method
        cc = _directives(request.headers.getlist("cache-control"))
        shared = ctx.credential is None
        if (
            method not in self.request_method
            or (self.cache_control and ("no-store" in cc or "no-cache" in cc))
            or (shared and not self.cache_authorized and _personal(request.headers))
            or (self.cache_control and "authorization" in request.headers)
        ):
            state["status"] = "Bypass"
            return None
        # A HEAD is answered from the GET's entry (a HEAD response has no body to store).
        key = self.cache_key(ctx, "GET" if method == "HEAD" else method)
        store = self.store(ctx.gateway)
        try:
            entry = await store.get(key)
        except StoreError as exc:
            store.report_failure(
                logger, f"proxy-cache could not look up a response ({store!r})", exc
            )
            if self.bypass_on_err:
                state["key"] = key
                state["status"] = "Bypass"
            return None
        state["key"] = key
        if entry is None or not _vary_matches(entry, request.headers):
            if self.cache_control and "only-if-cached" in cc:
                return Response(504, json={"message": "Gateway Timeout"})
            state["status"] = "Miss"
            return None
        age = store.clock() - entry.stored_at
        if not self._fresh(entry, age, cc):
            state["status"] = "Refresh"
            return None
        state["status"] = "Hit"
        headers = list(entry.headers)
        if self._show("age"):
            headers.append((b"age", str(max(0, math.floor(age))).encode()))
        if self._show("X-Cache-Status"):
            headers.append((b"x-cache-status", b"Hit"))
        if self._show("X-Cache-Key"):
            headers.append((b"x-cache-key", key.encode()))
        return Response(entry.status_code, entry.body, headers=headers)

    def _fresh(self, entry: CachedResponse, age: float, cc: dict[str, str | None]) -> bool:
        if not self.cache_control:
            return age <= self.cache_ttl
        max_age = _seconds(cc.get("max-age"))
        if max_age is not None and age > max_age:
            return False
        min_fresh = _seconds(cc.get("min-fresh"))
        if min_fresh is not None and entry.ttl - age < min_fresh:
            return False
        if age > entry.ttl:
            # Stale: only a client's max-stale accepts it.
            if "max-stale" not in cc:
                return False
            max_stale = _seconds(cc.get("max-stale"))
            return max_stale is None or age - entry.ttl <= max_stale
        return True

    def cache_key(self, ctx: Context, method: str) -> str:
        """The entry's key: sha256 over who asks (consumer and route), the method, the
        path, the query and the vary headers (Kong's layout)."""
        request = ctx.request
        route = ctx.route
        route_id = (route.id or route.name or "") if route is not None else ""
        consumer = ctx.consumer
        if consumer is not None:
            prefix = f"{consumer.id or consumer.username}:{route_id}"
        else:
            prefix = route_id or "default"
        path = request.path.lower() if self.ignore_uri_case else request.path
        query = sorted(parse_qsl(request.query_string, keep_blank_values=True))
        if self.vary_query_params:
            wanted = set(self.vary_query_params)
            query = [(k, v) for k, v in query if k in wanted]
        params = "&".join(f"{k}={v}" for k, v in query)
        headers = "&".join(
            f"{name}={','.join(request.headers.getlist(name))}"
            for name in sorted(self.vary_headers or ())
        )
        text = f"{prefix}|{method}|{path}|{params}|{headers}"
        return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()

    # -- header_filter / body_filter: decide, then collect the body to store ---------------

    async def header_filter(self, ctx: Context) -> None:
        state = ctx.plugin_state
        status = state.get("status")
        response = ctx.response
        if status is None or status == "Hit" or response is None:
            return
        if status != "Bypass" and response.source == "service":
            reason = self._unstorable(ctx)
            if reason is None:
                if ctx.request.method != "HEAD":
                    state["collect"] = []
                    state["size"] = 0
                    state["ttl"] = self._ttl(response.headers)
            else:
                status = state["status"] = "Bypass"
        if self._show("X-Cache-Status"):
            response.headers["x-cache-status"] = status
        if "key" in state and self._show("X-Cache-Key"):
            response.headers["x-cache-key"] = state["key"]

    def _unstorable(self, ctx: Context) -> str | None:
        response = ctx.response
        assert response is not None
        headers = response.headers
        if response.status_code not in self.response_code:
            return "status"
        content_type = headers.getlist("content-type")
        if len(content_type) != 1 or not _type_matches(
            _media_type(content_type[0]), self._content_types
        ):
            return "content type"
        if "set-cookie" in headers:
            return "set-cookie"
        cc = _directives(headers.getlist("cache-control"))
        if "private" in cc or "no-store" in cc:
            return "cache-control"
        if self.cache_control and ("no-cache" in cc or self._resource_ttl(headers, cc) <= 0):
            return "cache-control"
        if any(v.strip() == "*" for v in ",".join(headers.getlist("vary")).split(",")):
            return "vary"
        return None

    def _resource_ttl(self, headers: Headers, cc: dict[str, str | None]) -> float:
        max_age = _seconds(cc.get("s-maxage"))
        if max_age is None:
            max_age = _seconds(cc.get("max-age"))
        if max_age is None:
            expires = headers.getlist("expires")
            if expires:
                try:
                    when = parsedate_to_datetime(expires[-1]).timestamp()
                except (TypeError, ValueError):
                    return 0
                date = headers.getlist("date")
                try:
                    now = parsedate_to_datetime(date[-1]).timestamp() if date else None
                except (TypeError, ValueError):
                    now = None
                if now is None:
                    now = time.time()
                return max(when - now, 0)
            return 0
        return max(max_age, 0)

    def _ttl(self, headers: Headers) -> float:
        if self.cache_control:
            return self._resource_ttl(headers, _directives(headers.getlist("cache-control")))
        return self.cache_ttl

    async def body_filter(self, ctx: Context, chunk: bytes, last: bool) -> bytes:
        state = ctx.plugin_state
        collected: list[bytes] | None = state.get("collect")
        if collected is None:
            return chunk
        state["size"] += len(chunk)
        if state["size"] > self.max_body_size:
            state["collect"] = None  # too large: give up storing, keep streaming
            return chunk
        if chunk:
            collected.append(chunk)
        if last:
            state["collect"] = None
            state["entry"] = self._entry(ctx, b"".join(collected), state["ttl"])
        return chunk

    async def log(self, ctx: Context) -> None:
        # The response was sent: now the entry may take its time to reach the store.
        entry: CachedResponse | None = ctx.plugin_state.pop("entry", None)
        if entry is None:
            return
        store = self.store(ctx.gateway)
        try:
            await store.set(ctx.plugin_state["key"], entry, self.storage_ttl or entry.ttl)
        except StoreError as exc:
            store.report_failure(logger, f"proxy-cache could not store a response ({store!r})", exc)

    def _entry(self, ctx: Context, body: bytes, ttl: float) -> CachedResponse:
        response = ctx.response
        assert response is not None
        headers = tuple(
            (k, v)
            for k, v in response.headers.raw
            if k not in _NOT_STORED and not k.startswith(b"x-pygateway-")
        )
        vary_names = sorted(
            {
                name.strip().lower()
                for value in response.headers.getlist("vary")
                for name in value.split(",")
                if name.strip()
            }
        )
        vary = tuple((n, ",".join(ctx.request.headers.getlist(n))) for n in vary_names)
        return CachedResponse(
            status_code=response.status_code,
            headers=headers,
            body=body,
            stored_at=self.store(ctx.gateway).clock(),
            ttl=ttl,
            vary=vary,
        )


def _personal(headers: Headers) -> bool:
    return any(name in headers for name in _PERSONAL)


def _vary_matches(entry: CachedResponse, headers: Headers) -> bool:
    return all(",".join(headers.getlist(name)) == value for name, value in entry.vary)


def _directives(values: Sequence[str]) -> dict[str, str | None]:
    """Cache-Control directives, lower-cased names -> value (None for a bare token)."""
    out: dict[str, str | None] = {}
    for part in ",".join(values).split(","):
        name, eq, value = part.strip().partition("=")
        if name:
            out[name.strip().lower()] = value.strip().strip('"') if eq else None
    return out


def _seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(int(value)))
    except ValueError:
        return None


def _media_type(text: str) -> tuple[str, str, frozenset[tuple[str, str]]]:
    """("type", "subtype", parameters) of a Content-Type, lower-cased."""
    media, *params = text.split(";")
    kind, _, subtype = media.strip().lower().partition("/")
    parsed = frozenset(
        (k.strip().lower(), v.strip().strip('"').lower())
        for k, _, v in (p.partition("=") for p in params)
        if k.strip()
    )
    return kind, subtype, parsed


def _type_matches(
    actual: tuple[str, str, frozenset[tuple[str, str]]],
    allowed: Sequence[tuple[str, str, frozenset[tuple[str, str]]]],
) -> bool:
    """Kong's rule: type and subtype equal (or `*`), and the configured parameters present."""
    kind, subtype, params = actual
    for want_kind, want_subtype, want_params in allowed:
        if want_kind not in ("*", kind) or want_subtype not in ("*", subtype):
            continue
        if want_params <= params:
            return True
    return False


register(ProxyCache)
