"""The queue loggers put their entries on, and `QueuedLogger`, the base of the loggers.

A logger's `log` phase runs after the response was sent and must not hold the request up:
it serializes the entry and puts it on a bounded `LogQueue`, then returns. The queue
belongs to the gateway (`gateway.shared`, one per distinct plugin configuration, so it
survives a reconfiguration that keeps the plugin) and is emptied by a sender thread of its
own, which does its blocking I/O off every event loop, whichever backend (asyncio or trio)
serves the requests. A full queue drops the entry (counted, and logged at most once a
minute); it never waits. Batches that fail are retried with exponential back-off for
`max_retry_time` seconds, then dropped.

A queue is flushed when the gateway closes (it is one of `gateway.shared`'s closable
values) and, for a gateway never closed, when the interpreter exits.
"""

from __future__ import annotations

import atexit
import collections
import logging
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import anyio.to_thread
import attrs

from .._schema import Record, field
from ._base import Plugin
from ._log_serializer import require, serialize_json

if TYPE_CHECKING:
    from .._context import Context
    from .._gateway import Gateway

__all__ = ["Handler", "LogQueue", "QueueConfig", "QueuedLogger", "check_optional"]

logger = logging.getLogger("pygateway.plugins.log")

#: At most one "queue full" warning per queue in this many seconds.
DROP_REPORT_INTERVAL = 60.0
#: A sender thread with nothing to send for this long ends (the next entry starts another).
IDLE_SECONDS = 30.0
#: How long gateway shutdown waits for a queue to be sent.
FLUSH_TIMEOUT = 10.0


def check_optional(low: float, high: float) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value is not None and not low <= value <= high:
            return f"value should be between {low} and {high}"
        return None

    return check


@attrs.frozen(kw_only=True)
class QueueConfig(Record):
    """Kong's `queue` record: how entries are batched and retried. Times are in seconds.

    A batch is sent when it holds `max_batch_size` entries, or `max_coalescing_delay`
    seconds after its first entry arrived. At most `max_entries` entries (and, if set,
    `max_bytes` bytes) wait; more are dropped. A failed batch is retried after
    `initial_retry_delay`, doubling up to `max_retry_delay`, until `max_retry_time` passed.
    """

    max_batch_size: int = field(1, between=(1, 1_000_000))
    max_coalescing_delay: float = field(1, between=(0, 3600))
    max_entries: int = field(10_000, between=(1, 1_000_000))
    max_bytes: int | None = None
    max_retry_time: float = 60
    initial_retry_delay: float = field(0.01, check=check_optional(0.001, 1_000_000))
    max_retry_delay: float = field(60, check=check_optional(0.001, 1_000_000))


Handler = Callable[[Sequence[bytes]], None]


