"""The bundled rate-limiting plugin with the local policy, after Kong's spec for it
(spec/03-plugins/23-rate-limiting). Redis is in test_redis_rate_limiting.py.

A fake clock drives the windows (`MemoryCounterStore(clock=...)`), so no test waits for a
window to end.
"""

from __future__ import annotations

import logging
from calendar import timegm
from collections.abc import Sequence
from typing import Any

import anyio
import attrs
import pytest

import pygateway as gw
from pygateway._entities import KeyAuthCredential
from pygateway.engines import MockEngine, UpstreamResponse
from pygateway.plugins import _rate_limiting
from pygateway.plugins import get as get_plugin
from pygateway.plugins._rate_limiting import RateLimiting, window
from pygateway.stores import (
    Counter,
    CounterStore,
    Hit,
    MemoryCounterStore,
    RedisConfig,
    StoreError,
    counter_store,
    use_counter_store,
)
from pygateway.testing import client


def at(text: str) -> float:
    """`"2026-03-10 12:00:20"` (UTC) as epoch seconds."""
    day, time_of_day = text.split(" ")
    y, mo, d = (int(x) for x in day.split("-"))
    h, mi, s = time_of_day.split(":")
    return timegm((y, mo, d, int(h), int(mi), 0)) + float(s)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def upstream() -> MockEngine:
    return MockEngine(lambda request: UpstreamResponse(200, content=b"proxied"))


def gateway_with(
    *plugins: Any,
    clock: Clock | None = None,
    engine: MockEngine | None = None,
    consumers: Sequence[gw.Consumer] = (),
) -> gw.Gateway:
    """One service, one route `/r` with `plugins`, counting in a store on `clock`."""
    gateway = gw.Gateway(
        services=[
            gw.Service(
                name="svc",
                url="http://upstream.test",
                routes=[gw.Route(name="r", paths=["/r"], plugins=plugins)],
            )
        ],
        consumers=consumers,
        engine=engine if engine is not None else upstream(),
    )
    use_counter_store(gateway, MemoryCounterStore(clock=clock or Clock(at("2026-03-10 12:00:20"))))
    return gateway


async def statuses(gateway: gw.Gateway, n: int, path: str = "/r", **kwargs: Any) -> list[int]:
    async with client(gateway) as c:
        return [(await c.get(path, **kwargs)).status_code for _ in range(n)]


def limit_headers(response: Any) -> dict[str, str]:
    return {
        k.lower(): v
        for k, v in response.headers.items()
        if "ratelimit" in k.lower() or k.lower() == "retry-after"
    }


# -- limits, answers, headers ---------------------------------------------------------------


async def test_requests_beyond_the_limit_get_429_and_never_reach_the_upstream() -> None:
    engine = upstream()
    gateway = gateway_with(RateLimiting(minute=3, limit_by="ip"), engine=engine)
    async with client(gateway) as c:
        answers = [await c.get("/r") for _ in range(5)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429, 429]
    body = answers[3].json()
    assert body["message"] == "API rate limit exceeded"
    assert body["request_id"] == answers[3].headers["x-pygateway-request-id"]
    assert answers[3].headers["content-type"] == "application/json; charset=utf-8"
    assert len(engine.requests) == 3


async def test_headers_count_down_each_window_and_name_the_most_restrictive() -> None:
    # Kong's "handles multiple limits": minute=6, a large hour.
    gateway = gateway_with(RateLimiting(minute=6, hour=99999, limit_by="ip"))
    async with client(gateway) as c:
        answers = [await c.get("/r") for _ in range(7)]
    assert [r.status_code for r in answers] == [200] * 6 + [429]
    assert [r.headers["x-ratelimit-limit-minute"] for r in answers] == ["6"] * 7
    assert [r.headers["x-ratelimit-remaining-minute"] for r in answers] == [
        "5", "4", "3", "2", "1", "0", "0"
    ]  # fmt: skip
    assert [r.headers["x-ratelimit-remaining-hour"] for r in answers] == [
        "99998", "99997", "99996", "99995", "99994", "99993", "99993"
    ]  # fmt: skip
    assert [r.headers["ratelimit-limit"] for r in answers] == ["6"] * 7
    assert [r.headers["ratelimit-remaining"] for r in answers] == [
        "5", "4", "3", "2", "1", "0", "0"
    ]  # fmt: skip
    # 12:00:20 -> the minute ends in 40 s.
    assert {r.headers["ratelimit-reset"] for r in answers} == {"40"}
    assert answers[6].headers["retry-after"] == "40"
    assert "retry-after" not in answers[5].headers


