"""statsd: send each request's metrics to a StatsD server, as Kong's statsd plugin does.

For every request the log phase turns the configured `metrics` into StatsD lines
(`kong.service.users.request.count:1|c`), puts them on a `LogQueue` and returns; the
queue's sender thread sends them over UDP (several lines in one datagram, up to
`udp_packet_size` bytes, when that is set) or, with `use_tcp`, as newline-terminated lines
on a TCP connection it keeps open. Nothing waits for the server; a datagram that is lost is
lost.

Without `tag_style` the service (or "global.unmatched"), the consumer and the workspace
are written into the metric's name, as Kong does. With a `tag_style` (dogstatsd,
influxdb, librato, signalfx) they become tags, and the metrics that only exist as names
(`status_count`, `unique_users`, the `*_per_user*` and `*_per_workspace` ones) are not
sent, as in Kong.

The line building and the UDP sender are shared with the datadog plugin (`_datadog`).
"""

from __future__ import annotations

import functools
import logging
import re
import socket
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import attrs

from .._entities import entity_id
from .._exceptions import ConfigurationError
from .._schema import Record, field
from ._log_serializer import latencies
from ._queue import LogQueue, QueueConfig, QueuedLogger, check_optional
from ._registry import register
from ._tcp_log import TcpSender, check_host

if TYPE_CHECKING:
    from .._context import Context
    from .._entities import Consumer, Service

__all__ = ["Statsd", "StatsdMetric"]

logger = logging.getLogger("pygateway.plugins.log")

MetricName = Literal[
    "kong_latency",
    "latency",
    "request_count",
    "request_per_user",
    "request_size",
    "response_size",
    "status_count",
    "status_count_per_user",
    "unique_users",
    "upstream_latency",
    "status_count_per_workspace",
    "status_count_per_user_per_route",
    "shdict_usage",
]
StatType = Literal["counter", "gauge", "histogram", "meter", "set", "timer"]
ConsumerIdentifier = Literal["consumer_id", "custom_id", "username"]
ServiceIdentifier = Literal["service_id", "service_name", "service_host", "service_name_or_host"]
WorkspaceIdentifier = Literal["workspace_id", "workspace_name"]
TagStyle = Literal["dogstatsd", "influxdb", "librato", "signalfx"]

#: The StatsD type suffix of each stat type (datadog adds "distribution": "d").
STAT_TYPES = {
    "gauge": "g",
    "counter": "c",
    "timer": "ms",
    "histogram": "h",
    "meter": "m",
    "set": "s",
    "distribution": "d",
}
#: The metric path of the metrics whose value is read off the request, and nothing more.
STAT_NAMES = {
    "request_size": "request.size",
    "response_size": "response.size",
    "latency": "latency",
    "upstream_latency": "upstream_latency",
    "kong_latency": "kong_latency",
    "request_count": "request.count",
}
#: There is one workspace here, Kong's "default"; its id is stable across runs.
WORKSPACE_NAME = "default"
WORKSPACE_ID = entity_id("workspaces", WORKSPACE_NAME)
#: Kong's `udp_packet_size` upper bound: the largest UDP payload over IPv4.
MAX_UDP_PACKET = 65507
_MAX_INT = 2**31 - 2
_STATUS_RANGE = re.compile(r"^[0-9]+-[0-9]+$")
# Kong checks the list against the first pattern, then reads ranges with this one.
_STATUS_RANGE_PARTS = re.compile(r"(\d\d\d)-(\d\d\d)")


def _check_positive(value: float | None) -> str | None:
    if value is not None and value <= 0:
        return "value must be greater than 0"
    return None


def entity_check_required(exc: ConfigurationError, field_name: str) -> ConfigurationError:
    """Kong's wording when a field an entity check depends on is missing."""
    return ConfigurationError(
        errors=[
            (
                path,
                "field required for entity check"
                if path == (field_name,) and reason == "required field missing"
                else reason,
            )
            for path, reason in exc.errors
        ]
    )


def require_sample_rate(metric: Any) -> None:
    """Kong's entity check: counters and gauges need a `sample_rate`."""
    if metric.stat_type in ("counter", "gauge") and metric.sample_rate is None:
        raise ConfigurationError("required field missing", path=("sample_rate",))


