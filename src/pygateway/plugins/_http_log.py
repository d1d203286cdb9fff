"""http-log: send each request's log entry to an HTTP endpoint, in batches (Kong's).

Entries go through a `LogQueue` (see `_queue`): the request never waits for the endpoint.
Batches that fail are retried with exponential back-off for `queue.max_retry_time`
seconds, then dropped. With `queue.max_batch_size` above 1, a body is a JSON array.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal
from urllib.parse import urlsplit

import attrs
import httpx

from .._exceptions import ConfigurationError
from .._schema import field
from ._log_serializer import check_custom_fields
from ._queue import LogQueue, QueueConfig, QueuedLogger, check_optional
from ._registry import register

__all__ = ["HttpLog"]

_MAX_TIMEOUT = 2**31 - 2


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
    retry_count: int | None = field(None, check=check_optional(0, _MAX_TIMEOUT))
    queue_size: int | None = field(None, check=check_optional(1, 1_000_000))
    flush_timeout: float | None = field(None, check=check_optional(0, 3600))
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
