"""rate-limiting with the redis policy, against the machine's Redis (tests/redisutil.py).

The headline: four gateway processes (uvicorn on asyncio, hypercorn on trio) share one
Redis; 500 concurrent requests at 100/minute let exactly 100 through, and the upstream sees
exactly 100. In-process tests cover both ways a gateway may hold its Redis client (in its
own task group when started with `async with gateway:`, or in a thread when a request
started it) on asyncio and trio, and what happens when Redis cannot be reached.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import pytest
from redisutil import (
    REDIS_HOST,
    REDIS_PORT,
    redis_command,
    redis_keys,
    redis_prefix,
    require_redis,
)
from serverutil import PYTHON, ServerProcess, free_port
from targets import TargetServer
from upstreams import refused_port

import pygateway as gw
from pygateway.engines import MockEngine, UpstreamResponse
from pygateway.plugins._rate_limiting import RateLimiting
from pygateway.plugins._response_ratelimiting import ResponseRatelimiting
from pygateway.stores import (
    Counter,
    RedisConfig,
    RedisCounterStore,
    StoreError,
    counter_store,
    use_counter_store,
)
from pygateway.testing import client

__all__ = ["redis_prefix"]  # the fixture, imported for the tests here

REDIS = RedisConfig(host=REDIS_HOST, port=REDIS_PORT)
NOW = 1_773_144_020.0  # 2026-03-10 12:00:20 UTC: 40 s left in the minute


def upstream() -> MockEngine:
    return MockEngine(lambda request: UpstreamResponse(200, content=b"proxied"))


def limited_gateway(prefix: str, plugin: Any, engine: MockEngine) -> gw.Gateway:
    gateway = gw.Gateway(
        services=[
            gw.Service(
                name="svc",
                url="http://upstream.test",
                routes=[gw.Route(name="r", paths=["/r"], plugins=[plugin])],
            )
        ],
        engine=engine,
    )
    use_counter_store(gateway, RedisCounterStore(REDIS, prefix=prefix, clock=lambda: NOW))
    return gateway


async def fire(gateway: gw.Gateway, n: int) -> list[int]:
    results: list[int] = []
    async with client(gateway) as c:

        async def one() -> None:
            results.append((await c.get("/r")).status_code)

        async with anyio.create_task_group() as tg:
            for _ in range(n):
                tg.start_soon(one)
    return results


# -- in-process -----------------------------------------------------------------------------


async def test_a_gateway_started_by_its_owner_counts_exactly_in_redis(redis_prefix: str) -> None:
    engine = upstream()
    plugin = RateLimiting(minute=100, limit_by="ip", policy="redis", redis=REDIS)
    gateway = limited_gateway(redis_prefix, plugin, engine)
    async with gateway:
        results = await fire(gateway, 500)
        store = counter_store(gateway, REDIS)
        assert type(store.connection._host).__name__ == "_TaskHost"  # type: ignore[attr-defined]
    assert (results.count(200), results.count(429)) == (100, 400)
    assert len(engine.requests) == 100
    keys = redis_keys(redis_prefix)
    assert list(keys.values()) == [100]
    (key,) = keys
    assert ":minute:1773144000:127.0.0.1" in key
    # It expires a second after its window ends, 40 s after NOW on the fake clock (not a
    # whole minute after the first request).
    ttl = redis_command("PTTL", key)
    assert isinstance(ttl, int)
    assert 30_000 < ttl <= 41_000
    assert store.connection._host is None  # type: ignore[attr-defined]  # closed with the gateway


@pytest.mark.parametrize("started_by", ["owner", "request"])
async def test_concurrent_first_operations_open_one_connection(
    redis_prefix: str, started_by: str
) -> None:
    plugin = RateLimiting(minute=100, limit_by="ip", policy="redis", redis=REDIS)
    gateway = limited_gateway(redis_prefix, plugin, upstream())
    store = counter_store(gateway, REDIS)
    hosts: set[int] = set()

    async def one() -> None:
        await store.counts(["x"])
        hosts.add(id(store.connection._host))  # type: ignore[attr-defined]

    def redis_threads() -> int:
        return sum(t.name == "pygateway-redis" for t in threading.enumerate())

    before = redis_threads()
    async with contextlib.AsyncExitStack() as stack:
        if started_by == "owner":
            await stack.enter_async_context(gateway)
        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(one)
        assert len(hosts) == 1
        assert redis_threads() - before == (0 if started_by == "owner" else 1)
    await gateway.aclose()


async def test_a_gateway_started_by_a_request_counts_exactly_in_redis(redis_prefix: str) -> None:
    engine = upstream()
    plugin = RateLimiting(minute=100, hour=1000, limit_by="ip", policy="redis", redis=REDIS)
    gateway = limited_gateway(redis_prefix, plugin, engine)
    results = await fire(gateway, 300)  # no `async with`: the first request starts it
    store = counter_store(gateway, REDIS)
    assert type(store.connection._host).__name__ == "_ThreadHost"  # type: ignore[attr-defined]
    await gateway.aclose()
    assert store.connection._host is None  # type: ignore[attr-defined]
    assert (results.count(200), results.count(429)) == (100, 200)
    assert len(engine.requests) == 100
    assert sorted(redis_keys(redis_prefix).values()) == [100, 100]


async def test_a_refused_request_counts_in_no_window_in_redis(redis_prefix: str) -> None:
    plugin = RateLimiting(second=1, hour=10, limit_by="ip", policy="redis", redis=REDIS)
    gateway = limited_gateway(redis_prefix, plugin, upstream())
    async with gateway, client(gateway) as c:
        answers = [await c.get("/r") for _ in range(4)]
    assert [r.status_code for r in answers] == [200, 429, 429, 429]
    assert {r.headers["x-ratelimit-remaining-hour"] for r in answers} == {"9"}
    assert answers[1].headers["retry-after"] == "1"
    assert sorted(redis_keys(redis_prefix).values()) == [1, 1]


async def test_the_store_reconnects_after_the_gateway_restarts(redis_prefix: str) -> None:
    plugin = RateLimiting(minute=3, limit_by="ip", policy="redis", redis=REDIS)
    gateway = limited_gateway(redis_prefix, plugin, upstream())
    async with gateway, client(gateway) as c:
        first = (await c.get("/r")).status_code
    async with gateway, client(gateway) as c:
        later = [(await c.get("/r")).status_code for _ in range(3)]
    assert [first, *later] == [200, 200, 200, 429]


async def test_response_ratelimiting_counts_in_redis_too(redis_prefix: str) -> None:
    engine = MockEngine(
        lambda request: UpstreamResponse(200, [(b"x-kong-limit", b"video=2")], content=b"ok")
    )
    plugin = ResponseRatelimiting(
        limits={"video": {"minute": 3}}, limit_by="ip", policy="redis", redis=REDIS
    )
    gateway = limited_gateway(redis_prefix, plugin, engine)
    async with gateway, client(gateway) as c:
        answers = [await c.get("/r") for _ in range(3)]
    assert [r.status_code for r in answers] == [200, 200, 429]
    assert [r.headers["x-ratelimit-remaining-video-minute"] for r in answers] == ["1", "0", "0"]
    assert list(redis_keys(redis_prefix).values()) == [4]


async def test_redis_store_operations(redis_prefix: str) -> None:
    store = RedisCounterStore(REDIS, prefix=redis_prefix, clock=lambda: NOW)
    try:
        a, b = Counter("a", 2, NOW + 40), Counter("b", 5, NOW + 3600)
        assert (await store.hit([a, b])).counts == (1, 1)
        assert (await store.hit([a, b])).counts == (2, 2)
        refused = await store.hit([a, b])
        assert (refused.allowed, refused.counts) == (False, (2, 2))
        await store.increment([b], 3)
        assert await store.counts(["a", "b", "c"]) == [2, 5, 0]
    finally:
        await store.aclose()


# -- when Redis cannot be reached -----------------------------------------------------------


@pytest.fixture
def unreachable_redis() -> Iterator[RedisConfig]:
    with refused_port() as port:
        yield RedisConfig(host="127.0.0.1", port=port, timeout=500)


async def test_an_unreachable_redis_lets_traffic_through_and_is_logged_once_per_interval(
    unreachable_redis: RedisConfig, caplog: pytest.LogCaptureFixture
) -> None:
    engine = upstream()
    plugin = RateLimiting(minute=1, limit_by="ip", policy="redis", redis=unreachable_redis)
    gateway = gw.Gateway(
        services=[
            gw.Service(name="svc", url="http://upstream.test", routes=[gw.Route(paths=["/r"])])
        ],
        plugins=[plugin],
        engine=engine,
    )
    caplog.set_level(logging.ERROR, logger="pygateway.plugins.rate_limiting")
    async with gateway:
        results = await fire(gateway, 20)
    assert results == [200] * 20
    assert len(engine.requests) == 20
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 1
    assert f"Redis at 127.0.0.1:{unreachable_redis.port}/0" in logged[0]


async def test_an_unreachable_redis_without_fault_tolerance_is_a_500(
    unreachable_redis: RedisConfig,
) -> None:
    engine = upstream()
    plugin = RateLimiting(
        minute=5, limit_by="ip", policy="redis", redis=unreachable_redis, fault_tolerant=False
    )
    gateway = gw.Gateway(
        services=[
            gw.Service(name="svc", url="http://upstream.test", routes=[gw.Route(paths=["/r"])])
        ],
        plugins=[plugin],
        engine=engine,
    )
    async with client(gateway) as c:
        response = await c.get("/r")
    await gateway.aclose()
    assert response.status_code == 500
    assert response.json()["message"] == "An unexpected error occurred"
    assert engine.requests == []


async def test_the_store_error_names_redis_and_never_the_password(
    unreachable_redis: RedisConfig,
) -> None:
    config = RedisConfig(host="127.0.0.1", port=unreachable_redis.port, password="s3cret")
    store = RedisCounterStore(config)
    with pytest.raises(StoreError) as info:
        await store.counts(["x"])
    await store.aclose()
    assert f"Redis at 127.0.0.1:{unreachable_redis.port}/0" in str(info.value)
    assert "s3cret" not in str(info.value)


def test_without_redis_a_local_run_skips_and_ci_fails(
    unreachable_redis: RedisConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="is not reachable"):
        require_redis(unreachable_redis.port)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true: Redis is required"):
        require_redis(unreachable_redis.port)


# -- the headline: several gateway processes, one Redis ----------------------------------------

GATEWAY_MODULE = """
import os

