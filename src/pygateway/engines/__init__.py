"""Engines send upstream requests: `HttpxEngine` (default), `ASGIEngine`, `MockEngine`."""

from ._asgi import ASGIEngine
from ._base import Engine, UpstreamRequest, UpstreamResponse
from ._httpx import HttpxEngine
from ._mock import MockEngine

__all__ = [
    "ASGIEngine",
    "Engine",
    "HttpxEngine",
    "MockEngine",
    "UpstreamRequest",
    "UpstreamResponse",
]
