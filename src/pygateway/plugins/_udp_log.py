"""udp-log: send each request's log entry to a UDP listener, as one datagram (Kong's).

Sent from the log queue's sender thread (see `_http_log.LogQueue`), never from the event
loop. UDP does not say whether a datagram arrived: a lost one is lost.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from .._schema import field
from ._base import Plugin
from ._http_log import LogQueue, enqueue, flush_queues
from ._log_serializer import check_custom_fields, require, serialize
from ._registry import register
from ._tcp_log import QUEUE, check_host

if TYPE_CHECKING:
    from .._context import Context
    from .._gateway import Gateway

__all__ = ["UdpLog"]

_MAX_TIMEOUT = 2**31 - 2


@attrs.frozen(kw_only=True)
class UdpLog(Plugin):
    """Send each entry as one JSON datagram to `host`:`port`; `timeout` in milliseconds."""

    name = "udp-log"
    priority = 8

    host: str = field(check=check_host)
    port: int = field(between=(0, 65535))
    timeout: int = field(10_000, between=(0, _MAX_TIMEOUT))
    custom_fields_by_lua: Mapping[str, str] | None = field(None, check=check_custom_fields)

    @classmethod
    def from_config(cls, config: dict[str, Any] | None) -> Plugin:
        require(config, "host", "port")
        return super().from_config(config)

    async def startup(self, gateway: Gateway) -> None:
        return None  # implemented so that the gateway calls `shutdown`

    async def shutdown(self, gateway: Gateway) -> None:
        await flush_queues(gateway, self.name)

    async def log(self, ctx: Context) -> None:
        enqueue(ctx, (self.name, self), self._make_queue, serialize(ctx))

    def _make_queue(self) -> LogQueue:
        return LogQueue(f"udp-log {self.host}:{self.port}", _UdpSender(self), QUEUE)


class _UdpSender:
    def __init__(self, plugin: UdpLog) -> None:
        self.plugin = plugin

    def __call__(self, batch: Sequence[bytes]) -> None:
        plugin = self.plugin
        family, kind, proto, _, address = socket.getaddrinfo(
            plugin.host, plugin.port, type=socket.SOCK_DGRAM
        )[0]
        with socket.socket(family, kind, proto) as sock:
            sock.settimeout(plugin.timeout / 1000)
            for entry in batch:
                sock.sendto(entry, address)


register(UdpLog)
