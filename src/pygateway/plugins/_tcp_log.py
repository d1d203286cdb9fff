"""tcp-log: send each request's log entry to a TCP listener (Kong's).

The entry goes as one JSON line (ending in a newline) on a connection kept open for
`keepalive` milliseconds, optionally over TLS. It is sent from the log queue's sender
thread (see `_queue.LogQueue`), never from the event loop; a failed send is retried
briefly, then the entry is dropped and logged.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Mapping, Sequence

import attrs

from .._schema import field
from ._log_serializer import check_custom_fields
from ._queue import LogQueue, QueueConfig, QueuedLogger
from ._registry import register

__all__ = ["TcpLog", "TcpSender"]

_MAX_TIMEOUT = 2**31 - 2
# One entry at a time, as soon as it comes; a failed one is tried again for a few seconds.
QUEUE = QueueConfig(max_batch_size=1, max_coalescing_delay=0, max_retry_time=5)


def check_host(value: str) -> str | None:
    if not value.strip() or any(c in value for c in "/ ?#@"):
        return "invalid value: " + value
    return None


@attrs.frozen(kw_only=True)
class TcpLog(QueuedLogger):
    """Send each entry as a JSON line to `host`:`port` over TCP (TLS with `tls`).

    `timeout` (connect and send) and `keepalive` (how long an idle connection is kept)
    are in milliseconds. With `tls`, the server's certificate is verified against
    `tls_sni` (else `host`), which is also the name sent in the handshake.
    """

    name = "tcp-log"
    priority = 7
    required = ("host", "port")

    host: str = field(check=check_host)
    port: int = field(between=(0, 65535))
    timeout: int = field(10_000, between=(0, _MAX_TIMEOUT))
    keepalive: int = field(60_000, between=(0, _MAX_TIMEOUT))
    tls: bool = False
    tls_sni: str | None = None
    custom_fields_by_lua: Mapping[str, str] | None = field(None, check=check_custom_fields)

    def _make_queue(self) -> LogQueue:
        sender = TcpSender(
            self.host,
            self.port,
            timeout=self.timeout / 1000,
            keepalive=self.keepalive / 1000,
            tls_server_name=(self.tls_sni or self.host) if self.tls else None,
        )
        return LogQueue(f"tcp-log {self.host}:{self.port}", sender, QUEUE)


class TcpSender:
    """Sends a batch's entries, each ending in a newline, on a TCP connection kept open
    between batches (from the queue's sender thread): for `keepalive` idle seconds when
    set, else for as long as it works. A failed send closes it, which fails the batch so
    it is retried on a new connection. With `tls_server_name`, the connection is TLS and
    the server's certificate is checked against that name."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float,
        keepalive: float | None = None,
        tls_server_name: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.keepalive = keepalive
        self.tls_server_name = tls_server_name
        self._sock: socket.socket | None = None
        self._last_used = 0.0

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        if self.tls_server_name is not None:
            context = ssl.create_default_context()
            try:
                sock = context.wrap_socket(sock, server_hostname=self.tls_server_name)
            except BaseException:
                sock.close()
                raise
        return sock

    def __call__(self, batch: Sequence[bytes]) -> None:
        now = time.monotonic()
        idle = now - self._last_used
        if self._sock is not None and self.keepalive is not None and idle > self.keepalive:
            self.close()
        if self._sock is None:
            self._sock = self._connect()
        try:
            self._sock.sendall(b"".join(entry + b"\n" for entry in batch))
        except OSError:
            self.close()
            raise
        self._last_used = now

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


register(TcpLog)
