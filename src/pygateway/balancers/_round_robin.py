"""Smooth weighted round-robin (as nginx): weights hold over short windows too."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

from ._base import Balancer, Peer

if TYPE_CHECKING:
    from .._context import Context
    from .._entities import Upstream


class RoundRobin(Balancer):
    """Each select adds every candidate's weight to its score, picks the highest score and
    takes the total back from it: over any window of `sum(weights)` selects each peer is
    picked `weight` times, interleaved (5:1:1 gives a a b a c a a, not a a a a a b c).
    Unavailable peers sit out without disturbing the others' shares."""

    def __init__(self, upstream: Upstream) -> None:
        super().__init__(upstream)
        self._scores: dict[Peer, int] = {}

    def update(self, peers: Sequence[Peer]) -> None:
        super().update(peers)
        self._scores = {p: self._scores.get(p, 0) for p in self.peers}

    def select(self, ctx: Context | None = None, avoid: Collection[Peer] = ()) -> Peer | None:
        best: Peer | None = None
        total = 0
        scores = self._scores
        for peer in self.peers:
            if not peer.available or peer in avoid:
                continue
            total += peer.weight
            score = scores[peer] = scores[peer] + peer.weight
            if best is None or score > scores[best]:
                best = peer
        if best is None:
            return self.select(ctx) if avoid else None
        scores[best] -= total
        return best
