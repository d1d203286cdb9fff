"""Latency: the peer that answers fastest, by an exponentially weighted moving average."""

from __future__ import annotations

import math
import time
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

from ._base import Balancer, Peer

if TYPE_CHECKING:
    from .._context import Context

#: Seconds over which an old response time loses most of its weight (Kong's 10 s).
DECAY = 10.0
#: What a failed try counts as, at least (s): a refused connection fails in microseconds,
#: and must not look like the fastest peer.
FAILURE_PENALTY = 1.0


class Latency(Balancer):
    """Picks the candidate with the lowest `ewma * (in_flight + 1) / weight`.

    A peer that joins later starts at the average of the measured ones (Kong's slow start),
    so it is not sent a whole burst before its first answer; a failed try counts as at
    least `FAILURE_PENALTY` seconds, or twice the peer's average.
    """

    _turn = 0

    def update(self, peers: Sequence[Peer]) -> None:
        super().update(peers)
        measured = [p.ewma for p in self.peers if p.ewma_at]
        if measured:
            mean = sum(measured) / len(measured)
            now = time.monotonic()
            for peer in self.peers:
                if not peer.ewma_at:
                    peer.ewma, peer.ewma_at = mean, now

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
            score = peer.ewma * (peer.in_flight + 1) / peer.weight
            if best is None or score < best_score:
                best, best_score = peer, score
        return best

    def release(self, peer: Peer, *, failed: bool, elapsed: float) -> None:
        if failed:
            elapsed = max(elapsed, 2 * peer.ewma, FAILURE_PENALTY)
        now = time.monotonic()
        if peer.ewma_at == 0.0:
            peer.ewma = elapsed
        else:
            # The older the average, the less it counts against the new sample.
            keep = math.exp(-(now - peer.ewma_at) / DECAY)
            peer.ewma = peer.ewma * keep + elapsed * (1 - keep)
        peer.ewma_at = now
