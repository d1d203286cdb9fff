"""response-ratelimiting: limits the upstream counts itself (Kong's).

The upstream says what a request cost in a response header (`x-kong-limit: video=1,
image=2`); the plugin counts that, per named limit and window, and:

- before proxying, tells the upstream what is left (`X-RateLimit-Remaining-<name>`, the
  least over the windows) and, with `block_on_first_violation`, refuses a request when any
  limit is used up (429 `API rate limit exceeded for '<name>'`);
- on the response, tells the client (`X-RateLimit-Limit-<name>-<period>`,
  `X-RateLimit-Remaining-<name>-<period>`), removes the usage header, and turns the
  response into an empty 429 when it reports usage of a limit that was already used up;
- after the response, adds the reported usage to the counters.

The counting is after the fact (the upstream did the work already), so concurrent requests
may overshoot a limit by what they report: this is Kong's design.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import attrs

from .._exceptions import ConfigurationError
from .._responses import error_response
from .._schema import Record, field
from ..stores import (
    Counter,
    CounterStore,
    RedisConfig,
    StoreError,
    counter_store,
)
from ._base import Plugin
from ._rate_limiting import (
    PERIODS,
    Errors,
    check_limit,
    check_policy,
    counter_key,
    identify,
    merge_legacy_redis,
    number,
    period_order_error,
    plugin_scope,
    redis_errors,
    window,
)
from ._registry import register

if TYPE_CHECKING:
    from .._context import Context
    from .._gateway import Gateway
    from .._responses import Response

__all__ = ["ResponseLimits", "ResponseRatelimiting"]

logger = logging.getLogger("pygateway.plugins.response_ratelimiting")

_INTEGER = re.compile(r"-?[0-9]+")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

# Response headers a 429 made from the upstream's response no longer describes.
_BODY_HEADERS = ("content-type", "content-encoding", "content-length", "content-range", "etag")


@attrs.frozen(kw_only=True)
class ResponseLimits(Record):
    """One named limit: how much of it may be used per window (at least one window)."""

    second: int | float | None = field(None, check=check_limit)
    minute: int | float | None = field(None, check=check_limit)
    hour: int | float | None = field(None, check=check_limit)
    day: int | float | None = field(None, check=check_limit)
    month: int | float | None = field(None, check=check_limit)
    year: int | float | None = field(None, check=check_limit)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        limits = {period: getattr(self, period) for period in PERIODS}
        if all(value is None for value in limits.values()):
            raise ConfigurationError(
                "at least one of these fields must be non-empty: "
                + ", ".join(f"'{p}'" for p in PERIODS)
            )
        order = period_order_error(limits, capital=False)
        if order is not None:
            raise ConfigurationError(order)

    @property
    def windows(self) -> list[tuple[str, float]]:
        return [(p, v) for p in PERIODS if (v := getattr(self, p)) is not None]


@attrs.frozen(kw_only=True)
class ResponseRatelimiting(Plugin):
    """Limits whose usage the upstream reports, per consumer (or credential, or IP).

        ResponseRatelimiting(limits={"video": {"minute": 10}, "image": {"minute": 100}})

    The upstream answers with `x-kong-limit: video=1` (or `video=1, image=3`) to count a
    request against those limits.
    """

    name = "response-ratelimiting"
    priority = 900

    limits: Mapping[str, ResponseLimits] | None = None
    header_name: str = "x-kong-limit"
    limit_by: Literal["consumer", "credential", "ip"] = "consumer"
    policy: str = field("local", check=check_policy)
    fault_tolerant: bool = True
    redis: RedisConfig = attrs.field(factory=RedisConfig)
    block_on_first_violation: bool = False
    hide_client_headers: bool = False

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        errors: Errors = []
        if self.limits is None:
            errors.append((("limits",), "required field missing"))
        elif not self.limits:
            errors.append((("limits",), "length must be at least 1"))
        else:
            # Names go into header names, and into `name=count` lists.
            for limit_name in self.limits:
                if not _TOKEN.fullmatch(limit_name):
                    reason = f"invalid limit name '{limit_name}': expected an HTTP token"
                    errors.append((("limits", limit_name), reason))
        errors += redis_errors(self.policy, self.redis)
        if errors:
            raise ConfigurationError(errors=errors)

    @classmethod
    def from_config(cls, config: dict[str, Any] | None) -> Plugin:
        return super().from_config(merge_legacy_redis(dict(config or {})))

    def store(self, gateway: Gateway) -> CounterStore:
        """The store this configuration counts in (per gateway, per Redis)."""
        return counter_store(gateway, self.redis if self.policy == "redis" else None)

    def _counters(self, ctx: Context, now: float) -> list[tuple[str, str, float, Counter]]:
        """(limit name, period, limit, counter) for every window of every limit."""
        who = identify(ctx, self.limit_by, None, None)
        scope = plugin_scope(ctx, self)
        out = []
        for limit_name, limits in (self.limits or {}).items():
            for period, limit in limits.windows:
                start, end = window(period, now)
                key = counter_key(self.name, scope, limit_name, period, start, who)
                out.append((limit_name, period, limit, Counter(key, limit, end)))
        return out

    async def access(self, ctx: Context) -> Response | None:
        store = self.store(ctx.gateway)
        counters = self._counters(ctx, store.clock())
        try:
            counts = await store.counts([c.key for *_, c in counters])
        except StoreError as exc:
            what = f"response-ratelimiting could not read usage ({store!r})"
            store.report_failure(logger, what, exc)
            if self.fault_tolerant:
                return None
            return error_response(
                500,
                "An unexpected error occurred",
                ctx.request_id,
                accept=ctx.request.headers.get("accept"),
            )
        # name -> [(period, limit, remaining)]
        usage: dict[str, list[tuple[str, float, float]]] = {}
        for (limit_name, period, limit, _), count in zip(counters, counts, strict=True):
            usage.setdefault(limit_name, []).append((period, limit, limit - count))
        upstream = ctx.upstream_request
        for limit_name, windows in usage.items():
            least = min(remaining for _, _, remaining in windows)
            if self.block_on_first_violation and least <= 0:
                return error_response(
                    429,
                    f"API rate limit exceeded for '{limit_name}'",
                    ctx.request_id,
                    accept=ctx.request.headers.get("accept"),
                )
            if upstream is not None:
                remaining = number(max(0, least))
                upstream.headers[f"X-RateLimit-Remaining-{limit_name}"] = remaining
        state = ctx.plugin_state
        state["usage"] = usage
        state["counters"] = counters
        return None

    async def header_filter(self, ctx: Context) -> None:
        response = ctx.response
        if response is None:
            return
        reported: list[str] = []
        if response.source == "service" and self.header_name in response.headers:
            # Meant for the gateway only: removed even when it cannot be counted.
            reported = response.headers.getlist(self.header_name)
            del response.headers[self.header_name]
        usage = ctx.plugin_state.get("usage")
        if usage is None:
            return
        increments = _parse_usage(reported, usage)
        ctx.plugin_state["increments"] = increments
        stop = False
        for limit_name, windows in usage.items():
            used = increments.get(limit_name, 0)
            for period, limit, remaining in windows:
                if not self.hide_client_headers:
                    suffix = f"{limit_name}-{period}"
                    response.headers[f"X-RateLimit-Limit-{suffix}"] = number(limit)
                    left = max(0, remaining - used)
                    response.headers[f"X-RateLimit-Remaining-{suffix}"] = number(left)
                if used > 0 and remaining <= 0:
                    stop = True
        if stop:
            # Reported usage of a limit already used up: the client gets an empty 429
            # instead (Kong's), and this request is not counted.
            ctx.plugin_state["stopped"] = True
            response.status_code = 429
            for name in _BODY_HEADERS:
                if name in response.headers:
                    del response.headers[name]

    async def body_filter(self, ctx: Context, chunk: bytes, last: bool) -> bytes:
        return b"" if ctx.plugin_state.get("stopped") else chunk

    async def log(self, ctx: Context) -> None:
        state = ctx.plugin_state
        increments: dict[str, int] | None = state.get("increments")
        if not increments or state.get("stopped"):
            return
        store = self.store(ctx.gateway)
        counters = state["counters"]
        by_amount: dict[int, list[Counter]] = {}
        for limit_name, _, _, counter in counters:
            amount = increments.get(limit_name, 0)
            if amount:
                by_amount.setdefault(amount, []).append(counter)
        try:
            for amount, group in by_amount.items():
                await store.increment(group, amount)
        except StoreError as exc:
            what = f"response-ratelimiting could not count usage ({store!r})"
            store.report_failure(logger, what, exc)


def _parse_usage(values: list[str], usage: Mapping[str, Any]) -> dict[str, int]:
    """`video=1, image=2` (in one header or several) -> {"video": 1, "image": 2}, for the
    configured limits only; a value that is not an integer is ignored (Kong's parsing)."""
    increments: dict[str, int] = {}
    for value in values:
        for part in value.split(","):
            pieces = part.split("=")
            if len(pieces) != 2:
                continue
            limit_name, amount = pieces[0].strip(), pieces[1].strip()
            if limit_name not in usage:
                continue
            if _INTEGER.fullmatch(amount):
                increments[limit_name] = int(amount)
            else:
                increments.pop(limit_name, None)
    return increments


register(ResponseRatelimiting)
