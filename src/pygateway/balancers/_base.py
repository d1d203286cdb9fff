"""The balancer seam: `select` a target per try (sync), `release` it with the outcome."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .._context import Context
    from .._entities import Target


class Balancer:
    """Base class of balancers. `select` returns None when no target can take the request."""

    def select(self, ctx: Context) -> Target | None:
        raise NotImplementedError(f"{type(self).__name__}.select() must be implemented")

    def release(self, target: Target, *, failed: bool, elapsed: float) -> None:
        """Called after every try with its outcome (seconds spent)."""
