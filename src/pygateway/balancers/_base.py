"""The balancer seam: `select` a peer per try (sync), `release` it with the outcome.

A Target names one or more addresses (a host name may resolve to several, an SRV record
gives ports and weights too): each address is a `Peer`, and balancers choose among peers.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .._context import Context
    from .._entities import Target, Upstream

__all__ = ["Balancer", "Peer"]


class Peer:
    """One address of a Target: where a try connects (`ip`, `port`), with its weight and
    health. `hostname` is the Target's host, used for the upstream Host header and TLS SNI.
    """

    __slots__ = (
        "ewma",
        "ewma_at",
        "failures",
        "healthy",
        "hostname",
        "in_flight",
        "ip",
        "port",
        "successes",
        "target",
        "weight",
    )

    def __init__(self, target: Target, ip: str, port: int, weight: int) -> None:
        self.target = target
        self.ip = ip
        self.port = port
        self.weight = weight
        self.hostname = target.host
        self.healthy = True
        #: Tries sent to this peer and not released yet.
        self.in_flight = 0
        #: Exponentially weighted moving average of response times (s), and when it was
        #: last updated (for the latency balancer; 0 until the first response).
        self.ewma = 0.0
        self.ewma_at = 0.0
        #: Consecutive outcomes, for health checks.
        self.failures: dict[str, int] = {}
        self.successes = 0

    @property
    def address(self) -> str:
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"

    @property
    def available(self) -> bool:
        """Healthy and not disabled (weight 0)."""
        return self.healthy and self.weight > 0

    def __repr__(self) -> str:
        state = "" if self.healthy else " unhealthy"
        return f"<Peer {self.address} weight={self.weight}{state} ({self.target.target})>"


class Balancer:
    """Base class of balancers: choose one peer of an upstream for each try.

    `update` is called with the upstream's peers whenever they change (targets added,
    removed or re-weighted, addresses re-resolved); peers that stay are the same objects, so
    state kept on them survives. `select` is sync and cheap; it returns None when no peer
    can take the request. A balancer should skip peers in `avoid` (those this request already
    tried) unless nothing else is available.
    """

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.peers: list[Peer] = []

    def update(self, peers: Sequence[Peer]) -> None:
        self.peers = list(peers)

    def select(self, ctx: Context | None, avoid: Collection[Peer] = ()) -> Peer | None:
        raise NotImplementedError(f"{type(self).__name__}.select() must be implemented")

    def release(self, peer: Peer, *, failed: bool, elapsed: float) -> None:
        """Called after every try with its outcome and the seconds it took to get the
        response head (or to fail)."""

    def candidates(self, avoid: Collection[Peer]) -> list[Peer]:
        """The available peers, without those in `avoid` unless that leaves none."""
        available = [p for p in self.peers if p.available]
        if avoid:
            fresh = [p for p in available if p not in avoid]
            if fresh:
                return fresh
        return available
