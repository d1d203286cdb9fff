"""An Upstream at run time: its targets resolved into peers, its balancer and their health.

A gateway keeps one `UpstreamPool` per Upstream name for its whole life. A new configuration
updates the pool in place: peers whose target and address stay are the same objects, so
their health, in-flight counts and latency averages carry over, and requests in flight on
a removed target finish on it.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING, Any

import anyio

from ._base import Balancer, Peer
from ._consistent_hashing import ConsistentHashing
from ._dns import Address, DNSError, Resolver
from ._health import Health, Outcome, probe
from ._latency import Latency
from ._least_connections import LeastConnections
from ._round_robin import RoundRobin

if TYPE_CHECKING:
    from .._context import Context
    from .._entities import Target, Upstream

__all__ = ["ALGORITHMS", "UpstreamPool"]

ALGORITHMS: dict[str, type[Balancer]] = {
    "round-robin": RoundRobin,
    "consistent-hashing": ConsistentHashing,
    "least-connections": LeastConnections,
    "latency": Latency,
}

#: Seconds before a name that failed to resolve is tried again; doubled after each
#: failure in a row, up to DNS_ERROR_TTL_MAX.
DNS_ERROR_TTL = 1.0
DNS_ERROR_TTL_MAX = 30.0
#: Upstream fields that shape the balancer; a change in any of them builds a new one.
_BALANCER_FIELDS = (
    "algorithm",
    "hash_on",
    "hash_fallback",
    "hash_on_header",
    "hash_fallback_header",
    "hash_on_cookie",
    "hash_on_cookie_path",
    "hash_on_query_arg",
    "hash_fallback_query_arg",
    "hash_on_uri_capture",
    "hash_fallback_uri_capture",
    "slots",
)


class _Entry:
    """One configured Target: its addresses, when to resolve it again, the last DNS error."""

    __slots__ = ("addresses", "dns_error", "dns_failures", "expires", "peers", "target")

    def __init__(self, target: Target) -> None:
        self.target = target
        self.peers: list[Peer] = []
        self.dns_error: str | None = None
        self.dns_failures = 0
        self.addresses: list[Address] = []
        self.expires = 0.0  # resolve before first use


class UpstreamPool:
    """Peers, balancer and health of one Upstream (see the module doc)."""

    def __init__(self, upstream: Upstream, resolver: Resolver) -> None:
        self.upstream = upstream
        self.resolver = resolver
        self.health = Health(upstream.healthchecks)
        self.balancer = ALGORITHMS[upstream.algorithm](upstream)
        self.peers: list[Peer] = []
        self._entries: dict[str, _Entry] = {}
        #: When the next name is due to be resolved again (monotonic; inf: none).
        self.due = math.inf
        self.refreshing = False
        #: (certificate PEM, key PEM) active https probes present (the upstream's own).
        self.client_certificate: tuple[str, str] | None = None
        #: True while a task runs this pool's active checks.
        self.checking = False
        self.closed = False
        self._set_targets(upstream.targets)

    # -- configuration --------------------------------------------------------------------

    def update(self, upstream: Upstream) -> None:
        """Take a new version of the Upstream without losing peers' state."""
        old, self.upstream = self.upstream, upstream
        self.health.config = upstream.healthchecks
        if not upstream.healthchecks.enabled:
            # No checker any more (Kong rebuilds it): nothing keeps a peer out.
            for peer in self.peers:
                peer.healthy = True
                peer.failures.clear()
                peer.successes = 0
        if any(getattr(old, f) != getattr(upstream, f) for f in _BALANCER_FIELDS):
            self.balancer = ALGORITHMS[upstream.algorithm](upstream)
            self.balancer.update(self.peers)
        else:
            self.balancer.upstream = upstream
        self._set_targets(upstream.targets)

    def _set_targets(self, targets: Iterable[Target]) -> None:
        entries: dict[str, _Entry] = {}
        for target in targets:
            entry = self._entries.get(target.target) or _Entry(target)
            entry.target = target
            if entry.expires == 0.0 and _is_ip(target.host):
                entry.addresses = [Address(target.host.strip("[]"), None, None, math.inf)]
                entry.expires = math.inf
            entries[target.target] = entry
            entry.peers = self._peers(entry)
        self._entries = entries
        self._rebuild()

    def _peers(self, entry: _Entry) -> list[Peer]:
        """Peers for an entry's addresses, reusing the ones it has (their state stays)."""
        target = entry.target
        known = {(p.ip, p.port): p for p in entry.peers}
        peers = []
        for address in entry.addresses:
            port = address.port if address.port is not None else target.port
            weight = 0 if target.weight == 0 else (address.weight or target.weight)
            peer = known.pop((address.ip, port), None)
            if peer is None:
                peer = Peer(target, address.ip, port, weight)
            peer.target, peer.weight = target, weight
            peers.append(peer)
        return peers

    def _rebuild(self) -> None:
        peers = [p for e in self._entries.values() for p in e.peers]
        if peers != self.peers or not peers:
            # Same peers (a refresh that changed nothing): the balancer's state stays, and
            # a hashing ring is not rebuilt.
            self.peers = peers
            self.balancer.update(peers)
        self.due = min((e.expires for e in self._entries.values()), default=math.inf)

    # -- name resolution ------------------------------------------------------------------

    async def refresh(self) -> None:
        """Resolve the names that are due (one refresh at a time; others return at once).

        Each due name is first given its retry time, so a refresh that is cancelled or
        fails does not make the next request try again at once.
        """
        if self.refreshing:
            return
        self.refreshing = True
        try:
            now = time.monotonic()
            due = [e for e in self._entries.values() if e.expires <= now]
            for entry in due:
                retry = DNS_ERROR_TTL * 2 ** min(entry.dns_failures, 8)
                entry.expires = now + min(retry, DNS_ERROR_TTL_MAX)
            self.due = min((e.expires for e in self._entries.values()), default=math.inf)
            async with anyio.create_task_group() as tg:
                for entry in due:
                    tg.start_soon(self._resolve, entry)
        finally:
            self.refreshing = False
            self._rebuild()

    async def _resolve(self, entry: _Entry) -> None:
        try:
            addresses = await self.resolver.resolve(entry.target.host)
        except DNSError as exc:
            # Addresses that resolved before are kept: a DNS outage does not take a
            # working target out. The retry time was set by `refresh`.
            entry.dns_error = str(exc)
            entry.dns_failures += 1
            return
        entry.dns_error = None
        entry.dns_failures = 0
        entry.addresses = addresses
        entry.expires = time.monotonic() + min(a.ttl for a in addresses)
        entry.peers = self._peers(entry)

    # -- balancing ------------------------------------------------------------------------

    def select(self, ctx: Context | None, avoid: Collection[Peer] = ()) -> Peer | None:
        """A peer for one try, or None (no healthy peer, or the healthy share of the weight
        is under the `threshold`)."""
        threshold = self.upstream.healthchecks.threshold
        if threshold and self.healthy_share() < threshold:
            return None
        peer = self.balancer.select(ctx, avoid)
        if peer is not None:
            peer.in_flight += 1
        return peer

    def release(
        self, peer: Peer, *, outcome: Outcome | None, status: int | None, elapsed: float | None
    ) -> None:
        """A try is over: feed the balancer and the passive health checks.

        `outcome` is a transport failure ("tcp_failure", "timeout"), or None when the
        upstream answered with `status`. With neither (the client went away, the request
        was cancelled), and `elapsed` None, the try teaches nothing: only in-flight counts.
        """
        peer.in_flight -= 1
        if outcome is None and status is not None:
            outcome = self.health.classify(status, active=False)
        if elapsed is not None:
            failed = outcome not in (None, "success")
            self.balancer.release(peer, failed=failed, elapsed=elapsed)
        if outcome is not None:
            self.health.report(peer, outcome, active=False)

    def healthy_share(self) -> float:
        """The percentage of the pool's weight on healthy peers."""
        total = healthy = 0
        for peer in self.peers:
            total += peer.weight
            if peer.healthy:
                healthy += peer.weight
        return 100.0 * healthy / total if total else 0.0

    @property
    def dns_error(self) -> str | None:
        """Set when no target has an address, and at least one name failed to resolve."""
        if self.peers:
            return None
        return next((e.dns_error for e in self._entries.values() if e.dns_error), None)

    # -- health ---------------------------------------------------------------------------

    def health_report(self) -> dict[str, Any]:
        """Per target, its health and its addresses' (Kong's `/upstreams/{u}/health`)."""
        checks_on = self.health.config.enabled
        data = []
        for entry in self._entries.values():
            target = entry.target
            addresses = [
                {
                    "ip": p.ip,
                    "port": p.port,
                    "weight": p.weight,
                    "health": _state(p.healthy, checks_on),
                }
                for p in entry.peers
            ]
            if entry.dns_error and not entry.peers:
                health = "DNS_ERROR"
            else:
                health = _state(any(p.healthy for p in entry.peers), checks_on)
            data.append(
                {
                    "id": target.id,
                    "target": target.target,
                    "weight": target.weight,
                    "tags": list(target.tags),
                    "upstream": {"id": self.upstream.id},
                    "health": health,
                    "data": {"addresses": addresses, "dns_error": entry.dns_error},
                }
            )
        return {"data": data, "next": None}

    def balancer_health(self) -> dict[str, Any]:
        """The upstream as a whole (Kong's `?balancer_health=1`)."""
        threshold = self.upstream.healthchecks.threshold
        available = any(p.available for p in self.peers)
        healthy = available and self.healthy_share() >= threshold
        return {
            "id": self.upstream.id,
            "health": _state(healthy, self.health.config.enabled),
            "threshold": threshold,
            "healthy_share": round(self.healthy_share(), 2),
        }

    def set_health(self, target: str, healthy: bool, address: str | None = None) -> None:
        if not self.health.config.enabled:
            # Kong: "no healthchecker found": with checks off, nothing would ever undo it.
            raise ValueError(
                f"health checks are off for upstream {self.upstream.name!r}: "
                "there is no health to set"
            )
        entry = self._entries.get(target)
        if entry is None:
            raise LookupError(f"upstream {self.upstream.name!r} has no target {target!r}")
        peers = entry.peers
        if address is not None:
            peers = [p for p in peers if address in (p.address, p.ip)]
            if not peers:
                raise LookupError(f"target {target!r} has no address {address!r}")
        for peer in peers:
            self.health.set(peer, healthy)

    # -- active checks --------------------------------------------------------------------

    @property
    def wants_checks(self) -> bool:
        return not self.closed and self.upstream.healthchecks.active.enabled

    async def run_checks(self) -> None:
        """Probe peers until the pool closes or active checks are turned off: healthy
        peers every `healthy.interval` s, unhealthy ones every `unhealthy.interval` s."""
        self.checking = True
        try:
            limiter = anyio.CapacityLimiter(self.upstream.healthchecks.active.concurrency)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._check_loop, True, limiter)
                tg.start_soon(self._check_loop, False, limiter)
        finally:
            self.checking = False

    async def _check_loop(self, healthy: bool, limiter: anyio.CapacityLimiter) -> None:
        while self.wants_checks:
            active = self.upstream.healthchecks.active
            interval = active.healthy.interval if healthy else active.unhealthy.interval
            if interval > 0:
                limiter.total_tokens = active.concurrency
                peers = [p for p in self.peers if p.healthy == healthy and p.weight > 0]
                async with anyio.create_task_group() as tg:
                    for peer in peers:
                        tg.start_soon(self._check, peer, limiter)
            # Sleep in slices of at most a second: a new configuration (another interval,
            # checks turned off, the upstream removed) takes effect within a second.
            deadline = anyio.current_time() + (interval if interval > 0 else 1.0)
            while self.wants_checks and self.upstream.healthchecks.active == active:
                left = deadline - anyio.current_time()
                if left <= 0:
                    break
                await anyio.sleep(min(1.0, left))

    async def _check(self, peer: Peer, limiter: anyio.CapacityLimiter) -> None:
        async with limiter:
            outcome = await probe(
                peer,
                self.upstream.healthchecks.active,
                host=self.upstream.host_header or peer.hostname,
                client_certificate=self.client_certificate,
            )
        if outcome is not None and not self.closed:
            self.health.report(peer, outcome, active=True)

    def close(self) -> None:
        """The Upstream was removed: stop checking (requests in flight finish)."""
        self.closed = True


def _state(healthy: bool, checks_on: bool) -> str:
    if not checks_on:
        return "HEALTHCHECKS_OFF"
    return "HEALTHY" if healthy else "UNHEALTHY"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True
