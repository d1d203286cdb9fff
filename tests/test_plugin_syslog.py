"""The bundled syslog plugin, after Kong's spec for it (05-syslog), against a real Unix
datagram socket (as the local syslog daemon's) and a UDP listener."""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from test_plugin_statsd import gateway_with, queue_of
from upstreams import wait_until

import pygateway as gw
from pygateway._config import dump, load
from pygateway._exceptions import ConfigurationError
from pygateway.plugins import _syslog
from pygateway.plugins._syslog import Syslog
from pygateway.testing import client


class SyslogSocket:
    """A Unix datagram socket in a short temporary directory (socket paths are limited to
    about 100 bytes), read without blocking."""

    def __init__(self) -> None:
        self.directory = tempfile.TemporaryDirectory(prefix="pgw")
        self.path = os.path.join(self.directory.name, "log")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self.messages: list[bytes] = []

    def received(self) -> list[bytes]:
        """Every datagram received so far."""
        while True:
            try:
                self.messages.append(self.sock.recv(1 << 20))
            except BlockingIOError:
                return self.messages

    def close(self) -> None:
        self.sock.close()
        self.directory.cleanup()


@pytest.fixture
def syslog() -> Iterator[SyslogSocket]:
    receiver = SyslogSocket()
    yield receiver
    receiver.close()


def parse(message: bytes) -> tuple[int, dict[str, Any]]:
    """(PRI, the JSON entry) of `<PRI>pygateway: {...}`."""
    head, _, body = message.partition(b">pygateway: ")
    assert head.startswith(b"<"), message
    return int(head[1:]), json.loads(body)


async def test_each_entry_goes_as_one_datagram_with_user_facility_and_info_severity(
    syslog: SyslogSocket,
) -> None:
    gateway = gateway_with(Syslog(address=syslog.path))
    async with gateway, client(gateway) as http:
        response = await http.get("/hello?a=1", headers={"authorization": "Bearer secret"})
        assert response.status_code == 200
        await wait_until(lambda: len(syslog.received()) == 1)
    priority, entry = parse(syslog.messages[0])
    assert priority == 1 * 8 + 6  # user.info
    assert entry["request"]["uri"] == "/hello?a=1"
    assert entry["request"]["headers"]["authorization"] == "REDACTED"
    assert entry["response"]["status"] == 200
    assert entry["service"]["name"] == "echo"


async def test_severity_follows_the_status_and_only_levels_at_least_as_severe_are_sent(
    syslog: SyslogSocket,
) -> None:
    plugin = Syslog(
        address=syslog.path,
        log_level="warning",
        successful_severity="info",  # less severe than warning: not sent
        client_errors_severity="warning",  # as severe: sent
        server_errors_severity="crit",  # more severe: sent
        facility="local0",
    )
    gateway = gateway_with(plugin)
    async with gateway, client(gateway) as http:
        for status in (200, 404, 503, 302, 400):
            response = await http.get(f"/status/{status}")
            assert response.status_code == status
        await wait_until(lambda: len(syslog.received()) == 3)
    local0 = 16 * 8
    assert [(p, e["response"]["status"]) for p, e in map(parse, syslog.messages)] == [
        (local0 + 4, 404),
        (local0 + 2, 503),
        (local0 + 4, 400),
    ]


async def test_a_host_and_port_address_sends_udp_datagrams() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.settimeout(5)
        port = listener.getsockname()[1]
        plugin = Syslog(address=f"127.0.0.1:{port}", facility="daemon", successful_severity="err")
        gateway = gateway_with(plugin)
        async with gateway, client(gateway) as http:
            await http.get("/udp")
        priority, entry = parse(listener.recv(65536))
    assert priority == 3 * 8 + 3
    assert entry["request"]["uri"] == "/udp"


