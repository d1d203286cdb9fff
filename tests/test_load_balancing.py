"""Load balancing, retries and health checks against real upstream servers on 127.0.0.1.

Each target server counts the requests it serves (tests/targets.py); the gateway runs
in-process with its real HTTP engine.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from dnsserver import FakeDNS
from targets import TargetServer
from upstreams import wait_until

import pygateway as gw
import pygateway.testing

pytestmark = pytest.mark.servers


def gateway(targets: list[TargetServer], *, retries: int = 5, **upstream: Any) -> gw.Gateway:
    weights = upstream.pop("weights", [100] * len(targets))
    return gw.Gateway(
        upstreams=[
            gw.Upstream(
                name="backend",
                targets=[
                    gw.Target(t.address, weight=w) for t, w in zip(targets, weights, strict=True)
                ],
                **upstream,
            )
        ],
        services=[
            gw.Service(
                name="api",
                host="backend",
                retries=retries,
                connect_timeout=2000,
                routes=[gw.Route(paths=["/"])],
            )
        ],
    )


def hits(targets: list[TargetServer]) -> list[int]:
    return [t.hits for t in targets]


async def test_weights_hold_within_two_percent_over_a_thousand_requests(
    targets3: list[TargetServer],
) -> None:
    app = gateway(targets3, weights=[50, 30, 20])
    async with app, gw.testing.client(app) as client:
        for _ in range(1000):
            assert (await client.get("/")).status_code == 200
    for target, share in zip(targets3, (0.50, 0.30, 0.20), strict=True):
        assert abs(target.hits / 1000 - share) <= 0.02, hits(targets3)


async def test_consistent_hashing_is_stable_per_key_and_spread_across_targets(
    targets3: list[TargetServer],
) -> None:
    app = gateway(targets3, hash_on="header", hash_on_header="x-user")
    served: dict[str, set[str]] = collections.defaultdict(set)
    async with app, gw.testing.client(app) as client:
        for _ in range(3):
            for user in range(40):
                response = await client.get("/", headers={"x-user": f"user-{user}"})
                served[f"user-{user}"].add(response.headers["x-target"])
    assert all(len(names) == 1 for names in served.values())
    assert all(t.hits > 0 for t in targets3), hits(targets3)


async def test_least_connections_prefers_the_idle_target_under_slow_requests(
    targets2: list[TargetServer],
) -> None:
    slow, fast = targets2
    slow.delay = 0.3
    app = gateway(targets2, algorithm="least-connections")

    async def worker(client: Any) -> None:
        with anyio.move_on_after(1.5):
            while True:
                assert (await client.get("/")).status_code == 200

    async with app, gw.testing.client(app) as client, anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(worker, client)
    # Round-robin would send the slow target about as many requests as the fast one.
    assert fast.hits > 10 * slow.hits, hits(targets2)


async def test_a_refused_target_is_skipped_when_retries_are_on(
    targets3: list[TargetServer],
) -> None:
    targets3[1].stop()
    app = gateway(targets3)
    async with app, gw.testing.client(app) as client:
        statuses = [(await client.get("/")).status_code for _ in range(30)]
    assert statuses == [200] * 30
    assert targets3[0].hits + targets3[2].hits == 30


async def test_passive_checks_eject_a_failing_target_and_active_checks_bring_it_back(
    targets3: list[TargetServer],
) -> None:
    healthchecks = {
        "passive": {"unhealthy": {"tcp_failures": 1}},
        "active": {
            "http_path": "/health",
            "timeout": 1,
            "healthy": {"successes": 1},
            "unhealthy": {"interval": 0.1, "tcp_failures": 1},
        },
    }
    app = gateway(targets3, healthchecks=healthchecks)
    down = targets3[1]
    async with app, gw.testing.client(app) as client:
        down.stop()
        statuses = [(await client.get("/")).status_code for _ in range(20)]
        assert statuses == [200] * 20
        health = {t["target"]: t["health"] for t in app.upstream_health("backend")["data"]}
        assert health[down.address] == "UNHEALTHY"
        down.reset_hits()
        down.start()
        await wait_until(lambda: app.upstream_health("backend")["data"][1]["health"] == "HEALTHY")
        for _ in range(9):
            assert (await client.get("/")).status_code == 200
    assert down.hits == 3


async def test_active_checks_take_out_a_target_whose_health_path_fails(
    targets2: list[TargetServer],
) -> None:
    sick, well = targets2
    healthchecks = {
        "active": {
            "http_path": "/health",
            "healthy": {"interval": 0.05, "successes": 2},
            "unhealthy": {"interval": 0.05, "http_failures": 2},
        }
    }
    app = gateway(targets2, healthchecks=healthchecks)

    def health_of(target: TargetServer) -> str:
        report = app.upstream_health("backend")["data"]
        return next(t["health"] for t in report if t["target"] == target.address)

    async with app, gw.testing.client(app) as client:
        sick.health_status = 503
        await wait_until(lambda: health_of(sick) == "UNHEALTHY")
        assert health_of(well) == "HEALTHY"
        sick.reset_hits()
        for _ in range(10):
            assert (await client.get("/")).text == "t1"
        assert sick.hits == 0
        sick.health_status = 200
        await wait_until(lambda: health_of(sick) == "HEALTHY")
    probe = next(r for r in well.requests if r["path"] == "/health")
    assert probe["method"] == "GET"
    assert probe["headers"]["host"] == "127.0.0.1"  # the target's name, no port (Kong's)


async def test_active_tcp_checks_notice_a_target_that_stops_listening(
    targets2: list[TargetServer],
) -> None:
    healthchecks = {
        "active": {
            "type": "tcp",
            "healthy": {"interval": 0.05, "successes": 1},
            "unhealthy": {"interval": 0.05, "tcp_failures": 1},
        }
    }
    app = gateway(targets2, healthchecks=healthchecks)
    async with app:
        targets2[0].stop()
        await wait_until(lambda: app.upstream_health("backend")["data"][0]["health"] == "UNHEALTHY")
        targets2[0].start()
        await wait_until(lambda: app.upstream_health("backend")["data"][0]["health"] == "HEALTHY")
    assert targets2[0].health_hits == 0  # a TCP check sends no request


async def test_active_checks_stop_when_the_gateway_closes(
    targets2: list[TargetServer],
) -> None:
    healthchecks = {"active": {"http_path": "/health", "healthy": {"interval": 0.02}}}
    app = gateway(targets2, healthchecks=healthchecks)
    async with app:
        await wait_until(lambda: targets2[0].health_hits > 0)
    after_close = targets2[0].health_hits
    await anyio.sleep(0.15)
    assert targets2[0].health_hits == after_close


async def test_a_gateway_started_by_a_request_runs_its_checks_in_a_thread_until_closed(
    targets2: list[TargetServer],
) -> None:
    healthchecks = {"active": {"http_path": "/health", "healthy": {"interval": 0.02}}}
    app = gateway(targets2, healthchecks=healthchecks)
    async with gw.testing.client(app) as client:
        assert (await client.get("/")).status_code == 200
    await wait_until(lambda: targets2[0].health_hits > 0)
    assert any(t.name == "pygateway-health" for t in threading.enumerate())
    await app.aclose()
    assert not any(t.name == "pygateway-health" for t in threading.enumerate())


async def test_checks_start_for_an_upstream_added_while_running(
    targets2: list[TargetServer],
) -> None:
    import attrs

    app = gateway(targets2)
    async with app:
        checked = attrs.evolve(
            app.config.upstreams[0],
            healthchecks={"active": {"http_path": "/health", "healthy": {"interval": 0.02}}},
        )
        app.configure(attrs.evolve(app.config, upstreams=[checked]))
        await wait_until(lambda: targets2[1].health_hits > 0)


async def test_a_target_named_by_host_name_is_resolved(targets2: list[TargetServer]) -> None:
    port = targets2[0].port
    app = gw.Gateway(
        upstreams=[gw.Upstream(name="backend", targets=[gw.Target(f"localhost:{port}")])],
        services=[gw.Service(name="api", host="backend", routes=[gw.Route(paths=["/"])])],
    )
    async with app, gw.testing.client(app) as client:
        response = await client.get("/")
        report = app.upstream_health("backend")["data"][0]
    assert response.text == "t0"
    assert {"ip": "127.0.0.1", "port": port} in [
        {"ip": a["ip"], "port": a["port"]} for a in report["data"]["addresses"]
    ]
    # The Host header names the target, not the address it resolved to.
    assert targets2[0].requests[0]["headers"]["host"] == f"localhost:{port}"


async def test_a_target_name_that_does_not_resolve_gives_503_name_resolution_failed() -> None:
    app = gw.Gateway(
        upstreams=[gw.Upstream(name="backend", targets=[gw.Target("no-such-host.invalid:80")])],
        services=[gw.Service(name="api", host="backend", routes=[gw.Route(paths=["/"])])],
    )
    async with app, gw.testing.client(app) as client:
        response = await client.get("/")
        report = app.upstream_health("backend")["data"][0]
    assert response.status_code == 503
    assert response.json()["message"] == "name resolution failed"
    assert report["health"] == "DNS_ERROR"


async def test_a_keep_alive_connection_the_upstream_closed_is_not_an_error(
    targets2: list[TargetServer],
) -> None:
    app = gateway(targets2[:1])
    async with app, gw.testing.client(app) as client:
        assert (await client.get("/")).status_code == 200
        targets2[0].stop()  # drops the pooled connection
        targets2[0].start()
        for method in ("GET", "POST"):
            assert (await client.request(method, "/", content=b"x")).status_code == 200


async def test_srv_records_give_the_targets_addresses_ports_and_weights(
    targets2: list[TargetServer], make_dns_server: Callable[[], FakeDNS]
) -> None:
    dns = make_dns_server()
    a, b = targets2
    dns.add(
        f"web.service.consul. 30 SRV 1 300 {a.port} node-a.node.consul.",
        f"web.service.consul. 30 SRV 1 100 {b.port} node-b.node.consul.",
        "node-a.node.consul. 30 A 127.0.0.1",
        "node-b.node.consul. 30 A 127.0.0.1",
    )
    app = gw.Gateway(
        upstreams=[gw.Upstream(name="backend", targets=[gw.Target("web.service.consul")])],
        services=[gw.Service(name="api", host="backend", routes=[gw.Route(paths=["/"])])],
        dns_servers=[dns.address],
    )
    async with app, gw.testing.client(app) as client:
        for _ in range(40):
            assert (await client.get("/")).status_code == 200
        [report] = app.upstream_health("backend")["data"]
    assert (a.hits, b.hits) == (30, 10)
    assert sorted((x["port"], x["weight"]) for x in report["data"]["addresses"]) == sorted(
        [(a.port, 300), (b.port, 100)]
    )


async def test_a_name_is_resolved_again_when_its_ttl_runs_out(
    targets2: list[TargetServer], make_dns_server: Callable[[], FakeDNS]
) -> None:
    dns = make_dns_server()
    a, b = targets2
    dns.add(f"api.service.consul. 1 SRV 1 100 {a.port} node.consul.", "node.consul. 1 A 127.0.0.1")
    app = gw.Gateway(
        upstreams=[gw.Upstream(name="backend", targets=[gw.Target("api.service.consul")])],
        services=[gw.Service(name="api", host="backend", routes=[gw.Route(paths=["/"])])],
        dns_servers=[dns.address],
    )
    async with app, gw.testing.client(app) as client:
        assert (await client.get("/")).text == "t0"
        dns.zone.clear()
        dns.add(
            f"api.service.consul. 1 SRV 1 100 {b.port} node.consul.", "node.consul. 1 A 127.0.0.1"
        )
        with anyio.fail_after(5):
            while (await client.get("/")).text != "t1":  # noqa: ASYNC110 (polls the gateway)
                await anyio.sleep(0.1)
        [report] = app.upstream_health("backend")["data"]
        assert [x["port"] for x in report["data"]["addresses"]] == [b.port]


async def test_active_probes_send_the_upstream_host_header_and_configured_headers(
    targets2: list[TargetServer],
) -> None:
    healthchecks = {
        "active": {
            "http_path": "/health",
            "headers": {"x-probe": ["pygateway"]},
            "healthy": {"interval": 0.02},
        }
    }
    app = gateway(targets2, healthchecks=healthchecks, host_header="api.example.com")
    async with app:
        await wait_until(lambda: targets2[0].health_hits > 0)
    probe = next(r for r in targets2[0].requests if r["path"] == "/health")
    assert probe["headers"]["host"] == "api.example.com"
    assert probe["headers"]["x-probe"] == "pygateway"


async def test_a_new_probe_interval_takes_effect_without_waiting_out_the_old_one(
    targets2: list[TargetServer],
) -> None:
    import attrs

    slow = {"active": {"http_path": "/health", "healthy": {"interval": 60}}}
    app = gateway(targets2, healthchecks=slow)
    async with app:
        await wait_until(lambda: targets2[0].health_hits == 1)  # the first round, then 60 s
        fast = {"active": {"http_path": "/health", "healthy": {"interval": 0.05}}}
        [u] = app.config.upstreams
        app.configure(attrs.evolve(app.config, upstreams=[attrs.evolve(u, healthchecks=fast)]))
        await wait_until(lambda: targets2[0].health_hits >= 3)


async def test_a_request_during_close_does_not_leave_checks_running(
    targets2: list[TargetServer],
) -> None:
    healthchecks = {"active": {"http_path": "/health", "healthy": {"interval": 0.02}}}
    app = gateway(targets2, healthchecks=healthchecks)
    async with gw.testing.client(app) as client:
        assert (await client.get("/")).status_code == 200  # started lazily: a thread
        async with anyio.create_task_group() as tg:
            tg.start_soon(app.aclose)
            await wait_until(lambda: not app._started)  # the close is under way
            response = await client.get("/")  # waits for the close, then restarts it
        assert response.status_code == 200
        await app.aclose()
    assert not any(t.name == "pygateway-health" for t in threading.enumerate())
    probes = targets2[0].health_hits
    await anyio.sleep(0.1)
    assert targets2[0].health_hits == probes


async def test_a_dns_failure_keeps_the_addresses_that_resolved_before(
    targets2: list[TargetServer], make_dns_server: Callable[[], FakeDNS]
) -> None:
    dns = make_dns_server()
    dns.add(f"api.service.consul. 1 SRV 1 100 {targets2[0].port} node.consul.")
    dns.add("node.consul. 1 A 127.0.0.1")
    app = gw.Gateway(
        upstreams=[gw.Upstream(name="backend", targets=[gw.Target("api.service.consul")])],
        services=[gw.Service(name="api", host="backend", routes=[gw.Route(paths=["/"])])],
        dns_servers=[dns.address],
    )
    async with app, gw.testing.client(app) as client:
        assert (await client.get("/")).text == "t0"
        dns.zone.clear()  # NXDOMAIN from now on
        await anyio.sleep(1.1)
        for _ in range(5):
            assert (await client.get("/")).text == "t0"
        await wait_until(
            lambda: app.pools["backend"]._entries["api.service.consul:8000"].dns_error is not None
        )
        [report] = app.upstream_health("backend")["data"]
    assert report["health"] == "HEALTHCHECKS_OFF"
    assert report["data"]["dns_error"] is not None
