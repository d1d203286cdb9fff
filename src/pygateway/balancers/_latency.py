"""Latency: the peer that answers fastest, by an exponentially weighted moving average."""

from __future__ import annotations

import math
import time
from collections.abc import Collection
from typing import TYPE_CHECKING

from ._base import Balancer, Peer

if TYPE_CHECKING:
    from .._context import Context

#: Seconds over which an old response time loses most of its weight (Kong's 10 s).
DECAY = 10.0


class Latency(Balancer):
    """Picks the candidate with the lowest `ewma * (in_flight + 1) / weight`.

    A peer with no response yet scores 0, so new peers are tried first; a failed try counts
    with the time it took, so a peer that fails fast is also kept in check by health checks
    rather than by this score.
    """

    _turn = 0

    def select(self, ctx: Context | None = None, avoid: Collection[Peer] = ()) -> Peer | None:
        candidates = self.candidates(avoid)
        if not candidates:
            return None
        self._turn += 1
        start = self._turn % len(candidates)
        best = None
        best_score = 0.0
        for peer in candidates[start:] + candidates[:start]:
            score = peer.ewma * (peer.in_flight + 1) / peer.weight
            if best is None or score < best_score:
                best, best_score = peer, score
        return best

    def release(self, peer: Peer, *, failed: bool, elapsed: float) -> None:
        now = time.monotonic()
        if peer.ewma_at == 0.0:
            peer.ewma = elapsed
        else:
            # The older the average, the less it counts against the new sample.
            keep = math.exp(-(now - peer.ewma_at) / DECAY)
            peer.ewma = peer.ewma * keep + elapsed * (1 - keep)
        peer.ewma_at = now
