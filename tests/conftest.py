"""Shared fixtures. Every async test runs on asyncio and trio (anyio's plugin, auto mode)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

# Shared test helpers with asserts in them get pytest's assertion rewriting wherever imported.
pytest.register_assert_rewrite("engine_conformance", "upstreams", "serverutil")

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
