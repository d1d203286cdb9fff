"""Balancers and upstream pools, in-process: which peer each try goes to, retries, health.

The engine is a MockEngine whose answer names the address it was sent to, so every test
sees exactly where the gateway sent each request. Real servers are in test_load_balancing.py.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import pytest

import pygateway as gw
import pygateway.testing
from pygateway import (
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from pygateway.balancers import (
    ConsistentHashing,
    Latency,
    LeastConnections,
    Peer,
    RoundRobin,
)
from pygateway.balancers._dns import Resolver
from pygateway.balancers._pool import UpstreamPool
from pygateway.engines import MockEngine, UpstreamRequest, UpstreamResponse


def peers(upstream: gw.Upstream) -> list[Peer]:
    return [Peer(t, t.host, t.port, t.weight) for t in upstream.targets]


def upstream(*weights: int, **fields: Any) -> gw.Upstream:
    targets = [gw.Target(f"10.0.0.{i + 1}:80", weight=w) for i, w in enumerate(weights)]
    return gw.Upstream(name="backend", targets=targets, **fields)


def picks(balancer: Any, n: int, avoid: Iterable[Peer] = ()) -> list[str]:
    return [balancer.select(None, tuple(avoid)).ip for _ in range(n)]


# -- round-robin ----------------------------------------------------------------------------


def test_round_robin_interleaves_by_weight_within_each_window() -> None:
    u = upstream(5, 1, 1)
    balancer = RoundRobin(u)
    balancer.update(peers(u))
    window = picks(balancer, 7)
    assert window == [
        "10.0.0.1",
        "10.0.0.1",
        "10.0.0.2",
        "10.0.0.1",
        "10.0.0.3",
        "10.0.0.1",
        "10.0.0.1",
    ]
    assert picks(balancer, 7) == window


def test_round_robin_never_picks_a_target_of_weight_zero() -> None:
    u = upstream(100, 0)
    balancer = RoundRobin(u)
    balancer.update(peers(u))
    assert set(picks(balancer, 50)) == {"10.0.0.1"}


def test_round_robin_skips_unhealthy_peers_and_keeps_the_others_shares() -> None:
    u = upstream(2, 1, 1)
    balancer = RoundRobin(u)
    ps = peers(u)
    balancer.update(ps)
    ps[0].healthy = False
    counts = collections.Counter(picks(balancer, 200))
    assert counts == {"10.0.0.2": 100, "10.0.0.3": 100}


def test_a_balancer_avoids_peers_already_tried_unless_none_is_left() -> None:
    u = upstream(100, 100)
    for cls in (RoundRobin, LeastConnections, Latency, ConsistentHashing):
        balancer = cls(u)
        ps = peers(u)
        balancer.update(ps)
        assert set(picks(balancer, 10, avoid=[ps[0]])) == {"10.0.0.2"}, cls
        ps[1].healthy = False
        assert set(picks(balancer, 3, avoid=[ps[0]])) == {"10.0.0.1"}, cls


def test_no_peer_is_selected_when_none_is_available() -> None:
    u = upstream(100, 100)
    for cls in (RoundRobin, LeastConnections, Latency, ConsistentHashing):
        balancer = cls(u)
        ps = peers(u)
        balancer.update(ps)
        for p in ps:
            p.healthy = False
        assert balancer.select(None) is None, cls


# -- least connections, latency -------------------------------------------------------------


def test_least_connections_picks_the_peer_with_fewest_requests_in_flight() -> None:
    u = upstream(100, 100, 100)
    balancer = LeastConnections(u)
    ps = peers(u)
    balancer.update(ps)
    ps[0].in_flight, ps[1].in_flight, ps[2].in_flight = 3, 0, 1
    assert picks(balancer, 5) == ["10.0.0.2"] * 5


def test_least_connections_weighs_connections_by_target_weight() -> None:
    u = upstream(300, 100)
    balancer = LeastConnections(u)
    ps = peers(u)
    balancer.update(ps)
    ps[0].in_flight, ps[1].in_flight = 2, 1  # 3/300 < 2/100
    assert balancer.select(None) is ps[0]


def test_least_connections_spreads_an_idle_upstream_evenly() -> None:
    u = upstream(100, 100, 100)
    balancer = LeastConnections(u)
    balancer.update(peers(u))
    assert collections.Counter(picks(balancer, 300)) == {
        "10.0.0.1": 100,
        "10.0.0.2": 100,
        "10.0.0.3": 100,
    }


def test_latency_prefers_the_peer_that_answers_fastest() -> None:
    u = upstream(100, 100)
    balancer = Latency(u)
    ps = peers(u)
    balancer.update(ps)
    balancer.release(ps[0], failed=False, elapsed=0.200)
    balancer.release(ps[1], failed=False, elapsed=0.010)
    assert picks(balancer, 10) == ["10.0.0.2"] * 10


def test_latency_starts_a_new_peer_at_the_average_not_at_zero() -> None:
    u = upstream(100, 100, 100)
    balancer = Latency(u)
    ps = peers(u)
    balancer.update(ps[:2])
    balancer.release(ps[0], failed=False, elapsed=0.010)
    balancer.release(ps[1], failed=False, elapsed=0.030)
    balancer.update(ps)  # a third peer joins
    assert ps[2].ewma == pytest.approx(0.020)
    # A burst of selects with no answer yet is spread, not all sent to the newcomer.
    chosen = []
    for _ in range(12):
        peer = balancer.select(None)
        assert peer is not None
        peer.in_flight += 1
        chosen.append(peer)
    assert chosen.count(ps[2]) < 12
    assert chosen.count(ps[0]) > chosen.count(ps[1])


def test_latency_does_not_favour_a_peer_that_fails_fast() -> None:
    u = upstream(100, 100)
    balancer = Latency(u)
    ps = peers(u)
    balancer.update(ps)
    balancer.release(ps[0], failed=True, elapsed=0.0001)  # a refused connection
    balancer.release(ps[1], failed=False, elapsed=0.050)
    assert picks(balancer, 5) == ["10.0.0.2"] * 5


def test_latency_average_moves_toward_new_response_times() -> None:
    u = upstream(100)
    balancer = Latency(u)
    [p] = peers(u)
    balancer.update([p])
    balancer.release(p, failed=False, elapsed=1.0)
    p.ewma_at -= 10.0  # the average is ten seconds old: the next sample weighs most
    balancer.release(p, failed=False, elapsed=0.0)
    assert 0.3 < p.ewma < 0.4  # e**-1 of the old value is left


# -- consistent hashing ---------------------------------------------------------------------


def test_consistent_hashing_sends_a_key_to_the_same_peer_every_time() -> None:
    u = upstream(100, 100, 100, hash_on="ip")
    balancer = ConsistentHashing(u)
    balancer.update(peers(u))
    for key in ("alice", "bob", "10.1.2.3"):
        first = balancer.lookup(key)
        assert all(balancer.lookup(key) is first for _ in range(20))


def test_consistent_hashing_spreads_keys_by_weight() -> None:
    u = upstream(100, 100, 200, hash_on="ip")
    balancer = ConsistentHashing(u)
    balancer.update(peers(u))
    counts = collections.Counter(balancer.lookup(f"client-{i}").ip for i in range(20_000))
    assert 0.20 < counts["10.0.0.1"] / 20_000 < 0.30
    assert 0.20 < counts["10.0.0.2"] / 20_000 < 0.30
    assert 0.45 < counts["10.0.0.3"] / 20_000 < 0.55


def test_consistent_hashing_moves_only_the_keys_of_a_peer_that_goes_away() -> None:
    u = upstream(100, 100, 100, 100, hash_on="ip")
    balancer = ConsistentHashing(u)
    ps = peers(u)
    balancer.update(ps)
    keys = [f"k{i}" for i in range(2000)]
    before = {k: balancer.lookup(k) for k in keys}
    ps[2].healthy = False
    after = {k: balancer.lookup(k) for k in keys}
    moved = [k for k in keys if before[k] is not after[k]]
    assert moved
    assert all(before[k] is ps[2] for k in moved)
    ps[2].healthy = True
    assert {k: balancer.lookup(k) for k in keys} == before


def test_two_rings_built_apart_agree_on_every_key() -> None:
    u = upstream(100, 100, 100, hash_on="ip")
    one, two = ConsistentHashing(u), ConsistentHashing(u)
    one.update(peers(u))
    two.update(peers(u))
    assert all(one.lookup(f"k{i}").ip == two.lookup(f"k{i}").ip for i in range(500))


def test_hashing_on_something_makes_an_upstream_consistent_hashing() -> None:
    assert upstream(100, hash_on="ip").algorithm == "consistent-hashing"
    assert upstream(100).algorithm == "round-robin"


@pytest.mark.parametrize(
    ("fields", "errors"),
    [
        ({"hash_on": "header"}, [(("hash_on_header",), "required field missing")]),
        ({"hash_on": "cookie"}, [(("hash_on_cookie",), "required field missing")]),
        (
            {"hash_on": "cookie", "hash_on_cookie": "c", "hash_fallback": "ip"},
            [(("hash_fallback",), "failed conditional validation given value of field 'hash_on'")],
        ),
        (
            {"hash_on": "ip", "hash_fallback": "ip"},
            [(("hash_fallback",), "must be different from 'hash_on'")],
        ),
        (
            {
                "hash_on": "header",
                "hash_on_header": "x-a",
                "hash_fallback": "header",
                "hash_fallback_header": "x-a",
            },
            [(("hash_fallback_header",), "must be different from 'hash_on_header'")],
        ),
        (
            {"hash_on": "query_arg", "hash_on_query_arg": "q", "hash_fallback": "uri_capture"},
            [(("hash_fallback_uri_capture",), "required field missing")],
        ),
    ],
)
def test_hash_settings_are_checked_as_kong_checks_them(
    fields: dict[str, Any], errors: list[tuple[tuple[str, ...], str]]
) -> None:
    with pytest.raises(gw.ConfigurationError) as excinfo:
        upstream(100, **fields)
    assert excinfo.value.errors == errors


# -- through the gateway --------------------------------------------------------------------


def naming_engine(
    fail: Callable[[UpstreamRequest], Exception | None] = lambda r: None,
    status: Callable[[UpstreamRequest], int] = lambda r: 200,
) -> MockEngine:
    """Answers with the address it was sent to; `fail` may raise instead."""

    def handler(request: UpstreamRequest) -> UpstreamResponse:
        error = fail(request)
        if error is not None:
            raise error
        return UpstreamResponse(status(request), content=f"{request.host}:{request.port}".encode())

    return MockEngine(handler)


def gateway(u: gw.Upstream, engine: MockEngine, *, retries: int = 5, **route: Any) -> gw.Gateway:
    route.setdefault("paths", ["/"])
    return gw.Gateway(
        upstreams=[u],
        services=[gw.Service(name="api", host=u.name, retries=retries, routes=[gw.Route(**route)])],
        engine=engine,
        headers=["off"],
    )


async def served_by(app: gw.Gateway, n: int, **request: Any) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    async with app, gw.testing.client(app) as client:
        for _ in range(n):
            response = await client.get(request.pop("path", "/"), **request)
            assert response.status_code == 200, response.text
            counts[response.text] += 1
    return counts


async def test_requests_are_balanced_over_targets_by_weight() -> None:
    counts = await served_by(gateway(upstream(300, 100), naming_engine()), 400)
    assert counts == {"10.0.0.1:80": 300, "10.0.0.2:80": 100}


async def test_the_upstream_host_header_names_the_target_not_the_upstream() -> None:
    engine = naming_engine()
    async with gateway(upstream(100), engine) as app, gw.testing.client(app) as client:
        await client.get("/")
    assert (b"host", b"10.0.0.1") in engine.requests[0].headers


async def test_an_upstream_host_header_setting_replaces_the_target_host() -> None:
    engine = naming_engine()
    u = upstream(100, host_header="api.example.com")
    async with gateway(u, engine) as app, gw.testing.client(app) as client:
        await client.get("/")
    assert (b"host", b"api.example.com") in engine.requests[0].headers
    assert engine.requests[0].server_name == "api.example.com"


async def test_a_refused_target_is_skipped_when_retries_are_on() -> None:
    refused = UpstreamConnectError("connection refused")
    engine = naming_engine(fail=lambda r: refused if r.host == "10.0.0.2" else None)
    counts = await served_by(gateway(upstream(100, 100, 100), engine), 30)
    assert counts == {"10.0.0.1:80": 15, "10.0.0.3:80": 15}


async def test_a_connect_failure_is_a_502_when_retries_run_out() -> None:
    engine = naming_engine(fail=lambda r: UpstreamConnectError("connection refused"))
    app = gateway(upstream(100, 100, 100), engine, retries=1)
    async with app, gw.testing.client(app) as client:
        response = await client.get("/")
    assert response.status_code == 502
    assert response.json()["message"] == "An invalid response was received from the upstream server"
    assert [r.host for r in engine.requests] == ["10.0.0.1", "10.0.0.2"]


async def test_a_connect_timeout_is_retried_and_then_a_504() -> None:
    engine = naming_engine(fail=lambda r: UpstreamConnectTimeout("timed out"))
    app = gateway(upstream(100, 100), engine, retries=2)
    async with app, gw.testing.client(app) as client:
        response = await client.get("/")
    assert response.status_code == 504
    assert response.json()["message"] == "The upstream server is timing out"
    assert len(engine.requests) == 3


async def test_a_read_timeout_is_retried_for_an_idempotent_request_only() -> None:
    engine = naming_engine(
        fail=lambda r: UpstreamTimeout("read timed out") if r.host == "10.0.0.1" else None
    )
    app = gateway(upstream(100, 100), engine)
    async with app, gw.testing.client(app) as client:
        got = await client.get("/")
        assert (got.status_code, got.text) == (200, "10.0.0.2:80")
        engine.requests.clear()
        posted = [await client.post("/", content=b"") for _ in range(2)]
    assert sorted(r.status_code for r in posted) == [200, 504]
    assert len(engine.requests) == 2  # the POST that timed out was not sent again


async def test_a_reset_after_sending_is_retried_for_a_get_but_not_for_a_post() -> None:
    engine = naming_engine(
        fail=lambda r: UpstreamProtocolError("connection reset") if r.host == "10.0.0.1" else None
    )
    app = gateway(upstream(100, 100), engine)
    async with app, gw.testing.client(app) as client:
        gets = [await client.get("/") for _ in range(4)]
        posts = [await client.post("/", content=b"x") for _ in range(4)]
    assert [r.status_code for r in gets] == [200] * 4
    assert sorted(r.status_code for r in posts) == [200, 200, 502, 502]


async def test_retries_zero_means_one_try() -> None:
    engine = naming_engine(fail=lambda r: UpstreamConnectError("refused"))
    app = gateway(upstream(100, 100), engine, retries=0)
    async with app, gw.testing.client(app) as client:
        assert (await client.get("/")).status_code == 502
    assert len(engine.requests) == 1


async def test_an_upstream_with_no_target_answers_503_no_peer() -> None:
    app = gateway(gw.Upstream(name="backend"), naming_engine())
    async with app, gw.testing.client(app) as client:
        response = await client.get("/")
    assert response.status_code == 503
    assert response.json()["message"] == "failure to get a peer from the ring-balancer"


async def test_hashing_on_a_header_keeps_each_client_on_one_target() -> None:
    u = upstream(100, 100, 100, hash_on="header", hash_on_header="x-user")
    app = gateway(u, naming_engine())
    seen: dict[str, set[str]] = collections.defaultdict(set)
    async with app, gw.testing.client(app) as client:
        for i in range(60):
            user = f"user-{i % 12}"
            response = await client.get("/", headers={"x-user": user})
            seen[user].add(response.text)
    assert all(len(targets) == 1 for targets in seen.values())
    assert len(set().union(*seen.values())) == 3


@pytest.mark.parametrize(
    ("fields", "keyed"),
    [
        ({"hash_on": "ip"}, lambda k: {"client": f"10.9.0.{k}"}),
        ({"hash_on": "path"}, lambda k: {"path": f"/p{k}"}),
        (
            {"hash_on": "query_arg", "hash_on_query_arg": "tenant"},
            lambda k: {"path": f"/?tenant=t{k}&other=x"},
        ),
        (
            {"hash_on": "uri_capture", "hash_on_uri_capture": "tenant"},
            lambda k: {"path": f"/t/t{k}/x"},
        ),
        (
            {"hash_on": "header", "hash_on_header": "x-none", "hash_fallback": "path"},
            lambda k: {"path": f"/p{k}"},
        ),
    ],
)
async def test_each_hash_source_keeps_a_key_on_one_target_and_spreads_keys(
    fields: dict[str, Any], keyed: Callable[[int], dict[str, str]]
) -> None:
    route: dict[str, Any] = {"paths": ["~/t/(?<tenant>[^/]+)", "/"]}
    app = gateway(upstream(*[100] * 4, **fields), naming_engine(), **route)
    served: dict[int, set[str]] = collections.defaultdict(set)
    async with app:
        for key in range(16):
            request = keyed(key)
            client_ip = request.get("client", "127.0.0.1")
            async with gw.testing.client(app, client_addr=(client_ip, 5000)) as client:
                for _ in range(3):
                    served[key].add((await client.get(request.get("path", "/"))).text)
    assert all(len(targets) == 1 for targets in served.values())
    # The key decides: sixteen keys do not all land on one of four targets.
    assert len(set().union(*served.values())) >= 3


async def test_cookie_hashing_sets_the_cookie_and_then_sticks_to_one_target() -> None:
    u = upstream(100, 100, 100, hash_on="cookie", hash_on_cookie="lb", hash_on_cookie_path="/app")
    app = gateway(u, naming_engine())
    async with app, gw.testing.client(app) as client:
        first = await client.get("/")
        set_cookie = first.headers["set-cookie"]
        assert set_cookie.startswith("lb=")
        assert set_cookie.endswith("; Path=/app")
        value = set_cookie.split(";")[0].split("=", 1)[1]
        for _ in range(10):
            again = await client.get("/", headers={"cookie": f"other=1; lb={value}"})
            assert again.text == first.text
            assert "set-cookie" not in again.headers


# -- passive health checks ------------------------------------------------------------------


async def test_passive_checks_eject_a_target_that_keeps_answering_500() -> None:
    u = upstream(
        100,
        100,
        healthchecks={"passive": {"unhealthy": {"http_failures": 2}}},
    )
    engine = naming_engine(status=lambda r: 500 if r.host == "10.0.0.1" else 200)
    app = gateway(u, engine)
    async with app, gw.testing.client(app) as client:
        statuses = [(await client.get("/")).status_code for _ in range(20)]
        health = app.upstream_health("backend")
    assert statuses.count(500) == 2  # then the circuit opened
    assert [t["health"] for t in health["data"]] == ["UNHEALTHY", "HEALTHY"]


async def test_passive_checks_count_tcp_failures_and_timeouts() -> None:
    def fail(r: UpstreamRequest) -> Exception | None:
        return {
            "10.0.0.1": UpstreamConnectError("refused"),
            "10.0.0.2": UpstreamTimeout("read timeout"),
        }.get(r.host)

    u = upstream(
        100,
        100,
        100,
        healthchecks={"passive": {"unhealthy": {"tcp_failures": 1, "timeouts": 1}}},
    )
    app = gateway(u, naming_engine(fail=fail))
    async with app, gw.testing.client(app) as client:
        for _ in range(6):
            await client.get("/")
        health = app.upstream_health("backend")
    assert [t["health"] for t in health["data"]] == ["UNHEALTHY", "UNHEALTHY", "HEALTHY"]


async def test_a_gateway_answer_never_counts_against_a_target() -> None:
    u = upstream(100, healthchecks={"passive": {"unhealthy": {"http_failures": 1}}})
    app = gw.Gateway(
        upstreams=[u],
        services=[
            gw.Service(
                name="api",
                host="backend",
                routes=[
                    gw.Route(
                        paths=["/"],
                        plugins=[gw.plugins.RequestTermination(status_code=503)],
                    )
                ],
            )
        ],
        engine=naming_engine(),
    )
    async with app, gw.testing.client(app) as client:
        for _ in range(3):
            assert (await client.get("/")).status_code == 503
        assert app.upstream_health("backend")["data"][0]["health"] == "HEALTHY"


async def test_when_every_target_is_unhealthy_the_gateway_answers_503() -> None:
    u = upstream(100, 100, healthchecks={"passive": {"unhealthy": {"http_failures": 1}}})
    app = gateway(u, naming_engine(status=lambda r: 503))
    async with app, gw.testing.client(app) as client:
        assert [(await client.get("/")).status_code for _ in range(2)] == [503, 503]
        response = await client.get("/")
    assert response.status_code == 503
    assert response.json()["message"] == "failure to get a peer from the ring-balancer"


async def test_the_threshold_takes_a_mostly_unhealthy_upstream_out() -> None:
    passive = {"unhealthy": {"http_failures": 100}}  # on, so health can be set by hand
    u = upstream(100, 100, 100, healthchecks={"threshold": 50, "passive": passive})
    app = gateway(u, naming_engine())
    async with app, gw.testing.client(app) as client:
        app.set_target_health("backend", "10.0.0.1:80", False)
        assert (await client.get("/")).status_code == 200  # 66% healthy
        app.set_target_health("backend", "10.0.0.2:80", False)
        assert (await client.get("/")).status_code == 503  # 33% healthy
        assert app.upstream_health("backend", balancer=True)["data"]["health"] == "UNHEALTHY"


async def test_passive_successes_bring_a_target_back_when_configured() -> None:
    failing = {"10.0.0.1"}
    passive = {"healthy": {"successes": 2}, "unhealthy": {"http_failures": 1}}
    u = upstream(100, 100, healthchecks={"passive": passive})
    app = gateway(u, naming_engine(status=lambda r: 500 if r.host in failing else 200))
    async with app, gw.testing.client(app) as client:
        for _ in range(4):
            await client.get("/")
    assert app.upstream_health("backend")["data"][0]["health"] == "UNHEALTHY"
    # An ejected peer gets no new requests; answers to requests it still had in flight
    # count, and two good ones in a row bring it back.
    pool = app.pools["backend"]
    peer = pool.peers[0]
    for expected in ("UNHEALTHY", "HEALTHY"):
        peer.in_flight += 1
        pool.release(peer, outcome=None, status=200, elapsed=0.01)
        assert app.upstream_health("backend")["data"][0]["health"] == expected


# -- health API -----------------------------------------------------------------------------


def test_health_cannot_be_set_by_hand_when_checks_are_off() -> None:
    app = gateway(upstream(100), naming_engine())
    with pytest.raises(ValueError, match="health checks are off for upstream 'backend'"):
        app.set_target_health("backend", "10.0.0.1:80", False)


def test_the_health_report_has_kong_shape_with_checks_off() -> None:
    app = gateway(upstream(100, 0), naming_engine())
    report = app.upstream_health("backend")
    assert report["node_id"] == app.node_id
    first, second = report["data"]
    assert first["target"] == "10.0.0.1:80"
    assert first["health"] == "HEALTHCHECKS_OFF"
    assert first["data"]["addresses"] == [
        {"ip": "10.0.0.1", "port": 80, "weight": 100, "health": "HEALTHCHECKS_OFF"}
    ]
    assert first["upstream"] == {"id": app.config.upstreams[0].id}
    assert second["weight"] == 0


def test_setting_a_target_unhealthy_by_hand_shows_in_the_report() -> None:
    u = upstream(100, healthchecks={"passive": {"unhealthy": {"http_failures": 5}}})
    app = gateway(u, naming_engine())
    app.set_target_health("backend", "10.0.0.1:80", False)
    assert app.upstream_health("backend")["data"][0]["health"] == "UNHEALTHY"
    app.set_target_health("backend", "10.0.0.1:80", True, address="10.0.0.1")
    assert app.upstream_health("backend")["data"][0]["health"] == "HEALTHY"


def test_the_health_api_names_what_it_does_not_know() -> None:
    u = upstream(100, healthchecks={"passive": {"unhealthy": {"timeouts": 1}}})
    app = gateway(u, naming_engine())
    with pytest.raises(LookupError, match="no upstream named 'nope'"):
        app.upstream_health("nope")
    with pytest.raises(LookupError, match=r"has no target '10\.9\.9\.9:80'"):
        app.set_target_health("backend", "10.9.9.9:80", False)


# -- configuration changes ------------------------------------------------------------------


def test_a_new_configuration_keeps_the_health_of_targets_that_stay() -> None:
    u = upstream(100, 100, healthchecks={"passive": {"unhealthy": {"timeouts": 1}}})
    app = gateway(u, naming_engine())
    app.set_target_health("backend", "10.0.0.1:80", False)
    [u] = app.config.upstreams
    changed = attrs.evolve(
        u, targets=[*u.targets[:1], attrs.evolve(u.targets[1], weight=50), gw.Target("10.0.0.9:80")]
    )
    app.configure(attrs.evolve(app.config, upstreams=[changed]))
    health = {
        t["target"]: (t["health"], t["weight"]) for t in app.upstream_health("backend")["data"]
    }
    assert health == {
        "10.0.0.1:80": ("UNHEALTHY", 100),
        "10.0.0.2:80": ("HEALTHY", 50),
        "10.0.0.9:80": ("HEALTHY", 100),
    }


def test_turning_health_checks_off_puts_every_target_back() -> None:
    u = upstream(100, 100, healthchecks={"passive": {"unhealthy": {"timeouts": 1}}})
    app = gateway(u, naming_engine())
    app.set_target_health("backend", "10.0.0.1:80", False)
    app.configure(attrs.evolve(app.config, upstreams=[upstream(100, 100)]))
    assert all(p.healthy for p in app.pools["backend"].peers)


async def test_a_request_in_flight_finishes_on_a_target_removed_meanwhile() -> None:
    import anyio

    entered, release = anyio.Event(), anyio.Event()

    async def handler(request: UpstreamRequest) -> UpstreamResponse:
        entered.set()
        await release.wait()
        return UpstreamResponse(200, content=f"{request.host}".encode())

    app = gateway(upstream(100), MockEngine(handler))
    async with app, gw.testing.client(app) as client, anyio.create_task_group() as tg:
        results: list[Any] = []

        async def call() -> None:
            results.append(await client.get("/"))

        tg.start_soon(call)
        await entered.wait()
        [u] = app.config.upstreams
        app.configure(
            attrs.evolve(
                app.config, upstreams=[attrs.evolve(u, targets=[gw.Target("10.0.0.7:80")])]
            )
        )
        pool = app.pools["backend"]
        assert [p.ip for p in pool.peers] == ["10.0.0.7"]
        release.set()
    assert (results[0].status_code, results[0].text) == (200, "10.0.0.1")


def test_changing_the_algorithm_builds_a_new_balancer_over_the_same_peers() -> None:
    app = gateway(upstream(100, 100), naming_engine())
    pool = app.pools["backend"]
    before = list(pool.peers)
    [u] = app.config.upstreams
    app.configure(
        attrs.evolve(app.config, upstreams=[attrs.evolve(u, algorithm="least-connections")])
    )
    assert isinstance(pool.balancer, LeastConnections)
    assert pool.peers == before
    assert app.pools["backend"] is pool
    assert pool.select(None) in before  # the new balancer has the peers


def test_a_removed_upstream_pool_is_closed() -> None:
    app = gateway(upstream(100), naming_engine())
    pool = app.pools["backend"]
    app.configure(attrs.evolve(app.config, upstreams=[gw.Upstream(name="other")]))
    assert pool.closed
    assert "backend" not in app.pools


def test_a_pool_counts_requests_in_flight_per_peer() -> None:
    u = upstream(100)
    pool = UpstreamPool(u, Resolver())
    peer = pool.select(None)
    assert peer is not None
    assert peer.in_flight == 1
    pool.release(peer, outcome=None, status=200, elapsed=0.01)
    assert peer.in_flight == 0


async def test_the_latency_algorithm_sends_traffic_to_the_faster_target() -> None:
    import anyio

    async def handler(request: UpstreamRequest) -> UpstreamResponse:
        await anyio.sleep(0.02 if request.host == "10.0.0.1" else 0.001)
        return UpstreamResponse(200, content=request.host.encode())

    app = gateway(upstream(100, 100, algorithm="latency"), MockEngine(handler))
    counts: collections.Counter[str] = collections.Counter()
    async with app, gw.testing.client(app) as client:
        for _ in range(40):
            counts[(await client.get("/")).text] += 1
    assert counts["10.0.0.2"] > 3 * counts["10.0.0.1"]


@pytest.mark.parametrize(
    "fail",
    [
        UpstreamConnectError("refused"),
        UpstreamTimeout("read timeout"),
        UpstreamProtocolError("reset"),
    ],
)
async def test_a_failed_try_gives_its_peer_back(fail: Exception) -> None:
    app = gateway(upstream(100, 100), naming_engine(fail=lambda r: fail), retries=1)
    async with app, gw.testing.client(app) as client:
        assert (await client.get("/")).status_code in (502, 504)
    assert [p.in_flight for p in app.pools["backend"].peers] == [0, 0]


@attrs.frozen
class BrokenHeaderFilter(gw.Plugin):
    name = "broken-header-filter"

    async def header_filter(self, ctx: Any) -> None:
        raise RuntimeError("boom")


async def test_a_plugin_failing_on_the_response_gives_the_peer_back() -> None:
    app = gw.Gateway(
        upstreams=[upstream(100)],
        services=[
            gw.Service(
                name="api",
                host="backend",
                routes=[gw.Route(paths=["/"], plugins=[BrokenHeaderFilter()])],
            )
        ],
        engine=naming_engine(),
    )
    async with app, gw.testing.client(app) as client:
        await client.get("/")
    assert app.pools["backend"].peers[0].in_flight == 0
