"""MockEngine: answer upstream requests with a function, for tests."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

from ._base import Engine, UpstreamRequest, UpstreamResponse

__all__ = ["MockEngine"]

Handler = Callable[[UpstreamRequest], UpstreamResponse | Awaitable[UpstreamResponse]]


class MockEngine(Engine):
    """Call `handler(request)` (sync or async) instead of the network.

    The request body is read first, so the handler finds it in `request.content`. Raise an
    `UpstreamError` subclass from the handler to simulate a failing upstream. Every request
    is kept in `requests`, in order.
    """

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[UpstreamRequest] = []

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        await request.read()
        self.requests.append(request)
        result = self.handler(request)
        if inspect.isawaitable(result):
            result = await result
        assert isinstance(result, UpstreamResponse), "MockEngine handlers return UpstreamResponse"
        return result
