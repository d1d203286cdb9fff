"""The bundled prometheus plugin and `pygateway.metrics`, after Kong's spec for it
(spec/03-plugins/26-prometheus): what is counted, under which labels and buckets."""

from __future__ import annotations

import sys
from typing import Any

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

import pygateway as gw
from pygateway import metrics
from pygateway.plugins import _prometheus
from pygateway.plugins._key_auth import KeyAuth
from pygateway.plugins._prometheus import (
    KONG_LATENCY_BUCKETS,
    UPSTREAM_LATENCY_BUCKETS,
    Prometheus,
)
from pygateway.plugins._request_termination import RequestTermination
from pygateway.testing import client, echo_engine

ALL = {"status_code_metrics": True, "latency_metrics": True, "bandwidth_metrics": True}


def gateway_with(plugin: Prometheus, **extra: Any) -> gw.Gateway:
    return gw.Gateway(
        services=[
            gw.Service(
                name="s",
                url="http://echo.internal",
                routes=[
                    gw.Route(name="api", paths=["/api"]),
                    gw.Route(name="other", paths=["/other"]),
                    gw.Route(
                        name="closed",
                        paths=["/closed"],
                        plugins=[RequestTermination(status_code=403, message="closed")],
                    ),
                ],
            )
        ],
        plugins=[plugin, *extra.pop("plugins", [])],
        engines={"echo.internal": echo_engine()},
        **extra,
    )


async def scrape(gateway: gw.Gateway | None) -> dict[str, Any]:
    """Families by name, from the text a scrape returns (parsed by prometheus-client)."""
    async with client(metrics.app(gateway)) as http:
        response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(response.text)}


def samples(families: dict[str, Any], name: str, suffix: str = "") -> dict[Any, float]:
    """{frozenset(labels): value} for the samples `name + suffix` of family `name`."""
    family = families.get(name)
    if family is None:
        return {}
    return {frozenset(s.labels.items()): s.value for s in family.samples if s.name == name + suffix}


def labels(**values: str) -> frozenset[tuple[str, str]]:
    return frozenset(values.items())


async def test_requests_are_counted_by_service_route_status_and_source() -> None:
    gateway = gateway_with(Prometheus(status_code_metrics=True))
    async with client(gateway) as http:
        for _ in range(3):
            assert (await http.get("/api/status/200")).status_code == 200
        assert (await http.get("/api/status/404")).status_code == 404
        assert (await http.get("/other/status/500")).status_code == 500
        assert (await http.get("/closed")).status_code == 403
    counts = samples(await scrape(gateway), "pygateway_http_requests", "_total")
    common = {"service": "s", "consumer": ""}
    assert counts == {
        labels(route="api", code="200", source="service", **common): 3.0,
        labels(route="api", code="404", source="service", **common): 1.0,
        labels(route="other", code="500", source="service", **common): 1.0,
        # The gateway answered itself: Kong's source "kong".
        labels(route="closed", code="403", source="kong", **common): 1.0,
    }


async def test_counts_stay_right_when_the_cache_of_labelled_series_starts_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_prometheus, "MAX_CACHED_CHILDREN", 1)
    gateway = gateway_with(Prometheus(**ALL))
    async with client(gateway) as http:
        for path in ("/api/status/200", "/other/status/200", "/api/status/200", "/api/status/404"):
            await http.get(path)
    families = await scrape(gateway)
    counts = samples(families, "pygateway_http_requests", "_total")
    common = {"service": "s", "source": "service", "consumer": ""}
    assert counts == {
        labels(route="api", code="200", **common): 2.0,
        labels(route="other", code="200", **common): 1.0,
        labels(route="api", code="404", **common): 1.0,
    }
    observed = samples(families, "pygateway_request_latency_ms", "_count")
    assert observed == {
        labels(service="s", route="api"): 3.0,
        labels(service="s", route="other"): 1.0,
    }


async def test_the_consumer_label_is_filled_only_with_per_consumer() -> None:
    consumers = [
        gw.Consumer(username="alice", credentials=[gw.KeyAuthCredential(key="a-key")]),
        gw.Consumer(username="bob", credentials=[gw.KeyAuthCredential(key="b-key")]),
    ]
    for per_consumer in (True, False):
        gateway = gateway_with(
            Prometheus(status_code_metrics=True, per_consumer=per_consumer),
            plugins=[KeyAuth()],
            consumers=consumers,
        )
        async with client(gateway) as http:
            for key in ("a-key", "a-key", "b-key", "wrong"):
                await http.get("/api/status/200", headers={"apikey": key})
        counts = samples(await scrape(gateway), "pygateway_http_requests", "_total")
        common = {"service": "s", "route": "api"}
        if per_consumer:
            assert counts == {
                labels(code="200", source="service", consumer="alice", **common): 2.0,
                labels(code="200", source="service", consumer="bob", **common): 1.0,
                labels(code="401", source="kong", consumer="", **common): 1.0,
            }
        else:
            assert counts == {
                labels(code="200", source="service", consumer="", **common): 3.0,
                labels(code="401", source="kong", consumer="", **common): 1.0,
            }


