"""Shared fixtures. Every async test runs on asyncio and trio (anyio's plugin, auto mode)."""

from __future__ import annotations

import pytest

# Shared test helpers with asserts in them get pytest's assertion rewriting wherever imported.
pytest.register_assert_rewrite("engine_conformance", "upstreams", "serverutil")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)
