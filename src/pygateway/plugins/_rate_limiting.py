"""rate-limiting: at most N requests per second / minute / hour / day / month / year (Kong's).

Windows are fixed UTC calendar windows (a minute starts at :00, a month on the 1st). For
each request the counters of all configured windows are checked and incremented in one
atomic step, in-process (`policy="local"`) or in Redis (`policy="redis"`, shared by every
worker and node). A refused request counts in no window, so exactly `limit` requests pass
per window however many arrive at once.

What the client sees is Kong's: `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset`
for the most restrictive window, `X-RateLimit-Limit-<Period>` and
`X-RateLimit-Remaining-<Period>` for each, and once refused a 429
`{"message": "API rate limit exceeded"}` with `Retry-After`.

The helpers here (windows, identifiers, counter keys, the shared config checks) are also
the response-ratelimiting plugin's.
"""

from __future__ import annotations

import calendar
import hashlib
import importlib.util
import logging
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

import attrs

from .._exceptions import ConfigurationError, PathPart
from .._responses import error_response
from .._schema import field
from .._types import RawHeaders
from ..stores import (
    Counter,
    CounterStore,
    RedisConfig,
    StoreError,
    counter_store,
)
from ._base import Plugin, Scoped
from ._registry import register

if TYPE_CHECKING:
    from .._context import Context
    from .._entities import Route, Service
    from .._gateway import Gateway
    from .._responses import Response
    from .._snapshot import Snapshot

__all__ = ["PERIODS", "RateLimiting"]

logger = logging.getLogger("pygateway.plugins.rate_limiting")

#: The windows, shortest first.
PERIODS = ("second", "minute", "hour", "day", "month", "year")
_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}

Errors = list[tuple[tuple[PathPart, ...], str]]


# -- windows ------------------------------------------------------------------------------


