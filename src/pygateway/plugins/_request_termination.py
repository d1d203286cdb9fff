"""request-termination: answer with a fixed status and body instead of proxying (Kong's)."""

from __future__ import annotations

import json
import os
import socket
from typing import TYPE_CHECKING

import attrs

from .._exceptions import ConfigurationError
from .._responses import Response
from .._schema import field
from ._base import Plugin

if TYPE_CHECKING:
    from .._context import Context

_DEFAULT_MESSAGES = {
    401: "Unauthorized",
    404: "Not found",
    405: "Method not allowed",
    500: "An unexpected error occurred",
    502: "Bad Gateway",
    503: "Service unavailable",
}


@attrs.frozen(kw_only=True)
class RequestTermination(Plugin):
    """Answer every request with `status_code` and a message or a body.

    With `trigger`, only requests carrying that header or query argument are terminated.
    With `echo`, the answer describes the request as the gateway saw it (for debugging).
    """

    name = "request-termination"
    priority = 2

    status_code: int = field(503, between=(100, 599))
    message: str | None = None
    body: str | None = None
    content_type: str | None = None
    echo: bool = False
    trigger: str | None = None

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.message and (self.content_type or self.body):
            raise ConfigurationError("message cannot be used with content_type or body")
        if self.content_type and not self.body:
            raise ConfigurationError("content_type requires a body")
        if self.echo and (self.content_type or self.body):
            raise ConfigurationError("echo cannot be used with content_type and body")

    async def access(self, ctx: Context) -> Response | None:
        request = ctx.request
        if (
            self.trigger
            and self.trigger not in request.headers
            and (self.trigger not in request.query_params)
        ):
            return None
        if self.echo:
            from .._config import entity_fields

            raw_body = await request.body()
            try:
                body = json.loads(raw_body) if raw_body else None
            except ValueError:
                body = None
            content = {
                "message": self.message or _DEFAULT_MESSAGES.get(self.status_code),
                "pygateway": {"hostname": socket.gethostname(), "worker_pid": os.getpid()},
                "request": {
                    "scheme": request.scheme,
                    "host": request.host,
                    "port": request.port,
                    "headers": {k: ", ".join(request.headers.getlist(k)) for k in request.headers},
                    "query": request.query_params,
                    "body": body,
                    "raw_body": raw_body.decode("utf-8", "replace"),
                    "method": request.method,
                    "path": request.path,
                    "uri_captures": ctx.uri_captures,
                },
                # Without the route's plugins: their configs may hold secrets.
                "matched_route": entity_fields(ctx.route, skip=("plugins",)) if ctx.route else None,
                "matched_service": entity_fields(ctx.service, skip=("routes", "plugins"))
                if ctx.service
                else None,
            }
            return Response(self.status_code, json=content)
        if self.body is not None:
            headers = {"content-type": self.content_type} if self.content_type else None
            return Response(self.status_code, self.body, headers=headers)
        message = self.message or _DEFAULT_MESSAGES.get(self.status_code)
        if message is None:
            return Response(self.status_code)
        return Response(self.status_code, json={"message": message})