async def test_on_a_tie_the_longer_window_is_the_one_reported() -> None:
    clock = Clock(at("2026-03-10 12:00:20.5"))
    gateway = gateway_with(RateLimiting(second=1, minute=1, limit_by="ip"), clock=clock)
    async with client(gateway) as c:
        first = await c.get("/r")
        second = await c.get("/r")
    # Both windows have 0 left: the minute's reset (39.5 s -> 40) is the one that matters.
    assert first.status_code == 200
    assert limit_headers(first) == {
        "x-ratelimit-limit-second": "1",
        "x-ratelimit-remaining-second": "0",
        "x-ratelimit-limit-minute": "1",
        "x-ratelimit-remaining-minute": "0",
        "ratelimit-limit": "1",
        "ratelimit-remaining": "0",
        "ratelimit-reset": "40",
    }
    assert second.status_code == 429
    assert second.headers["retry-after"] == "40"


async def test_a_refused_request_counts_in_no_window() -> None:
    clock = Clock(at("2026-03-10 12:00:20"))
    gateway = gateway_with(RateLimiting(second=1, hour=10, limit_by="ip"), clock=clock)
    async with client(gateway) as c:
        first = await c.get("/r")
        refused = [await c.get("/r") for _ in range(3)]
        clock.advance(1)
        later = await c.get("/r")
    assert first.headers["x-ratelimit-remaining-hour"] == "9"
    assert [r.status_code for r in refused] == [429] * 3
    assert {r.headers["x-ratelimit-remaining-hour"] for r in refused} == {"9"}
    assert {r.headers["retry-after"] for r in refused} == {"1"}
    assert later.status_code == 200
    assert later.headers["x-ratelimit-remaining-hour"] == "8"


async def test_a_window_ends_on_the_utc_minute_not_a_minute_after_the_first_request() -> None:
    clock = Clock(at("2026-03-10 12:00:59.5"))
    gateway = gateway_with(RateLimiting(minute=2, limit_by="ip"), clock=clock)
    async with client(gateway) as c:
        before = [(await c.get("/r")).status_code for _ in range(3)]
        clock.advance(0.5)  # 12:01:00: a new window
        after = await c.get("/r")
    assert before == [200, 200, 429]
    assert after.status_code == 200
    assert after.headers["ratelimit-remaining"] == "1"
    assert after.headers["ratelimit-reset"] == "60"


async def test_a_clock_set_back_counts_in_the_window_it_is_in() -> None:
    clock = Clock(at("2026-03-10 12:00:20.5"))
    gateway = gateway_with(RateLimiting(second=5, minute=10, limit_by="ip"), clock=clock)
    async with client(gateway) as c:
        first = await c.get("/r")
        clock.advance(-1)  # 12:00:19.5: the second before, in the same minute
        back = await c.get("/r")
    assert first.headers["x-ratelimit-remaining-second"] == "4"
    assert back.headers["x-ratelimit-remaining-second"] == "4"
    assert back.headers["x-ratelimit-remaining-minute"] == "8"


async def test_month_and_year_windows_follow_the_calendar() -> None:
    clock = Clock(at("2026-01-31 23:59:59"))
    gateway = gateway_with(RateLimiting(month=1, year=5, limit_by="ip"), clock=clock)
    async with client(gateway) as c:
        january = await c.get("/r")
        refused = await c.get("/r")
        clock.advance(1)  # February 1st
        february = await c.get("/r")
    assert january.status_code == 200
    assert january.headers["ratelimit-reset"] == "1"
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert february.status_code == 200
    assert february.headers["x-ratelimit-remaining-year"] == "3"
    # February 2026 has 28 days: the month window ends on March 1st, 00:00 UTC.
    assert february.headers["x-ratelimit-remaining-month"] == "0"
    assert february.headers["ratelimit-reset"] == str(28 * 86400)


