"""Access logs through the standard `logging` module: one record per request, on the
`pygateway.access` logger, at INFO.

The message reads like nginx's combined log line (without the time, which is the
formatter's business), with the request's latency and its id at the end::

    127.0.0.1 - alice "GET /orders?page=2 HTTP/1.1" 200 1532 "-" "curl/8.5.0" 8ms 3f2a...

Quotes, backslashes, control and non-ASCII characters in it are written as `\\xHH`, as
nginx does, so a client cannot forge a line. The record carries the same facts as fields,
in `record.access` (a dict, see `access_fields`), for `pygateway.logging.JsonFormatter` or
any formatter of yours.

Nothing is built unless the logger is enabled for INFO (the gateway checks that first, so a
disabled access log costs one call per request). Handlers run after the response was sent,
but synchronously, on the event loop: a handler that blocks (a full pipe, a network
destination) stalls every request of the process. For anything slower than a local stream,
put a `logging.handlers.QueueHandler` in front of them.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._context import Context

__all__ = ["access_fields", "access_logger", "log_access"]

access_logger = logging.getLogger("pygateway.access")

_MESSAGE = '%s - %s "%s %s HTTP/%s" %d %d "%s" "%s" %dms %s'

#: What nginx escapes in its log lines: quotes, backslashes, control and non-ASCII
#: characters. A client must not be able to forge a line or a field (in the request target,
#: the Referer or the User-Agent).
_UNSAFE = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")


def _escaped(value: str | None, encoding: str = "utf-8") -> str:
    """A field of the message line: "-" when empty, unsafe characters as \\xHH of the
    bytes the client sent (header values are decoded as UTF-8, the path as latin-1)."""
    if not value:
        return "-"
    return _UNSAFE.sub(
        lambda m: "".join(f"\\x{b:02X}" for b in m[0].encode(encoding, "surrogateescape")),
        value,
    )


def access_fields(ctx: Context) -> dict[str, Any]:
    """What an access record says about a finished request (`record.access`).

    Sizes are in bytes (`ctx.request_size`, `ctx.response_size`), latencies in
    milliseconds, `started_at` in epoch milliseconds (as in the loggers' entry); `route`,
    `service` and `consumer` are names (else ids; the consumer's username, else its
    custom_id); `source` is "service", "exit" (a plugin answered) or "error".
    """
    request = ctx.request
    response = ctx.response
    uri = request.raw_path + (f"?{request.query_string}" if request.query_string else "")
    consumer = ctx.consumer
    return {
        "request_id": ctx.request_id,
        "client_ip": request.client_ip,
        "method": request.method,
        "uri": uri,
        "http_version": request.http_version,
        "host": request.host,
        "status": response.status_code if response is not None else 0,
        "request_size": ctx.request_size,
        "response_size": ctx.response_size,
        "referer": request.headers.get("referer"),
        "user_agent": request.headers.get("user-agent"),
        "latency_ms": ctx.latencies.get("request", 0),
        "upstream_latency_ms": ctx.latencies.get("upstream"),
        "upstream_status": ctx.upstream_status,
        "source": response.source if response is not None else None,
        "route": ctx.route.name or ctx.route.id if ctx.route is not None else None,
        "service": ctx.service.name or ctx.service.id if ctx.service is not None else None,
        "consumer": (consumer.username or consumer.custom_id or consumer.id)
        if consumer is not None
        else None,
        "started_at": int(ctx.started_at * 1000),
    }


def log_access(ctx: Context) -> None:
    """Log the access record of a finished request (the caller checked the level)."""
    fields = access_fields(ctx)
    access_logger.info(
        _MESSAGE,
        fields["client_ip"],
        _escaped(fields["consumer"]),
        _escaped(fields["method"]),
        _escaped(fields["uri"], "latin-1"),
        fields["http_version"],
        fields["status"],
        fields["response_size"],
        _escaped(fields["referer"]),
        _escaped(fields["user_agent"]),
        fields["latency_ms"],
        fields["request_id"],
        extra={"access": fields},
    )
