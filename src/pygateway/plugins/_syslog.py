"""syslog: send each request's log entry to the system log, as Kong's syslog plugin does.

The entry (Kong's serializer, as JSON) goes as one datagram `<PRI>pygateway: {...}` to the
local syslog socket (`/dev/log`), or to `address`. Its severity depends on the response:
`successful_severity` below 400, `client_errors_severity` for 4xx and
`server_errors_severity` for 5xx; it is sent only when that severity is at least as
severe as `log_level`. It is sent from a `LogQueue` sender thread, never from the event
loop.

Beyond Kong: `address` (Kong always writes to the local socket through syslog(3)) and the
tag, "pygateway" where Kong says "kong".
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import attrs

from .._schema import field
from ._log_serializer import check_custom_fields
from ._queue import LogQueue, QueuedLogger
from ._registry import register
from ._tcp_log import QUEUE

if TYPE_CHECKING:
    from .._context import Context

__all__ = ["Syslog"]

logger = logging.getLogger("pygateway.plugins.log")

Severity = Literal["debug", "info", "notice", "warning", "err", "crit", "alert", "emerg"]
Facility = Literal[
    "auth",
    "authpriv",
    "cron",
    "daemon",
    "ftp",
    "kern",
    "lpr",
    "mail",
    "news",
    "syslog",
    "user",
    "uucp",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
]

#: RFC 5424 severity numbers: lower is more severe.
SEVERITIES = {
    "emerg": 0,
    "alert": 1,
    "crit": 2,
    "err": 3,
    "warning": 4,
    "notice": 5,
    "info": 6,
    "debug": 7,
}
#: Facility numbers, as Linux's <syslog.h> has them.
FACILITIES = {
    "kern": 0,
    "user": 1,
    "mail": 2,
    "daemon": 3,
    "auth": 4,
    "syslog": 5,
    "lpr": 6,
    "news": 7,
    "uucp": 8,
    "cron": 9,
    "authpriv": 10,
    "ftp": 11,
    **{f"local{n}": 16 + n for n in range(8)},
}
#: The name each message is tagged with (Kong's is "kong").
TAG = b"pygateway"
#: Where the local syslog daemon listens, tried in order (Linux, then macOS).
LOCAL_SOCKETS = ("/dev/log", "/var/run/syslog")
#: Seconds a send may wait for a stalled daemon (its socket's queue full) before it fails
#: and is retried.
SEND_TIMEOUT = 1.0


def _check_address(value: str | None) -> str | None:
    if value is None or value.startswith("/"):
        return None
    host, _, port = value.rpartition(":")
    if not host.strip("[]") or not port.isdigit() or not 0 < int(port) <= 65535:
        return f"invalid value: {value} (expected a socket path, or host:port)"
    return None


@attrs.frozen(kw_only=True)
class Syslog(QueuedLogger):
    """Send each request's log entry, as JSON, to syslog with a severity chosen by the
    response status, under `facility`.

    `address` is beyond Kong: the path of a Unix datagram socket, or `host:port` to send
    UDP datagrams to a syslog server; None (the default) is the local syslog socket,
    `/dev/log` (`/var/run/syslog` on macOS).
    """

    name = "syslog"
    priority = 4

    log_level: Severity = "info"
    successful_severity: Severity = "info"
    client_errors_severity: Severity = "info"
    server_errors_severity: Severity = "info"
    custom_fields_by_lua: Mapping[str, str] | None = field(None, check=check_custom_fields)
    facility: Facility = "user"
    address: str | None = field(None, check=_check_address)

    def severity(self, status: int) -> Severity:
        """The severity of the entry of a request answered `status`."""
        if status >= 500:
            return self.server_errors_severity
        if status >= 400:
            return self.client_errors_severity
        return self.successful_severity

    def entry(self, ctx: Context) -> bytes:
        """The datagram for the request `ctx`: `<PRI>pygateway: ` and the JSON entry
        (empty when its severity is less severe than `log_level`)."""
        status = ctx.response.status_code if ctx.response is not None else 0
        severity = SEVERITIES[self.severity(status)]
        if severity > SEVERITIES[self.log_level]:
            return b""
        priority = FACILITIES[self.facility] * 8 + severity
        return b"<%d>%s: %s" % (priority, TAG, super().entry(ctx))

    def _make_queue(self) -> LogQueue:
        return LogQueue(f"syslog {self.address or 'local'}", _SyslogSender(self.address), QUEUE)


def _local_socket() -> str:
    for path in LOCAL_SOCKETS:
        if os.path.exists(path):
            return path
    raise OSError("no local syslog socket (" + ", ".join(LOCAL_SOCKETS) + ")")


class _SyslogSender:
    """Sends datagrams on a socket kept open between batches: a connected Unix datagram
    socket, or a UDP socket. A failed send closes it (the next try opens it again)."""

    def __init__(self, address: str | None) -> None:
        self.address = address
        self._sock: socket.socket | None = None
        self._target: tuple[Any, ...] | None = None

    def _open(self) -> socket.socket:
        address = self.address or _local_socket()
        if address.startswith("/"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.settimeout(SEND_TIMEOUT)
            try:
                sock.connect(address)
            except BaseException:
                sock.close()
                raise
            self._target = None
            return sock
        host, _, port = address.rpartition(":")
        family, kind, proto, _, target = socket.getaddrinfo(
            host.strip("[]"), int(port), type=socket.SOCK_DGRAM
        )[0]
        self._target = target
        return socket.socket(family, kind, proto)

    def __call__(self, batch: Sequence[bytes]) -> None:
        if self._sock is None:
            self._sock = self._open()
        for entry in batch:
            try:
                if self._target is None:
                    self._sock.send(entry)
                else:
                    self._sock.sendto(entry, self._target)
            except OSError as exc:
                if exc.errno == errno.EMSGSIZE:
                    # Too large for one datagram: it never will fit, so it is not retried.
                    logger.error("syslog: a %d-byte entry is too large to send", len(entry))
                    continue
                self.close()
                raise

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


register(Syslog)