def test_the_windows_of_each_period() -> None:
    now = at("2024-02-29 13:45:30.25")  # a leap year
    assert window("second", now) == (int(at("2024-02-29 13:45:30")), int(at("2024-02-29 13:45:31")))
    assert window("minute", now) == (int(at("2024-02-29 13:45:00")), int(at("2024-02-29 13:46:00")))
    assert window("hour", now) == (int(at("2024-02-29 13:00:00")), int(at("2024-02-29 14:00:00")))
    assert window("day", now) == (int(at("2024-02-29 00:00:00")), int(at("2024-03-01 00:00:00")))
    assert window("month", now) == (int(at("2024-02-01 00:00:00")), int(at("2024-03-01 00:00:00")))
    assert window("year", now) == (int(at("2024-01-01 00:00:00")), int(at("2025-01-01 00:00:00")))
    december = at("2025-12-31 23:59:59")
    assert window("month", december) == (
        int(at("2025-12-01 00:00:00")),
        int(at("2026-01-01 00:00:00")),
    )


async def test_hide_client_headers_sends_none_of_them() -> None:
    gateway = gateway_with(RateLimiting(minute=1, limit_by="ip", hide_client_headers=True))
    async with client(gateway) as c:
        allowed = await c.get("/r")
        refused = await c.get("/r")
    assert (allowed.status_code, refused.status_code) == (200, 429)
    assert limit_headers(allowed) == {}
    assert limit_headers(refused) == {}


async def test_a_custom_error_code_and_message() -> None:
    gateway = gateway_with(
        RateLimiting(minute=1, limit_by="ip", error_code=404, error_message="Fake Not Found")
    )
    async with client(gateway) as c:
        await c.get("/r")
        refused = await c.get("/r")
    assert refused.status_code == 404
    assert refused.json()["message"] == "Fake Not Found"


async def test_the_refusal_is_formatted_for_the_accept_header() -> None:
    gateway = gateway_with(RateLimiting(minute=1, limit_by="ip"))
    async with client(gateway) as c:
        await c.get("/r")
        refused = await c.get("/r", headers={"accept": "text/plain"})
    assert refused.status_code == 429
    assert refused.text.startswith("API rate limit exceeded\nrequest_id: ")


async def test_the_headers_are_also_on_upstream_errors() -> None:
    engine = MockEngine(lambda request: UpstreamResponse(503, content=b"down"))
    gateway = gateway_with(RateLimiting(minute=5, limit_by="ip"), engine=engine)
    async with client(gateway) as c:
        response = await c.get("/r")
    assert response.status_code == 503
    assert response.headers["x-ratelimit-remaining-minute"] == "4"


async def test_the_headers_replace_the_upstreams_copies_and_leave_its_others() -> None:
    sent = [
        (b"x-ratelimit-limit-minute", b"999"),
        (b"ratelimit-remaining", b"999"),
        (b"x-ratelimit-limit-hour", b"7"),
    ]
    engine = MockEngine(lambda request: UpstreamResponse(200, sent, content=b"proxied"))
    gateway = gateway_with(RateLimiting(minute=5, limit_by="ip"), engine=engine)
    async with client(gateway) as c:
        response = await c.get("/r")
    assert response.headers.get_list("x-ratelimit-limit-minute") == ["5"]
    assert response.headers.get_list("ratelimit-remaining") == ["4"]
    assert response.headers["x-ratelimit-limit-hour"] == "7"  # no hour window: the upstream's


async def test_a_fractional_limit_lets_requests_through_while_below_it() -> None:
    gateway = gateway_with(RateLimiting(minute=2.5, limit_by="ip"))
    async with client(gateway) as c:
        answers = [await c.get("/r") for _ in range(4)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429]
    assert [r.headers["x-ratelimit-remaining-minute"] for r in answers] == ["1.5", "0.5", "0", "0"]
    assert answers[0].headers["x-ratelimit-limit-minute"] == "2.5"


async def test_concurrent_requests_never_overshoot_the_limit() -> None:
    engine = upstream()
    gateway = gateway_with(RateLimiting(minute=100, limit_by="ip"), engine=engine)
    results: list[int] = []
    async with client(gateway) as c:

        async def one() -> None:
            results.append((await c.get("/r")).status_code)

        async with anyio.create_task_group() as tg:
            for _ in range(500):
                tg.start_soon(one)
    assert results.count(200) == 100
    assert results.count(429) == 400
    assert len(engine.requests) == 100


# -- what is counted together: limit_by, and where the plugin is applied -------------------


