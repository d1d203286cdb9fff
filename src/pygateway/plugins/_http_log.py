"""http-log: send each request's log entry to an HTTP endpoint, in batches (Kong's).

The `log` phase runs after the response was sent, and must not hold the request up: it
serializes the entry and puts it on a bounded `LogQueue`, then returns. The queue belongs
to the gateway (`gateway.shared`, one per distinct plugin configuration, so it survives a
reconfiguration that keeps the plugin) and is emptied by a sender thread of its own, which
makes its blocking I/O off every event loop, whichever backend (asyncio or trio) serves the
requests. A full queue drops the entry (counted, and logged at most once a minute); it
never waits. Batches that fail are retried with exponential back-off for
`queue.max_retry_time` seconds, then dropped. On gateway shutdown, the queues are flushed.

The other loggers (file-log, tcp-log, udp-log) send through the same `LogQueue`.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from urllib.parse import urlsplit

import anyio.to_thread
import attrs
import httpx

from .._exceptions import ConfigurationError
from .._schema import Record, field
from ._base import Plugin
from ._log_serializer import check_custom_fields, require, serialize
from ._registry import register

if TYPE_CHECKING:
    from .._context import Context
    from .._gateway import Gateway

__all__ = ["HttpLog", "LogQueue", "QueueConfig", "enqueue", "flush_queues"]

logger = logging.getLogger("pygateway.plugins.log")

_MAX_TIMEOUT = 2**31 - 2
#: At most one "queue full" warning per queue in this many seconds.
DROP_REPORT_INTERVAL = 60.0
#: A sender thread with nothing to send for this long ends (the next entry starts another).
IDLE_SECONDS = 30.0
#: How long gateway shutdown waits for a queue to be sent.
FLUSH_TIMEOUT = 10.0


def _check_optional(low: float, high: float) -> Callable[[Any], str | None]:
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
    initial_retry_delay: float = field(0.01, check=_check_optional(0.001, 1_000_000))
    max_retry_delay: float = field(60, check=_check_optional(0.001, 1_000_000))


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
            self._cond.notify()
            return True

    def __len__(self) -> int:
        return len(self._entries)

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


def enqueue(
    ctx: Context, key: Any, make: Callable[[], LogQueue], entry: dict[str, Any]
) -> LogQueue:
    """Put `entry` (as JSON) on the gateway's queue under `key`, made by `make` if new."""
    shared = ctx.gateway.shared
    queue = shared.get(key)
    if not isinstance(queue, LogQueue) or queue._closing:
        queue = shared[key] = make()
    queue.put(json.dumps(entry, separators=(",", ":"), default=str).encode())
    return queue


async def flush_queues(gateway: Gateway, plugin_name: str) -> None:
    """Flush and forget the gateway's queues of one logging plugin (on shutdown)."""
    keys = [
        k
        for k, v in gateway.shared.items()
        if isinstance(v, LogQueue) and isinstance(k, tuple) and k[:1] == (plugin_name,)
    ]
    for key in keys:
        queue = gateway.shared.pop(key)
        if not await anyio.to_thread.run_sync(queue.flush, abandon_on_cancel=True):
            logger.warning("log queue %s: %d entries not sent at shutdown", queue.name, len(queue))


class QueuedLogger(Plugin):
    """Base of the loggers: the log phase serializes the entry and hands it to a queue per
    configuration (`_make_queue`), which a sender thread drains; shutdown flushes them.

    `required`: config fields Kong reports as missing by name in declarative config.
    """

    required: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_config(cls, config: dict[str, Any] | None) -> Plugin:
        require(config, *cls.required)
        return super().from_config(config)

    async def startup(self, gateway: Gateway) -> None:
        return None  # implemented so that the gateway calls `shutdown`

    async def shutdown(self, gateway: Gateway) -> None:
        await flush_queues(gateway, self.name)

    async def log(self, ctx: Context) -> None:
        enqueue(ctx, (self.name, self), self._make_queue, serialize(ctx))

    def _make_queue(self) -> LogQueue:
        raise NotImplementedError


def _check_endpoint(value: str) -> str | None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "missing host in url" if parts.scheme in ("http", "https") else "invalid url"
    return None


_RESERVED_HEADERS = {
    "host": "Host",
    "content-length": "Content-Length",
    "content-type": "Content-Type",
}