def window(period: str, now: float) -> tuple[int, int]:
    """The UTC calendar window of `period` holding `now`: (start, end), epoch seconds."""
    length = _SECONDS.get(period)
    if length is not None:
        start = int(now // length) * length
        return start, start + length
    moment = datetime.fromtimestamp(now, UTC)
    if period == "month":
        year, month = moment.year, moment.month
        after = (year + 1, 1) if month == 12 else (year, month + 1)
        return _epoch(year, month), _epoch(*after)
    if period == "year":
        return _epoch(moment.year, 1), _epoch(moment.year + 1, 1)
    raise ValueError(f"unknown period {period!r}")


def _epoch(year: int, month: int) -> int:
    return calendar.timegm((year, month, 1, 0, 0, 0))


def seconds_left(end: float, now: float) -> int:
    """Whole seconds until `end`, at least 1 (Kong's `RateLimit-Reset`)."""
    return max(1, math.ceil(end - now))


def number(value: float) -> str:
    """A count or limit as a header value: `100`, or `2.5` for a fractional limit."""
    return str(int(value)) if float(value).is_integer() else str(value)


# -- configuration checks shared with response-ratelimiting -------------------------------


def check_limit(value: float | None) -> str | None:
    if value is not None and value <= 0:
        return "value must be greater than 0"
    return None


def period_order_error(limits: Mapping[str, float | None], *, capital: bool) -> str | None:
    """Kong's rule: a longer window's limit may not be lower than a shorter one's."""
    for i, shorter in enumerate(PERIODS):
        low = limits.get(shorter)
        if low is None:
            continue
        for longer in PERIODS[i + 1 :]:
            high = limits.get(longer)
            if high is not None and high < low:
                the = "The" if capital else "the"
                return (
                    f"{the} limit for {longer}({high:.1f}) cannot be lower than "
                    f"the limit for {shorter}({low:.1f})"
                )
    return None


def check_policy(value: str) -> str | None:
    if value == "cluster":
        return (
            "expected one of: local, redis (the 'cluster' policy keeps counters in Kong's "
            "database, which pygateway does not have: use 'redis' to share them between "
            "gateways)"
        )
    if value not in ("local", "redis"):
        return "expected one of: local, redis"
    return None


def redis_errors(policy: str, redis: RedisConfig) -> Errors:
    """With the redis policy, Kong's required Redis fields, and coredis installed."""
    errors: Errors = []
    if policy != "redis":
        return errors
    if not redis.host:
        errors.append((("redis", "host"), "required field missing"))
    if importlib.util.find_spec("coredis") is None:
        errors.append(
            (("policy",), "the redis policy needs coredis >= 6: install pygateway[redis]")
        )
    return errors


_LEGACY_REDIS = (
    "host",
    "port",
    "password",
    "username",
    "ssl",
    "ssl_verify",
    "server_name",
    "timeout",
    "database",
)


def merge_legacy_redis(config: dict[str, Any]) -> dict[str, Any]:
    """Kong's deprecated flat fields (`redis_host`, `redis_port`, ...) moved into the
    `redis` record, as Kong 3.x still accepts them. Null ones (an export lists them all)
    are dropped."""
    flat = {}
    for name in _LEGACY_REDIS:
        value = config.pop(f"redis_{name}", None)
        if value is not None:
            flat[name] = value
    if flat:
        nested = config.get("redis")
        if isinstance(nested, RedisConfig):
            config["redis"] = attrs.evolve(nested, **flat)
        elif nested is None or isinstance(nested, Mapping):
            config["redis"] = {**(nested or {}), **flat}
    return config


_HEADER_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def check_header_name(value: str | None) -> str | None:
    """Kong's rule for header names in plugin configurations."""
    if value is not None and not _HEADER_NAME.fullmatch(value):
        return f"bad header name '{value}', allowed characters are A-Z, a-z, 0-9, '_', and '-'"
    return None


def check_path(value: str | None) -> str | None:
    if value is not None and not value.startswith("/"):
        return "should start with: /"
    return None


# -- who is counted, where ------------------------------------------------------------------


def identify(ctx: Context, limit_by: str, header_name: str | None, path: str | None) -> str:
    """What the counters are kept per (Kong's `limit_by`): the consumer, credential,
    service, header value or path, falling back to the client IP when it is missing."""
    identifier: str | None = None
    if limit_by == "consumer":
        entity = ctx.consumer or ctx.credential
        identifier = entity.id if entity is not None else None
    elif limit_by == "credential":
        identifier = ctx.credential.id if ctx.credential is not None else None
    elif limit_by == "service":
        identifier = entity_label(ctx.snapshot, ctx.service) if ctx.service is not None else None
    elif limit_by == "header":
        identifier = ctx.request.headers.get(header_name) if header_name else None
    elif limit_by == "path" and path is not None and ctx.request.path == path:
        identifier = path
    return identifier or ctx.request.client_ip


def counter_key(plugin: str, scope: str, name: str, period: str, start: int, who: str) -> str:
    """`<plugin>:<scope>:<name>:<period>:<window start>:<identifier>`. The identifier (a
    header value, maybe) is escaped, and hashed when long, so keys stay short and
    unambiguous."""
    return f"{plugin}:{scope}:{name}:{period}:{start}:{_escape(who)}"


#: What `quote` gives back unchanged and short enough to be kept: most identifiers (ids,
#: IPv4 addresses) need no escaping at all.
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]{0,128}")


def _escape(text: str) -> str:
    if _UNRESERVED.fullmatch(text):
        return text
    escaped = quote(text, safe="", errors="surrogateescape")
    if len(escaped) > 128:
        raw = text.encode("utf-8", "surrogateescape")
        return "sha256-" + hashlib.sha256(raw).hexdigest()
    return escaped


_SCOPES = "pygateway.rate_limiting.scopes"


def plugin_scope(ctx: Context, plugin: Plugin) -> str:
    """Where this plugin configuration is applied, as `<route>:<service>` (`-` for none):
    Kong's counters are per plugin entity, whose route and service ids it puts in the key.

    The same in every process that loads the same configuration, so gateways sharing a
    Redis share counters. Worked out once per snapshot, plugin, route and service.
    """
    index = _scope_index(ctx.snapshot)
    route, service = ctx.route, ctx.service
    place = (id(plugin), id(route), id(service))
    scope = index.scopes.get(place)
    if scope is None:
        scope = index.scopes[place] = _scope(index, plugin, route, service)
    return scope


def _scope(index: _ScopeIndex, plugin: Plugin, route: Route | None, service: Service | None) -> str:
    """The most specific placement of `plugin` that applies to `route` and `service`."""
    labels = index.labels
    best: tuple[int, str] | None = None
    for placed_route, placed_service in index.placements.get(id(plugin), ()):
        if placed_route is not None and placed_route is not route:
            continue
        if placed_service is not None and placed_service is not service:
            continue
        rank = (placed_route is not None) * 2 + (placed_service is not None)
        if best is None or rank > best[0]:
            route_label = labels.get(id(placed_route), "-") if placed_route is not None else "-"
            service_label = (
                labels.get(id(placed_service), "-") if placed_service is not None else "-"
            )
            best = (rank, f"{route_label}:{service_label}")
    return best[1] if best is not None else "-:-"