@attrs.frozen
class HeaderAuth(gw.Plugin):
    """Authenticates the consumer an `x-user` header names, with its first credential."""

    name = "test-header-auth"
    priority = 1250

    async def access(self, ctx: gw.Context) -> gw.Response | None:
        username = ctx.request.headers.get("x-user")
        consumer = ctx.snapshot.consumers_by_key.get(username) if username else None
        if consumer is not None:
            credential = consumer.credentials[0] if consumer.credentials else None
            ctx.authenticate(consumer, credential)
        return None


async def test_limit_by_ip_counts_each_client_address_apart() -> None:
    gateway = gateway_with(RateLimiting(minute=1, limit_by="ip"))
    async with client(gateway, client_addr=("10.0.0.1", 1)) as a:
        first = [(await a.get("/r")).status_code for _ in range(2)]
    async with client(gateway, client_addr=("10.0.0.2", 1)) as b:
        second = [(await b.get("/r")).status_code for _ in range(2)]
    assert first == [200, 429]
    assert second == [200, 429]


async def test_limit_by_consumer_counts_each_consumer_and_falls_back_to_the_ip() -> None:
    gateway = gateway_with(
        HeaderAuth(),
        RateLimiting(minute=1),  # limit_by defaults to "consumer"
        consumers=[gw.Consumer(username="ada"), gw.Consumer(username="bob")],
    )
    assert await statuses(gateway, 2, headers={"x-user": "ada"}) == [200, 429]
    assert await statuses(gateway, 2, headers={"x-user": "bob"}) == [200, 429]
    assert await statuses(gateway, 2) == [200, 429]  # no consumer: by IP
    async with client(gateway, client_addr=("10.0.0.9", 1)) as other:
        assert (await other.get("/r")).status_code == 200


async def test_limit_by_credential_counts_each_credential() -> None:
    gateway = gateway_with(
        HeaderAuth(),
        RateLimiting(minute=1, limit_by="credential"),
        consumers=[
            gw.Consumer(username="ada", credentials=[KeyAuthCredential(key="k1")]),
            gw.Consumer(username="bob", credentials=[KeyAuthCredential(key="k2")]),
        ],
    )
    assert await statuses(gateway, 2, headers={"x-user": "ada"}) == [200, 429]
    assert await statuses(gateway, 2, headers={"x-user": "bob"}) == [200, 429]


async def test_limit_by_header_counts_each_value_and_falls_back_to_the_ip() -> None:
    gateway = gateway_with(RateLimiting(minute=1, limit_by="header", header_name="x-app"))
    assert await statuses(gateway, 2, headers={"x-app": "one"}) == [200, 429]
    assert await statuses(gateway, 2, headers={"x-app": "two"}) == [200, 429]
    assert await statuses(gateway, 2) == [200, 429]


async def test_a_long_or_odd_header_value_is_a_counter_like_any_other() -> None:
    store = MemoryCounterStore(clock=Clock(at("2026-03-10 12:00:20")))
    gateway = gateway_with(RateLimiting(minute=1, limit_by="header", header_name="x-app"))
    use_counter_store(gateway, store)
    long_value = "x" * 5000
    assert await statuses(gateway, 2, headers={"x-app": long_value}) == [200, 429]
    assert await statuses(gateway, 2, headers={"x-app": "a:b:c"}) == [200, 429]
    assert all(len(key) < 300 for key in store._counters)
    # Only the short identifier is kept at hand: a client cannot fill memory with long ones.
    kept = _rate_limiting._current_counters(gateway.snapshot)
    assert [place[-1] for place in kept] == ["a:b:c"]


async def test_the_counters_kept_at_hand_are_bounded_and_all_identifiers_still_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_rate_limiting, "CURRENT_MAX", 2)
    gateway = gateway_with(RateLimiting(minute=2, limit_by="header", header_name="x-app"))
    async with client(gateway) as c:
        answers = [(await c.get("/r", headers={"x-app": app})).status_code for app in "abcabcabc"]
    assert answers == [200] * 6 + [429] * 3
    assert len(_rate_limiting._current_counters(gateway.snapshot)) <= 2


async def test_limit_by_path_counts_that_path_for_everyone() -> None:
    gateway = gateway_with(RateLimiting(minute=1, limit_by="path", path="/r/shared"))
    async with client(gateway, client_addr=("10.0.0.1", 1)) as a:
        assert (await a.get("/r/shared")).status_code == 200
        assert (await a.get("/r/other")).status_code == 200  # other paths: by IP
    async with client(gateway, client_addr=("10.0.0.2", 1)) as b:
        assert (await b.get("/r/shared")).status_code == 429
        assert (await b.get("/r/other")).status_code == 200


