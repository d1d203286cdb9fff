"""The bundled tcp-log and udp-log plugins, after Kong's specs (05-tcp-log, 06-udp-log),
against real listeners on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from upstreams import refused_port, wait_until

import pygateway as gw
from pygateway._config import dump, load
from pygateway._exceptions import ConfigurationError
from pygateway.plugins._base import Plugin
from pygateway.plugins._tcp_log import TcpLog
from pygateway.plugins._udp_log import UdpLog
from pygateway.testing import client, echo_engine


class Listener:
    """Collects what it is sent: JSON lines over TCP, or datagrams over UDP."""

    def __init__(self, kind: int) -> None:
        self.sock = socket.socket(socket.AF_INET, kind)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.entries: list[dict[str, Any]] = []
        self.connections = 0
        self.stop = False
        if kind == socket.SOCK_STREAM:
            self.sock.listen()
            self.thread = threading.Thread(target=self._accept, daemon=True)
        else:
            self.thread = threading.Thread(target=self._receive, daemon=True)
        self.sock.settimeout(0.1)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as lines:
            for line in lines:
                self.entries.append(json.loads(line))

    def _receive(self) -> None:
        while not self.stop:
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, OSError):
                continue
            self.entries.append(json.loads(data))

    def close(self) -> None:
        self.stop = True
        self.thread.join()
        self.sock.close()


@pytest.fixture
def tcp() -> Iterator[Listener]:
    listener = Listener(socket.SOCK_STREAM)
    yield listener
    listener.close()


@pytest.fixture
def udp() -> Iterator[Listener]:
    listener = Listener(socket.SOCK_DGRAM)
    yield listener
    listener.close()


def gateway_with(plugin: Plugin) -> gw.Gateway:
    return gw.Gateway(
        services=[
            gw.Service(
                name="echo",
                url="http://echo.internal",
                routes=[gw.Route(name="r", paths=["/"], plugins=[plugin])],
            )
        ],
        engines={"echo.internal": echo_engine()},
    )


async def test_tcp_log_sends_json_lines_on_one_kept_alive_connection(tcp: Listener) -> None:
    gateway = gateway_with(TcpLog(host="127.0.0.1", port=tcp.port))
    async with gateway, client(gateway) as http:
        for i in range(5):
            response = await http.get(f"/{i}", headers={"authorization": "Basic c2VjcmV0"})
            assert response.status_code == 200
        await wait_until(lambda: len(tcp.entries) == 5)
    assert [e["request"]["uri"] for e in tcp.entries] == [f"/{i}" for i in range(5)]
    assert tcp.entries[0]["request"]["headers"]["authorization"] == "REDACTED"
    assert tcp.connections == 1


async def test_tcp_log_with_the_listener_down_does_not_fail_requests() -> None:
    with refused_port() as port:
        gateway = gateway_with(TcpLog(host="127.0.0.1", port=port, timeout=100))
        async with gateway, client(gateway) as http:
            response = await http.get("/")
            assert response.status_code == 200


async def test_udp_log_sends_one_datagram_per_entry(udp: Listener) -> None:
    gateway = gateway_with(UdpLog(host="127.0.0.1", port=udp.port))
    async with gateway, client(gateway) as http:
        for i in range(3):
            await http.get(f"/{i}")
        await wait_until(lambda: len(udp.entries) == 3)
    assert sorted(e["request"]["uri"] for e in udp.entries) == ["/0", "/1", "/2"]


def test_kong_names_priorities_and_defaults() -> None:
    assert (TcpLog.name, TcpLog.priority) == ("tcp-log", 7)
    assert (UdpLog.name, UdpLog.priority) == ("udp-log", 8)
    plugin = TcpLog(host="logs.test", port=9)
    assert (plugin.timeout, plugin.keepalive, plugin.tls) == (10000, 60000, False)
    assert UdpLog(host="logs.test", port=9).timeout == 10000


@pytest.mark.parametrize("name", ["tcp-log", "udp-log"])
def test_declarative_config_round_trips(name: str) -> None:
    config = {
        "_format_version": "3.0",
        "plugins": [{"name": name, "config": {"host": "logs.test", "port": 5140}}],
    }
    loaded = load(config)
    assert load(dump(loaded)) == loaded


@pytest.mark.parametrize("cls", [TcpLog, UdpLog])
@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({"port": 1}, ("host",)),
        ({"host": "h"}, ("port",)),
        ({"host": "h", "port": 70000}, ("port",)),
        ({"host": "h", "port": 1, "custom_fields_by_lua": {"a": "b"}}, ("custom_fields_by_lua",)),
    ],
)
def test_invalid_config_is_refused_with_the_field_path(
    cls: type[Plugin], config: dict[str, Any], path: tuple[str, ...]
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        cls.from_config(config)
    assert path in [p for p, _ in caught.value.errors]