def entity_label(snapshot: Snapshot, entity: Route | Service) -> str:
    """A route's or service's id, else its name, else its place in the configuration."""
    return _scope_index(snapshot).labels.get(id(entity), "-")


Placements = dict[int, list[tuple["Route | None", "Service | None"]]]


@attrs.frozen
class _ScopeIndex:
    """Where each plugin of a snapshot is placed, and the labels of its routes and services."""

    placements: Placements
    labels: dict[int, str]
    #: `plugin_scope`'s answers, by (plugin, route, service) id.
    scopes: dict[tuple[int, int, int], str] = attrs.field(factory=dict)


def _scope_index(snapshot: Snapshot) -> _ScopeIndex:
    cached: _ScopeIndex | None = snapshot.derived.get(_SCOPES)
    if cached is None:
        cached = snapshot.derived[_SCOPES] = _ScopeIndex(*_build_scope_index(snapshot))
    return cached


def _build_scope_index(snapshot: Snapshot) -> tuple[Placements, dict[int, str]]:
    config = snapshot.config
    labels: dict[int, str] = {}
    placements: Placements = {}

    def place(entry: Any, route: Route | None, service: Service | None) -> None:
        plugin = entry
        if isinstance(entry, Scoped):
            plugin = entry.plugin
            if entry.route is not None:
                route = snapshot.routes_by_key.get(entry.route, route)
            if entry.service is not None:
                service = snapshot.services_by_key.get(entry.service, service)
        placements.setdefault(id(plugin), []).append((route, service))

    for i, service in enumerate(config.services):
        labels[id(service)] = service.id or service.name or f"services[{i}]"
        for j, route in enumerate(service.routes):
            labels[id(route)] = route.id or route.name or f"services[{i}].routes[{j}]"
    for k, route in enumerate(config.routes):
        labels[id(route)] = route.id or route.name or f"routes[{k}]"
    for entry in config.plugins:
        place(entry, None, None)
    for service in config.services:
        for entry in service.plugins:
            place(entry, None, service)
        for route in service.routes:
            for entry in route.plugins:
                place(entry, route, None)
    for route in config.routes:
        for entry in route.plugins:
            place(entry, route, None)
    for consumer in config.consumers:
        for entry in consumer.plugins:
            place(entry, None, None)
    return placements, labels


# -- the plugin ---------------------------------------------------------------------------


@attrs.frozen
class _Window:
    """One configured window, with the parts of its headers that never change."""

    period: str
    limit: float
    #: `X-RateLimit-Limit-<Period>: <limit>`, as sent.
    limit_header: tuple[bytes, bytes]
    #: The `X-RateLimit-Remaining-<Period>` name, as sent.
    remaining_name: bytes

    @classmethod
    def of(cls, period: str, limit: float) -> _Window:
        return cls(
            period,
            limit,
            (b"x-ratelimit-limit-" + period.encode(), number(limit).encode()),
            b"x-ratelimit-remaining-" + period.encode(),
        )


_CURRENT = "pygateway.rate_limiting.current"
#: Identifiers whose current counters a snapshot keeps (beyond, it forgets them all).
CURRENT_MAX = 4096
#: Identifiers longer than this are not kept (the cache holds at most CURRENT_MAX of them).
_CACHED_WHO_MAX = 128


@attrs.frozen
class _Current:
    """The counters of one identifier's windows at some moment, current from the start of
    the window that began last (`since`) to the end of the first to end (`until`)."""

    counters: tuple[Counter, ...]
    since: float
    until: float
    #: The plugin, route and service whose ids key this entry, kept alive with it: no other
    #: object can take one of those ids while it is cached.
    owners: tuple[object, ...]

    @classmethod
    def at(
        cls,
        windows: tuple[_Window, ...],
        prefix: str,
        who: str,
        now: float,
        owners: tuple[object, ...],
    ) -> _Current:
        """The counters at `now`, keyed as `counter_key` does from `prefix`
        (`<plugin>:<scope>:<name>:`) and `who` (escaped)."""
        counters = []
        since = -math.inf
        for w in windows:
            start, end = window(w.period, now)
            counters.append(Counter(f"{prefix}{w.period}:{start}:{who}", w.limit, end))
            since = max(since, start)
        return cls(tuple(counters), since, min(c.expires_at for c in counters), owners)


