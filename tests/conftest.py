"""Shared fixtures. Every async test runs on asyncio and trio (anyio's plugin, auto mode)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

# Shared test helpers with asserts in them get pytest's assertion rewriting wherever imported.
pytest.register_assert_rewrite("engine_conformance", "upstreams", "serverutil", "targets")

from dnsserver import FakeDNS  # noqa: E402
from targets import TargetServer, target_servers  # noqa: E402
from upstreams import RawServer, refused_port  # noqa: E402


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# Real upstreams on 127.0.0.1 shared by the proxy and engine suites (one per test module).
@pytest.fixture(scope="module")
def raw_server() -> Iterator[RawServer]:
    with RawServer() as server:
        yield server


@pytest.fixture(scope="module")
def closed_port() -> Iterator[int]:
    with refused_port() as port:
        yield port


@pytest.fixture
def make_dns_server() -> Iterator[Callable[[], FakeDNS]]:
    """Start fake DNS servers (tests/dnsserver.py); all are closed after the test."""
    servers: list[FakeDNS] = []

    def make() -> FakeDNS:
        servers.append(FakeDNS())
        return servers[-1]

    yield make
    for server in servers:
        server.close()


# Upstream targets that count their hits (tests/targets.py), fresh for each test.
@pytest.fixture
def targets2() -> Iterator[list[TargetServer]]:
    with target_servers(2) as servers:
        yield servers


@pytest.fixture
def targets3() -> Iterator[list[TargetServer]]:
    with target_servers(3) as servers:
        yield servers