async def test_latencies_fall_in_kongs_millisecond_buckets() -> None:
    gateway = gateway_with(Prometheus(latency_metrics=True))
    async with client(gateway) as http:
        assert (await http.get("/api/delay/300")).status_code == 200
        assert (await http.get("/closed")).status_code == 403
    families = await scrape(gateway)
    api = labels(service="s", route="api")
    for name in ("pygateway_request_latency_ms", "pygateway_upstream_latency_ms"):
        buckets = {
            dict(k)["le"]: v for k, v in samples(families, name, "_bucket").items() if api <= k
        }
        assert list(buckets) == [*(f"{float(b)}" for b in UPSTREAM_LATENCY_BUCKETS), "+Inf"]
        # The upstream took at least 300 ms: nothing at or under 250, all of it by +Inf.
        assert buckets["250.0"] == 0.0
        assert buckets["+Inf"] == 1.0
        assert samples(families, name, "_sum")[api] >= 300
    own = samples(families, "pygateway_pygateway_latency_ms", "_bucket")
    assert sorted({float(dict(k)["le"]) for k in own}) == [
        *(float(b) for b in KONG_LATENCY_BUCKETS),
        float("inf"),
    ]
    # A request the gateway answered itself has no upstream latency, only its own.
    closed = labels(service="s", route="closed")
    assert closed in samples(families, "pygateway_request_latency_ms", "_count")
    assert closed in samples(families, "pygateway_pygateway_latency_ms", "_count")
    assert closed not in samples(families, "pygateway_upstream_latency_ms", "_count")


async def test_bandwidth_counts_bodies_in_and_out_by_direction() -> None:
    gateway = gateway_with(Prometheus(bandwidth_metrics=True, per_consumer=True))
    async with client(gateway) as http:
        response = await http.post("/api/bytes/5000", content=b"x" * 3000)
        assert len(response.content) == 5000
    families = await scrape(gateway)
    assert families["pygateway_bandwidth_bytes"].type == "gauge"
    values = samples(families, "pygateway_bandwidth_bytes")
    common = {"service": "s", "route": "api", "consumer": ""}
    ingress = values[labels(direction="ingress", **common)]
    egress = values[labels(direction="egress", **common)]
    # Body plus request line and headers; not double-counted.
    assert 3000 < ingress < 3600
    assert 5000 < egress < 5600


async def test_each_toggle_turns_its_metrics_on_and_all_are_off_by_default() -> None:
    gateway = gateway_with(Prometheus())
    async with client(gateway) as http:
        await http.get("/api/status/200")
    assert not any(name.startswith("pygateway_") for name in await scrape(gateway))

    gateway = gateway_with(Prometheus(latency_metrics=True))
    async with client(gateway) as http:
        await http.get("/api/status/200")
    names = {n for n, f in (await scrape(gateway)).items() if f.samples}
    assert {n for n in names if not n.endswith("_created")} == {
        "pygateway_request_latency_ms",
        "pygateway_upstream_latency_ms",
        "pygateway_pygateway_latency_ms",
    }


async def test_the_prefix_replaces_pygateway_so_kong_dashboards_find_kongs_names() -> None:
    gateway = gateway_with(Prometheus(prefix="kong", **ALL))
    async with client(gateway) as http:
        await http.get("/api/status/200")
    names = {n for n, f in (await scrape(gateway)).items() if f.samples}
    assert {
        "kong_http_requests",
        "kong_kong_latency_ms",
        "kong_request_latency_ms",
        "kong_upstream_latency_ms",
        "kong_bandwidth_bytes",
    } <= names
    assert not any(n.startswith("pygateway") for n in names)


async def test_each_gateway_has_its_own_registry_and_the_global_one_is_untouched() -> None:
    first = gateway_with(Prometheus(status_code_metrics=True))
    second = gateway_with(Prometheus(status_code_metrics=True))
    async with client(first) as http:
        await http.get("/api/status/200")
        await http.get("/api/status/200")
    async with client(second) as http:
        await http.get("/api/status/200")
    key = labels(service="s", route="api", code="200", source="service", consumer="")
    assert samples(await scrape(first), "pygateway_http_requests", "_total")[key] == 2.0
    assert samples(await scrape(second), "pygateway_http_requests", "_total")[key] == 1.0
    assert prometheus_client.REGISTRY.get_sample_value("pygateway_http_requests_total") is None


def backend(**fields: Any) -> gw.Upstream:
    targets = [gw.Target("10.0.0.1:80"), gw.Target("10.0.0.2:8080")]
    return gw.Upstream(name="backend", targets=targets, **fields)


def health(families: dict[str, Any]) -> dict[tuple[str, str, str], float]:
    return {
        (dict(k)["target"], dict(k)["address"], dict(k)["state"]): v
        for k, v in samples(families, "pygateway_upstream_target_health").items()
    }


