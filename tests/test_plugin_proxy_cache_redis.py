"""proxy-cache with the redis strategy, against the machine's Redis (tests/redisutil.py).

Two Gateway instances sharing one Redis stand for two workers or nodes: what one stores,
the other serves. Each test keeps its keys under its own prefix (`prefix`, made by
`redis_prefix`), through a `RedisCacheStore` installed with `use_cache_store`; fake clocks
stamp the entries.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import anyio
import pytest
from redisutil import REDIS_HOST, REDIS_PORT, redis_command, redis_key_names, redis_prefix
from upstreams import refused_port, unaccepting_port

import pygateway as gw
from pygateway._config import dump, load
from pygateway._exceptions import ConfigurationError
from pygateway.engines import MockEngine, UpstreamRequest, UpstreamResponse
from pygateway.plugins._cache_store import (
    CachedResponse,
    MemoryCacheStore,
    RedisCacheStore,
    cache_store,
    decode_entry,
    encode_entry,
    use_cache_store,
)
from pygateway.plugins._key_auth import KeyAuth
from pygateway.plugins._proxy_cache import ProxyCache, purge, purge_all
from pygateway.stores import RedisConfig, StoreError
from pygateway.testing import client

__all__ = ["redis_prefix"]  # the fixture, imported for the tests here

REDIS = RedisConfig(host=REDIS_HOST, port=REDIS_PORT)
NOW = 1_773_144_000.0

Handler = Callable[[UpstreamRequest], UpstreamResponse]


def json_answer(body: bytes = b'{"n":1}', extra: Sequence[tuple[bytes, bytes]] = ()) -> Handler:
    def handler(request: UpstreamRequest) -> UpstreamResponse:
        headers = [(b"content-type", b"application/json"), (b"x-origin", b"upstream"), *extra]
        return UpstreamResponse(200, headers, content=body)

    return handler


def cached_gateway(
    prefix: str | None,
    *plugins: Any,
    engine: MockEngine | None = None,
    now: float = NOW,
    consumers: Sequence[gw.Consumer] = (),
    redis: RedisConfig = REDIS,
) -> tuple[gw.Gateway, MockEngine]:
    """Route `/` with `plugins` (default: a redis-strategy ProxyCache) in front of `engine`;
    its Redis store keeps keys under `prefix` and stamps entries with `now`."""
    engine = engine if engine is not None else MockEngine(json_answer())
    plugins = plugins or (ProxyCache(strategy="redis", redis=REDIS),)
    gateway = gw.Gateway(
        services=[
            gw.Service(
                name="svc",
                url="http://upstream.test",
                routes=[gw.Route(name="r", paths=["/"], plugins=list(plugins))],
            )
        ],
        consumers=list(consumers),
        engine=engine,
    )
    if prefix is not None:
        use_cache_store(gateway, RedisCacheStore(redis, prefix=prefix, clock=lambda: now))
    return gateway, engine


@pytest.fixture
def prefix(redis_prefix: str) -> str:
    """This test's Redis key prefix (its keys are deleted after the test)."""
    return redis_prefix


# -- shared by every gateway ------------------------------------------------------------------


async def test_a_response_cached_by_one_gateway_is_a_hit_on_another_sharing_redis(
    prefix: str,
) -> None:
    first, first_upstream = cached_gateway(prefix, now=NOW)
    second, second_upstream = cached_gateway(prefix, now=NOW + 7.9)
    async with first, second, client(first) as one, client(second) as two:
        miss = await one.get("/items?page=1")
        hit = await two.get("/items?page=1")
    assert miss.headers["x-cache-status"] == "Miss"
    assert (hit.status_code, hit.headers["x-cache-status"]) == (200, "Hit")
    assert hit.content == miss.content == b'{"n":1}'
    assert hit.headers["content-type"] == "application/json"
    assert hit.headers["x-origin"] == "upstream"
    assert hit.headers["content-length"] == "7"
    assert hit.headers["age"] == "7"  # stamped by the first gateway's clock
    assert hit.headers["x-cache-key"] == miss.headers["x-cache-key"]
    assert (len(first_upstream.requests), len(second_upstream.requests)) == (1, 0)
    assert redis_key_names(prefix) == [prefix + miss.headers["x-cache-key"]]


async def test_a_gateway_started_by_its_first_request_caches_in_redis_too(
    prefix: str,
) -> None:
    gateway, engine = cached_gateway(prefix)  # no `async with`: Redis in a thread
    try:
        async with client(gateway) as c:
            statuses = [(await c.get("/a")).headers["x-cache-status"] for _ in range(3)]
    finally:
        await gateway.aclose()
    assert statuses == ["Miss", "Hit", "Hit"]
    assert len(engine.requests) == 1


