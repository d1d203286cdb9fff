"""Least connections: the peer with the fewest tries in flight for its weight."""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

from ._base import Balancer, Peer

if TYPE_CHECKING:
    from .._context import Context


class LeastConnections(Balancer):
    """Picks the candidate with the lowest `(in_flight + 1) / weight`; ties go round in
    turn, so an idle upstream still spreads its requests."""

    _turn = 0

    def select(self, ctx: Context | None = None, avoid: Collection[Peer] = ()) -> Peer | None:
        candidates = self.candidates(avoid)
        if not candidates:
            return None
        self._turn += 1
        count = len(candidates)
        start = self._turn % count
        best = None
        best_score = 0.0
        for i in range(count):
            peer = candidates[(start + i) % count]
            score = (peer.in_flight + 1) / peer.weight
            if best is None or score < best_score:
                best, best_score = peer, score
        return best
