"""datadog: send each request's metrics to a Datadog agent as DogStatsD lines (Kong's).

Every metric goes as one UDP datagram such as
`kong.request.count:1|c|#name:users,status:200,consumer:alice,app:kong`: the service
(its name, else its host, dots made underscores; "" without a service), the response
status, the consumer (when the metric names a `consumer_identifier` and there is one) and
the metric's own `tags`. The lines are built in the log phase and sent from a `LogQueue`
sender thread, with the statsd plugin's line format and UDP sender (`_statsd`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal

import attrs

from .._exceptions import ConfigurationError
from .._schema import Record, field
from ._queue import LogQueue, QueueConfig, QueuedLogger, check_optional
from ._registry import register
from ._statsd import (
    STAT_NAMES,
    STAT_TYPES,
    ConsumerIdentifier,
    UdpSender,
    consumer_identity,
    effective_queue,
    entity_check_required,
    line,
    require_sample_rate,
    stat_values,
)
from ._tcp_log import check_host

if TYPE_CHECKING:
    from .._context import Context

__all__ = ["Datadog", "DatadogMetric"]

DatadogMetricName = Literal[
    "kong_latency", "latency", "request_count", "request_size", "response_size", "upstream_latency"
]
DatadogStatType = Literal["counter", "gauge", "histogram", "meter", "set", "timer", "distribution"]

#: Where the agent is when `host` / `port` are set to None (Kong's variables).
HOST_VARIABLE = "KONG_DATADOG_AGENT_HOST"
PORT_VARIABLE = "KONG_DATADOG_AGENT_PORT"


def _check_tags(tags: tuple[str, ...] | None) -> list[tuple[tuple[str | int, ...], str]]:
    # Kong's pattern `^.*[^:]$`: a tag is not empty and does not end with a colon.
    return [
        (("tags", i), f"invalid value: {tag}")
        for i, tag in enumerate(tags or ())
        if not tag or tag.endswith(":")
    ]


def _check_optional_host(value: str | None) -> str | None:
    return None if value is None else check_host(value)


@attrs.frozen(kw_only=True)
class DatadogMetric(Record):
    """One metric to send: which (`name`), as what (`stat_type`), with which extra `tags`
    ("app:kong", or a bare "team"), and whether to tag the consumer by a
    `consumer_identifier`. Counters and gauges need a `sample_rate` (0 to 1), written on
    the line when not 1; nothing is sampled here (nor in Kong)."""

    # Required: None is refused ("required field missing"), as a missing Kong field is.
    name: DatadogMetricName = attrs.field(default=None)
    stat_type: DatadogStatType = attrs.field(default=None)
    tags: tuple[str, ...] | None = None
    sample_rate: float | None = field(None, check=check_optional(0, 1))
    consumer_identifier: ConsumerIdentifier | None = None

    def __attrs_post_init__(self) -> None:
        try:
            super().__attrs_post_init__()
        except ConfigurationError as exc:
            raise entity_check_required(exc, "stat_type") from None
        errors = _check_tags(self.tags)
        if errors:
            raise ConfigurationError(errors=errors)
        require_sample_rate(self)


def _metric(name: str, stat_type: str, sample_rate: float | None = None) -> DatadogMetric:
    return DatadogMetric(
        name=name,  # type: ignore[arg-type]
        stat_type=stat_type,  # type: ignore[arg-type]
        sample_rate=sample_rate,
        tags=("app:kong",),
        consumer_identifier="custom_id",
    )


DEFAULT_METRICS = (
    _metric("request_count", "counter", 1),
    _metric("latency", "timer"),
    _metric("request_size", "timer"),
    _metric("response_size", "timer"),
    _metric("upstream_latency", "timer"),
    _metric("kong_latency", "timer"),
)


@attrs.frozen(kw_only=True)
class Datadog(QueuedLogger):
    """Send DogStatsD metrics about each request to the agent at `host`:`port` (UDP).

    Metric names start with `prefix`; `service_name_tag`, `status_tag` and `consumer_tag`
    name the tags that carry the service, the status and the consumer. `host` or `port`
    set to None is read from `KONG_DATADOG_AGENT_HOST` / `KONG_DATADOG_AGENT_PORT` when
    the metrics are sent. `queue` batches and retries as for the other loggers.
    """

    name = "datadog"
    priority = 10

    host: str | None = field("localhost", check=_check_optional_host)
    port: int | None = field(8125, between=(0, 65535))
    prefix: str = "kong"
    service_name_tag: str = "name"
    status_tag: str = "status"
    consumer_tag: str = "consumer"
    metrics: tuple[DatadogMetric, ...] = DEFAULT_METRICS
    queue: QueueConfig = attrs.field(factory=QueueConfig)
    #: Deprecated in Kong 3 (as here): `retry_count` is ignored; `queue_size` and
    #: `flush_timeout` stand in for `queue.max_batch_size` and `queue.max_coalescing_delay`.
    retry_count: int | None = None
    queue_size: int | None = field(None, check=check_optional(1, 1_000_000))
    flush_timeout: float | None = field(None, check=check_optional(0, 3600))

    @property
    def effective_queue(self) -> QueueConfig:
        """`queue`, with the deprecated `queue_size` / `flush_timeout` applied."""
        return effective_queue(self.queue, self.queue_size, self.flush_timeout)

    def entry(self, ctx: Context) -> bytes:
        """The DogStatsD lines for the request `ctx`, newline-separated."""
        return "\n".join(self.lines(ctx)).encode()

    def lines(self, ctx: Context) -> list[str]:
        """One line per metric, in the order of `metrics`."""
        values = stat_values(ctx)
        service = ctx.service
        service_name = (service.name or service.host or "").replace(".", "_") if service else ""
        status = str(ctx.response.status_code) if ctx.response is not None else "-"
        out = []
        for metric in self.metrics:
            tags = [f"{self.service_name_tag}:{service_name}", f"{self.status_tag}:{status}"]
            if metric.consumer_identifier is not None:
                consumer = consumer_identity(ctx.consumer, metric.consumer_identifier)
                if consumer is not None:
                    if metric.consumer_identifier == "consumer_id":
                        consumer = consumer.replace("-", "_")
                    tags.append(f"{self.consumer_tag}:{consumer}")
            tags.extend(metric.tags or ())
            out.append(
                line(
                    self.prefix,
                    STAT_NAMES[metric.name],
                    values[metric.name],
                    STAT_TYPES[metric.stat_type],
                    metric.sample_rate,
                    "|#" + ",".join(tags),
                )
            )
        return out

    def _make_queue(self) -> LogQueue:
        return LogQueue(
            f"datadog {self.host}:{self.port}", _AgentSender(self), self.effective_queue
        )


class _AgentSender(UdpSender):
    """The statsd UDP sender, with the agent's address read from the environment when the
    config leaves it out."""

    def __init__(self, plugin: Datadog) -> None:
        super().__init__(plugin.host, plugin.port)

    def address(self) -> tuple[str, int]:
        host = self.host if self.host is not None else os.environ.get(HOST_VARIABLE)
        port = self.port
        if port is None:
            try:
                port = int(os.environ.get(PORT_VARIABLE, ""))
            except ValueError:
                port = None
        if not host or port is None:
            raise OSError(f"no Datadog agent address: set host and port, or {HOST_VARIABLE}")
        return host, port


register(Datadog)
