"""prometheus: Kong's request metrics, kept in a Prometheus registry of the gateway's own.

The plugin records in the `log` phase; `pygateway.metrics.app(gateway)` serves the registry
as `/metrics`. Names, labels and buckets are Kong 3.x's (in milliseconds, so Grafana's Kong
dashboard works), under `prefix` instead of `kong`. prometheus-client is an extra:
`pip install 'pygateway[prometheus]'`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Any

import attrs

from .._exceptions import ConfigurationError
from .._schema import field
from ._base import Plugin
from ._registry import register

if TYPE_CHECKING:
    from .._context import Context
    from .._gateway import Gateway

__all__ = ["Prometheus", "gateway_registry", "health_collector", "require_prometheus_client"]

#: Kong's buckets (exporter.lua), in milliseconds.
KONG_LATENCY_BUCKETS = (1, 2, 5, 7, 10, 15, 20, 30, 50, 75, 100, 200, 500, 750, 1000)
UPSTREAM_LATENCY_BUCKETS = (25, 50, 80, 100, 250, 400, 700, 1000, 2000, 5000, 10000, 30000, 60000)

_PREFIX = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_STATE_KEY = ("prometheus", "registry")
#: Kong's upstream_target_health states, from the health report's.
_STATES = {
    "HEALTHCHECKS_OFF": "healthchecks_off",
    "HEALTHY": "healthy",
    "UNHEALTHY": "unhealthy",
    "DNS_ERROR": "dns_error",
}


def require_prometheus_client() -> ModuleType:
    """The prometheus_client module, or a ConfigurationError naming the extra to install."""
    try:
        import prometheus_client
    except ImportError:
        raise ConfigurationError(
            "the prometheus plugin needs prometheus-client: pip install 'pygateway[prometheus]'"
        ) from None
    return prometheus_client


def _check_prefix(value: str) -> str | None:
    if not isinstance(value, str) or not _PREFIX.fullmatch(value):
        return f"must be a Prometheus metric name prefix like 'pygateway' (got {value!r})"
    return None


@attrs.frozen(kw_only=True)
class Prometheus(Plugin):
    """Count requests, latencies and bandwidth per service and route, as Kong does.

    Each group of metrics is off until its toggle is on (Kong 3.x's defaults):
    `status_code_metrics` (`<prefix>_http_requests_total`), `latency_metrics` (the three
    `*_latency_ms` histograms), `bandwidth_metrics` (`<prefix>_bandwidth_bytes`),
    `upstream_health_metrics` (`<prefix>_upstream_target_health`, read when scraped);
    `per_consumer` fills the `consumer` label. Serve them with `pygateway.metrics.app`.

    Example: `Prometheus(status_code_metrics=True, latency_metrics=True)`.

    Raises ConfigurationError if prometheus-client is not installed.
    """

    name = "prometheus"
    priority = 13

    per_consumer: bool = False
    status_code_metrics: bool = False
    latency_metrics: bool = False
    bandwidth_metrics: bool = False
    upstream_health_metrics: bool = False
    #: Accepted for Kong configs; AI and Wasm metrics are not produced (yet).
    ai_metrics: bool = False
    wasm_metrics: bool = False
    #: pygateway's: the metric name prefix (Kong's is fixed: `kong`).
    prefix: str = field("pygateway", check=_check_prefix)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        require_prometheus_client()  # fail at configuration time, not on the first request

    async def log(self, ctx: Context) -> None:
        if not (self.status_code_metrics or self.latency_metrics or self.bandwidth_metrics):
            return
        families = _families(ctx.gateway, self.prefix)
        service = ctx.service
        route = ctx.route
        service_name = (service.name or service.host or "") if service is not None else ""
        route_name = (route.name or route.id or "") if route is not None else ""
        consumer = ""
        if self.per_consumer and ctx.consumer is not None:
            c = ctx.consumer
            consumer = c.username or c.custom_id or c.id or ""
        response = ctx.response
        if self.status_code_metrics and response is not None:
            source = "service" if response.source == "service" else "kong"
            key = (service_name, route_name, response.status_code, source, consumer)
            families.requests.child(key).inc()
        if self.latency_metrics:
            latencies = ctx.latencies
            request = latencies.get("request")
            upstream = latencies.get("upstream")
            route_key = (service_name, route_name)
            if request is not None:
                families.request_latency.child(route_key).observe(request)
                own = request - upstream if upstream is not None else request
                families.kong_latency.child(route_key).observe(max(own, 0))
            if upstream is not None:
                families.upstream_latency.child(route_key).observe(upstream)
        if self.bandwidth_metrics:
            # As nginx's `request_length` and `bytes_sent` count them.
            ingress, egress = ctx.request_size, ctx.response_size
            bandwidth = families.bandwidth
            bandwidth.child((service_name, route_name, "ingress", consumer)).inc(ingress)
            if egress:
                bandwidth.child((service_name, route_name, "egress", consumer)).inc(egress)


#: How many label-bound children a `_Family` keeps at most before it starts over.
MAX_CACHED_CHILDREN = 10_000


class _Family:
    """A metric family, and its label-bound children cached by their label values.

    prometheus-client's `.labels()` costs a microsecond a call (argument checks, `str()` of
    each value, a lock); the log phase would call it up to six times a request. The cache
    is a dict lookup instead. Its keys are label values taken from configured entities
    (service, route and consumer names), the status code and fixed words, never from what
    a client sent, so it holds no more series than the registry itself; should it reach
    `MAX_CACHED_CHILDREN`, it is emptied (the registry keeps the series: a child that is
    looked up again is the same one).
    """

    __slots__ = ("_children", "metric")

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self._children: dict[tuple[str | int, ...], Any] = {}

    def child(self, labels: tuple[str | int, ...]) -> Any:
        """The child for these label values (in the family's label order)."""
        child = self._children.get(labels)
        if child is None:
            if len(self._children) >= MAX_CACHED_CHILDREN:
                self._children.clear()
            child = self._children[labels] = self.metric.labels(*labels)
        return child


@attrs.frozen
class _Families:
    requests: _Family
    request_latency: _Family
    upstream_latency: _Family
    kong_latency: _Family
    bandwidth: _Family


class _GatewayMetrics:
    """A gateway's registry: metric families per prefix, and the upstream health collector."""

    def __init__(self, gateway: Gateway) -> None:
        client = require_prometheus_client()
        self.registry = client.CollectorRegistry(auto_describe=True)
        self.families: dict[str, _Families] = {}
        self.registry.register(health_collector(gateway))

    def families_for(self, prefix: str) -> _Families:
        families = self.families.get(prefix)
        if families is None:
            families = self.families[prefix] = self._build(prefix)
        return families

    def _build(self, prefix: str) -> _Families:
        client = require_prometheus_client()
        registry = self.registry
        route = ("service", "route")
        return _Families(
            requests=_Family(
                client.Counter(
                    f"{prefix}_http_requests",
                    "HTTP status codes per consumer/service/route",
                    ("service", "route", "code", "source", "consumer"),
                    registry=registry,
                )
            ),
            request_latency=_Family(
                client.Histogram(
                    f"{prefix}_request_latency_ms",
                    "Total latency incurred during requests for each service/route",
                    route,
                    buckets=UPSTREAM_LATENCY_BUCKETS,
                    registry=registry,
                )
            ),
            upstream_latency=_Family(
                client.Histogram(
                    f"{prefix}_upstream_latency_ms",
                    "Latency added by upstream response for each service/route",
                    route,
                    buckets=UPSTREAM_LATENCY_BUCKETS,
                    registry=registry,
                )
            ),
            kong_latency=_Family(
                client.Histogram(
                    f"{prefix}_{prefix}_latency_ms",
                    "Latency added by the gateway and its plugins for each service/route",
                    route,
                    buckets=KONG_LATENCY_BUCKETS,
                    registry=registry,
                )
            ),
            # A gauge only to keep Kong's name: a prometheus-client counter always ends
            # in _total. It only goes up; "sum" adds the workers' values in multiprocess mode.
            bandwidth=_Family(
                client.Gauge(
                    f"{prefix}_bandwidth_bytes",
                    "Total bandwidth (ingress/egress) throughput in bytes",
                    ("service", "route", "direction", "consumer"),
                    registry=registry,
                    multiprocess_mode="sum",
                )
            ),
        )


def _state(gateway: Gateway) -> _GatewayMetrics:
    state: _GatewayMetrics | None = gateway.shared.get(_STATE_KEY)
    if state is None:
        # setdefault: a status server's thread may get here at the same time.
        state = gateway.shared.setdefault(_STATE_KEY, _GatewayMetrics(gateway))
    return state


def _families(gateway: Gateway, prefix: str) -> _Families:
    return _state(gateway).families_for(prefix)


def gateway_registry(gateway: Gateway) -> Any:
    """The gateway's own `CollectorRegistry` (created on first use)."""
    return _state(gateway).registry


class _HealthCollector:
    """`<prefix>_upstream_target_health`, read from the gateway's pools when scraped, for
    every prefix whose prometheus plugin has `upstream_health_metrics` on."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def describe(self) -> list[Any]:
        return []  # unknown until scraped: the prefixes come from the configuration

    def collect(self) -> Iterator[Any]:
        gateway = self.gateway
        prefixes = sorted(
            {
                p.prefix
                for p in gateway.snapshot.plugins
                if isinstance(p, Prometheus) and p.upstream_health_metrics
            }
        )
        if not prefixes:
            return
        require_prometheus_client()
        from prometheus_client.core import GaugeMetricFamily

        rows: list[tuple[list[str], float]] = []
        for name, pool in sorted(gateway.pools.items()):
            for target in pool.health_report()["data"]:
                addresses = target["data"]["addresses"]
                if not addresses:
                    rows += _rows(name, target["target"], "", target["health"])
                for address in addresses:
                    rows += _rows(name, target["target"], _address(address), address["health"])
        for prefix in prefixes:
            family = GaugeMetricFamily(
                f"{prefix}_upstream_target_health",
                "Health status of targets of upstream. States = healthchecks_off|healthy|"
                "unhealthy|dns_error, value is 1 when state is populated.",
                labels=("upstream", "target", "address", "state", "subsystem"),
            )
            for labels, value in rows:
                family.add_metric(labels, value)
            yield family


def _address(address: dict[str, Any]) -> str:
    ip = str(address["ip"])
    host = f"[{ip}]" if ":" in ip else ip
    return f"{host}:{address['port']}"


def _rows(upstream: str, target: str, address: str, health: str) -> list[tuple[list[str], float]]:
    current = _STATES.get(health, "healthchecks_off")
    return [
        ([upstream, target, address, state, "http"], 1.0 if state == current else 0.0)
        for state in _STATES.values()
    ]


def health_collector(gateway: Gateway) -> Any:
    """A collector of the gateway's upstream target health (for a scrape registry)."""
    return _HealthCollector(gateway)


register(Prometheus)
