"""Shared fixtures. Every async test runs on asyncio and trio (anyio's plugin, auto mode)."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)
