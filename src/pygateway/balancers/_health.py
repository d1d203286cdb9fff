"""Health checks: Kong's `healthchecks` record, and the health state of each peer.

A peer's health moves on reports, from real traffic (passive checks, a circuit breaker) and
from probes the gateway sends itself (active checks). As in Kong (lua-resty-healthcheck),
counts are consecutive: a success clears the failure counts and any failure clears the
success count; a peer turns unhealthy when one kind of failure reaches its threshold, and
healthy again after `healthy.successes` successes in a row. A threshold of 0 turns that kind
of report off; with every threshold at 0 and both intervals at 0, health checks are off and
every peer counts as healthy.

Reports come from the serving event loop and, when the gateway runs its probes in a thread
of their own (see `Gateway.start`), from that thread: state changes take a lock.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

import anyio
import anyio.abc
import attrs

from .._schema import Record, field
from ..engines._base import load_cert_chain

if TYPE_CHECKING:
    from ._base import Peer

__all__ = [
    "ActiveHealthcheck",
    "ActiveHealthy",
    "ActiveUnhealthy",
    "Healthchecks",
    "PassiveHealthcheck",
    "PassiveHealthy",
    "PassiveUnhealthy",
]

logger = logging.getLogger("pygateway.health")

Outcome = Literal["success", "http_failure", "tcp_failure", "timeout"]

_PASSIVE_HEALTHY: tuple[int, ...] = (200, 201, 202, 203, 204, 205, 206, 207, 208, 226)
_PASSIVE_HEALTHY += (300, 301, 302, 303, 304, 305, 306, 307, 308)


def _check_statuses(statuses: Sequence[int]) -> str | None:
    for status in statuses:
        if not 100 <= status <= 999:
            return f"value should be between 100 and 999 (got {status})"
    return None


def _check_path(value: str) -> str | None:
    return None if value.startswith("/") else "should start with: /"


@attrs.frozen(kw_only=True)
class ActiveHealthy(Record):
    """When probes bring a peer back: `successes` in a row, probing every `interval` s."""

    interval: float = field(0, between=(0, 65535))
    http_statuses: Sequence[int] = field((200, 302), check=_check_statuses)
    successes: int = field(0, between=(0, 255))


@attrs.frozen(kw_only=True)
class ActiveUnhealthy(Record):
    """When probes take a peer out, and how often unhealthy peers are probed."""

    interval: float = field(0, between=(0, 65535))
    http_statuses: Sequence[int] = field(
        (429, 404, 500, 501, 502, 503, 504, 505), check=_check_statuses
    )
    tcp_failures: int = field(0, between=(0, 255))
    timeouts: int = field(0, between=(0, 255))
    http_failures: int = field(0, between=(0, 255))


@attrs.frozen(kw_only=True)
class ActiveHealthcheck(Record):
    """Probes the gateway sends to each peer: a TCP connect, or `GET http_path`."""

    type: Literal["tcp", "http", "https"] = "http"
    timeout: float = field(1, between=(0, 65535))
    concurrency: int = field(10, between=(1, 65536))
    http_path: str = field("/", check=_check_path)
    https_sni: str | None = None
    https_verify_certificate: bool = True
    headers: Mapping[str, Sequence[str]] | None = None
    healthy: ActiveHealthy = attrs.field(factory=ActiveHealthy)
    unhealthy: ActiveUnhealthy = attrs.field(factory=ActiveUnhealthy)

    @property
    def enabled(self) -> bool:
        return self.healthy.interval > 0 or self.unhealthy.interval > 0


@attrs.frozen(kw_only=True)
class PassiveHealthy(Record):
    """Which upstream statuses count as successes, and how many bring a peer back."""

    http_statuses: Sequence[int] = field(_PASSIVE_HEALTHY, check=_check_statuses)
    successes: int = field(0, between=(0, 255))


@attrs.frozen(kw_only=True)
class PassiveUnhealthy(Record):
    """Which outcomes of real traffic take a peer out (a circuit breaker)."""

    http_statuses: Sequence[int] = field((429, 500, 503), check=_check_statuses)
    tcp_failures: int = field(0, between=(0, 255))
    timeouts: int = field(0, between=(0, 255))
    http_failures: int = field(0, between=(0, 255))


@attrs.frozen(kw_only=True)
class PassiveHealthcheck(Record):
    """Health learned from real traffic."""

    type: Literal["tcp", "http", "https"] = "http"
    healthy: PassiveHealthy = attrs.field(factory=PassiveHealthy)
    unhealthy: PassiveUnhealthy = attrs.field(factory=PassiveUnhealthy)

    @property
    def enabled(self) -> bool:
        # As Kong's: passive successes alone do not make a checker.
        u = self.unhealthy
        return bool(u.tcp_failures or u.timeouts or u.http_failures)


@attrs.frozen(kw_only=True)
class Healthchecks(Record):
    """An Upstream's `healthchecks`, with Kong's fields and defaults (everything off).

    `threshold`: the percentage of the upstream's weight that must be healthy; below it the
    whole upstream counts as unhealthy and requests get 503.
    """

    active: ActiveHealthcheck = attrs.field(factory=ActiveHealthcheck)
    passive: PassiveHealthcheck = attrs.field(factory=PassiveHealthcheck)
    threshold: float = field(0, between=(0, 100))

    @property
    def enabled(self) -> bool:
        return self.active.enabled or self.passive.enabled


class Health:
    """The health of one upstream's peers under one `Healthchecks` configuration."""

    def __init__(self, config: Healthchecks) -> None:
        self.config = config
        self._lock = threading.Lock()

    def report(self, peer: Peer, outcome: Outcome, *, active: bool) -> None:
        """Count one outcome for `peer`; flip its health when a threshold is reached."""
        check = self.config.active if active else self.config.passive
        if outcome == "success":
            needed = check.healthy.successes
        else:
            unhealthy = check.unhealthy
            needed = {
                "http_failure": unhealthy.http_failures,
                "tcp_failure": unhealthy.tcp_failures,
                "timeout": unhealthy.timeouts,
            }[outcome]
        if needed == 0:
            return  # this kind of report is turned off
        with self._lock:
            if outcome == "success":
                peer.failures.clear()
                peer.successes += 1
                if not peer.healthy and peer.successes >= needed:
                    self._set(peer, True, f"successes: {peer.successes}")
            else:
                peer.successes = 0
                count = peer.failures[outcome] = peer.failures.get(outcome, 0) + 1
                if peer.healthy and count >= needed:
                    self._set(peer, False, f"{outcome.replace('_', ' ')}s: {count}")

    def set(self, peer: Peer, healthy: bool) -> None:
        """Set a peer's health by hand (counters restart)."""
        with self._lock:
            self._set(peer, healthy, "set by hand")

    def classify(self, status: int, *, active: bool) -> Outcome | None:
        check = self.config.active if active else self.config.passive
        if status in check.unhealthy.http_statuses:
            return "http_failure"
        if status in check.healthy.http_statuses:
            return "success"
        return None

    @staticmethod
    def _set(peer: Peer, healthy: bool, why: str) -> None:
        peer.failures.clear()
        peer.successes = 0
        if peer.healthy != healthy:
            peer.healthy = healthy
            logger.warning(
                "%s (target %s) is now %s (%s)",
                peer.address,
                peer.target.target,
                "healthy" if healthy else "unhealthy",
                why,
            )