import pygateway as gw
import pygateway.plugins._rate_limiting  # registers rate-limiting for the declarative file
from pygateway.stores import RedisConfig, RedisCounterStore, use_counter_store

gateway = gw.Gateway.from_config(os.environ["RL_CONFIG"])
redis = RedisConfig(host="127.0.0.1", port=int(os.environ["RL_REDIS_PORT"]))
use_counter_store(gateway, RedisCounterStore(redis, prefix=os.environ["RL_PREFIX"]))
"""


def _servers() -> list[list[str]]:
    uvicorn = [PYTHON, "-m", "uvicorn", "gwapp:gateway", "--host", "127.0.0.1"]
    uvicorn += ["--log-level", "warning", "--port"]
    if importlib.util.find_spec("hypercorn") is None:
        return [uvicorn] * 4
    hypercorn = [PYTHON, "-m", "hypercorn", "-k", "trio", "gwapp:gateway", "-b"]
    return [uvicorn, hypercorn, uvicorn, hypercorn]


@pytest.mark.servers
def test_four_gateway_processes_sharing_redis_let_exactly_the_limit_through(
    redis_prefix: str, tmp_path: Path
) -> None:
    target = TargetServer("upstream")
    target.start()
    config = {
        "_format_version": "3.0",
        "services": [
            {
                "name": "svc",
                "url": target.url,
                "routes": [{"name": "limited", "paths": ["/"]}],
                "plugins": [
                    {
                        "name": "rate-limiting",
                        "config": {
                            "minute": 100,
                            "limit_by": "ip",
                            "policy": "redis",
                            "redis": {"host": REDIS_HOST, "port": REDIS_PORT},
                        },
                    }
                ],
            }
        ],
    }
    (tmp_path / "gateway.json").write_text(json.dumps(config))
    (tmp_path / "gwapp.py").write_text(textwrap.dedent(GATEWAY_MODULE))
    env = {
        "PYTHONPATH": str(tmp_path),
        "RL_CONFIG": str(tmp_path / "gateway.json"),
        "RL_PREFIX": redis_prefix,
        "RL_REDIS_PORT": str(REDIS_PORT),
    }
    servers: list[ServerProcess] = []
    try:
        for argv in _servers():
            port = free_port()
            address = str(port) if "uvicorn" in argv else f"127.0.0.1:{port}"
            servers.append(ServerProcess([*argv, address], port, env=env, cwd=tmp_path))
        with ThreadPoolExecutor(len(servers)) as pool:
            list(pool.map(ServerProcess.start, servers))
        # All 500 requests must fall in one minute window: not too close to its end (they
        # take a second or two).
        left = 60 - time.time() % 60
        if left < 10:
            time.sleep(left + 0.2)
        results = anyio.run(_fire_at, [s.port for s in servers], 500)
        assert (results.count(200), results.count(429)) == (100, 400), {
            s.url: s.output() for s in servers
        }
        assert target.hits == 100
        assert list(redis_keys(redis_prefix).values()) == [100]
    finally:
        with ThreadPoolExecutor(len(servers) or 1) as pool:  # each takes a while to stop
            list(pool.map(ServerProcess.close, servers))
        target.stop()


async def _fire_at(ports: list[int], n: int) -> list[int]:
    """`n` concurrent GETs spread over `ports`, one connection each; their statuses.

    Plain HTTP/1.1 on sockets: an HTTP client's connection pool would be the slowest part.
    """
    results: list[int] = []

    async def one(port: int) -> None:
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(b"GET / HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n")
            received = b""
            with contextlib.suppress(anyio.EndOfStream):
                while True:
                    received += await stream.receive()
        results.append(int(received.split(b" ", 2)[1]))

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(one, ports[i % len(ports)])
    return results