async def test_without_a_syslog_socket_requests_succeed_and_the_failure_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="pygateway.plugins.log")
    with tempfile.TemporaryDirectory(prefix="pgw") as directory:
        plugin = Syslog(address=os.path.join(directory, "absent"))
        gateway = gateway_with(plugin)
        async with gateway, client(gateway) as http:
            response = await http.get("/")
            assert response.status_code == 200
            await wait_until(
                lambda: any("retrying" in r.getMessage() for r in list(caplog.records))
            )
            queue = queue_of(gateway, plugin)
        # Stopping gives the failing entry up instead of retrying it.
        assert queue.failed_batches == 1


async def test_entries_are_all_sent_once_the_gateway_has_stopped(syslog: SyslogSocket) -> None:
    gateway = gateway_with(Syslog(address=syslog.path))
    async with gateway, client(gateway) as http:
        for i in range(5):  # fewer than the socket queues (10 datagrams on Linux)
            await http.get(f"/{i}")
    # Read once, without waiting.
    assert [parse(m)[1]["request"]["uri"] for m in syslog.received()] == [f"/{i}" for i in range(5)]


async def test_a_stalled_syslog_daemon_holds_no_request_up(syslog: SyslogSocket) -> None:
    gateway = gateway_with(Syslog(address=syslog.path))
    async with gateway, client(gateway) as http:
        # Nobody reads: the socket's queue fills, and the sender waits (then retries).
        for i in range(15):
            response = await http.get(f"/{i}")
            assert response.status_code == 200
        # The daemon catches up: nothing was lost.
        await wait_until(lambda: len(syslog.received()) == 15)
    assert sorted(parse(m)[1]["request"]["uri"] for m in syslog.messages) == sorted(
        f"/{i}" for i in range(15)
    )


async def test_stopping_gives_up_on_a_daemon_that_never_reads(
    syslog: SyslogSocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_syslog, "SEND_TIMEOUT", 0.05)
    plugin = Syslog(address=syslog.path)
    gateway = gateway_with(plugin)
    async with gateway, client(gateway) as http:
        for i in range(15):
            await http.get(f"/{i}")
        queue = queue_of(gateway, plugin)
    # The sends that found the socket's queue full timed out: stopping tried each entry
    # left once more, then gave it up, instead of waiting on the daemon.
    assert queue.failed_batches > 0
    assert len(syslog.received()) + queue.failed_batches == 15


def test_kong_name_priority_and_defaults() -> None:
    assert (Syslog.name, Syslog.priority) == ("syslog", 4)
    plugin = Syslog()
    assert (plugin.log_level, plugin.facility, plugin.address) == ("info", "user", None)
    assert {
        plugin.successful_severity,
        plugin.client_errors_severity,
        plugin.server_errors_severity,
    } == {"info"}


def test_declarative_config_round_trips() -> None:
    config = {
        "_format_version": "3.0",
        "plugins": [
            {"name": "syslog", "config": {"log_level": "err", "facility": "local7"}},
        ],
    }
    loaded = load(config)
    assert load(dump(loaded)) == loaded


@pytest.mark.parametrize(
    ("config", "path", "reason"),
    [
        (
            {"log_level": "verbose"},
            ("log_level",),
            "expected one of: debug, info, notice, warning, err, crit, alert, emerg",
        ),
        (
            {"server_errors_severity": "error"},
            ("server_errors_severity",),
            "expected one of: debug, info, notice, warning, err, crit, alert, emerg",
        ),
        ({"facility": "local8"}, ("facility",), None),
        ({"custom_fields_by_lua": {"a": "return 1"}}, ("custom_fields_by_lua",), None),
        ({"address": "logs.test"}, ("address",), None),
        ({"address": "logs.test:99999"}, ("address",), None),
    ],
)
def test_invalid_config_is_refused_with_the_field_path(
    config: dict[str, Any], path: tuple[str, ...], reason: str | None
) -> None:
    declarative = {"_format_version": "3.0", "plugins": [{"name": "syslog", "config": config}]}
    with pytest.raises(ConfigurationError) as caught:
        gw.Gateway.from_config(declarative)
    errors = dict(caught.value.errors)
    assert ("plugins", 0, "config", *path) in errors
    if reason is not None:
        assert errors["plugins", 0, "config", *path] == reason