async def probe(
    peer: Peer,
    config: ActiveHealthcheck,
    *,
    host: str | None = None,
    client_certificate: tuple[str, str] | None = None,
) -> Outcome | None:
    """One active check of `peer`: its outcome, or None when the status counts for neither.

    HTTP probes send `Host: <host>` (the upstream's host_header, else the target's name,
    without a port, as Kong's); https ones present `client_certificate` when given.
    """
    try:
        with anyio.fail_after(config.timeout):
            if config.type == "tcp":
                stream = await anyio.connect_tcp(peer.ip, peer.port)
                await stream.aclose()
                return "success"
            status = await _http_status(peer, config, host or peer.hostname, client_certificate)
    except TimeoutError:
        return "timeout"
    except (OSError, anyio.BrokenResourceError, anyio.EndOfStream, ssl.SSLError):
        return "tcp_failure"
    except ValueError:
        return "http_failure"  # not an HTTP response
    if status in config.unhealthy.http_statuses:
        return "http_failure"
    if status in config.healthy.http_statuses:
        return "success"
    return None


async def _http_status(
    peer: Peer,
    config: ActiveHealthcheck,
    host: str,
    client_certificate: tuple[str, str] | None,
) -> int:
    stream: anyio.abc.ByteStream
    if config.type == "https":
        context = ssl.create_default_context()
        if not config.https_verify_certificate:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if client_certificate is not None:
            load_cert_chain(context, *client_certificate)
        stream = await anyio.connect_tcp(
            peer.ip,
            peer.port,
            tls=True,
            ssl_context=context,
            tls_hostname=config.https_sni or host,
        )
    else:
        stream = await anyio.connect_tcp(peer.ip, peer.port)
    authority = f"[{host}]" if ":" in host else host
    lines = [f"GET {config.http_path} HTTP/1.0", f"Host: {authority}"]
    for name, values in (config.headers or {}).items():
        lines.extend(f"{name}: {value}" for value in values)
    request = ("\r\n".join(lines) + "\r\nConnection: close\r\n\r\n").encode("latin-1")
    async with stream:
        await stream.send(request)
        head = b""
        while b"\r\n" not in head:
            chunk = await stream.receive()
            head += chunk
            if len(head) > 8192:
                break
    parts = head.split(b"\r\n", 1)[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise ValueError("not an HTTP status line")
    return int(parts[1])
