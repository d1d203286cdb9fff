"""`MemoryCounterStore`: counters in this process (the plugins' `local` policy)."""

from __future__ import annotations

import heapq
import time
from collections.abc import Sequence

from ._base import Clock, Counter, CounterStore, Hit

__all__ = ["MemoryCounterStore"]


class MemoryCounterStore(CounterStore):
    """Counters in a dict of this process, shared by every request of a gateway.

    Exact under concurrency: a check and its increment run with no `await` between them,
    so no other request of the event loop can slip in. Bounded: a counter is dropped when
    its window ends, and beyond `max_counters` live counters the ones whose windows end
    soonest go first (so a flood of new identifiers costs memory for a while, not forever).
    """

    def __init__(self, *, clock: Clock = time.time, max_counters: int = 1_000_000) -> None:
        super().__init__(clock=clock)
        self.max_counters = max_counters
        # key -> [count, expires_at]
        self._counters: dict[str, list[float]] = {}
        # (expires_at, key), one entry per counter made: the next ones to forget first.
        self._expiry: list[tuple[float, str]] = []

    def __len__(self) -> int:
        """The live counters (after dropping those whose window ended)."""
        self._expire(self.clock())
        return len(self._counters)

    def _expire(self, now: float) -> None:
        expiry, counters = self._expiry, self._counters
        while expiry and (expiry[0][0] <= now or len(counters) > self.max_counters):
            expires_at, key = heapq.heappop(expiry)
            entry = counters.get(key)
            if entry is not None and entry[1] == expires_at:
                del counters[key]

    def _entry(self, counter: Counter) -> list[float]:
        entry = self._counters.get(counter.key)
        if entry is None:
            entry = self._counters[counter.key] = [0, counter.expires_at]
            heapq.heappush(self._expiry, (counter.expires_at, counter.key))
        return entry

    async def hit(self, counters: Sequence[Counter]) -> Hit:
        now = self.clock()
        self._expire(now)
        known = [self._counters.get(c.key) for c in counters]
        counts = tuple(int(e[0]) if e is not None else 0 for e in known)
        if any(count >= c.limit for count, c in zip(counts, counters, strict=True)):
            return Hit(False, counts)
        for counter in counters:
            self._entry(counter)[0] += 1
        self._expire(now)  # new counters may have gone beyond max_counters
        return Hit(True, tuple(count + 1 for count in counts))

    async def increment(self, counters: Sequence[Counter], amount: int) -> None:
        now = self.clock()
        self._expire(now)
        for counter in counters:
            self._entry(counter)[0] += amount
        self._expire(now)

    async def counts(self, keys: Sequence[str]) -> list[int]:
        self._expire(self.clock())
        counters = self._counters
        return [int(counters[k][0]) if k in counters else 0 for k in keys]

    def __repr__(self) -> str:
        return f"<MemoryCounterStore counters={len(self._counters)}>"
