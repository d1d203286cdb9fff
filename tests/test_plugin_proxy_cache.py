"""The bundled proxy-cache plugin, after Kong's spec for it (31-proxy-cache), plus the rules
where pygateway is stricter (Vary, Set-Cookie, Authorization/Cookie, private/no-store).

A fake clock drives the store (`MemoryCacheStore(clock=...)`), so no test waits for a TTL.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest

import pygateway as gw
from pygateway._config import dump, load
from pygateway._exceptions import ConfigurationError
from pygateway.engines import MockEngine, UpstreamRequest, UpstreamResponse
from pygateway.plugins import get as get_plugin
from pygateway.plugins._basic_auth import BasicAuth, BasicAuthCredential
from pygateway.plugins._cache_store import MemoryCacheStore, cache_store, use_cache_store
from pygateway.plugins._key_auth import KeyAuth
from pygateway.plugins._proxy_cache import ProxyCache, purge, purge_all
from pygateway.testing import client, echo_engine


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


Handler = Callable[[UpstreamRequest], UpstreamResponse]


def json_answer(
    extra: Sequence[tuple[bytes, bytes]] = (), status: int = 200, body: bytes = b'{"n":1}'
) -> Handler:
    def handler(request: UpstreamRequest) -> UpstreamResponse:
        headers = [(b"content-type", b"application/json"), *extra]
        return UpstreamResponse(status, headers, content=b"" if request.method == "HEAD" else body)

    return handler


def gateway_with(
    *plugins: Any,
    engine: MockEngine | None = None,
    clock: Clock | None = None,
    consumers: Sequence[gw.Consumer] = (),
    store: MemoryCacheStore | None = None,
) -> tuple[gw.Gateway, MockEngine]:
    """One service, route `/` with `plugins`, upstream `engine` (a JSON answer)."""
    engine = engine if engine is not None else MockEngine(json_answer())
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
    use_cache_store(
        gateway, store if store is not None else MemoryCacheStore(clock=clock or Clock())
    )
    return gateway, engine


# -- miss, hit, refresh, bypass ---------------------------------------------------------------


async def test_a_miss_is_stored_and_the_next_request_is_a_hit_without_the_upstream() -> None:
    gateway = gw.Gateway(
        services=[
            gw.Service(
                name="s",
                url="http://echo.internal",
                routes=[
                    gw.Route(
                        name="r",
                        paths=["/"],
                        plugins=[ProxyCache(content_type=["application/json"])],
                    )
                ],
            )
        ],
        engines={"echo.internal": echo_engine()},
    )
    async with client(gateway) as c:
        first = await c.get("/thing?b=2&a=1")
        second = await c.get("/thing?a=1&b=2")
    assert first.headers["x-cache-status"] == "Miss"
    assert second.headers["x-cache-status"] == "Hit"
    assert first.headers["x-cache-key"] == second.headers["x-cache-key"]
    assert len(first.headers["x-cache-key"]) == 64
    assert second.json() == first.json()
    assert second.headers["content-length"] == str(len(first.content))
    assert "age" not in first.headers
    assert second.headers["age"] == "0"
    # The request id is the hit's own, not the stored one.
    assert second.headers["x-pygateway-request-id"] != first.headers["x-pygateway-request-id"]


async def test_the_upstream_is_called_once_for_repeated_requests() -> None:
    gateway, engine = gateway_with(ProxyCache())
    async with client(gateway) as c:
        statuses = [(await c.get("/a")).headers["x-cache-status"] for _ in range(3)]
    assert statuses == ["Miss", "Hit", "Hit"]
    assert len(engine.requests) == 1


async def test_a_stale_entry_is_refreshed_after_cache_ttl_and_age_counts_seconds() -> None:
    clock = Clock()
    gateway, engine = gateway_with(ProxyCache(cache_ttl=10, storage_ttl=60), clock=clock)
    async with client(gateway) as c:
        assert (await c.get("/a")).headers["x-cache-status"] == "Miss"
        clock.advance(7.5)
        hit = await c.get("/a")
        assert (hit.headers["x-cache-status"], hit.headers["age"]) == ("Hit", "7")
        clock.advance(3)
        assert (await c.get("/a")).headers["x-cache-status"] == "Refresh"
        assert (await c.get("/a")).headers["x-cache-status"] == "Hit"
    assert len(engine.requests) == 2


async def test_an_entry_is_gone_once_its_storage_ttl_ends() -> None:
    clock = Clock()
    store = MemoryCacheStore(clock=clock)
    gateway, engine = gateway_with(ProxyCache(cache_ttl=10), store=store)
    async with client(gateway) as c:
        await c.get("/a")
        assert len(store) == 1
        clock.advance(11)
        assert len(store) == 0
        assert (await c.get("/a")).headers["x-cache-status"] == "Miss"
    assert len(engine.requests) == 2


async def test_methods_not_configured_bypass_the_cache() -> None:
    gateway, engine = gateway_with(ProxyCache())
    async with client(gateway) as c:
        answers = [await c.post("/a", content=b"x") for _ in range(2)]
    assert [r.headers["x-cache-status"] for r in answers] == ["Bypass", "Bypass"]
    assert "x-cache-key" not in answers[0].headers
    assert len(engine.requests) == 2


@pytest.mark.parametrize(
    ("status", "content_type", "expected"),
    [
        (200, b"application/json", "Miss"),
        (404, b"text/plain", "Miss"),
        (500, b"application/json", "Bypass"),
        (200, b"text/html", "Bypass"),
        (200, b"application/json; charset=utf-8", "Miss"),
    ],
)
async def test_only_configured_statuses_and_content_types_are_stored(
    status: int, content_type: bytes, expected: str
) -> None:
    engine = MockEngine(
        lambda request: UpstreamResponse(status, [(b"content-type", content_type)], content=b"x")
    )
    gateway, _ = gateway_with(ProxyCache(), engine=engine)
    async with client(gateway) as c:
        first = await c.get("/a")
        second = await c.get("/a")
    assert first.headers["x-cache-status"] == expected
    assert second.headers["x-cache-status"] == ("Hit" if expected == "Miss" else "Bypass")


async def test_a_configured_content_type_with_parameters_requires_them() -> None:
    engine = MockEngine(json_answer())
    gateway, _ = gateway_with(
        ProxyCache(content_type=["application/json; charset=utf-8"]), engine=engine
    )
    async with client(gateway) as c:
        assert (await c.get("/a")).headers["x-cache-status"] == "Bypass"


# -- who may share an entry ---------------------------------------------------------------------


async def test_two_consumers_never_share_an_entry() -> None:
    alice = gw.Consumer(username="alice", credentials=[gw.KeyAuthCredential(key="a-key")])
    bob = gw.Consumer(username="bob", credentials=[gw.KeyAuthCredential(key="b-key")])
    gateway, engine = gateway_with(KeyAuth(), ProxyCache(), consumers=[alice, bob])
    async with client(gateway) as c:
        a1 = await c.get("/a", headers={"apikey": "a-key"})
        b1 = await c.get("/a", headers={"apikey": "b-key"})
        a2 = await c.get("/a", headers={"apikey": "a-key"})
    assert [r.headers["x-cache-status"] for r in (a1, b1, a2)] == ["Miss", "Miss", "Hit"]
    assert a1.headers["x-cache-key"] != b1.headers["x-cache-key"]
    assert len(engine.requests) == 2


async def test_a_request_with_authorization_is_not_served_from_a_shared_entry() -> None:
    gateway, engine = gateway_with(ProxyCache())
    async with client(gateway) as c:
        await c.get("/a")
        with_auth = await c.get("/a", headers={"authorization": "Bearer x"})
        with_cookie = await c.get("/a", headers={"cookie": "s=1"})
    assert with_auth.headers["x-cache-status"] == "Bypass"
    assert with_cookie.headers["x-cache-status"] == "Bypass"
    assert len(engine.requests) == 3


async def test_cache_authorized_lets_such_requests_use_the_shared_entry() -> None:
    gateway, engine = gateway_with(ProxyCache(cache_authorized=True))
    async with client(gateway) as c:
        await c.get("/a")
        answer = await c.get("/a", headers={"authorization": "Bearer x"})
    assert answer.headers["x-cache-status"] == "Hit"
    assert len(engine.requests) == 1


async def test_an_authenticated_consumer_gets_its_own_entry_despite_authorization() -> None:
    alice = gw.Consumer(
        username="alice", credentials=[BasicAuthCredential(username="alice", password="pw")]
    )
    gateway, engine = gateway_with(BasicAuth(), ProxyCache(), consumers=[alice])
    async with client(gateway) as c:
        answers = [await c.get("/a", auth=("alice", "pw")) for _ in range(2)]
    assert [r.headers["x-cache-status"] for r in answers] == ["Miss", "Hit"]
    assert len(engine.requests) == 1


async def test_a_response_with_set_cookie_is_never_stored() -> None:
    engine = MockEngine(json_answer([(b"set-cookie", b"session=secret")]))
    gateway, _ = gateway_with(ProxyCache(), engine=engine)
    async with client(gateway) as c:
        answers = [await c.get("/a") for _ in range(2)]
    assert [r.headers["x-cache-status"] for r in answers] == ["Bypass", "Bypass"]
    assert len(engine.requests) == 2


@pytest.mark.parametrize("directive", [b"no-store", b"private", b"private, max-age=60"])
async def test_private_or_no_store_responses_are_not_stored_even_without_cache_control(
    directive: bytes,
) -> None:
    engine = MockEngine(json_answer([(b"cache-control", directive)]))
    gateway, _ = gateway_with(ProxyCache(cache_control=False), engine=engine)
    async with client(gateway) as c:
        answers = [await c.get("/a") for _ in range(2)]
    assert [r.headers["x-cache-status"] for r in answers] == ["Bypass", "Bypass"]
    assert len(engine.requests) == 2


# -- Vary ---------------------------------------------------------------------------------


async def test_the_upstreams_vary_header_is_honoured() -> None:
    def handler(request: UpstreamRequest) -> UpstreamResponse:
        lang = dict(request.headers).get(b"accept-language", b"")
        return UpstreamResponse(
            200,
            [(b"content-type", b"text/plain"), (b"vary", b"Accept-Language")],
            content=b"hello in " + lang,
        )

    gateway, engine = gateway_with(ProxyCache(), engine=MockEngine(handler))
    async with client(gateway) as c:
        en = await c.get("/a", headers={"accept-language": "en"})
        fr = await c.get("/a", headers={"accept-language": "fr"})
        fr_again = await c.get("/a", headers={"accept-language": "fr"})
    assert en.text == "hello in en"
    assert fr.text == "hello in fr"
    assert fr.headers["x-cache-status"] == "Miss"
    assert (fr_again.headers["x-cache-status"], fr_again.text) == ("Hit", "hello in fr")
    assert len(engine.requests) == 2


async def test_vary_star_is_never_stored() -> None:
    engine = MockEngine(json_answer([(b"vary", b"*")]))
    gateway, _ = gateway_with(ProxyCache(), engine=engine)
    async with client(gateway) as c:
        assert (await c.get("/a")).headers["x-cache-status"] == "Bypass"


async def test_vary_headers_and_vary_query_params_shape_the_key() -> None:
    gateway, engine = gateway_with(ProxyCache(vary_headers=["X-Tenant"], vary_query_params=["a"]))
    async with client(gateway) as c:
        one = await c.get("/p?a=1&junk=1", headers={"x-tenant": "t1"})
        same = await c.get("/p?a=1&junk=2", headers={"x-tenant": "t1"})
        other_tenant = await c.get("/p?a=1", headers={"x-tenant": "t2"})
        other_a = await c.get("/p?a=2", headers={"x-tenant": "t1"})
    assert [r.headers["x-cache-status"] for r in (one, same, other_tenant, other_a)] == [
        "Miss",
        "Hit",
        "Miss",
        "Miss",
    ]
    assert len(engine.requests) == 3


async def test_ignore_uri_case_folds_the_path_into_one_entry() -> None:
    gateway, engine = gateway_with(ProxyCache(ignore_uri_case=True))
    async with client(gateway) as c:
        await c.get("/Path")
        assert (await c.get("/path")).headers["x-cache-status"] == "Hit"
    assert len(engine.requests) == 1
    gateway, engine = gateway_with(ProxyCache())
    async with client(gateway) as c:
        await c.get("/Path")
        assert (await c.get("/path")).headers["x-cache-status"] == "Miss"
    assert len(engine.requests) == 2


# -- cache_control (RFC 7234 mode) --------------------------------------------------------


async def test_with_cache_control_the_upstreams_max_age_sets_the_ttl() -> None:
    clock = Clock()
    engine = MockEngine(json_answer([(b"cache-control", b"public, max-age=5")]))
    gateway, _ = gateway_with(ProxyCache(cache_control=True), engine=engine, clock=clock)
    async with client(gateway) as c:
        await c.get("/a")
        clock.advance(4)
        assert (await c.get("/a")).headers["x-cache-status"] == "Hit"
        clock.advance(2)
        assert (await c.get("/a")).headers["x-cache-status"] == "Miss"  # storage ended too


async def test_with_cache_control_a_client_no_cache_or_max_age_is_honoured() -> None:
    clock = Clock()
    engine = MockEngine(json_answer([(b"cache-control", b"max-age=100")]))
    gateway, _ = gateway_with(ProxyCache(cache_control=True), engine=engine, clock=clock)
    async with client(gateway) as c:
        await c.get("/a")
        no_cache = await c.get("/a", headers={"cache-control": "no-cache"})
        clock.advance(10)
        young = await c.get("/a", headers={"cache-control": "max-age=5"})
    assert no_cache.headers["x-cache-status"] == "Bypass"
    assert young.headers["x-cache-status"] == "Refresh"


async def test_with_cache_control_a_response_without_lifetime_is_not_stored() -> None:
    gateway, _ = gateway_with(ProxyCache(cache_control=True))
    async with client(gateway) as c:
        assert (await c.get("/a")).headers["x-cache-status"] == "Bypass"


async def test_without_cache_control_the_clients_cache_control_is_ignored() -> None:
    gateway, engine = gateway_with(ProxyCache())
    async with client(gateway) as c:
        await c.get("/a")
        answer = await c.get("/a", headers={"cache-control": "no-cache"})
    assert answer.headers["x-cache-status"] == "Hit"
    assert len(engine.requests) == 1


# -- HEAD, body limits, response_headers --------------------------------------------------


async def test_head_is_answered_from_the_gets_entry_with_its_length() -> None:
    gateway, engine = gateway_with(ProxyCache())
    async with client(gateway) as c:
        head_first = await c.head("/a")
        get = await c.get("/a")
        head = await c.head("/a")
    assert head_first.headers["x-cache-status"] == "Miss"
    assert get.headers["x-cache-status"] == "Miss"  # a HEAD stores nothing
    assert head.headers["x-cache-status"] == "Hit"
    assert head.content == b""
    assert head.headers["content-length"] == str(len(get.content))
    assert head.headers["x-cache-key"] == get.headers["x-cache-key"]
    assert [r.method for r in engine.requests] == ["HEAD", "GET"]


async def test_a_body_above_max_body_size_is_passed_on_but_not_stored() -> None:
    body = b'{"data":"' + b"x" * 5000 + b'"}'
    gateway, engine = gateway_with(
        ProxyCache(max_body_size=1000), engine=MockEngine(json_answer(body=body))
    )
    async with client(gateway) as c:
        first = await c.get("/a")
        second = await c.get("/a")
    assert first.content == body
    assert second.headers["x-cache-status"] == "Miss"
    assert len(engine.requests) == 2


async def test_a_streamed_body_is_stored_whole_from_its_chunks() -> None:
    async def chunks() -> Any:
        for part in (b'{"a":', b'"chunked"', b"}"):
            yield part

    engine = MockEngine(
        lambda request: UpstreamResponse(
            200, [(b"content-type", b"application/json")], stream=chunks()
        )
    )
    gateway, _ = gateway_with(ProxyCache(), engine=engine)
    async with client(gateway) as c:
        first = await c.get("/a")
        second = await c.get("/a")
    assert first.content == b'{"a":"chunked"}'
    assert (second.headers["x-cache-status"], second.content) == ("Hit", first.content)
    assert len(engine.requests) == 1


async def test_the_store_is_bounded_by_entries_and_by_bytes() -> None:
    store = MemoryCacheStore(max_entries=2, max_bytes=10_000)
    gateway, _ = gateway_with(ProxyCache(), store=store)
    async with client(gateway) as c:
        for path in ("/1", "/2", "/3"):
            await c.get(path)
        assert len(store) == 2
        assert (await c.get("/1")).headers["x-cache-status"] == "Miss"  # evicted
    big = b'{"d":"' + b"x" * 3000 + b'"}'
    store = MemoryCacheStore(max_entries=100, max_bytes=8000)
    gateway, _ = gateway_with(ProxyCache(), store=store, engine=MockEngine(json_answer(body=big)))
    async with client(gateway) as c:
        for path in ("/1", "/2", "/3"):
            await c.get(path)
    assert len(store) == 2
    assert store.bytes <= 8000


async def test_response_headers_can_be_switched_off() -> None:
    plugin = ProxyCache(
        response_headers={"age": False, "X-Cache-Status": True, "X-Cache-Key": False}
    )
    gateway, _ = gateway_with(plugin)
    async with client(gateway) as c:
        await c.get("/a")
        hit = await c.get("/a")
    assert hit.headers["x-cache-status"] == "Hit"
    assert "age" not in hit.headers
    assert "x-cache-key" not in hit.headers


async def test_the_entry_is_stored_only_after_the_response_was_sent() -> None:
    sent: list[dict[str, Any]] = []
    seen_at_store: list[list[dict[str, Any]]] = []

    class WatchedStore(MemoryCacheStore):
        async def set(self, key: str, entry: Any, storage_ttl: float) -> bool:
            seen_at_store.append(list(sent))
            return await super().set(key, entry, storage_ttl)

    gateway, _ = gateway_with(ProxyCache(), store=WatchedStore())

    async def app(scope: Any, receive: Any, send: Any) -> None:
        async def watched_send(message: dict[str, Any]) -> None:
            sent.append(message)
            await send(message)

        await gateway(scope, receive, watched_send)

    async with client(app) as c:
        await c.get("/a")
        assert (await c.get("/a")).headers["x-cache-status"] == "Hit"
    (at_store,) = seen_at_store
    last = at_store[-1]
    assert (last["type"], last.get("more_body", False)) == ("http.response.body", False)


# -- purge -------------------------------------------------------------------------------


async def test_purge_drops_one_entry_and_purge_all_every_one() -> None:
    gateway, engine = gateway_with(ProxyCache())
    async with client(gateway) as c:
        key_a = (await c.get("/a")).headers["x-cache-key"]
        await c.get("/b")
        assert await purge(gateway, key_a) is True
        assert await purge(gateway, key_a) is False
        assert (await c.get("/a")).headers["x-cache-status"] == "Miss"
        assert (await c.get("/b")).headers["x-cache-status"] == "Hit"
        await purge_all(gateway)
        assert (await c.get("/b")).headers["x-cache-status"] == "Miss"
    assert len(cache_store(gateway)) == 1  # /b, stored again
    assert len(engine.requests) == 4


# -- configuration ------------------------------------------------------------------------


def test_defaults_are_kongs() -> None:
    plugin = ProxyCache()
    assert (ProxyCache.name, ProxyCache.priority) == ("proxy-cache", 100)
    config = plugin.to_config()
    assert config["response_code"] == [200, 301, 404]
    assert config["request_method"] == ["GET", "HEAD"]
    assert config["content_type"] == ["text/plain", "application/json"]
    assert config["cache_ttl"] == 300
    assert config["strategy"] == "memory"
    assert config["cache_control"] is False
    assert config["memory"] == {"dictionary_name": "kong_db_cache"}
    assert config["response_headers"] == {"age": True, "X-Cache-Status": True, "X-Cache-Key": True}


def test_declarative_config_round_trips() -> None:
    cls = get_plugin("proxy-cache")
    plugin = cls.from_config(
        {
            "strategy": "memory",
            "cache_ttl": 30,
            "content_type": ["application/json"],
            "vary_headers": ["x-tenant"],
            "memory": {"dictionary_name": "api"},
        }
    )
    assert plugin == ProxyCache(
        cache_ttl=30,
        content_type=["application/json"],
        vary_headers=["x-tenant"],
        memory={"dictionary_name": "api"},
    )
    assert cls.from_config(plugin.to_config()) == plugin
    config = {
        "_format_version": "3.0",
        "services": [
            {
                "name": "s",
                "url": "http://u.test",
                "routes": [{"name": "r", "paths": ["/"]}],
                "plugins": [{"name": "proxy-cache", "config": {"strategy": "memory"}}],
            }
        ],
    }
    assert load(dump(load(config))) == load(config)


@pytest.mark.parametrize(
    ("config", "path", "message"),
    [
        ({"strategy": "disk"}, "strategy", "expected one of: memory, redis"),
        ({"strategy": "redis"}, "redis.host", "required field missing"),
        ({"cache_ttl": 0}, "cache_ttl", "value must be greater than 0"),
        ({"response_code": []}, "response_code", "length must be at least 1"),
        ({"response_code": [99]}, "response_code", "value should be between 100 and 900"),
        ({"request_method": ["DELETE"]}, "request_method[0]", "expected one of"),
        ({"memory": {"nope": 1}}, "memory.nope", "unknown field"),
        ({"response_headers": {"Nope": True}}, "response_headers", "unknown field 'Nope'"),
    ],
)
def test_invalid_config_names_the_field(config: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        ProxyCache.from_config(config)
    text = str(caught.value)
    assert path in text
    assert message in text