async def test_a_stale_entry_in_redis_is_refreshed_by_any_gateway(prefix: str) -> None:
    plugin = ProxyCache(strategy="redis", redis=REDIS, cache_ttl=10, storage_ttl=60)
    first, _ = cached_gateway(prefix, plugin, now=NOW)
    second, second_upstream = cached_gateway(prefix, plugin, now=NOW + 11)
    async with first, second, client(first) as one, client(second) as two:
        await one.get("/a")
        refresh = await two.get("/a")
        again = await two.get("/a")
    assert refresh.headers["x-cache-status"] == "Refresh"
    assert (again.headers["x-cache-status"], again.headers["age"]) == ("Hit", "0")
    assert len(second_upstream.requests) == 1


async def test_two_consumers_never_share_an_entry_in_redis(prefix: str) -> None:
    alice = gw.Consumer(username="alice", credentials=[gw.KeyAuthCredential(key="a-key")])
    bob = gw.Consumer(username="bob", credentials=[gw.KeyAuthCredential(key="b-key")])
    plugins = (KeyAuth(), ProxyCache(strategy="redis", redis=REDIS))
    first, _ = cached_gateway(prefix, *plugins, consumers=[alice, bob])
    second, second_upstream = cached_gateway(prefix, *plugins, consumers=[alice, bob])
    async with first, second, client(first) as one, client(second) as two:
        a1 = await one.get("/a", headers={"apikey": "a-key"})
        b1 = await two.get("/a", headers={"apikey": "b-key"})
        a2 = await two.get("/a", headers={"apikey": "a-key"})
        anonymous = await two.get("/a")
    assert [r.headers["x-cache-status"] for r in (a1, b1, a2)] == ["Miss", "Miss", "Hit"]
    assert anonymous.status_code == 401
    assert a1.headers["x-cache-key"] != b1.headers["x-cache-key"]
    assert len(second_upstream.requests) == 1  # bob's
    assert len(redis_key_names(prefix)) == 2


async def test_the_upstreams_vary_is_honoured_across_gateways(prefix: str) -> None:
    def handler(request: UpstreamRequest) -> UpstreamResponse:
        lang = dict(request.headers).get(b"accept-language", b"")
        return UpstreamResponse(
            200,
            [(b"content-type", b"text/plain"), (b"vary", b"Accept-Language")],
            content=b"bonjour, " + lang,
        )

    first, _ = cached_gateway(prefix, engine=MockEngine(handler))
    second, second_upstream = cached_gateway(prefix, engine=MockEngine(handler))
    async with first, second, client(first) as one, client(second) as two:
        await one.get("/a", headers={b"accept-language": "fr-ç".encode()})
        fr = await two.get("/a", headers={b"accept-language": "fr-ç".encode()})
        en = await two.get("/a", headers={"accept-language": "en"})
        no_header = await one.get("/a")
    assert (fr.headers["x-cache-status"], fr.content) == ("Hit", "bonjour, fr-ç".encode())
    assert (en.headers["x-cache-status"], en.content) == ("Miss", b"bonjour, en")
    assert no_header.headers["x-cache-status"] == "Miss"
    assert len(second_upstream.requests) == 1


# -- what is in Redis -------------------------------------------------------------------------


async def test_the_redis_key_expires_with_the_storage_ttl(prefix: str) -> None:
    body = bytes(range(256)) * 64  # 16 KiB of binary
    plugins = [
        ProxyCache(strategy="redis", redis=REDIS, cache_ttl=10, storage_ttl=60),
        ProxyCache(strategy="redis", redis=REDIS, cache_ttl=30),
    ]
    ttls = []
    for plugin in plugins:
        gateway, _ = cached_gateway(prefix, plugin, engine=MockEngine(json_answer(body)))
        async with gateway, client(gateway) as c:
            key = prefix + (await c.get("/a")).headers["x-cache-key"]
            assert (await c.get("/a")).content == body
        ttls.append(redis_command("PTTL", key))
        # The body is stored as is (a few hundred bytes around it, no base64).
        size = redis_command("STRLEN", key)
        assert isinstance(size, int)
        assert len(body) < size < len(body) + 300
        redis_command("DEL", key)
    storage, cache = ttls
    assert isinstance(storage, int)
    assert isinstance(cache, int)
    assert 50_000 < storage <= 60_000
    assert 20_000 < cache <= 30_000


