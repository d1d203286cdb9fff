"""The bundled statsd plugin, after Kong's specs for it (06-statsd), against real UDP and
TCP listeners on 127.0.0.1."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from upstreams import refused_port, wait_until

import pygateway as gw
from pygateway._config import dump, load
from pygateway._entities import entity_id
from pygateway._exceptions import ConfigurationError
from pygateway.plugins._base import Plugin
from pygateway.plugins._key_auth import KeyAuth
from pygateway.plugins._queue import LogQueue
from pygateway.plugins._statsd import WORKSPACE_ID, Statsd, node_hostname, packets
from pygateway.testing import client, echo_engine

ROUTE_ID = entity_id("routes", "r")
ROBERT = gw.Consumer(
    username="bob", custom_id="robert", credentials=[gw.KeyAuthCredential(key="kong")]
)


class Datagrams:
    """Collects what it is sent: datagrams over UDP, or newline-separated lines over TCP."""

    def __init__(self, kind: int = socket.SOCK_DGRAM) -> None:
        self.sock = socket.socket(socket.AF_INET, kind)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.packets: list[bytes] = []
        self.stop = False
        self.sock.settimeout(0.05)
        if kind == socket.SOCK_STREAM:
            self.sock.listen()
            self.thread = threading.Thread(target=self._accept, daemon=True)
        else:
            self.thread = threading.Thread(target=self._receive, daemon=True)
        self.thread.start()

    def _receive(self) -> None:
        while not self.stop:
            try:
                self.packets.append(self.sock.recv(65536))
            except (TimeoutError, OSError):
                continue

    def _accept(self) -> None:
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            with conn, conn.makefile("rb") as stream:
                for data in stream:
                    self.packets.append(data)

    @property
    def lines(self) -> list[str]:
        return [ln for packet in self.packets for ln in packet.decode().splitlines() if ln]

    def close(self) -> None:
        self.stop = True
        self.thread.join()
        self.sock.close()


@pytest.fixture
def udp() -> Iterator[Datagrams]:
    listener = Datagrams()
    yield listener
    listener.close()


@pytest.fixture
def tcp() -> Iterator[Datagrams]:
    listener = Datagrams(socket.SOCK_STREAM)
    yield listener
    listener.close()


def gateway_with(
    plugin: Plugin, *, service: dict[str, Any] | None = None, auth: bool = False
) -> gw.Gateway:
    """The echo service ("echo", route "r" on `/`), with key-auth when `auth`."""
    plugins = [KeyAuth(), plugin] if auth else [plugin]
    return gw.Gateway(
        services=[
            gw.Service(
                **(service if service is not None else {"name": "echo"}),
                url="http://echo.internal",
                routes=[gw.Route(name="r", paths=["/"], plugins=plugins)],
            )
        ],
        consumers=[ROBERT],
        engines={"echo.internal": echo_engine()},
    )


def assert_lines(lines: list[str], expected: list[str]) -> None:
    """`lines` are `expected`, in order, where `{n}` stands for any whole number."""
    patterns = [re.escape(e).replace(r"\{n\}", r"\d+") for e in expected]
    assert len(lines) == len(expected), lines
    for got, pattern in zip(lines, patterns, strict=True):
        assert re.fullmatch(pattern, got), (got, pattern)


def queue_of(gateway: gw.Gateway, plugin: Plugin) -> LogQueue:
    queue = gateway.shared[(plugin.name, plugin)]
    assert isinstance(queue, LogQueue)
    return queue


async def test_default_metrics_name_the_service_consumer_workspace_and_route(
    udp: Datagrams,
) -> None:
    gateway = gateway_with(Statsd(host="127.0.0.1", port=udp.port), auth=True)
    async with gateway, client(gateway) as http:
        response = await http.get("/request", headers={"apikey": "kong"})
        assert response.status_code == 200
        await wait_until(lambda: len(udp.lines) == 12)
    assert_lines(
        udp.lines,
        [
            "kong.service.echo.request.count:1|c",
            "kong.service.echo.latency:{n}|ms",
            "kong.service.echo.request.size:{n}|c",
            "kong.service.echo.status.200:1|c",
            "kong.service.echo.response.size:{n}|c",
            "kong.service.echo.user.uniques:robert|s",
            "kong.service.echo.user.robert.request.count:1|c",
            "kong.service.echo.upstream_latency:{n}|ms",
            "kong.service.echo.kong_latency:{n}|ms",
            "kong.service.echo.user.robert.status.200:1|c",
            f"kong.service.echo.workspace.{WORKSPACE_ID}.status.200:1|c",
            f"kong.route.{ROUTE_ID}.user.robert.status.200:1|c",
        ],
    )
    # One datagram per line when udp_packet_size is 0.
    assert len(udp.packets) == 12


async def test_metrics_about_a_consumer_are_not_sent_without_one(udp: Datagrams) -> None:
    gateway = gateway_with(Statsd(host="127.0.0.1", port=udp.port, prefix="edge"))
    async with gateway, client(gateway) as http:
        response = await http.get("/status/404")
        assert response.status_code == 404
        await wait_until(lambda: len(udp.lines) == 8)
    assert_lines(
        udp.lines,
        [
            "edge.service.echo.request.count:1|c",
            "edge.service.echo.latency:{n}|ms",
            "edge.service.echo.request.size:{n}|c",
            "edge.service.echo.status.404:1|c",
            "edge.service.echo.response.size:{n}|c",
            "edge.service.echo.upstream_latency:{n}|ms",
            "edge.service.echo.kong_latency:{n}|ms",
            f"edge.service.echo.workspace.{WORKSPACE_ID}.status.404:1|c",
        ],
    )


async def test_identifiers_choose_which_consumer_service_and_workspace_field_is_named(
    udp: Datagrams,
) -> None:
    plugin = Statsd.from_config(
        {
            "host": "127.0.0.1",
            "port": udp.port,
            "consumer_identifier_default": "username",
            "service_identifier_default": "service_host",
            "metrics": [
                {"name": "request_per_user", "stat_type": "counter", "sample_rate": 0.5},
                {
                    "name": "unique_users",
                    "stat_type": "set",
                    "consumer_identifier": "consumer_id",
                    "service_identifier": "service_name",
                },
                {
                    "name": "status_count_per_workspace",
                    "stat_type": "counter",
                    "sample_rate": 1,
                    "workspace_identifier": "workspace_name",
                },
                {"name": "latency", "stat_type": "gauge", "sample_rate": 0.25},
                {"name": "shdict_usage", "stat_type": "gauge", "sample_rate": 1},
            ],
        }
    )
    gateway = gateway_with(plugin, auth=True)
    async with gateway, client(gateway) as http:
        await http.get("/", headers={"apikey": "kong"})
        await wait_until(lambda: len(udp.lines) == 4)
    assert_lines(
        udp.lines,
        [
            "kong.service.echo_internal.user.bob.request.count:1|c|@0.5",
            f"kong.service.echo.user.uniques:{ROBERT.id}|s",
            "kong.service.echo_internal.workspace.default.status.200:1|c",
            "kong.service.echo_internal.latency:{n}|g|@0.25",
        ],
    )


async def test_a_service_without_the_identified_field_is_unnamed(udp: Datagrams) -> None:
    plugin = Statsd(
        host="127.0.0.1",
        port=udp.port,
        metrics=[{"name": "request_count", "stat_type": "counter", "sample_rate": 1}],
        service_identifier_default="service_name",
    )
    gateway = gateway_with(plugin, service={})
    async with gateway, client(gateway) as http:
        await http.get("/")
        await wait_until(lambda: len(udp.lines) == 1)
    assert udp.lines == ["kong.service.unnamed.request.count:1|c"]


async def test_unmatched_requests_count_under_global_unmatched(udp: Datagrams) -> None:
    gateway = gw.Gateway(plugins=[Statsd(host="127.0.0.1", port=udp.port)])
    async with gateway, client(gateway) as http:
        response = await http.get("/nowhere")
        assert response.status_code == 404
        await wait_until(lambda: len(udp.lines) == 7)
    # No upstream was waited for: no upstream_latency.
    assert_lines(
        udp.lines,
        [
            "kong.global.unmatched.request.count:1|c",
            "kong.global.unmatched.latency:{n}|ms",
            "kong.global.unmatched.request.size:{n}|c",
            "kong.global.unmatched.status.404:1|c",
            "kong.global.unmatched.response.size:{n}|c",
            "kong.global.unmatched.kong_latency:{n}|ms",
            f"kong.global.unmatched.workspace.{WORKSPACE_ID}.status.404:1|c",
        ],
    )


async def test_hostname_in_prefix_puts_the_node_after_the_prefix(udp: Datagrams) -> None:
    plugin = Statsd(
        host="127.0.0.1",
        port=udp.port,
        hostname_in_prefix=True,
        metrics=[{"name": "status_count", "stat_type": "counter", "sample_rate": 1}],
    )
    gateway = gateway_with(plugin)
    async with gateway, client(gateway) as http:
        await http.get("/")
        await wait_until(lambda: len(udp.lines) == 1)
    assert udp.lines == [f"kong.node.{node_hostname()}.service.echo.status.200:1|c"]
    assert "." not in node_hostname()


TAGS = f"service=echo,route=r,workspace={WORKSPACE_ID},consumer=robert,node={{node}},status=200"


@pytest.mark.parametrize(
    ("style", "expected"),
    [
        (
            "dogstatsd",
            "kong.request.count:1|c|@0.5|#service:echo,route:r,"
            f"workspace:{WORKSPACE_ID},consumer:robert,node:{{node}},status:200",
        ),
        ("influxdb", f"kong.request.count,{TAGS}:1|c|@0.5"),
        ("librato", f"kong.request.count#{TAGS}:1|c|@0.5"),
        ("signalfx", f"kong.request.count[{TAGS}]:1|c|@0.5"),
    ],
)
async def test_a_tag_style_carries_service_route_workspace_consumer_node_and_status_as_tags(
    udp: Datagrams, style: str, expected: str
) -> None:
    plugin = Statsd(
        host="127.0.0.1",
        port=udp.port,
        tag_style=style,  # type: ignore[arg-type]
        hostname_in_prefix=True,  # not with tags: the node is a tag
        metrics=[{"name": "request_count", "stat_type": "counter", "sample_rate": 0.5}],
    )
    gateway = gateway_with(plugin, auth=True)
    async with gateway, client(gateway) as http:
        await http.get("/", headers={"apikey": "kong"})
        await wait_until(lambda: len(udp.lines) == 1)
    assert udp.lines == [expected.format(node=node_hostname())]


async def test_with_a_tag_style_only_the_metrics_that_are_not_names_are_sent(
    udp: Datagrams,
) -> None:
    gateway = gateway_with(
        Statsd(host="127.0.0.1", port=udp.port, tag_style="dogstatsd"), auth=True
    )
    async with gateway, client(gateway) as http:
        await http.get("/", headers={"apikey": "kong"})
        await wait_until(lambda: len(udp.lines) == 6)
    tags = f"|#service:echo,route:r,workspace:{WORKSPACE_ID},consumer:robert,node:{{n}},status:200"
    tags = tags.replace("{n}", node_hostname())
    assert_lines(
        udp.lines,
        [
            "kong.request.count:1|c" + tags,
            "kong.latency:{n}|ms" + tags,
            "kong.request.size:{n}|c" + tags,
            "kong.response.size:{n}|c" + tags,
            "kong.upstream_latency:{n}|ms" + tags,
            "kong.kong_latency:{n}|ms" + tags,
        ],
    )


async def test_only_requests_with_an_allowed_status_are_measured(udp: Datagrams) -> None:
    plugin = Statsd(
        host="127.0.0.1",
        port=udp.port,
        allow_status_codes=["200-204", "400-403"],
        metrics=[{"name": "status_count", "stat_type": "counter", "sample_rate": 1}],
    )
    gateway = gateway_with(plugin)
    async with gateway, client(gateway) as http:
        for status in (500, 404, 201, 401, 302):
            response = await http.get(f"/status/{status}")
            assert response.status_code == status
        await wait_until(lambda: len(udp.lines) == 2)
    assert udp.lines == ["kong.service.echo.status.201:1|c", "kong.service.echo.status.401:1|c"]


async def test_udp_packet_size_combines_lines_into_datagrams(udp: Datagrams) -> None:
    metrics = [{"name": "request_count", "stat_type": "counter", "sample_rate": 1}] * 4
    plugin = Statsd(host="127.0.0.1", port=udp.port, udp_packet_size=80, metrics=metrics)
    gateway = gateway_with(plugin)
    async with gateway, client(gateway) as http:
        await http.get("/")
        await wait_until(lambda: len(udp.lines) == 4)
    line = b"kong.service.echo.request.count:1|c"  # 35 bytes: two fit in 80, not three
    assert udp.packets == [line + b"\n" + line, line + b"\n" + line]


def test_a_line_longer_than_the_packet_size_goes_alone() -> None:
    assert packets([b"a" * 5, b"bb", b"c" * 10, b"d"], 6) == [b"aaaaa", b"bb", b"c" * 10, b"d"]
    assert packets([b"a", b"b", b"c"], 3) == [b"a\nb", b"c"]
    assert packets([b"a", b"b"], 0) == [b"a", b"b"]


async def test_use_tcp_sends_newline_terminated_lines(tcp: Datagrams) -> None:
    metrics = [
        {"name": "request_count", "stat_type": "counter", "sample_rate": 1},
        {"name": "status_count", "stat_type": "counter", "sample_rate": 1},
    ]
    plugin = Statsd(host="127.0.0.1", port=tcp.port, use_tcp=True, metrics=metrics)
    gateway = gateway_with(plugin)
    async with gateway, client(gateway) as http:
        await http.get("/status/503")
        await http.get("/")
        await wait_until(lambda: len(tcp.packets) == 4)
    assert tcp.packets == [
        b"kong.service.echo.request.count:1|c\n",
        b"kong.service.echo.status.503:1|c\n",
        b"kong.service.echo.request.count:1|c\n",
        b"kong.service.echo.status.200:1|c\n",
    ]


async def test_requests_succeed_with_the_tcp_server_down_and_the_batch_is_given_up() -> None:
    with refused_port() as port:
        plugin = Statsd(
            host="127.0.0.1",
            port=port,
            use_tcp=True,
            queue={"max_retry_time": 0.2, "initial_retry_delay": 0.01, "max_retry_delay": 0.05},
        )
        gateway = gateway_with(plugin)
        async with gateway, client(gateway) as http:
            response = await http.get("/")
            assert response.status_code == 200
            queue = queue_of(gateway, plugin)
            await wait_until(lambda: queue.failed_batches == 1)


async def test_requests_succeed_with_no_udp_listener() -> None:
    with refused_port() as port:
        plugin = Statsd(host="127.0.0.1", port=port)
        gateway = gateway_with(plugin)
        async with gateway, client(gateway) as http:
            response = await http.get("/")
            assert response.status_code == 200
            queue = queue_of(gateway, plugin)
        # Sent into the void: UDP does not say; nothing failed, nothing was dropped.
        assert (len(queue), queue.dropped, queue.failed_batches) == (0, 0, 0)


async def test_queued_metrics_are_sent_when_the_gateway_stops(udp: Datagrams) -> None:
    plugin = Statsd(
        host="127.0.0.1",
        port=udp.port,
        metrics=[{"name": "request_count", "stat_type": "counter", "sample_rate": 1}],
        queue={"max_batch_size": 100, "max_coalescing_delay": 3600},
    )
    gateway = gateway_with(plugin)
    async with gateway, client(gateway) as http:
        for _ in range(3):
            await http.get("/")
        assert len(queue_of(gateway, plugin)) == 3
        assert udp.packets == []
    await wait_until(lambda: len(udp.lines) == 3)
    assert queue_of(gateway, plugin).closing


async def test_no_metrics_means_nothing_is_queued(udp: Datagrams) -> None:
    plugin = Statsd(host="127.0.0.1", port=udp.port, metrics=[])
    gateway = gateway_with(plugin)
    async with gateway, client(gateway) as http:
        response = await http.get("/")
        assert response.status_code == 200
    assert ("statsd", plugin) not in gateway.shared


def test_kong_name_priority_and_defaults() -> None:
    assert (Statsd.name, Statsd.priority) == ("statsd", 11)
    plugin = Statsd()
    assert (plugin.host, plugin.port, plugin.prefix) == ("localhost", 8125, "kong")
    assert (plugin.udp_packet_size, plugin.use_tcp, plugin.tag_style) == (0, False, None)
    assert plugin.consumer_identifier_default == "custom_id"
    assert plugin.service_identifier_default == "service_name_or_host"
    assert plugin.workspace_identifier_default == "workspace_id"
    assert [m.name for m in plugin.metrics] == [
        "request_count",
        "latency",
        "request_size",
        "status_count",
        "response_size",
        "unique_users",
        "request_per_user",
        "upstream_latency",
        "kong_latency",
        "status_count_per_user",
        "status_count_per_workspace",
        "status_count_per_user_per_route",
        "shdict_usage",
    ]
    assert Statsd(queue_size=5, flush_timeout=0.5).effective_queue.max_batch_size == 5


def test_declarative_config_round_trips() -> None:
    config = {
        "_format_version": "3.0",
        "plugins": [
            {
                "name": "statsd",
                "config": {
                    "host": "metrics.test",
                    "tag_style": "influxdb",
                    "allow_status_codes": ["200-299"],
                    "metrics": [{"name": "latency", "stat_type": "timer"}],
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
            {"metrics": [{"name": "latency", "stat_type": "gauge"}]},
            ("metrics", 0, "sample_rate"),
            "required field missing",
        ),
        (
            {"metrics": [{"name": "latency", "stat_type": "timer", "sample_rate": 0}]},
            ("metrics", 0, "sample_rate"),
            "value must be greater than 0",
        ),
        (
            {"metrics": [{"name": "request_count", "stat_type": "invalid_stat"}]},
            ("metrics", 0, "stat_type"),
            "expected one of: counter, gauge, histogram, meter, set, timer",
        ),
        (
            {
                "metrics": [
                    {
                        "name": "status_count",
                        "stat_type": "counter",
                        "sample_rate": 1,
                        "service_identifier": "fooo",
                    }
                ]
            },
            ("metrics", 0, "service_identifier"),
            "expected one of: service_id, service_name, service_host, service_name_or_host",
        ),
        (
            {"allow_status_codes": ["200-299", "test"]},
            ("allow_status_codes", 1),
            "invalid value: test",
        ),
        ({"allow_status_codes": ["200"]}, ("allow_status_codes", 0), "invalid value: 200"),
        ({"udp_packet_size": 65508}, ("udp_packet_size",), "value should be between 0 and 65507"),
        ({"udp_packet_size": "a"}, ("udp_packet_size",), "expected a number"),
        (
            {"consumer_identifier_default": "invalid type"},
            ("consumer_identifier_default",),
            "expected one of: consumer_id, custom_id, username",
        ),
        (
            {"workspace_identifier_default": "x"},
            ("workspace_identifier_default",),
            "expected one of: workspace_id, workspace_name",
        ),
        (
            {"tag_style": "invalid type"},
            ("tag_style",),
            "expected one of: dogstatsd, influxdb, librato, signalfx",
        ),
        ({"port": 70000}, ("port",), "value should be between 0 and 65535"),
    ],
)
def test_invalid_config_is_refused_with_kongs_message_and_the_field_path(
    config: dict[str, Any], path: tuple[str | int, ...], reason: str
) -> None:
    declarative = {"_format_version": "3.0", "plugins": [{"name": "statsd", "config": config}]}
    with pytest.raises(ConfigurationError) as caught:
        gw.Gateway.from_config(declarative)
    assert (("plugins", 0, "config", *path), reason) in caught.value.errors


@pytest.mark.parametrize("config", [{}, {"metrics": []}, {"allow_status_codes": []}])
def test_kongs_accepted_configs_are_accepted(config: dict[str, Any]) -> None:
    assert isinstance(Statsd.from_config(config), Statsd)
