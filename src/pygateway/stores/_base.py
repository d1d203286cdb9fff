"""`CounterStore`: fixed-window counters, the one thing the rate-limiting plugins need.

A counter is named by a key that already says which window it counts (the plugin puts the
window's start in it), so a store only adds, compares and forgets: a counter is dropped
once its window has ended (`Counter.expires_at`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import attrs

from .._exceptions import PygatewayError

if TYPE_CHECKING:
    from .._gateway import Gateway

__all__ = ["Counter", "CounterStore", "Hit", "StoreError"]

Clock = Callable[[], float]


class StoreError(PygatewayError):
    """A store could not be reached, or failed to answer (Redis down, timed out...).

    The message names the store and the cause, never a password.
    """


@attrs.frozen
class Counter:
    """One counter of one window: `key` names it, `limit` is what `hit` allows (a request
    passes while the count is below it), `expires_at` (epoch seconds) is when its window
    ends and the count may be forgotten."""

    key: str
    limit: float
    expires_at: float


@attrs.frozen
class Hit:
    """What `CounterStore.hit` did: `allowed`, and each counter's count — after the hit
    when it was allowed, as it stands (not counting this one) when refused."""

    allowed: bool
    counts: tuple[int, ...]


class CounterStore:
    """Where rate-limit counters live. Subclasses implement the three operations.

    `hit` is the rate limiter's: for a request checked against several windows, it either
    counts the request in every window or, if any window is full, in none — atomically, so
    concurrent requests can never overshoot a limit. `increment` adds unconditionally and
    `counts` reads (the response-ratelimiting plugin's pattern: read before, count after).

    `clock()` is the time (epoch seconds) the windows are computed from: tests give a store
    a fake one instead of sleeping until a window ends.
    """

    def __init__(self, *, clock: Clock = time.time) -> None:
        self.clock = clock
        #: Throttles the error log of failing operations (see `report_failure`).
        self._failures = _FailureLog()

    async def hit(self, counters: Sequence[Counter]) -> Hit:
        """Count one request in every counter if all are below their limit, else in none."""
        raise NotImplementedError(f"{type(self).__name__} must implement `async def hit()`")

    async def increment(self, counters: Sequence[Counter], amount: int) -> None:
        """Add `amount` to every counter, whatever its limit."""
        raise NotImplementedError(f"{type(self).__name__} must implement `async def increment()`")

    async def counts(self, keys: Sequence[str]) -> list[int]:
        """The current count of each key (0 for a counter that does not exist)."""
        raise NotImplementedError(f"{type(self).__name__} must implement `async def counts()`")

    def attach(self, gateway: Gateway) -> None:
        """Called when a gateway starts using this store (a hook for stores that need the
        gateway's tasks)."""
        return None

    async def aclose(self) -> None:
        """Release connections. The store may be used again afterwards (it reopens)."""
        return None

    def report_failure(self, logger: logging.Logger, what: str, exc: BaseException) -> None:
        """Log a failed operation at most once per `FAILURE_LOG_INTERVAL` seconds per store,
        with how many more failed since the last line: a store that is down must not flood
        the log with one line per request."""
        self._failures.report(logger, what, exc)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


#: Seconds between two log lines about the same failing store.
FAILURE_LOG_INTERVAL = 30.0


class _FailureLog:
    __slots__ = ("last", "suppressed")

    def __init__(self) -> None:
        self.last: float | None = None
        self.suppressed = 0

    def report(self, logger: logging.Logger, what: str, exc: BaseException) -> None:
        now = time.monotonic()
        if self.last is not None and now - self.last < FAILURE_LOG_INTERVAL:
            self.suppressed += 1
            return
        more = (
            f" ({self.suppressed} more failures in the last {now - self.last:.0f}s)"
            if self.last is not None and self.suppressed
            else ""
        )
        self.last, self.suppressed = now, 0
        logger.error("%s: %s%s", what, exc, more)