async def test_a_16_mib_response_above_max_body_size_is_streamed_but_not_stored(
    prefix: str,
) -> None:
    chunk = b"x" * 65536

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(256):
            yield chunk

    engine = MockEngine(
        lambda request: UpstreamResponse(
            200, [(b"content-type", b"application/json")], stream=chunks()
        )
    )
    gateway, _ = cached_gateway(
        prefix,
        ProxyCache(strategy="redis", redis=REDIS, max_body_size=1024 * 1024),
        engine=engine,
    )
    async with gateway, client(gateway) as c:
        first = await c.get("/big")
        second = await c.get("/big")
    assert len(first.content) == 16 * 1024 * 1024
    assert first.content == chunk * 256
    assert first.headers["x-cache-status"] == "Miss"
    assert second.headers["x-cache-status"] == "Miss"
    assert len(engine.requests) == 2
    assert redis_key_names(prefix) == []


async def test_redis_store_operations(prefix: str) -> None:
    store = RedisCacheStore(REDIS, prefix=prefix + "cache:")
    entry = CachedResponse(
        status_code=203,
        headers=((b"content-type", b"application/octet-stream"), (b"x-raw", b"\xff\x00")),
        body=b"\x00\xffbody",
        stored_at=NOW + 0.25,
        ttl=12.5,
        vary=(("accept-language", "fr-ç"), ("x-empty", "")),
    )
    redis_command("SET", prefix + "other", "kept")
    try:
        assert await store.get("k1") is None
        assert await store.set("k1", entry, 30) is True
        await store.set("k2", entry, 30)
        assert await store.get("k1") == entry
        assert await store.delete("k1") is True
        assert await store.delete("k1") is False
        assert await store.get("k1") is None
        for i in range(2500):  # more than one SCAN batch
            redis_command("SET", f"{prefix}cache:bulk{i}", "x")
        await store.clear()
        assert redis_key_names(prefix) == [prefix + "other"]
        # A value this version cannot read is a miss.
        redis_command("SET", prefix + "cache:odd", "not an entry")
        assert await store.get("odd") is None
    finally:
        await store.aclose()


def test_an_entry_encodes_compactly_and_decodes_back() -> None:
    entry = CachedResponse(200, ((b"a", b"b"),), b"\x00" * 1000, NOW, 300.0, (("x", "y"),))
    data = encode_entry(entry)
    assert len(data) < 1000 + 60
    assert decode_entry(data) == entry
    for bad in (b"", b"junk", data[:30], b"\x09" + data[1:]):
        with pytest.raises(ValueError, match="not a cache entry"):
            decode_entry(bad)


# -- purge -----------------------------------------------------------------------------------


async def test_purge_and_purge_all_reach_every_gateway_sharing_redis(prefix: str) -> None:
    first, _ = cached_gateway(prefix + "cache:")
    second, second_upstream = cached_gateway(prefix + "cache:")
    redis_command("SET", prefix + "not-a-cache-entry", "kept")
    async with first, second, client(first) as one, client(second) as two:
        key_a = (await one.get("/a")).headers["x-cache-key"]
        await one.get("/b")
        assert await purge(second, key_a) is True
        assert await purge(second, key_a) is False
        assert (await two.get("/a")).headers["x-cache-status"] == "Miss"
        assert (await two.get("/b")).headers["x-cache-status"] == "Hit"
        await purge_all(first)
        assert (await two.get("/b")).headers["x-cache-status"] == "Miss"
        assert (await one.get("/a")).headers["x-cache-status"] == "Miss"
    assert len(second_upstream.requests) == 2
    assert redis_command("GET", prefix + "not-a-cache-entry") == "kept"


async def test_purge_covers_memory_and_redis_stores_and_reports_an_unreachable_redis() -> None:
    memory = ProxyCache()
    with refused_port() as port:
        down = RedisConfig(host="127.0.0.1", port=port, timeout=500)
        gateway = gw.Gateway(
            services=[
                gw.Service(
                    name="svc",
                    url="http://upstream.test",
                    routes=[
                        gw.Route(name="m", paths=["/m"], plugins=[memory]),
                        gw.Route(
                            name="d",
                            paths=["/d"],
                            plugins=[ProxyCache(strategy="redis", redis=down)],
                        ),
                    ],
                )
            ],
            engine=MockEngine(json_answer()),
        )
        use_cache_store(gateway, MemoryCacheStore())
        async with gateway, client(gateway) as c:
            await c.get("/m")
            assert len(cache_store(gateway)) == 1
            with pytest.raises(StoreError, match=f"Redis at 127.0.0.1:{port}/0"):
                await purge_all(gateway)
            assert len(cache_store(gateway)) == 0  # the memory store was purged anyway


# -- when Redis cannot be reached ---------------------------------------------------------------


@pytest.fixture
def unreachable_redis() -> Iterator[RedisConfig]:
    with refused_port() as port:
        yield RedisConfig(host="127.0.0.1", port=port, timeout=500)


