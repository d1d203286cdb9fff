"""The Target kit (tests/targets.py) does what the load-balancing tests rely on."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import anyio
import httpx
import pytest
import targets
from targets import TargetServer, target_servers
from upstreams import wait_until

pytestmark = pytest.mark.servers


def test_three_targets_have_their_own_names_and_ports(targets3: list[TargetServer]) -> None:
    assert [t.name for t in targets3] == ["t0", "t1", "t2"]
    assert len({t.port for t in targets3}) == 3
    assert all(t.alive and t.address == f"127.0.0.1:{t.port}" for t in targets3)


def test_a_target_answers_with_its_name_from_sync_code() -> None:
    with target_servers(1) as (target,), httpx.Client() as client:
        response = client.get(target.url + "/x")
    assert response.status_code == 200
    assert response.headers["x-target"] == "t0"
    assert response.text == "t0"
    assert target.hits == 1


async def test_hits_are_counted_and_keep_alive_reuses_one_connection(
    targets3: list[TargetServer],
) -> None:
    target = targets3[0]
    async with httpx.AsyncClient() as client:
        for _ in range(3):
            response = await client.get(target.url + "/a")
            assert response.text == "t0"
    assert target.hits == 3
    assert target.connections == 1
    assert [t.hits for t in targets3[1:]] == [0, 0]
    target.reset_hits()
    assert target.hits == 0
    assert target.requests == []


async def test_the_health_path_is_counted_apart_and_has_its_own_status(
    targets3: list[TargetServer],
) -> None:
    target = targets3[1]
    target.health_status = 503
    async with httpx.AsyncClient() as client:
        health = await client.get(target.url + "/health?probe=1")
        normal = await client.get(target.url + "/health-not")
    assert (health.status_code, normal.status_code) == (503, 200)
    assert (target.hits, target.health_hits) == (1, 1)


async def test_requests_are_recorded_with_lowercased_headers_and_bodies(
    targets3: list[TargetServer],
) -> None:
    target = targets3[2]

    async def chunks() -> AsyncIterator[bytes]:
        yield b"hello "
        yield b"world"

    async with httpx.AsyncClient() as client:
        await client.get(target.url + "/p?q=1", headers={"X-Request-ID": "abc"})
        await client.post(target.url + "/upload", content=chunks())
    first, second = target.requests
    assert (first["method"], first["path"]) == ("GET", "/p?q=1")
    assert first["headers"]["x-request-id"] == "abc"
    assert first["headers"]["host"] == target.address
    assert (second["method"], second["body"]) == ("POST", b"hello world")
    assert second["headers"]["transfer-encoding"] == "chunked"


async def test_only_the_latest_requests_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(targets, "REQUEST_LOG", 3)
    with TargetServer("small") as target:
        async with httpx.AsyncClient(base_url=target.url) as client:
            for i in range(5):
                await client.get(f"/{i}")
        assert [r["path"] for r in target.requests] == ["/2", "/3", "/4"]
        assert target.hits == 5


async def test_the_status_can_be_changed_while_serving(targets3: list[TargetServer]) -> None:
    target = targets3[0]
    async with httpx.AsyncClient() as client:
        assert (await client.get(target.url)).status_code == 200
        target.status = 502
        response = await client.get(target.url)
    assert response.status_code == 502
    assert response.headers["x-target"] == "t0"


async def test_slow_requests_are_served_concurrently(targets3: list[TargetServer]) -> None:
    target = targets3[0]
    target.delay = 0.5
    statuses: list[int] = []
    async with httpx.AsyncClient() as client:

        async def get() -> None:
            statuses.append((await client.get(target.url)).status_code)

        async with anyio.create_task_group() as tg:
            tg.start_soon(get)
            tg.start_soon(get)
            # With one request at a time this never holds, and wait_until fails.
            await wait_until(lambda: target.in_flight == 2)
    assert statuses == [200, 200]
    assert target.in_flight == 0


async def test_a_stopped_target_refuses_connections_and_drops_open_ones(
    targets3: list[TargetServer],
) -> None:
    target = targets3[1]
    target.delay = 30
    idle = socket.create_connection(("127.0.0.1", target.port), timeout=5)
    failures: list[Exception] = []
    async with httpx.AsyncClient() as client:

        async def get() -> None:
            try:
                await client.get(target.url)
            except httpx.HTTPError as exc:
                failures.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(get)
            await wait_until(lambda: target.in_flight == 1)
            await anyio.to_thread.run_sync(target.stop)
    assert len(failures) == 1, "the request in flight was answered after stop()"
    assert target.in_flight == 0
    assert not target.alive
    with idle:
        try:
            assert idle.recv(1) == b"", "an idle connection stayed open after stop()"
        except ConnectionResetError:
            pass
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", target.port), timeout=5).close()


async def test_a_restarted_target_serves_again_on_the_same_port(
    targets3: list[TargetServer],
) -> None:
    target = targets3[2]
    port = target.port
    target.stop()
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(target.url)
        target.start()
        response = await client.get(f"http://127.0.0.1:{port}/")
    assert target.port == port
    assert target.alive
    assert response.text == "t2"
    assert target.hits == 1


def test_starting_a_listening_target_is_an_error() -> None:
    with TargetServer("solo") as target, pytest.raises(RuntimeError, match="already listening"):
        target.start()
