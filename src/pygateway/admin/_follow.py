"""Keeping a gateway in step with a configuration store it does not write to.

`pygateway run --workers N --store URL` gives every worker a gateway that follows the
store: the process serving the Admin API writes there, and each worker polls the store's
revision (`interval` seconds) and reloads when it moved. A store that cannot be reached
keeps the gateway on the configuration it has (logged once per minute), as Kong's data
planes keep proxying without their control plane.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import anyio

from .._exceptions import ConfigurationError
from ..stores import StoreError
from ._api import AdminAPI
from ._errors import ApiError

if TYPE_CHECKING:
    from .._gateway import Gateway
    from .._types import Message, Receive, Scope, Send
    from ..stores import ConfigStore

__all__ = ["FollowingGateway"]

logger = logging.getLogger("pygateway.admin")

#: At most one "cannot reach the store" line per this many seconds.
REPORT_INTERVAL = 60.0


class FollowingGateway:
    """An ASGI app: `gateway`, configured from `store` when it starts, then following it.

    The store's configuration wins over the gateway's own; an empty store is given the
    gateway's (so a declarative file seeds a new database).
    """

    def __init__(self, gateway: Gateway, store: ConfigStore, *, interval: float = 1.0) -> None:
        self.gateway = gateway
        self.store = store
        self.interval = interval
        # Not served: used for its store-to-gateway synchronisation only.
        self._admin = AdminAPI(gateway, store, read_only=True)

    async def sync(self) -> None:
        """Bring the gateway to the store's configuration, if it moved (raises StoreError)."""
        try:
            await self._admin._ensure_current()
        except ApiError as exc:  # the stored configuration is invalid: keep ours
            raise ConfigurationError(str(exc.body.get("message", exc))) from None

    async def follow(self) -> None:
        """Poll the store until cancelled (a background task of the gateway's)."""
        reported = -REPORT_INTERVAL
        while True:
            await anyio.sleep(self.interval)
            try:
                await self.sync()
            except (StoreError, ConfigurationError) as exc:
                now = time.monotonic()
                if now - reported >= REPORT_INTERVAL:
                    reported = now
                    logger.error(
                        "cannot follow the configuration store %s: %s", self.store.url, exc
                    )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.gateway(scope, receive, send)
            return

        async def lifespan_send(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                try:
                    await self.sync()
                except Exception as exc:
                    message = {"type": "lifespan.startup.failed", "message": str(exc)}
                else:
                    self.gateway.spawn(self.follow)
            elif message["type"] == "lifespan.shutdown.complete":
                await self.store.aclose()
            await send(message)

        await self.gateway(scope, receive, lifespan_send)