@pytest.mark.parametrize("started", [True, False])
async def test_with_bypass_on_err_a_redis_down_is_a_bypass_to_the_upstream(
    unreachable_redis: RedisConfig, caplog: pytest.LogCaptureFixture, started: bool
) -> None:
    plugin = ProxyCache(strategy="redis", redis=unreachable_redis, bypass_on_err=True)
    gateway, engine = cached_gateway(None, plugin)
    caplog.set_level(logging.ERROR, logger="pygateway.plugins.proxy_cache")
    try:
        if started:
            await gateway.start()
        async with client(gateway) as c:
            answers = [await c.get("/a") for _ in range(5)]
    finally:
        await gateway.aclose()
    assert [r.status_code for r in answers] == [200] * 5
    assert {r.headers["x-cache-status"] for r in answers} == {"Bypass"}
    assert len(answers[0].headers["x-cache-key"]) == 64
    assert len(engine.requests) == 5
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 1  # once per 30 s, not once per request
    assert f"Redis at 127.0.0.1:{unreachable_redis.port}/0" in logged[0]


async def test_without_bypass_on_err_a_redis_down_is_proxied_with_no_cache_headers(
    unreachable_redis: RedisConfig, caplog: pytest.LogCaptureFixture
) -> None:
    plugin = ProxyCache(strategy="redis", redis=unreachable_redis)
    gateway, engine = cached_gateway(None, plugin)
    caplog.set_level(logging.ERROR, logger="pygateway.plugins.proxy_cache")
    async with gateway, client(gateway) as c:
        answers = [await c.get("/a") for _ in range(3)]
    assert [(r.status_code, r.content) for r in answers] == [(200, b'{"n":1}')] * 3
    assert all("x-cache-status" not in r.headers for r in answers)
    assert len(engine.requests) == 3
    assert "could not look up" in caplog.records[0].getMessage()


async def test_a_redis_that_never_accepts_does_not_hold_requests_beyond_its_timeout() -> None:
    with unaccepting_port() as port:
        if port is None:
            pytest.skip("this platform completes connects to a full accept queue")
        redis = RedisConfig(host="127.0.0.1", port=port, timeout=200)
        plugin = ProxyCache(strategy="redis", redis=redis, bypass_on_err=True)
        gateway, engine = cached_gateway(None, plugin)
        # A guard, not a measurement: lookups give up after 0.2 s each, so far within it
        # (a store waiting for its default connect timeout, 10 s and more, would not be).
        with anyio.fail_after(5):
            async with gateway, client(gateway) as c:
                answers = [await c.get("/a") for _ in range(2)]
    assert [(r.status_code, r.headers["x-cache-status"]) for r in answers] == [(200, "Bypass")] * 2
    assert len(engine.requests) == 2


# -- configuration ------------------------------------------------------------------------------


def test_redis_configuration_from_a_declarative_file_round_trips() -> None:
    config = {
        "_format_version": "3.0",
        "services": [
            {
                "name": "s",
                "url": "http://u.test",
                "routes": [{"name": "r", "paths": ["/"]}],
                "plugins": [
                    {
                        "name": "proxy-cache",
                        "config": {
                            "strategy": "redis",
                            "bypass_on_err": True,
                            "redis": {"host": "redis.internal", "port": 6380, "timeout": 300},
                        },
                    }
                ],
            }
        ],
    }
    loaded = load(config)
    plugin = loaded.services[0].plugins[0]
    assert isinstance(plugin, ProxyCache)
    assert plugin.redis == RedisConfig(host="redis.internal", port=6380, timeout=300)
    assert plugin.bypass_on_err is True
    assert load(dump(loaded)) == loaded
    assert ProxyCache().to_config()["bypass_on_err"] is False


@pytest.mark.parametrize(
    ("settings", "errors"),
    [
        (
            {"strategy": "redis"},
            [(("redis", "host"), "required field missing")],
        ),
        (
            {"strategy": "redis", "redis": {"port": 70000}},
            [(("redis", "port"), "value should be between 0 and 65535")],
        ),
        (
            {"strategy": "redis", "redis": {"host": "h", "sentinel_master": "m"}},
            [(("redis", "sentinel_master"), "unknown field")],
        ),
        (
            {"strategy": "redis", "redis": {"host": "h"}, "bypass_on_err": "yes"},
            [(("bypass_on_err",), "expected a boolean")],
        ),
    ],
)
def test_invalid_redis_configuration_names_the_field_path(
    settings: dict[str, Any], errors: list[tuple[tuple[str, ...], str]]
) -> None:
    config = {
        "_format_version": "3.0",
        "plugins": [{"name": "proxy-cache", "config": settings}],
    }
    with pytest.raises(ConfigurationError) as caught:
        load(config)
    expected = [(("plugins", 0, "config", *path), message) for path, message in errors]
    found = [(path, message) for path, message in caught.value.errors]
    for path, message in expected:
        assert any(p == path and message in m for p, m in found), found