def _current_counters(snapshot: Snapshot) -> dict[tuple[int, int, int, str], _Current]:
    """The rate-limiting plugins' current counters in `snapshot`, by (plugin, route, service)
    id and identifier."""
    cache: dict[tuple[int, int, int, str], _Current] | None = snapshot.derived.get(_CURRENT)
    if cache is None:
        cache = snapshot.derived[_CURRENT] = {}
    return cache


@attrs.frozen(kw_only=True)
class RateLimiting(Plugin):
    """Limit how many requests a consumer (or IP, credential, service, header value, path)
    makes per second, minute, hour, day, month and/or year.

        gw.Route(paths=["/api"], plugins=[RateLimiting(minute=100, hour=1000)])
        RateLimiting(minute=100, policy="redis", redis={"host": "redis.internal"})

    With `fault_tolerant` (the default), requests pass uncounted while the store cannot be
    reached (the error is logged once per 30 s); without it they get a 500.
    """

    name = "rate-limiting"
    priority = 910

    second: int | float | None = field(None, check=check_limit)
    minute: int | float | None = field(None, check=check_limit)
    hour: int | float | None = field(None, check=check_limit)
    day: int | float | None = field(None, check=check_limit)
    month: int | float | None = field(None, check=check_limit)
    year: int | float | None = field(None, check=check_limit)
    limit_by: Literal["consumer", "credential", "ip", "service", "header", "path"] = "consumer"
    header_name: str | None = field(None, check=check_header_name)
    path: str | None = field(None, check=check_path)
    policy: str = field("local", check=check_policy)
    fault_tolerant: bool = True
    redis: RedisConfig = attrs.field(factory=RedisConfig)
    hide_client_headers: bool = False
    error_code: int = field(429, between=(100, 599))
    error_message: str = "API rate limit exceeded"
    sync_rate: int | float = -1

    # Derived once from the config (not config: init=False).
    _windows: tuple[_Window, ...] = attrs.field(init=False, eq=False, repr=False, default=())
    #: Every header name `_client_headers` sends: the ones a response's copies are dropped of.
    _header_names: frozenset[bytes] = attrs.field(
        init=False, eq=False, repr=False, default=frozenset()
    )

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        errors: Errors = []
        limits = {period: getattr(self, period) for period in PERIODS}
        if all(value is None for value in limits.values()):
            errors.append(
                (
                    (),
                    "at least one of these fields must be non-empty: "
                    + ", ".join(f"'config.{p}'" for p in PERIODS),
                )
            )
        elif (order := period_order_error(limits, capital=True)) is not None:
            errors.append(((), order))
        if self.limit_by == "header" and not self.header_name:
            errors.append((("header_name",), "required field missing"))
        if self.limit_by == "path" and not self.path:
            errors.append((("path",), "required field missing"))
        if self.sync_rate != -1:
            if self.policy != "redis":
                reason = "sync_rate can only be used with the redis policy"
            elif self.sync_rate < 0.02:
                reason = "sync_rate must be greater than 0.02, or -1 to disable"
            else:
                reason = (
                    "only -1 is supported: pygateway counts in Redis on every request, "
                    "so limits are exact (no batched sync)"
                )
            errors.append((("sync_rate",), reason))
        errors += redis_errors(self.policy, self.redis)
        if errors:
            raise ConfigurationError(errors=errors)
        windows = tuple(_Window.of(period, limit) for period, limit in self.limits)
        object.__setattr__(self, "_windows", windows)
        names = {name for w in windows for name in (w.limit_header[0], w.remaining_name)}
        object.__setattr__(self, "_header_names", frozenset({*names, *_LEAST}))

    @classmethod
    def from_config(cls, config: dict[str, Any] | None) -> Plugin:
        return super().from_config(merge_legacy_redis(dict(config or {})))

    @property
    def limits(self) -> list[tuple[str, float]]:
        """The configured windows and their limits, shortest window first."""
        return [(p, v) for p in PERIODS if (v := getattr(self, p)) is not None]

    def store(self, gateway: Gateway) -> CounterStore:
        """The store this configuration counts in (per gateway, per Redis)."""
        return counter_store(gateway, self.redis if self.policy == "redis" else None)

    async def access(self, ctx: Context) -> Response | None:
        store = self.store(ctx.gateway)
        now = store.clock()
        counters = self._counters(ctx, now)
        try:
            hit = await store.hit(counters)
        except StoreError as exc:
            store.report_failure(logger, f"rate-limiting could not count requests ({store!r})", exc)
            if self.fault_tolerant:
                return None
            return error_response(
                500,
                "An unexpected error occurred",
                ctx.request_id,
                accept=ctx.request.headers.get("accept"),
            )
        headers: RawHeaders = []
        if not self.hide_client_headers:
            headers = _client_headers(self._windows, counters, hit.counts, now)
        if not hit.allowed:
            refusal = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers}
            if refusal:
                refusal["retry-after"] = refusal["ratelimit-reset"]
            return error_response(
                self.error_code,
                self.error_message,
                ctx.request_id,
                accept=ctx.request.headers.get("accept"),
                headers=refusal or None,
            )
        if headers:
            ctx.plugin_state["headers"] = headers
        return None

    async def header_filter(self, ctx: Context) -> None:
        headers = ctx.plugin_state.get("headers")
        if headers and ctx.response is not None:
            _set_headers(ctx.response.headers.raw, headers, self._header_names)

    def _counters(self, ctx: Context, now: float) -> tuple[Counter, ...]:
        """This request's counters, one per window. The ones of the last request of the same
        identifier (on the same route and service) while they are current, else new ones:
        the keys are made once per identifier and window, not per request."""
        who = identify(ctx, self.limit_by, self.header_name, self.path)
        if len(who) > _CACHED_WHO_MAX:
            # A long identifier (a header value, a path): kept out of the cache, whose size
            # would otherwise be the clients' to choose; its key is hashed anyway.
            return self._new_counters(ctx, who, now).counters
        cache = _current_counters(ctx.snapshot)
        place = (id(self), id(ctx.route), id(ctx.service), who)
        current = cache.get(place)
        if current is None or not current.since <= now < current.until:
            if len(cache) >= CURRENT_MAX:
                cache.clear()  # a flood of identifiers: start over rather than grow
            current = cache[place] = self._new_counters(ctx, who, now)
        return current.counters

    def _new_counters(self, ctx: Context, who: str, now: float) -> _Current:
        prefix = f"{self.name}:{plugin_scope(ctx, self)}::"
        owners = (self, ctx.route, ctx.service)
        return _Current.at(self._windows, prefix, _escape(who), now, owners)


