"""udp-log: send each request's log entry to a UDP listener, as one datagram (Kong's).

Sent from the log queue's sender thread (see `_queue.LogQueue`), never from the event
loop. UDP does not say whether a datagram arrived: a lost one is lost.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence

import attrs

from .._schema import field
from ._log_serializer import check_custom_fields
from ._queue import LogQueue, QueuedLogger
from ._registry import register
from ._tcp_log import QUEUE, check_host

__all__ = ["UdpLog"]

_MAX_TIMEOUT = 2**31 - 2


@attrs.frozen(kw_only=True)
class UdpLog(QueuedLogger):
    """Send each entry as one JSON datagram to `host`:`port`; `timeout` in milliseconds."""

    name = "udp-log"
    priority = 8
    required = ("host", "port")

    host: str = field(check=check_host)
    port: int = field(between=(0, 65535))
    timeout: int = field(10_000, between=(0, _MAX_TIMEOUT))
    custom_fields_by_lua: Mapping[str, str] | None = field(None, check=check_custom_fields)

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
