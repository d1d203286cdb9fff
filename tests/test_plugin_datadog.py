"""The bundled datadog plugin, after Kong's specs for it (08-datadog), against a real UDP
listener on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from test_plugin_statsd import Datagrams, assert_lines, gateway_with, queue_of
from upstreams import wait_until

import pygateway as gw
from pygateway._config import dump, load
from pygateway._exceptions import ConfigurationError
from pygateway.plugins._datadog import HOST_VARIABLE, PORT_VARIABLE, Datadog
from pygateway.testing import client

ROBERT_ID = gw.Consumer(username="bob", custom_id="robert").id


@pytest.fixture
def udp() -> Iterator[Datagrams]:
    listener = Datagrams()
    yield listener
    listener.close()


async def test_default_metrics_are_tagged_with_service_status_consumer_and_app(
    udp: Datagrams,
) -> None:
    gateway = gateway_with(Datadog(host="127.0.0.1", port=udp.port), auth=True)
    async with gateway, client(gateway) as http:
        response = await http.get("/", headers={"apikey": "kong"})
        assert response.status_code == 200
        await wait_until(lambda: len(udp.lines) == 6)
    tags = "|#name:echo,status:200,consumer:robert,app:kong"
    assert_lines(
        udp.lines,
        [
            "kong.request.count:1|c" + tags,
            "kong.latency:{n}|ms" + tags,
            "kong.request.size:{n}|ms" + tags,
            "kong.response.size:{n}|ms" + tags,
            "kong.upstream_latency:{n}|ms" + tags,
            "kong.kong_latency:{n}|ms" + tags,
        ],
    )
    assert len(udp.packets) == 6  # one datagram a metric


async def test_tag_names_prefix_metric_tags_types_and_sample_rates_are_configurable(
    udp: Datagrams,
) -> None:
    plugin = Datadog.from_config(
        {
            "host": "127.0.0.1",
            "port": udp.port,
            "prefix": "edge",
            "service_name_tag": "upstream",
            "status_tag": "http_status",
            "consumer_tag": "user",
            "metrics": [
                {
                    "name": "request_count",
                    "stat_type": "counter",
                    "sample_rate": 0.5,
                    "tags": ["T2:V2", "T3:V3", "T4"],
                    "consumer_identifier": "consumer_id",
                },
                {"name": "latency", "stat_type": "gauge", "sample_rate": 1, "tags": ["T2:V2:V3"]},
                {"name": "request_size", "stat_type": "distribution"},
            ],
        }
    )
    gateway = gateway_with(plugin, auth=True)
    async with gateway, client(gateway) as http:
        await http.get("/status/201", headers={"apikey": "kong"})
        await wait_until(lambda: len(udp.lines) == 3)
    assert ROBERT_ID is not None
    assert_lines(
        udp.lines,
        [
            "edge.request.count:1|c|@0.5|#upstream:echo,http_status:201,"
            f"user:{ROBERT_ID.replace('-', '_')},T2:V2,T3:V3,T4",
            "edge.latency:{n}|g|#upstream:echo,http_status:201,T2:V2:V3",
            "edge.request.size:{n}|d|#upstream:echo,http_status:201",
        ],
    )


async def test_a_request_without_a_service_is_tagged_with_an_empty_name(udp: Datagrams) -> None:
    plugin = Datadog(
        host="127.0.0.1",
        port=udp.port,
        metrics=[
            {"name": "request_count", "stat_type": "counter", "sample_rate": 1},
            {"name": "upstream_latency", "stat_type": "timer"},
        ],
    )
    gateway = gw.Gateway(plugins=[plugin])
    async with gateway, client(gateway) as http:
        response = await http.get("/nowhere")
        assert response.status_code == 404
        await wait_until(lambda: len(udp.lines) == 2)
    # As Kong: no upstream was waited for, and upstream_latency says -1.
    assert udp.lines == [
        "kong.request.count:1|c|#name:,status:404",
        "kong.upstream_latency:-1|ms|#name:,status:404",
    ]


async def test_a_service_without_a_name_is_tagged_with_its_host(udp: Datagrams) -> None:
    plugin = Datadog(
        host="127.0.0.1",
        port=udp.port,
        metrics=[{"name": "request_count", "stat_type": "counter", "sample_rate": 1}],
    )
    gateway = gateway_with(plugin, service={})
    async with gateway, client(gateway) as http:
        await http.get("/")
        await wait_until(lambda: len(udp.lines) == 1)
    assert udp.lines == ["kong.request.count:1|c|#name:echo_internal,status:200"]


async def test_the_agent_address_comes_from_the_environment_when_not_configured(
    udp: Datagrams, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(HOST_VARIABLE, "127.0.0.1")
    monkeypatch.setenv(PORT_VARIABLE, str(udp.port))
    plugin = Datadog.from_config(
        {
            "host": None,
            "port": None,
            "metrics": [{"name": "request_count", "stat_type": "counter", "sample_rate": 1}],
        }
    )
    gateway = gateway_with(plugin)
    async with gateway, client(gateway) as http:
        await http.get("/")
        await wait_until(lambda: len(udp.lines) == 1)
    assert udp.lines == ["kong.request.count:1|c|#name:echo,status:200"]


async def test_without_an_agent_address_the_batch_is_given_up_and_requests_succeed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(HOST_VARIABLE, raising=False)
    plugin = Datadog(
        host=None,
        queue={"max_retry_time": 0.2, "initial_retry_delay": 0.01, "max_retry_delay": 0.05},
    )
    gateway = gateway_with(plugin)
    async with gateway, client(gateway) as http:
        response = await http.get("/")
        assert response.status_code == 200
        queue = queue_of(gateway, plugin)
        await wait_until(lambda: queue.failed_batches == 1)


async def test_queued_metrics_are_sent_when_the_gateway_stops(udp: Datagrams) -> None:
    plugin = Datadog(
        host="127.0.0.1",
        port=udp.port,
        queue={"max_batch_size": 100, "max_coalescing_delay": 3600},
    )
    gateway = gateway_with(plugin)
    async with gateway, client(gateway) as http:
        for _ in range(2):
            await http.get("/")
        assert len(queue_of(gateway, plugin)) == 2
        assert udp.packets == []
    await wait_until(lambda: len(udp.lines) == 12)


def test_kong_name_priority_and_defaults() -> None:
    assert (Datadog.name, Datadog.priority) == ("datadog", 10)
    plugin = Datadog()
    assert (plugin.host, plugin.port, plugin.prefix) == ("localhost", 8125, "kong")
    assert (plugin.service_name_tag, plugin.status_tag, plugin.consumer_tag) == (
        "name",
        "status",
        "consumer",
    )
    assert [(m.name, m.stat_type, m.sample_rate) for m in plugin.metrics] == [
        ("request_count", "counter", 1),
        ("latency", "timer", None),
        ("request_size", "timer", None),
        ("response_size", "timer", None),
        ("upstream_latency", "timer", None),
        ("kong_latency", "timer", None),
    ]
    assert {(m.tags, m.consumer_identifier) for m in plugin.metrics} == {
        (("app:kong",), "custom_id")
    }


def test_declarative_config_round_trips() -> None:
    config = {
        "_format_version": "3.0",
        "plugins": [
            {
                "name": "datadog",
                "config": {
                    "host": "agent.test",
                    "metrics": [{"name": "latency", "stat_type": "timer", "tags": ["a:b"]}],
                },
            }
        ],
    }
    loaded = load(config)
    assert load(dump(loaded)) == loaded


@pytest.mark.parametrize(
    ("config", "path", "reason"),
    [
        (
            {"metrics": [{"name": "request_count", "sample_rate": 1}]},
            ("metrics", 0, "stat_type"),
            "field required for entity check",
        ),
        (
            {"metrics": [{"stat_type": "counter", "sample_rate": 1}]},
            ("metrics", 0, "name"),
            "required field missing",
        ),
        (
            {"metrics": [{"name": "request_count", "stat_type": "counter"}]},
            ("metrics", 0, "sample_rate"),
            "required field missing",
        ),
        (
            {"metrics": [{"name": "unique_users", "stat_type": "set"}]},
            ("metrics", 0, "name"),
            "expected one of: kong_latency, latency, request_count, request_size, "
            "response_size, upstream_latency",
        ),
        (
            {"metrics": [{"name": "latency", "stat_type": "timer", "sample_rate": 2}]},
            ("metrics", 0, "sample_rate"),
            "value should be between 0 and 1",
        ),
        (
            {"metrics": [{"name": "latency", "stat_type": "timer", "tags": ["T1:"]}]},
            ("metrics", 0, "tags", 0),
            "invalid value: T1:",
        ),
        (
            {"metrics": [{"name": "latency", "stat_type": "x"}]},
            ("metrics", 0, "stat_type"),
            "expected one of: counter, gauge, histogram, meter, set, timer, distribution",
        ),
        ({"port": -1}, ("port",), "value should be between 0 and 65535"),
        ({"host": "a b"}, ("host",), "invalid value: a b"),
    ],
)
def test_invalid_config_is_refused_with_kongs_message_and_the_field_path(
    config: dict[str, Any], path: tuple[str | int, ...], reason: str
) -> None:
    declarative = {"_format_version": "3.0", "plugins": [{"name": "datadog", "config": config}]}
    with pytest.raises(ConfigurationError) as caught:
        gw.Gateway.from_config(declarative)
    assert (("plugins", 0, "config", *path), reason) in caught.value.errors