@attrs.frozen(kw_only=True)
class StatsdMetric(Record):
    """One metric to send: which (`name`), as what (`stat_type`), and, for the metrics that
    name a consumer, service or workspace, which of its attributes to use (else the
    plugin's `*_identifier_default`). Counters and gauges need a `sample_rate`, which is
    written on the line (`|@0.5`) when not 1; nothing is sampled here (nor in Kong).

    `shdict_usage` is accepted and sends nothing: there are no nginx shared dicts.
    """

    # Required: None is refused ("required field missing"), as a missing Kong field is.
    name: MetricName = attrs.field(default=None)
    stat_type: StatType = attrs.field(default=None)
    sample_rate: float | None = field(None, check=_check_positive)
    consumer_identifier: ConsumerIdentifier | None = None
    service_identifier: ServiceIdentifier | None = None
    workspace_identifier: WorkspaceIdentifier | None = None

    def __attrs_post_init__(self) -> None:
        try:
            super().__attrs_post_init__()
        except ConfigurationError as exc:
            raise entity_check_required(exc, "stat_type") from None
        require_sample_rate(self)


def _metric(name: str, stat_type: str, sample_rate: float | None = None) -> StatsdMetric:
    return StatsdMetric(name=name, stat_type=stat_type, sample_rate=sample_rate)  # type: ignore[arg-type]


DEFAULT_METRICS = (
    _metric("request_count", "counter", 1),
    _metric("latency", "timer"),
    _metric("request_size", "counter", 1),
    _metric("status_count", "counter", 1),
    _metric("response_size", "counter", 1),
    _metric("unique_users", "set"),
    _metric("request_per_user", "counter", 1),
    _metric("upstream_latency", "timer"),
    _metric("kong_latency", "timer"),
    _metric("status_count_per_user", "counter", 1),
    _metric("status_count_per_workspace", "counter", 1),
    _metric("status_count_per_user_per_route", "counter", 1),
    _metric("shdict_usage", "gauge", 1),
)


def effective_queue(
    queue: QueueConfig, queue_size: int | None, flush_timeout: float | None
) -> QueueConfig:
    """`queue`, with Kong's deprecated `queue_size` / `flush_timeout` applied."""
    changes: dict[str, Any] = {}
    if queue_size is not None:
        changes["max_batch_size"] = queue_size
    if flush_timeout is not None:
        changes["max_coalescing_delay"] = flush_timeout
    return attrs.evolve(queue, **changes) if changes else queue


@functools.cache
def node_hostname() -> str:
    """This machine's name with its dots made underscores (they separate a metric's path)."""
    return socket.gethostname().replace(".", "_")


