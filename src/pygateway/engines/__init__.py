"""Engines send upstream requests: `NativeEngine` (the default), `HttpxEngine`, `ASGIEngine`,
`MockEngine`."""

from ._asgi import ASGIEngine
from ._base import Engine, UpstreamRequest, UpstreamResponse
from ._httpx import HttpxEngine
from ._mock import MockEngine
from ._native import NativeEngine
from ._websocket import UpstreamWebSocket, WebSocketClosed

__all__ = [
    "ASGIEngine",
    "Engine",
    "HttpxEngine",
    "MockEngine",
    "NativeEngine",
    "UpstreamRequest",
    "UpstreamResponse",
    "UpstreamWebSocket",
    "WebSocketClosed",
]