async def test_upstream_target_health_is_one_on_the_current_state() -> None:
    passive = {"unhealthy": {"http_failures": 5}}  # checks on, so health can be set by hand
    gateway = gateway_with(
        Prometheus(upstream_health_metrics=True),
        upstreams=[backend(healthchecks={"passive": passive})],
    )
    gateway.set_target_health("backend", "10.0.0.2:8080", False)
    states = health(await scrape(gateway))
    assert states == {
        **{("10.0.0.1:80", "10.0.0.1:80", s): 0.0 for s in ("healthchecks_off", "dns_error")},
        ("10.0.0.1:80", "10.0.0.1:80", "healthy"): 1.0,
        ("10.0.0.1:80", "10.0.0.1:80", "unhealthy"): 0.0,
        **{("10.0.0.2:8080", "10.0.0.2:8080", s): 0.0 for s in ("healthchecks_off", "dns_error")},
        ("10.0.0.2:8080", "10.0.0.2:8080", "healthy"): 0.0,
        ("10.0.0.2:8080", "10.0.0.2:8080", "unhealthy"): 1.0,
    }
    labelled = samples(await scrape(gateway), "pygateway_upstream_target_health")
    assert all(dict(k)["upstream"] == "backend" for k in labelled)
    assert all(dict(k)["subsystem"] == "http" for k in labelled)


async def test_upstream_health_is_healthchecks_off_without_checks_and_absent_when_untoggled() -> (
    None
):
    gateway = gateway_with(Prometheus(upstream_health_metrics=True), upstreams=[backend()])
    states = health(await scrape(gateway))
    assert {k for k, v in states.items() if v == 1.0} == {
        ("10.0.0.1:80", "10.0.0.1:80", "healthchecks_off"),
        ("10.0.0.2:8080", "10.0.0.2:8080", "healthchecks_off"),
    }
    gateway = gateway_with(Prometheus(status_code_metrics=True), upstreams=[backend()])
    assert health(await scrape(gateway)) == {}


async def test_with_a_multiprocess_dir_the_app_reads_the_workers_files(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This process's values live in memory (prometheus-client chose at import time), so
    # the files are empty: what is served is what the directory holds, not the registry.
    gateway = gateway_with(
        Prometheus(status_code_metrics=True, upstream_health_metrics=True),
        upstreams=[backend()],
    )
    async with client(gateway) as http:
        await http.get("/api/status/200")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    families = await scrape(gateway)
    assert samples(families, "pygateway_http_requests", "_total") == {}
    assert health(families)  # upstream health is this process's own
    assert (await scrape(None)) == {}


async def test_the_metrics_app_serves_only_get_metrics() -> None:
    gateway = gateway_with(Prometheus(status_code_metrics=True))
    async with client(metrics.app(gateway)) as http:
        assert (await http.get("/elsewhere")).status_code == 404
        refused = await http.post("/metrics")
        assert refused.status_code == 405
        assert refused.headers["allow"] == "GET, HEAD"
        head = await http.head("/metrics")
        assert head.status_code == 200
        assert head.content == b""


def test_declarative_config_round_trips_and_uses_kongs_field_names() -> None:
    config = {
        "_format_version": "3.0",
        "plugins": [
            {
                "name": "prometheus",
                "config": {"per_consumer": True, "status_code_metrics": True, "prefix": "kong"},
            }
        ],
    }
    gateway = gw.Gateway.from_config(config)
    (plugin,) = gateway.config.plugins
    assert isinstance(plugin, Prometheus)
    assert plugin.per_consumer
    assert plugin.status_code_metrics
    assert not plugin.latency_metrics
    dumped = gateway.to_config()["plugins"][0]
    assert dumped["name"] == "prometheus"
    assert dumped["config"] == {
        "per_consumer": True,
        "status_code_metrics": True,
        "latency_metrics": False,
        "bandwidth_metrics": False,
        "upstream_health_metrics": False,
        "ai_metrics": False,
        "wasm_metrics": False,
        "prefix": "kong",
    }
    assert gw.Gateway.from_config(gateway.to_config()).config == gateway.config
    assert Prometheus.priority == 13


@pytest.mark.parametrize("prefix", ["", "9lives", "my-gateway", "a b"])
def test_a_prefix_that_is_not_a_metric_name_is_refused(prefix: str) -> None:
    with pytest.raises(gw.ConfigurationError, match="prefix"):
        Prometheus(prefix=prefix)


def test_without_the_extra_the_error_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes `import prometheus_client` raise ImportError.
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(gw.ConfigurationError, match=r"pygateway\[prometheus\]"):
        Prometheus(status_code_metrics=True)
    with pytest.raises(gw.ConfigurationError, match=r"pip install 'pygateway\[prometheus\]'"):
        metrics.app(None)
    with pytest.raises(gw.ConfigurationError, match="prometheus-client"):
        gw.Gateway.from_config(
            {"_format_version": "3.0", "plugins": [{"name": "prometheus", "config": {}}]}
        )