def _check_headers(value: Any) -> str | None:
    for name in value or ():
        reserved = _RESERVED_HEADERS.get(name.lower())
        if reserved is not None:
            return f"cannot contain '{reserved}' header"
    return None


@attrs.frozen(kw_only=True)
class HttpLog(QueuedLogger):
    """POST each request's log entry (JSON) to `http_endpoint`, batched per `queue`.

    With `queue.max_batch_size` above 1, a request body is a JSON array of entries;
    otherwise one entry. `timeout` and `keepalive` are in milliseconds. Credentials in the
    endpoint URL (`http://user:pass@host/`) are sent as Basic authentication.
    """

    name = "http-log"
    priority = 12
    required = ("http_endpoint",)

    http_endpoint: str = field(check=_check_endpoint)
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    content_type: Literal["application/json", "application/json; charset=utf-8"] = (
        "application/json"
    )
    timeout: int = field(10_000, between=(0, _MAX_TIMEOUT))
    keepalive: int = field(60_000, between=(0, _MAX_TIMEOUT))
    headers: Mapping[str, str] | None = field(None, check=_check_headers)
    queue: QueueConfig = attrs.field(factory=QueueConfig)
    #: Deprecated in Kong 3 (as here): `retry_count` is ignored (`queue.max_retry_time`
    #: bounds retries); `queue_size` and `flush_timeout` stand in for
    #: `queue.max_batch_size` and `queue.max_coalescing_delay`.
    retry_count: int | None = field(None, check=_check_optional(0, _MAX_TIMEOUT))
    queue_size: int | None = field(None, check=_check_optional(1, 1_000_000))
    flush_timeout: float | None = field(None, check=_check_optional(0, 3600))
    custom_fields_by_lua: Mapping[str, str] | None = field(None, check=check_custom_fields)

    @property
    def effective_queue(self) -> QueueConfig:
        """`queue`, with the deprecated `queue_size` / `flush_timeout` applied."""
        changes: dict[str, Any] = {}
        if self.queue_size is not None:
            changes["max_batch_size"] = self.queue_size
        if self.flush_timeout is not None:
            changes["max_coalescing_delay"] = self.flush_timeout
        return attrs.evolve(self.queue, **changes) if changes else self.queue

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if urlsplit(self.http_endpoint).username is not None and any(
            name.lower() == "authorization" for name in self.headers or ()
        ):
            raise ConfigurationError(
                "specifying both an 'Authorization' header and user info in "
                "'http_endpoint' is not allowed"
            )

    def _make_queue(self) -> LogQueue:
        parts = urlsplit(self.http_endpoint)
        label = f"http-log {parts.scheme}://{parts.hostname}:{parts.port or ''}{parts.path}"
        return LogQueue(label, _HttpSender(self), self.effective_queue)


class _HttpSender:
    """Sends batches from the sender thread, on a keep-alive connection of its own."""

    def __init__(self, plugin: HttpLog) -> None:
        self.plugin = plugin
        self.batched = plugin.effective_queue.max_batch_size > 1
        self._client: httpx.Client | None = None

    def _get_client(self) -> httpx.Client:
        if self._client is None:
            plugin = self.plugin
            self._client = httpx.Client(
                timeout=plugin.timeout / 1000,
                limits=httpx.Limits(max_connections=1, keepalive_expiry=plugin.keepalive / 1000),
                trust_env=False,
            )
        return self._client

    def __call__(self, batch: Sequence[bytes]) -> None:
        plugin = self.plugin
        body = b"[" + b",".join(batch) + b"]" if self.batched else batch[0]
        headers = {**(plugin.headers or {}), "content-type": plugin.content_type}
        try:
            response = self._get_client().request(
                plugin.method, plugin.http_endpoint, content=body, headers=headers
            )
        except httpx.HTTPError as exc:
            client, self._client = self._client, None
            if client is not None:
                client.close()
            # Without the chained exception, and without the endpoint's user info: a log
            # line must not carry the credentials.
            text = str(exc)
            userinfo = urlsplit(plugin.http_endpoint).netloc.rpartition("@")[0]
            if userinfo:
                text = text.replace(userinfo, "***")
            raise OSError(f"{type(exc).__name__}: {text}") from None
        if response.status_code >= 300:
            raise OSError(f"the endpoint answered {response.status_code}")

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()


register(HttpLog)