#: The names of the most restrictive window's headers.
_LEAST = (b"ratelimit-limit", b"ratelimit-remaining", b"ratelimit-reset")


def _client_headers(
    windows: tuple[_Window, ...], counters: tuple[Counter, ...], counts: tuple[int, ...], now: float
) -> RawHeaders:
    """Each window's limit and remaining, and the RateLimit-* of the most restrictive one
    (least remaining; on a tie, the longer window, which takes longer to reset)."""
    headers: RawHeaders = []
    least = math.inf
    for w, counter, count in zip(windows, counters, counts, strict=True):
        remaining = max(0, w.limit - count)
        remaining_value = _as_bytes(remaining)
        headers.append(w.limit_header)
        headers.append((w.remaining_name, remaining_value))
        if remaining <= least:  # windows come shortest first: on a tie, the later one
            least, least_value = remaining, remaining_value
            limit_value, end = w.limit_header[1], counter.expires_at
    limit_name, remaining_name, reset_name = _LEAST
    headers.append((limit_name, limit_value))
    headers.append((remaining_name, least_value))
    headers.append((reset_name, b"%d" % seconds_left(end, now)))
    return headers


def _as_bytes(value: float) -> bytes:
    """`number(value)` as header bytes; an int (the usual count) the short way."""
    return b"%d" % value if isinstance(value, int) else number(value).encode()


def _set_headers(raw: RawHeaders, headers: RawHeaders, names: frozenset[bytes]) -> None:
    """Set `headers` on the response's `raw` list, replacing any copy of them (all named in
    `names`): what `Headers.__setitem__` does for each, in one pass over `raw`."""
    for name, _ in raw:
        if name in names:
            raw[:] = [(k, v) for k, v in raw if k not in names]
            break
    raw += headers


register(RateLimiting)
