"""websocket-size-limit: the largest WebSocket message relayed each way (Kong Enterprise's).

Without it, messages up to 16 MiB pass both ways (the default of uvicorn and websockets). A
message over the limit closes both sides with 1009 (message too big); nothing of it is
relayed. Messages from the upstream are counted while their frames arrive, so an oversized
one is never held whole.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from .._exceptions import ConfigurationError
from .._schema import field
from ._base import Plugin
from ._registry import register

if TYPE_CHECKING:
    from .._context import Context

__all__ = ["WebSocketSizeLimit"]

#: Kong's upper bound for both limits (32 MiB).
_MAX = 32 * 1024 * 1024


@attrs.frozen(kw_only=True)
class WebSocketSizeLimit(Plugin):
    """Limit WebSocket message sizes, in bytes: `client_max_payload` for messages from the
    client, `upstream_max_payload` for messages from the upstream (at least one of them).

        WebSocketSizeLimit(client_max_payload=64 * 1024)
    """

    name = "websocket-size-limit"
    priority = 999999

    client_max_payload: int | None = field(None, between=(1, _MAX))
    upstream_max_payload: int | None = field(None, between=(1, _MAX))

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.client_max_payload is None and self.upstream_max_payload is None:
            raise ConfigurationError(
                errors=[
                    ((), "at least one of these fields must be non-empty: "
                     "'client_max_payload', 'upstream_max_payload'")
                ]
            )  # fmt: skip

    async def access(self, ctx: Context) -> None:
        if not ctx.request.websocket:
            return
        limits = ctx.shared.setdefault("websocket_limits", {})
        if self.client_max_payload is not None:
            limits["client"] = self.client_max_payload
        if self.upstream_max_payload is not None:
            limits["upstream"] = self.upstream_max_payload


register(WebSocketSizeLimit)