def number(value: float | int) -> str:
    """A number as Lua prints it: 1 for 1.0, 0.5 for 0.5."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def line(
    prefix: str, stat: str, value: Any, kind: str, sample_rate: float | None, tags: str = ""
) -> str:
    """One StatsD line, `prefix.stat:value|kind|@rate`, with `tags` (the datadog tail,
    `|#a:b`) appended."""
    rate = f"|@{number(sample_rate)}" if sample_rate is not None and sample_rate != 1 else ""
    shown = number(value) if isinstance(value, int | float) else value
    return f"{prefix}.{stat}:{shown}|{kind}{rate}{tags}"


def tagged_line(
    prefix: str,
    stat: str,
    value: Any,
    kind: str,
    sample_rate: float | None,
    tags: Mapping[str, Any],
    style: TagStyle,
) -> str:
    """One StatsD line carrying `tags` the way `style` writes them."""
    if style == "dogstatsd":
        text = ",".join(f"{k}:{v}" for k, v in tags.items())
        return line(prefix, stat, value, kind, sample_rate, f"|#{text}")
    text = ",".join(f"{k}={v}" for k, v in tags.items())
    where = {
        "influxdb": f"{stat},{text}",
        "librato": f"{stat}#{text}",
        "signalfx": f"{stat}[{text}]",
    }
    return line(prefix, where[style], value, kind, sample_rate)


def stat_values(ctx: Context) -> dict[str, int]:
    """The values Kong's log serializer gives the plain metrics, for the request `ctx`:
    sizes in bytes, latencies in milliseconds (`upstream_latency` -1 when no upstream
    was waited for)."""
    times = latencies(ctx)
    return {
        "request_size": ctx.request_size,
        "response_size": ctx.response_size,
        "latency": times["request"],
        "upstream_latency": times["proxy"],
        "kong_latency": times["kong"],
        "request_count": 1,
    }


def status_of(ctx: Context) -> int:
    return ctx.response.status_code if ctx.response is not None else 0


def consumer_identity(consumer: Consumer | None, identifier: str) -> str | None:
    if consumer is None:
        return None
    if identifier == "consumer_id":
        return consumer.id
    return consumer.custom_id if identifier == "custom_id" else consumer.username


def _service_identity(service: Service | None, identifier: str) -> str | None:
    if service is None:
        return None
    if identifier == "service_id":
        return service.id
    if identifier == "service_name":
        return service.name
    if identifier == "service_host":
        return service.host
    return service.name or service.host


def _workspace_identity(identifier: str) -> str:
    return WORKSPACE_ID if identifier == "workspace_id" else WORKSPACE_NAME


def _check_status_ranges(ranges: Sequence[str] | None) -> list[tuple[tuple[Any, ...], str]]:
    return [
        (("allow_status_codes", i), f"invalid value: {value}")
        for i, value in enumerate(ranges or ())
        if not _STATUS_RANGE.match(value)
    ]


@attrs.frozen(kw_only=True)
class Statsd(QueuedLogger):
    """Send StatsD metrics about each request to `host`:`port` (UDP, or TCP with
    `use_tcp`).

    `metrics` (Kong's default list when not given) says which metrics; metric names start
    with `prefix` (then `.node.<hostname>` with `hostname_in_prefix`, when there is no
    `tag_style`). `allow_status_codes` ("200-299", ...) limits the requests measured to
    those answered with a status in one of the ranges. With `udp_packet_size` above 0, lines
    are combined (newline-separated) into datagrams of at most that many bytes. `queue`
    batches and retries as for the other loggers.
    """

    name = "statsd"
    priority = 11

    host: str = field("localhost", check=check_host)
    port: int = field(8125, between=(0, 65535))
    prefix: str = "kong"
    metrics: tuple[StatsdMetric, ...] = DEFAULT_METRICS
    allow_status_codes: tuple[str, ...] | None = None
    udp_packet_size: float = field(0, between=(0, MAX_UDP_PACKET))
    use_tcp: bool = False
    hostname_in_prefix: bool = False
    consumer_identifier_default: ConsumerIdentifier = "custom_id"
    service_identifier_default: ServiceIdentifier = "service_name_or_host"
    workspace_identifier_default: WorkspaceIdentifier = "workspace_id"
    tag_style: TagStyle | None = None
    queue: QueueConfig = attrs.field(factory=QueueConfig)
    #: Deprecated in Kong 3 (as here): `retry_count` is ignored; `queue_size` and
    #: `flush_timeout` stand in for `queue.max_batch_size` and `queue.max_coalescing_delay`.
    retry_count: int | None = None
    queue_size: int | None = field(None, check=check_optional(1, 1_000_000))
    flush_timeout: float | None = field(None, check=check_optional(0, 3600))

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        errors = _check_status_ranges(self.allow_status_codes)
        if errors:
            raise ConfigurationError(errors=errors)

    @property
    def effective_queue(self) -> QueueConfig:
        """`queue`, with the deprecated `queue_size` / `flush_timeout` applied."""
        return effective_queue(self.queue, self.queue_size, self.flush_timeout)

    @property
    def full_prefix(self) -> str:
        if self.hostname_in_prefix and self.tag_style is None:
            return f"{self.prefix}.node.{node_hostname()}"
        return self.prefix

    def allows(self, status: int) -> bool:
        """Whether a request answered `status` is measured (`allow_status_codes`)."""
        if self.allow_status_codes is None:
            return True
        for text in self.allow_status_codes:
            found = _STATUS_RANGE_PARTS.search(text)
            if found is not None and int(found[1]) <= status <= int(found[2]):
                return True
        return False

    def entry(self, ctx: Context) -> bytes:
        """The StatsD lines for the request `ctx`, newline-separated (empty when its status
        is not allowed, or no metric applies)."""
        if not self.allows(status_of(ctx)):
            return b""
        return "\n".join(self.lines(ctx)).encode()

    def lines(self, ctx: Context) -> list[str]:
        """The StatsD lines for the request `ctx`, in the order of `metrics`."""
        values = stat_values(ctx)
        made = (self._line(ctx, metric, values) for metric in self.metrics)
        return [text for text in made if text is not None]

    def _line(self, ctx: Context, metric: StatsdMetric, values: dict[str, int]) -> str | None:
        """A metric's line for the request `ctx`, or None when there is none to send."""
        prefix = self.full_prefix
        stat = STAT_NAMES.get(metric.name)
        if stat is None:
            # It names a status, consumer or workspace: only without tags (as Kong).
            if self.tag_style is not None:
                return None
            named = self._named(ctx, metric, self._scope(ctx, metric))
            if named is None:
                return None
            stat, value, kind = named
            return line(prefix, stat, value, kind, metric.sample_rate if kind == "c" else None)
        value = values[metric.name]
        if value == -1:  # no upstream was waited for
            return None
        kind = STAT_TYPES[metric.stat_type]
        if self.tag_style is None:
            scoped = f"{self._scope(ctx, metric)}.{stat}"
            return line(prefix, scoped, value, kind, metric.sample_rate)
        tags = self._tags(ctx, metric)
        if tags is None:  # Kong: without a service, the line goes without tags
            return line(prefix, stat, value, kind, metric.sample_rate)
        return tagged_line(prefix, stat, value, kind, metric.sample_rate, tags, self.tag_style)

    def _named(self, ctx: Context, metric: StatsdMetric, scope: str) -> tuple[str, Any, str] | None:
        """(stat, value, kind) of a metric that names a status, consumer or workspace, or
        None when there is nothing to send (no consumer, say)."""
        status = status_of(ctx)
        name = metric.name
        if name == "status_count":
            return f"{scope}.status.{status}", 1, "c"
        if name == "status_count_per_workspace":
            workspace = _workspace_identity(
                metric.workspace_identifier or self.workspace_identifier_default
            )
            return f"{scope}.workspace.{workspace}.status.{status}", 1, "c"
        if name == "shdict_usage":
            return None  # no nginx shared dicts to measure
        consumer = consumer_identity(
            ctx.consumer, metric.consumer_identifier or self.consumer_identifier_default
        )
        if consumer is None:
            return None
        if name == "unique_users":
            return f"{scope}.user.uniques", consumer, "s"
        if name == "request_per_user":
            return f"{scope}.user.{consumer}.request.count", 1, "c"
        if name == "status_count_per_user":
            return f"{scope}.user.{consumer}.status.{status}", 1, "c"
        # status_count_per_user_per_route
        if ctx.route is None or ctx.route.id is None:
            return None
        return f"route.{ctx.route.id}.user.{consumer}.status.{status}", 1, "c"

    def _scope(self, ctx: Context, metric: StatsdMetric) -> str:
        if ctx.service is None:
            return "global.unmatched"
        name = _service_identity(
            ctx.service, metric.service_identifier or self.service_identifier_default
        )
        return "service." + (name.replace(".", "_") if name else "unnamed")

    def _tags(self, ctx: Context, metric: StatsdMetric) -> dict[str, Any] | None:
        service = _service_identity(
            ctx.service, metric.service_identifier or self.service_identifier_default
        )
        if service is None:
            return None
        tags: dict[str, Any] = {"service": service}
        route = ctx.route
        if route is not None and (route.name or route.id):
            tags["route"] = route.name or route.id
        tags["workspace"] = _workspace_identity(
            metric.workspace_identifier or self.workspace_identifier_default
        )
        consumer = consumer_identity(
            ctx.consumer, metric.consumer_identifier or self.consumer_identifier_default
        )
        if consumer is not None:
            tags["consumer"] = consumer
        tags["node"] = node_hostname()
        tags["status"] = status_of(ctx)
        return tags

    def _make_queue(self) -> LogQueue:
        transport = "tcp" if self.use_tcp else "udp"
        sender: UdpSender | TcpSender
        if self.use_tcp:
            # Each entry is the request's lines: newline-terminated, they are the lines.
            sender = TcpSender(self.host, self.port, timeout=TCP_TIMEOUT)
        else:
            sender = UdpSender(self.host, self.port, int(self.udp_packet_size))
        return LogQueue(f"statsd {transport}:{self.host}:{self.port}", sender, self.effective_queue)


def packets(lines: Sequence[bytes], size: int) -> list[bytes]:
    """`lines` combined, newline-separated, into packets of at most `size` bytes (0: one
    line a packet). A line longer than `size` goes alone (the receiver may truncate it)."""
    if size <= 0:
        return list(lines)
    out: list[bytes] = []
    current: list[bytes] = []
    used = 0
    for item in lines:
        extra = len(item) + (1 if current else 0)
        if current and used + extra > size:
            out.append(b"\n".join(current))
            current, used = [], 0
            extra = len(item)
        if not current and len(item) > size:
            logger.warning(
                "statsd: udp_packet_size %d is smaller than a %d-byte line: the packet may be "
                "truncated",
                size,
                len(item),
            )
        current.append(item)
        used += extra
    if current:
        out.append(b"\n".join(current))
    return out


def _lines(batch: Sequence[bytes]) -> list[bytes]:
    return [item for entry in batch for item in entry.split(b"\n") if item]


class UdpSender:
    """Sends a batch's lines as datagrams (combined up to `packet_size` bytes when above 0)
    from the queue's sender thread. The address is resolved for each batch."""

    def __init__(self, host: str | None, port: int | None, packet_size: int = 0) -> None:
        self.host = host
        self.port = port
        self.packet_size = packet_size

    def address(self) -> tuple[str, int]:
        if self.host is None or self.port is None:
            raise OSError("no StatsD host and port configured")
        return self.host, self.port

    def __call__(self, batch: Sequence[bytes]) -> None:
        host, port = self.address()
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, kind, proto) as sock:
            for packet in packets(_lines(batch), self.packet_size):
                try:
                    sock.sendto(packet, address)
                except OSError as exc:
                    # Kong logs a datagram it could not send and goes on; retrying the
                    # batch would send the others twice.
                    logger.error("statsd: failed to send data to %s:%s: %s", host, port, exc)


#: Kong's connect and send timeout for StatsD over TCP, in seconds.
TCP_TIMEOUT = 1.0


register(Statsd)
