"""The bundled response-ratelimiting plugin, after Kong's spec for it
(spec/03-plugins/24-response-rate-limiting), with the local policy and a fake clock.
Its Redis policy is covered in test_redis_rate_limiting.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs

import attrs
import pytest

import pygateway as gw
from pygateway._entities import KeyAuthCredential
from pygateway.engines import MockEngine, UpstreamRequest, UpstreamResponse
from pygateway.plugins import get as get_plugin
from pygateway.plugins._response_ratelimiting import ResponseLimits, ResponseRatelimiting
from pygateway.stores import (
    Counter,
    CounterStore,
    MemoryCounterStore,
    StoreError,
    use_counter_store,
)
from pygateway.testing import client

NOW = 1_773_144_020.0  # 2026-03-10 12:00:20 UTC


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def reporting(usage: str | None = None, *, extra: Sequence[tuple[bytes, bytes]] = ()) -> MockEngine:
    """An upstream whose answers report `usage` in `x-kong-limit`, or what the request asks
    for in its `?usage=` query argument."""

    def handler(request: UpstreamRequest) -> UpstreamResponse:
        query = parse_qs(request.target.decode().partition("?")[2])
        reported = query["usage"][0] if "usage" in query else usage
        headers = [(b"content-type", b"text/plain"), *extra]
        if reported is not None:
            headers.append((b"x-kong-limit", reported.encode()))
        return UpstreamResponse(200, headers, content=b"upstream body")

    return MockEngine(handler)


def gateway_with(
    *plugins: Any,
    engine: MockEngine | None = None,
    clock: Clock | None = None,
    consumers: Sequence[gw.Consumer] = (),
) -> gw.Gateway:
    gateway = gw.Gateway(
        services=[
            gw.Service(
                name="svc",
                url="http://upstream.test",
                routes=[gw.Route(name="r", paths=["/r"], plugins=plugins)],
            )
        ],
        consumers=consumers,
        engine=engine if engine is not None else reporting("video=1"),
    )
    use_counter_store(gateway, MemoryCounterStore(clock=clock or Clock()))
    return gateway


def video(**periods: float) -> ResponseRatelimiting:
    return ResponseRatelimiting(limits={"video": periods}, limit_by="ip")


def rate_headers(response: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in response.headers.items() if "ratelimit" in k.lower()}


# -- counting what the upstream reports ----------------------------------------------------


async def test_reported_usage_is_counted_and_the_exhausted_limit_gets_an_empty_429() -> None:
    engine = reporting("video=1")
    gateway = gateway_with(video(second=3), engine=engine)
    async with client(gateway) as c:
        answers = [await c.get("/r") for _ in range(4)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429]
    assert [r.headers["x-ratelimit-limit-video-second"] for r in answers] == ["3"] * 4
    assert [r.headers["x-ratelimit-remaining-video-second"] for r in answers] == [
        "2",
        "1",
        "0",
        "0",
    ]
    refused = answers[3]
    assert refused.content == b""
    assert "content-type" not in refused.headers
    # The upstream is asked (it reports the usage); a request it refuses is not counted.
    assert len(engine.requests) == 4


async def test_the_upstream_learns_what_is_left_of_each_limit() -> None:
    engine = reporting()
    plugin = ResponseRatelimiting(
        limits={"video": {"second": 10, "minute": 20}, "image": {"minute": 4}}, limit_by="ip"
    )
    gateway = gateway_with(plugin, engine=engine)
    async with client(gateway) as c:
        await c.get("/r", params={"usage": "video=2, image=1"})
        await c.get("/r")
    first, second = ({k.decode(): v.decode() for k, v in r.headers} for r in engine.requests)
    assert first["x-ratelimit-remaining-video"] == "10"
    assert first["x-ratelimit-remaining-image"] == "4"
    assert second["x-ratelimit-remaining-video"] == "8"  # the least of 8 and 18
    assert second["x-ratelimit-remaining-image"] == "3"


async def test_several_limits_are_reported_in_one_header_or_several() -> None:
    engine = reporting(extra=[(b"x-kong-limit", b"image=1")])
    plugin = ResponseRatelimiting(
        limits={"video": {"minute": 4}, "image": {"minute": 2}}, limit_by="ip"
    )
    gateway = gateway_with(plugin, engine=engine)
    async with client(gateway) as c:
        first = await c.get("/r", params={"usage": "video=2"})
        second = await c.get("/r", params={"usage": "video=2"})
        third = await c.get("/r", params={"usage": "video=1"})
    assert rate_headers(first) == {
        "x-ratelimit-limit-video-minute": "4",
        "x-ratelimit-remaining-video-minute": "2",
        "x-ratelimit-limit-image-minute": "2",
        "x-ratelimit-remaining-image-minute": "1",
    }
    assert second.status_code == 200
    assert rate_headers(second)["x-ratelimit-remaining-video-minute"] == "0"
    assert third.status_code == 429  # both used up, and reported again


async def test_usage_of_unknown_limits_and_malformed_values_is_ignored() -> None:
    engine = reporting()
    gateway = gateway_with(video(minute=5), engine=engine)
    async with client(gateway) as c:
        for usage in ("audio=3", "video=1.5", "video", "video=x, image=2", "=1"):
            await c.get("/r", params={"usage": usage})
        last = await c.get("/r", params={"usage": " video = 2 "})
        after = await c.get("/r")
    assert last.headers["x-ratelimit-remaining-video-minute"] == "3"
    assert after.headers["x-ratelimit-remaining-video-minute"] == "3"


async def test_the_usage_header_never_reaches_the_client() -> None:
    gateway = gateway_with(video(minute=5))
    async with client(gateway) as c:
        response = await c.get("/r")
    assert response.status_code == 200
    assert response.content == b"upstream body"
    assert "x-kong-limit" not in response.headers


async def test_a_custom_usage_header_name() -> None:
    engine = MockEngine(
        lambda request: UpstreamResponse(200, [(b"x-usage", b"video=2")], content=b"ok")
    )
    plugin = ResponseRatelimiting(limits={"video": {"minute": 5}}, header_name="x-usage")
    gateway = gateway_with(plugin, engine=engine)
    async with client(gateway) as c:
        response = await c.get("/r")
    assert response.headers["x-ratelimit-remaining-video-minute"] == "3"
    assert "x-usage" not in response.headers


async def test_block_on_first_violation_refuses_before_the_upstream_is_asked() -> None:
    engine = reporting()
    plugin = ResponseRatelimiting(
        limits={"video": {"second": 10}, "image": {"second": 4}},
        block_on_first_violation=True,
        limit_by="ip",
    )
    gateway = gateway_with(plugin, engine=engine)
    async with client(gateway) as c:
        first = await c.get("/r", params={"usage": "video=2, image=4"})
        refused = await c.get("/r", params={"usage": "video=2"})
    assert first.status_code == 200
    assert refused.status_code == 429
    assert refused.json()["message"] == "API rate limit exceeded for 'image'"
    assert "request_id" in refused.json()
    assert len(engine.requests) == 1


async def test_hide_client_headers_hides_the_counts_but_still_limits() -> None:
    plugin = ResponseRatelimiting(
        limits={"video": {"minute": 1}}, limit_by="ip", hide_client_headers=True
    )
    gateway = gateway_with(plugin)
    async with client(gateway) as c:
        answers = [await c.get("/r") for _ in range(2)]
    assert [r.status_code for r in answers] == [200, 429]
    assert all(rate_headers(r) == {} for r in answers)


async def test_counters_follow_the_utc_windows() -> None:
    clock = Clock(NOW + 39.5)  # half a second before 12:01:00
    gateway = gateway_with(video(minute=1), clock=clock)
    async with client(gateway) as c:
        answers = [(await c.get("/r")).status_code for _ in range(2)]
        clock.now += 0.5
        answers.append((await c.get("/r")).status_code)
    assert answers == [200, 429, 200]


# -- who is counted -----------------------------------------------------------------------


@attrs.frozen
class HeaderAuth(gw.Plugin):
    name = "test-header-auth"
    priority = 1250

    async def access(self, ctx: gw.Context) -> gw.Response | None:
        username = ctx.request.headers.get("x-user")
        consumer = ctx.snapshot.consumers_by_key.get(username) if username else None
        if consumer is not None:
            ctx.authenticate(consumer, consumer.credentials[0] if consumer.credentials else None)
        return None


@pytest.mark.parametrize("limit_by", ["consumer", "credential"])
async def test_each_consumer_or_credential_has_its_own_counters(limit_by: str) -> None:
    gateway = gateway_with(
        HeaderAuth(),
        ResponseRatelimiting(limits={"video": {"minute": 1}}, limit_by=limit_by),
        consumers=[
            gw.Consumer(username="ada", credentials=[KeyAuthCredential(key="k1")]),
            gw.Consumer(username="bob", credentials=[KeyAuthCredential(key="k2")]),
        ],
    )
    async with client(gateway) as c:
        ada = [(await c.get("/r", headers={"x-user": "ada"})).status_code for _ in range(2)]
        bob = [(await c.get("/r", headers={"x-user": "bob"})).status_code for _ in range(2)]
        anonymous = [(await c.get("/r")).status_code for _ in range(2)]  # by IP
    assert ada == bob == anonymous == [200, 429]


async def test_limit_by_ip_counts_each_client_address_apart() -> None:
    gateway = gateway_with(video(minute=1))
    for address in ("10.0.0.1", "10.0.0.2"):
        async with client(gateway, client_addr=(address, 1)) as c:
            assert [(await c.get("/r")).status_code for _ in range(2)] == [200, 429]


# -- when the store fails -----------------------------------------------------------------


class BrokenStore(CounterStore):
    async def counts(self, keys: Sequence[str]) -> list[int]:
        raise StoreError("Redis at nowhere:6379/0: ConnectionError: refused")

    async def increment(self, counters: Sequence[Counter], amount: int) -> None:
        raise AssertionError("nothing was read: nothing may be counted")


async def test_fault_tolerant_lets_traffic_through_uncounted() -> None:
    engine = reporting("video=1")
    gateway = gateway_with(video(minute=1), engine=engine)
    use_counter_store(gateway, BrokenStore())
    async with client(gateway) as c:
        answers = [await c.get("/r") for _ in range(3)]
    assert [r.status_code for r in answers] == [200] * 3
    assert all(rate_headers(r) == {} for r in answers)
    assert all("x-kong-limit" not in r.headers for r in answers)
    assert len(engine.requests) == 3


async def test_without_fault_tolerance_a_store_failure_is_a_500() -> None:
    engine = reporting("video=1")
    plugin = ResponseRatelimiting(limits={"video": {"minute": 1}}, fault_tolerant=False)
    gateway = gateway_with(plugin, engine=engine)
    use_counter_store(gateway, BrokenStore())
    async with client(gateway) as c:
        response = await c.get("/r")
    assert response.status_code == 500
    assert response.json()["message"] == "An unexpected error occurred"
    assert engine.requests == []


# -- configuration --------------------------------------------------------------------------


def test_it_is_kongs_response_ratelimiting_plugin() -> None:
    assert get_plugin("response-ratelimiting") is ResponseRatelimiting
    assert ResponseRatelimiting.priority == 900
    plugin = ResponseRatelimiting(limits={"video": {"second": 1}})
    assert plugin.limits == {"video": ResponseLimits(second=1)}
    assert (plugin.header_name, plugin.limit_by, plugin.policy) == (
        "x-kong-limit",
        "consumer",
        "local",
    )
    assert (plugin.block_on_first_violation, plugin.hide_client_headers) == (False, False)
    assert plugin.fault_tolerant is True


def test_the_declarative_form_loads_and_dumps_back() -> None:
    config = {
        "_format_version": "3.0",
        "plugins": [
            {
                "name": "response-ratelimiting",
                "config": {
                    "limits": {"video": {"second": 1, "minute": 2}, "image": {"hour": 5}},
                    "policy": "redis",
                    "redis_host": "redis.internal",
                    "redis_port": 6380,
                },
            }
        ],
    }
    gateway = gw.Gateway.from_config(config)
    plugin = gateway.config.plugins[0]
    assert isinstance(plugin, ResponseRatelimiting)
    assert plugin.limits is not None
    assert plugin.limits["image"] == ResponseLimits(hour=5)
    assert (plugin.redis.host, plugin.redis.port) == ("redis.internal", 6380)
    dumped = gateway.to_config()
    assert dumped["plugins"][0]["config"]["limits"]["video"]["minute"] == 2
    assert gw.Gateway.from_config(dumped).config == gateway.config


ONE = {"video": {"minute": 1}}


@pytest.mark.parametrize(
    ("config", "errors"),
    [
        ({}, ["limits: required field missing"]),
        ({"limits": {}}, ["limits: length must be at least 1"]),
        ({"limits": {"video": {"seco": 1}}}, ["limits.video.seco: unknown field"]),
        (
            {"limits": {"video": {}}},
            [
                "limits.video: at least one of these fields must be non-empty: 'second', "
                "'minute', 'hour', 'day', 'month', 'year'"
            ],
        ),
        (
            {"limits": {"video": {"second": 2, "minute": 1}}},
            [
                "limits.video: the limit for minute(1.0) cannot be lower than "
                "the limit for second(2.0)"
            ],
        ),
        (
            {"limits": {"video": dict(second=1, minute=2, hour=3, day=4, month=6, year=5)}},
            ["limits.video: the limit for year(5.0) cannot be lower than the limit for month(6.0)"],
        ),
        (
            {"limits": {"video": {"minute": 0}}},
            ["limits.video.minute: value must be greater than 0"],
        ),
        ({"limits": ONE, "colour": 1}, ["colour: unknown field"]),
        (
            {"limits": {"hd video": {"minute": 1}}},
            ["limits.hd video: invalid limit name 'hd video': expected an HTTP token"],
        ),
        ({"limits": {"second": 10}}, ["limits.second: expected a ResponseLimits"]),
        (
            {"limits": ONE, "limit_by": "path"},
            ["limit_by: expected one of: consumer, credential, ip"],
        ),
        ({"limits": ONE, "policy": "redis"}, ["redis.host: required field missing"]),
        ({"limits": ONE, "policy": "cluster"}, None),
    ],
)
def test_invalid_configurations_are_refused_with_kongs_messages(
    config: dict[str, Any], errors: list[str] | None
) -> None:
    with pytest.raises(gw.ConfigurationError) as info:
        ResponseRatelimiting.from_config(config)
    lines = str(info.value).splitlines()
    if errors is None:
        assert lines[0].startswith("policy: expected one of: local, redis (")
    else:
        assert lines == errors