class LogQueue:
    """Entries waiting to be handed, in batches, to `handler` by a sender thread.

    `put` never blocks: it appends under a lock held for a few instructions, and drops the
    entry when the queue is full. `handler(batch)` runs in the sender thread and raises to
    say the batch was not delivered (it is then retried).
    """

    def __init__(self, name: str, handler: Handler, config: QueueConfig) -> None:
        self.name = name
        self.handler = handler
        self.config = config
        self._entries: collections.deque[bytes] = collections.deque()
        self._bytes = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._busy = False
        #: Entries dropped (the queue was full, or flushed), and batches given up after
        #: their retries.
        self.dropped = 0
        self.failed_batches = 0
        self._dropped_unreported = 0
        self._reported_at = -DROP_REPORT_INTERVAL
        _live.add(self)

    def put(self, entry: bytes) -> bool:
        """Queue one entry; False (and the entry counted as dropped) when the queue is full."""
        config = self.config
        with self._cond:
            full = len(self._entries) >= config.max_entries or (
                config.max_bytes is not None and self._bytes + len(entry) > config.max_bytes
            )
            if self._closing:  # flushed at shutdown: nobody sends what comes after
                self.dropped += 1
                return False
            if full:
                self.dropped += 1
                self._dropped_unreported += 1
                now = time.monotonic()
                if now - self._reported_at >= DROP_REPORT_INTERVAL:
                    self._reported_at = now
                    count, self._dropped_unreported = self._dropped_unreported, 0
                    logger.warning("log queue %s is full: %d entries dropped", self.name, count)
                return False
            self._entries.append(entry)
            self._bytes += len(entry)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"pygateway-log {self.name}", daemon=True
                )
                self._thread.start()
            # The sender waits for a first entry, or for a batch to fill: waking it for
            # any other entry would cost a thread switch a request, for nothing.
            if len(self._entries) in (1, config.max_batch_size):
                self._cond.notify()
            return True

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def closing(self) -> bool:
        """True once `flush` was called: the queue takes no more entries."""
        return self._closing

    def _next_batch(self) -> list[bytes] | None:
        """Wait for a batch (None: the thread should end). Called with the lock held."""
        config = self.config
        idle_since = time.monotonic()
        while not self._entries:
            if self._closing or time.monotonic() - idle_since >= IDLE_SECONDS:
                return None
            self._cond.wait(IDLE_SECONDS)
        deadline = time.monotonic() + config.max_coalescing_delay
        while len(self._entries) < config.max_batch_size and not self._closing:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._cond.wait(left)
        count = min(config.max_batch_size, len(self._entries))
        batch = [self._entries.popleft() for _ in range(count)]
        self._bytes -= sum(len(e) for e in batch)
        self._busy = True
        return batch

    def _run(self) -> None:
        while True:
            with self._cond:
                self._busy = False
                self._cond.notify_all()
                batch = self._next_batch()
                if batch is None:
                    self._close_handler()
                    self._thread = None
                    self._cond.notify_all()
                    return
            self._deliver(batch)

    def _close_handler(self) -> None:
        close = getattr(self.handler, "close", None)
        if close is not None:
            try:
                close()
            except Exception:
                logger.exception("log queue %s: closing failed", self.name)

    def _deliver(self, batch: list[bytes]) -> None:
        config = self.config
        started = time.monotonic()
        delay = config.initial_retry_delay
        while True:
            try:
                self.handler(batch)
                return
            except Exception as exc:
                waited = time.monotonic() - started
                # Shutting down: a batch that fails now is dropped, so stopping is prompt.
                if waited + delay > config.max_retry_time or self._closing:
                    self.failed_batches += 1
                    logger.error(
                        "log queue %s: %d entries dropped after %.1fs of retries: %s",
                        self.name,
                        len(batch),
                        waited,
                        exc,
                    )
                    return
                logger.info("log queue %s: retrying in %.3fs: %s", self.name, delay, exc)
            with self._cond:
                if not self._closing:  # `flush` wakes this up: one last try, at once
                    self._cond.wait(delay)
            delay = min(delay * 2, config.max_retry_delay)

    def flush(self, timeout: float = FLUSH_TIMEOUT) -> bool:
        """Send what is queued and stop the sender (blocking; call it from a thread).

        True when every entry was handed to the handler within `timeout` seconds (a batch
        that fails now is dropped, not retried). Entries put after this are dropped.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            while self._thread is not None and (self._entries or self._busy):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return not self._entries

    async def aclose(self) -> None:
        """Flush (in a worker thread); the gateway calls it when it closes."""
        if not await anyio.to_thread.run_sync(self.flush, abandon_on_cancel=True):
            logger.warning("log queue %s: %d entries not sent at shutdown", self.name, len(self))


#: Queues that may hold entries, flushed at interpreter exit (for a gateway never closed).
_live: weakref.WeakSet[LogQueue] = weakref.WeakSet()
#: How long interpreter exit waits for all the queues together.
EXIT_FLUSH_TIMEOUT = 5.0


@atexit.register
def _flush_at_exit() -> None:
    deadline = time.monotonic() + EXIT_FLUSH_TIMEOUT
    for queue in list(_live):
        if len(queue) and not queue.flush(max(0.0, deadline - time.monotonic())):
            logger.warning("log queue %s: %d entries not sent at exit", queue.name, len(queue))


class QueuedLogger(Plugin):
    """Base of the loggers: the log phase serializes the entry and puts it, as JSON, on
    the gateway's queue for this configuration (made by `_make_queue`), which a sender
    thread drains; the gateway flushes it when it closes.

    `required`: config fields Kong reports as missing by name in declarative config.
    """

    required: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_config(cls, config: dict[str, Any] | None) -> Plugin:
        require(config, *cls.required)
        return super().from_config(config)

    async def log(self, ctx: Context) -> None:
        entry = self.entry(ctx)
        if entry:
            self.queue_for(ctx.gateway).put(entry)

    def entry(self, ctx: Context) -> bytes:
        """The log entry for a finished request, as sent: Kong's serializer, as JSON. A
        subclass returns b"" when this request has nothing to send."""
        return serialize_json(ctx)

    def queue_for(self, gateway: Gateway) -> LogQueue:
        """The gateway's queue for this configuration, made when first needed."""
        key = (self.name, self)
        queue = gateway.shared.get(key)
        if not isinstance(queue, LogQueue) or queue.closing:
            queue = gateway.shared[key] = self._make_queue()
        return queue

    def _make_queue(self) -> LogQueue:
        raise NotImplementedError