async def test_limit_by_service_counts_all_clients_of_a_service_together() -> None:
    gateway = gw.Gateway(
        services=[
            gw.Service(name="a", url="http://a.test", routes=[gw.Route(paths=["/a"])]),
            gw.Service(name="b", url="http://b.test", routes=[gw.Route(paths=["/b"])]),
        ],
        plugins=[RateLimiting(minute=1, limit_by="service")],
        engine=upstream(),
    )
    async with client(gateway, client_addr=("10.0.0.1", 1)) as one:
        assert (await one.get("/a")).status_code == 200
        assert (await one.get("/b")).status_code == 200
    async with client(gateway, client_addr=("10.0.0.2", 1)) as two:
        assert (await two.get("/a")).status_code == 429
        assert (await two.get("/b")).status_code == 429


async def test_the_same_configuration_on_two_routes_counts_each_route_apart() -> None:
    plugin = RateLimiting(minute=1, limit_by="ip")
    gateway = gw.Gateway(
        services=[
            gw.Service(
                name="svc",
                url="http://upstream.test",
                routes=[
                    gw.Route(name="one", paths=["/one"], plugins=[plugin]),
                    gw.Route(paths=["/two"], plugins=[RateLimiting(minute=1, limit_by="ip")]),
                    gw.Route(name="three", paths=["/three"], plugins=[plugin]),  # same object
                ],
            )
        ],
        engine=upstream(),
    )
    for path in ("/one", "/two", "/three"):
        assert await statuses(gateway, 2, path) == [200, 429], path


async def test_a_service_plugin_counts_its_routes_together_and_a_global_one_all() -> None:
    gateway = gw.Gateway(
        services=[
            gw.Service(
                name="limited",
                url="http://upstream.test",
                plugins=[RateLimiting(minute=2, limit_by="ip")],
                routes=[gw.Route(paths=["/a"]), gw.Route(paths=["/b"])],
            ),
            gw.Service(
                name="open",
                url="http://upstream.test",
                routes=[gw.Route(paths=["/c"]), gw.Route(paths=["/d"])],
            ),
        ],
        plugins=[RateLimiting(minute=3, limit_by="ip")],
        engine=upstream(),
    )
    async with client(gateway) as c:
        assert [(await c.get(p)).status_code for p in ("/a", "/b", "/a")] == [200, 200, 429]
        assert [(await c.get(p)).status_code for p in ("/c", "/d", "/c", "/d")] == [
            200,
            200,
            200,
            429,
        ]


async def test_counters_survive_a_new_configuration() -> None:
    gateway = gateway_with(RateLimiting(minute=2, limit_by="ip"))
    assert await statuses(gateway, 1) == [200]
    gateway.configure(gw.Gateway.from_config(gateway.to_config()).config)
    assert await statuses(gateway, 2) == [200, 429]


# -- the local store ------------------------------------------------------------------------


async def test_local_counters_are_forgotten_when_their_window_ends() -> None:
    clock = Clock(at("2026-03-10 12:00:20"))
    store = MemoryCounterStore(clock=clock)
    gateway = gateway_with(RateLimiting(second=5, minute=10, limit_by="ip"))
    use_counter_store(gateway, store)
    async with client(gateway) as c:
        for i in range(3):
            await c.get("/r", headers={"x-forwarded-for": str(i)})
    assert len(store) == 2  # one second and one minute counter (all from one IP)
    clock.advance(1)
    assert len(store) == 1
    clock.advance(60)
    assert len(store) == 0


async def test_the_local_store_keeps_at_most_max_counters() -> None:
    clock = Clock(1000.0)
    store = MemoryCounterStore(clock=clock, max_counters=10)
    for i in range(50):
        await store.hit([Counter(f"k{i}", 5, 2000.0 + i)])
    assert len(store) == 10
    # The ones kept are those whose windows end last.
    assert await store.counts(["k49", "k40", "k39"]) == [1, 1, 0]


async def test_the_local_store_checks_every_window_before_counting_any() -> None:
    store = MemoryCounterStore(clock=Clock(0.0))
    small, large = Counter("small", 1, 60), Counter("large", 10, 3600)
    assert await store.hit([small, large]) == Hit(True, (1, 1))
    assert await store.hit([small, large]) == Hit(False, (1, 1))
    assert await store.counts(["small", "large"]) == [1, 1]


