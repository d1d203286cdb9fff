"""Smooth weighted round-robin (as nginx): weights hold over short windows too."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ._base import Balancer

if TYPE_CHECKING:
    from .._context import Context
    from .._entities import Target


class RoundRobin(Balancer):
    """Each select adds every target's weight to its score and picks the highest score."""

    def __init__(self, targets: Sequence[Target]) -> None:
        self.targets = [t for t in targets if t.weight > 0]
        self._scores = [0] * len(self.targets)
        self._total = sum(t.weight for t in self.targets)

    def select(self, ctx: Context | None = None) -> Target | None:
        if not self.targets:
            return None
        scores = self._scores
        best = 0
        for i, target in enumerate(self.targets):
            scores[i] += target.weight
            if scores[i] > scores[best]:
                best = i
        scores[best] -= self._total
        return self.targets[best]
