"""request-size-limiting: refuse request bodies over a size (Kong's request-size-limiting).

A body framed by its Content-Length is judged by it before anything is read. A body whose
length is not known (chunked, even with a Content-Length beside it; or HTTP/2) is counted
while it streams to the upstream, never buffered: the chunk that goes over the limit aborts
the upstream request, and the client gets the 413 (or 417 after `Expect: 100-continue`) if
its response has not started.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import attrs

from .._exceptions import RequestRejected
from .._responses import error_response
from ._base import Plugin
from ._registry import register

if TYPE_CHECKING:
    from .._context import Context
    from .._headers import Headers
    from .._responses import Response
    from .._types import Message, Receive

__all__ = ["RequestSizeLimitExceeded", "RequestSizeLimiting"]

SizeUnit = Literal["megabytes", "kilobytes", "bytes"]
_FACTORS = {"bytes": 1, "kilobytes": 1024, "megabytes": 1024 * 1024}
_EXCEEDED = "Request size limit exceeded"


class RequestSizeLimitExceeded(RequestRejected):
    """A streamed request body went over the limit: the upstream request is aborted.

    Raised from the body stream while the upstream (or a later plugin) reads it; the
    client gets this status and message, and no upstream is blamed for it.
    """

    def __init__(self, status_code: int) -> None:
        super().__init__(_EXCEEDED, status_code=status_code)


@attrs.frozen(kw_only=True)
class RequestSizeLimiting(Plugin):
    """Refuse request bodies larger than `allowed_payload_size` `size_unit`s (1024-based).

        RequestSizeLimiting(allowed_payload_size=10, size_unit="kilobytes")

    With `require_content_length`, a request with neither a valid Content-Length nor a
    chunked body gets 411.
    """

    name = "request-size-limiting"
    priority = 951

    allowed_payload_size: int = 128
    size_unit: SizeUnit = "megabytes"
    require_content_length: bool = False

    @property
    def limit(self) -> int:
        """The largest body allowed, in bytes."""
        return self.allowed_payload_size * _FACTORS[self.size_unit]

    async def access(self, ctx: Context) -> Response | None:
        request = ctx.request
        headers = request.headers
        body = request._body
        limit = self.limit
        # The framing the gateway reads the body with, not the headers: with
        # Transfer-Encoding: chunked, a Content-Length beside it says nothing of the body.
        length = _content_length(body.length, headers)
        if length is not None:
            return _exceeded(ctx) if length > limit else None
        if self.require_content_length and not _chunked(headers):
            return error_response(
                411,
                "A valid Content-Length header is required",
                ctx.request_id,
                accept=headers.get("accept"),
            )
        if body.buffered is not None:  # a plugin before this one read it already
            return _exceeded(ctx) if len(body.buffered) > limit else None
        if body.has_body is False:
            return None
        # The first message may have been read already, to tell whether there is a body.
        received = len(body.first.get("body", b"")) if body.first is not None else 0
        if received > limit:
            return _exceeded(ctx)
        # Count the rest as it streams: the body's stream fails past the limit.
        status = 417 if _expects_continue(headers) else 413
        body.receive = _CountingReceive(body.receive, limit - received, status)
        return None


class _CountingReceive:
    """The client's `receive`, refusing the `http.request` message that goes over the limit
    (and every one after it)."""

    __slots__ = ("receive", "remaining", "status")

    def __init__(self, receive: Receive, remaining: int, status: int) -> None:
        self.receive = receive
        self.remaining = remaining
        self.status = status

    async def __call__(self) -> Message:
        if self.remaining < 0:  # no reading on past the limit
            raise RequestSizeLimitExceeded(self.status)
        message = await self.receive()
        if message["type"] == "http.request":
            self.remaining -= len(message.get("body", b""))
            if self.remaining < 0:
                raise RequestSizeLimitExceeded(self.status)
        return message


def _content_length(value: bytes | None, headers: Headers) -> int | None:
    """The Content-Length the body is framed by, if it is a number (and the only one)."""
    if value is None or len(headers.getlist("content-length")) != 1:
        return None
    value = value.strip()
    return int(value) if value.isascii() and value.isdigit() else None


def _chunked(headers: Headers) -> bool:
    codings = ",".join(headers.getlist("transfer-encoding")).split(",")
    return codings[-1].strip().lower() == "chunked"


def _expects_continue(headers: Headers) -> bool:
    return headers.get("expect", "").strip().lower() == "100-continue"


def _exceeded(ctx: Context) -> Response:
    status = 417 if _expects_continue(ctx.request.headers) else 413
    return error_response(
        status, _EXCEEDED, ctx.request_id, accept=ctx.request.headers.get("accept")
    )


register(RequestSizeLimiting)