# -- when the store fails -----------------------------------------------------------------


class BrokenStore(CounterStore):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def hit(self, counters: Sequence[Counter]) -> Hit:
        self.calls += 1
        raise StoreError("Redis at nowhere:6379/0: ConnectionError: refused")


async def test_fault_tolerant_lets_traffic_through_and_logs_once_per_interval(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = upstream()
    gateway = gateway_with(RateLimiting(minute=1, limit_by="ip"), engine=engine)
    store = BrokenStore()
    use_counter_store(gateway, store)
    caplog.set_level(logging.ERROR, logger="pygateway.plugins.rate_limiting")
    async with client(gateway) as c:
        answers = [await c.get("/r") for _ in range(5)]
        assert [r.status_code for r in answers] == [200] * 5
        assert all(limit_headers(r) == {} for r in answers)
        logged = [r.getMessage() for r in caplog.records]
        assert len(logged) == 1
        assert "rate-limiting could not count requests" in logged[0]
        assert "ConnectionError: refused" in logged[0]
        monkeypatch.setattr("pygateway.stores._base.FAILURE_LOG_INTERVAL", 0.0)
        await c.get("/r")
    assert len(engine.requests) == 6
    assert store.calls == 6
    again = [r.getMessage() for r in caplog.records][1]
    assert "(4 more failures in the last" in again


async def test_without_fault_tolerance_a_store_failure_is_a_500() -> None:
    engine = upstream()
    gateway = gateway_with(
        RateLimiting(minute=1, limit_by="ip", fault_tolerant=False), engine=engine
    )
    use_counter_store(gateway, BrokenStore())
    async with client(gateway) as c:
        response = await c.get("/r")
    assert response.status_code == 500
    assert response.json()["message"] == "An unexpected error occurred"
    assert engine.requests == []


# -- configuration --------------------------------------------------------------------------


def test_it_is_kongs_rate_limiting_plugin() -> None:
    assert get_plugin("rate-limiting") is RateLimiting
    assert RateLimiting.priority == 910
    plugin = RateLimiting(minute=5)
    assert (plugin.limit_by, plugin.policy, plugin.fault_tolerant) == ("consumer", "local", True)
    assert (plugin.error_code, plugin.error_message) == (429, "API rate limit exceeded")
    assert (plugin.hide_client_headers, plugin.sync_rate) == (False, -1)
    assert plugin.redis == RedisConfig(port=6379, timeout=2000, database=0)


def test_the_declarative_form_loads_and_dumps_back() -> None:
    config = {
        "_format_version": "3.0",
        "services": [
            {
                "name": "svc",
                "url": "http://upstream.test",
                "routes": [{"name": "r", "paths": ["/r"]}],
                "plugins": [
                    {
                        "name": "rate-limiting",
                        "config": {
                            "minute": 20,
                            "hour": 500,
                            "limit_by": "header",
                            "header_name": "x-app",
                            "policy": "redis",
                            "redis": {"host": "redis.internal", "password": "s3cret"},
                        },
                    }
                ],
            }
        ],
    }
    gateway = gw.Gateway.from_config(config)
    plugin = gateway.config.services[0].plugins[0]
    assert isinstance(plugin, RateLimiting)
    assert (plugin.minute, plugin.hour, plugin.header_name) == (20, 500, "x-app")
    assert plugin.redis.host == "redis.internal"
    dumped = gateway.to_config()
    exported = dumped["services"][0]["plugins"][0]["config"]
    assert exported["redis"]["port"] == 6379
    assert gw.Gateway.from_config(dumped).config == gateway.config


def test_kongs_legacy_flat_redis_fields_are_accepted() -> None:
    plugin = RateLimiting.from_config(
        {
            "minute": 5,
            "policy": "redis",
            "redis_host": "redis.internal",
            "redis_port": 6380,
            "redis_database": 2,
            "redis_timeout": 1100,
            "redis_password": "pw",
            "redis_ssl": None,  # an export lists them all, null when unset
        }
    )
    assert isinstance(plugin, RateLimiting)
    assert plugin.redis == RedisConfig(
        host="redis.internal", port=6380, database=2, timeout=1100, password="pw"
    )
    assert "redis_host" not in plugin.to_config()


def test_the_redis_password_never_shows_in_a_repr() -> None:
    plugin = RateLimiting(minute=5, policy="redis", redis={"host": "h", "password": "s3cret"})
    assert "s3cret" not in repr(plugin)
    assert "s3cret" not in repr(plugin.redis)


@pytest.mark.parametrize(
    ("config", "errors"),
    [
        (
            {},
            [
                "at least one of these fields must be non-empty: 'config.second', "
                "'config.minute', 'config.hour', 'config.day', 'config.month', 'config.year'"
            ],
        ),
        (
            {"second": 20, "hour": 10},
            ["The limit for hour(10.0) cannot be lower than the limit for second(20.0)"],
        ),
        (
            {"second": 10, "minute": 20, "hour": 30, "day": 40, "month": 60, "year": 50},
            ["The limit for year(50.0) cannot be lower than the limit for month(60.0)"],
        ),
        ({"minute": 0}, ["minute: value must be greater than 0"]),
        ({"minute": "10"}, ["minute: expected an integer or a number"]),
        ({"minute": 5, "limit_by": "header"}, ["header_name: required field missing"]),
        ({"minute": 5, "limit_by": "path"}, ["path: required field missing"]),
        ({"minute": 5, "limit_by": "path", "path": "x"}, ["path: should start with: /"]),
        (
            {"minute": 5, "limit_by": "header", "header_name": "x app"},
            [
                "header_name: bad header name 'x app', allowed characters are "
                "A-Z, a-z, 0-9, '_', and '-'"
            ],
        ),
        (
            {"minute": 5, "limit_by": "nobody"},
            ["limit_by: expected one of: consumer, credential, ip, service, header, path"],
        ),
        ({"minute": 5, "policy": "memcached"}, ["policy: expected one of: local, redis"]),
        ({"minute": 5, "policy": "redis"}, ["redis.host: required field missing"]),
        (
            {"minute": 5, "redis": {"port": 70000}},
            ["redis.port: value should be between 0 and 65535"],
        ),
        ({"minute": 5, "redis": {"hots": "x"}}, ["redis.hots: unknown field"]),
        ({"minute": 5, "error_code": 1000}, ["error_code: value should be between 100 and 599"]),
        (
            {"minute": 5, "sync_rate": 10},
            ["sync_rate: sync_rate can only be used with the redis policy"],
        ),
        (
            {"minute": 5, "sync_rate": 0.01, "policy": "redis", "redis": {"host": "h"}},
            ["sync_rate: sync_rate must be greater than 0.02, or -1 to disable"],
        ),
        ({"minute": 5, "colour": "red"}, ["colour: unknown field"]),
    ],
)
def test_invalid_configurations_are_refused_with_kongs_messages(
    config: dict[str, Any], errors: list[str]
) -> None:
    with pytest.raises(gw.ConfigurationError) as info:
        RateLimiting.from_config(config)
    assert str(info.value).splitlines() == errors


def test_the_cluster_policy_is_refused_because_there_is_no_database() -> None:
    with pytest.raises(gw.ConfigurationError) as info:
        RateLimiting(minute=5, policy="cluster")
    message = str(info.value)
    assert message.startswith("policy: expected one of: local, redis")
    assert "database" in message
    assert "redis" in message


def test_a_batched_sync_rate_is_refused_with_the_reason() -> None:
    with pytest.raises(gw.ConfigurationError, match="sync_rate: only -1 is supported"):
        RateLimiting(minute=5, policy="redis", redis={"host": "h"}, sync_rate=1)


def test_errors_in_a_declarative_file_name_the_plugin_config_path() -> None:
    config = {
        "_format_version": "3.0",
        "plugins": [{"name": "rate-limiting", "config": {"minute": -1, "redis": {"port": "x"}}}],
    }
    with pytest.raises(gw.ConfigurationError) as info:
        gw.Gateway.from_config(config)
    assert set(str(info.value).splitlines()) == {
        "plugins[0].config.minute: value must be greater than 0",
        "plugins[0].config.redis.port: expected an integer",
    }


def test_the_store_is_one_per_gateway_and_location() -> None:
    gateway = gateway_with(RateLimiting(minute=1))
    other = gw.Gateway()
    local = counter_store(other)
    assert counter_store(other) is local
    assert isinstance(local, MemoryCounterStore)
    redis = counter_store(other, RedisConfig(host="redis.internal"))
    assert counter_store(other, RedisConfig(host="redis.internal")) is redis
    assert counter_store(other, RedisConfig(host="redis.internal", database=1)) is not redis
    assert counter_store(gateway) is not local
