"""The bundled ip-restriction plugin, after Kong's spec (spec/03-plugins/17-ip-restriction)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

import pygateway as gw
from pygateway.plugins._ip_restriction import IpRestriction, Matcher, parse_network
from pygateway.testing import client, echo_engine


def gateway_with(plugin: IpRestriction, **settings: Any) -> gw.Gateway:
    return gw.Gateway(
        services=[
            gw.Service(
                name="s",
                url="http://echo.internal",
                routes=[gw.Route(name="r", paths=["/"], plugins=[plugin])],
            )
        ],
        engines={"echo.internal": echo_engine()},
        **settings,
    )


async def get(gateway: gw.Gateway, ip: str, **headers: str) -> Any:
    async with client(gateway, client_addr=(ip, 40000)) as http:
        return await http.get(
            "/request", headers={k.replace("_", "-"): v for k, v in headers.items()}
        )


def refused(response: Any, message: str, status: int = 403) -> None:
    assert response.status_code == status
    body = response.json()
    assert body["message"] == message
    assert "request_id" in body


# -- deny and allow ----------------------------------------------------------------------------


async def test_a_denied_ip_gets_403_with_kongs_message_naming_it() -> None:
    gateway = gateway_with(IpRestriction(deny=["127.0.0.1", "10.0.0.0/8"]))
    refused(await get(gateway, "127.0.0.1"), "IP address not allowed: 127.0.0.1")
    refused(await get(gateway, "10.20.30.40"), "IP address not allowed: 10.20.30.40")
    assert (await get(gateway, "192.168.0.1")).status_code == 200


async def test_an_ip_outside_the_allow_list_gets_403() -> None:
    gateway = gateway_with(IpRestriction(allow=["10.0.0.0/8", "192.168.1.7"]))
    assert (await get(gateway, "10.1.2.3")).status_code == 200
    assert (await get(gateway, "192.168.1.7")).status_code == 200
    refused(await get(gateway, "192.168.1.8"), "IP address not allowed: 192.168.1.8")
    refused(await get(gateway, "11.0.0.1"), "IP address not allowed: 11.0.0.1")


async def test_deny_is_checked_before_allow() -> None:
    gateway = gateway_with(IpRestriction(allow=["10.0.0.0/8"], deny=["10.6.6.0/24"]))
    assert (await get(gateway, "10.6.7.1")).status_code == 200
    refused(await get(gateway, "10.6.6.6"), "IP address not allowed: 10.6.6.6")


async def test_a_custom_status_and_message() -> None:
    gateway = gateway_with(IpRestriction(deny=["127.0.0.1"], status=401, message="Forbidden"))
    refused(await get(gateway, "127.0.0.1"), "Forbidden", status=401)


async def test_a_host_address_with_a_prefix_matches_its_whole_range() -> None:
    # Kong accepts "127.0.0.1/8" and reads it as 127.0.0.0/8.
    gateway = gateway_with(IpRestriction(deny=["127.0.0.1/8"]))
    refused(await get(gateway, "127.200.0.1"), "IP address not allowed: 127.200.0.1")


async def test_ipv6_addresses_and_ranges() -> None:
    gateway = gateway_with(
        IpRestriction(allow=["2001:db8::/32", "::1"], deny=["2001:db8:bad::/48"])
    )
    assert (await get(gateway, "2001:db8:1::5")).status_code == 200
    assert (await get(gateway, "::1")).status_code == 200
    refused(await get(gateway, "2001:db8:bad::1"), "IP address not allowed: 2001:db8:bad::1")
    refused(await get(gateway, "2001:db9::1"), "IP address not allowed: 2001:db9::1")
    refused(await get(gateway, "10.0.0.1"), "IP address not allowed: 10.0.0.1")


async def test_an_ipv4_mapped_client_matches_ipv4_ranges() -> None:
    gateway = gateway_with(IpRestriction(deny=["10.0.0.0/8"]))
    refused(await get(gateway, "::ffff:10.0.0.1"), "IP address not allowed: ::ffff:10.0.0.1")
    assert (await get(gateway, "::ffff:11.0.0.1")).status_code == 200


async def test_an_ipv4_client_matches_ipv4_mapped_ranges() -> None:
    gateway = gateway_with(IpRestriction(deny=["::ffff:10.0.0.0/104"]))
    refused(await get(gateway, "10.0.0.1"), "IP address not allowed: 10.0.0.1")
    refused(await get(gateway, "::ffff:10.9.9.9"), "IP address not allowed: ::ffff:10.9.9.9")
    assert (await get(gateway, "11.0.0.1")).status_code == 200


async def test_an_ipv6_range_holding_every_mapped_address_holds_ipv4_clients_too() -> None:
    gateway = gateway_with(IpRestriction(deny=["::/0"]))
    refused(await get(gateway, "10.0.0.1"), "IP address not allowed: 10.0.0.1")
    allowed = gateway_with(IpRestriction(allow=["2001:db8::/32"]))
    refused(await get(allowed, "10.0.0.1"), "IP address not allowed: 10.0.0.1")


async def test_a_client_that_is_not_an_ip_is_refused() -> None:
    gateway = gateway_with(IpRestriction(allow=["0.0.0.0/0"], status=401))
    response = await get(gateway, "unix-socket")
    refused(
        response,
        "Cannot identify the client IP address, unix domain sockets are not supported.",
        status=403,
    )


# -- which address: trusted proxies ------------------------------------------------------------


async def test_x_forwarded_for_from_an_untrusted_peer_does_not_change_the_decision() -> None:
    gateway = gateway_with(
        IpRestriction(deny=["6.6.6.6"], allow=["10.0.0.0/8", "6.6.6.0/24"]),
        trusted_ips=["10.0.0.0/8"],
        real_ip_header="X-Forwarded-For",
    )
    # A denied client claims to be an allowed one...
    response = await get(gateway, "6.6.6.6", x_forwarded_for="10.1.1.1", x_real_ip="10.1.1.1")
    refused(response, "IP address not allowed: 6.6.6.6")
    # ...and an allowed one cannot get itself denied either.
    assert (await get(gateway, "6.6.6.7", x_forwarded_for="6.6.6.6")).status_code == 200


async def test_x_forwarded_for_from_a_trusted_proxy_names_the_client() -> None:
    gateway = gateway_with(
        IpRestriction(deny=["6.6.6.6"]),
        trusted_ips=["10.0.0.0/8"],
        real_ip_header="X-Forwarded-For",
    )
    response = await get(gateway, "10.0.0.2", x_forwarded_for="6.6.6.6")
    refused(response, "IP address not allowed: 6.6.6.6")
    assert (await get(gateway, "10.0.0.2", x_forwarded_for="7.7.7.7")).status_code == 200
    assert (await get(gateway, "10.0.0.2")).status_code == 200


async def test_the_allow_list_sees_the_address_a_trusted_proxy_names() -> None:
    gateway = gateway_with(IpRestriction(allow=["7.7.7.0/24"]), trusted_ips=["10.0.0.0/8"])
    assert (await get(gateway, "10.0.0.2", x_real_ip="7.7.7.7")).status_code == 200
    refused(await get(gateway, "10.0.0.2"), "IP address not allowed: 10.0.0.2")


# -- the matcher ---------------------------------------------------------------------------------


def test_the_matcher_agrees_with_ipaddress_on_many_ranges() -> None:
    ranges = ["10.0.0.0/8", "192.168.3.0/24", "1.2.3.4", "172.16.0.0/12", "2001:db8::/32", "::1"]
    networks = [ipaddress.ip_network(r) for r in ranges]
    matcher = Matcher(networks)
    addresses = "10.255.0.1 192.168.3.9 192.168.4.1 1.2.3.4 1.2.3.5 172.31.0.1 172.32.0.1"
    addresses += " 2001:db8:ffff::1 2001:db9:: ::1 ::2 0.0.0.0"
    for text in addresses.split():
        address = ipaddress.ip_address(text)
        expected = any(address.version == n.version and address in n for n in networks)
        assert (address in matcher) is expected, text


# -- configuration -----------------------------------------------------------------------------


def test_its_kong_name_priority_and_round_trip() -> None:
    assert gw.plugins.get("ip-restriction") is IpRestriction
    assert IpRestriction.priority == 990
    plugin = IpRestriction(allow=["127.0.0.1/32", "127.0.0.2/32"], status=403, message="Forbidden")
    assert plugin.to_config() == {
        "allow": ["127.0.0.1/32", "127.0.0.2/32"],
        "deny": None,
        "status": 403,
        "message": "Forbidden",
    }
    assert IpRestriction.from_config(plugin.to_config()) == plugin


@pytest.mark.parametrize(
    "config",
    [
        {"allow": ["127.0.0.1/8"]},
        {"deny": ["127.0.0.1/32", "127.0.0.2/32"]},
        {"allow": ["127.0.0.1/32"], "deny": ["127.0.0.2/32"]},
        {"allow": ["::/0", "::/1", "::/128"]},
    ],
)
def test_valid_configurations_are_accepted(config: dict[str, Any]) -> None:
    IpRestriction(**config)


@pytest.mark.parametrize(
    ("config", "error"),
    [
        ({"allow": 12}, "allow: expected an array"),
        ({"deny": 12}, "deny: expected an array"),
        ({"allow": ["hello"]}, "allow[0]: invalid ip or cidr range: 'hello'"),
        (
            {"deny": ["127.0.0.1/32", "127.0.0.2/32", "hello"]},
            "deny[2]: invalid ip or cidr range: 'hello'",
        ),
        (
            {"allow": ["0.0.0.0/a", "0.0.0.0/-1", "0.0.0.0/33"]},
            "allow[0]: invalid ip or cidr range: '0.0.0.0/a'\n"
            "allow[1]: invalid ip or cidr range: '0.0.0.0/-1'\n"
            "allow[2]: invalid ip or cidr range: '0.0.0.0/33'",
        ),
        (
            {"allow": ["::/a", "::/-1", "::/129", "::1/129"]},
            "allow[0]: invalid ip or cidr range: '::/a'\n"
            "allow[1]: invalid ip or cidr range: '::/-1'\n"
            "allow[2]: invalid ip or cidr range: '::/129'\n"
            "allow[3]: invalid ip or cidr range: '::1/129'",
        ),
        (
            {"allow": ["10.0.0.0/255.0.0.0"]},
            "allow[0]: invalid ip or cidr range: '10.0.0.0/255.0.0.0'",
        ),
        ({"allow": [1]}, "allow[0]: expected a string"),
        (
            {"allow": [], "deny": []},
            "at least one of these fields must be non-empty: 'config.allow', 'config.deny'",
        ),
        ({}, "at least one of these fields must be non-empty: 'config.allow', 'config.deny'"),
        ({"deny": ["1.1.1.1"], "status": 200}, "status: value should be between 400 and 599"),
        ({"deny": ["1.1.1.1"], "message": 3}, "message: expected a string"),
    ],
)
def test_invalid_configurations_fail_with_kongs_messages(
    config: dict[str, Any], error: str
) -> None:
    with pytest.raises(gw.ConfigurationError) as info:
        IpRestriction(**config)
    assert str(info.value) == error


def test_parse_network_reads_addresses_as_single_address_ranges() -> None:
    assert parse_network("10.0.0.1") == ipaddress.ip_network("10.0.0.1/32")
    assert parse_network("2001:db8::1") == ipaddress.ip_network("2001:db8::1/128")
    assert parse_network("nope") is None


async def test_it_works_from_a_declarative_file() -> None:
    config = {
        "_format_version": "3.0",
        "services": [{"name": "s", "url": "http://echo.internal", "routes": [{"paths": ["/"]}]}],
        "plugins": [{"name": "ip-restriction", "config": {"deny": ["127.0.0.0/8"]}}],
    }
    gateway = gw.Gateway.from_config(config, engines={"echo.internal": echo_engine()})
    refused(await get(gateway, "127.0.0.1"), "IP address not allowed: 127.0.0.1")
    assert (await get(gateway, "10.0.0.1")).status_code == 200
    again = gw.Gateway.from_config(gateway.to_config())
    assert again.config == gateway.config


def test_declarative_errors_carry_the_field_path() -> None:
    config = {
        "_format_version": "3.0",
        "plugins": [{"name": "ip-restriction", "config": {"allow": ["1.1.1.1", "hello"]}}],
    }
    with pytest.raises(gw.ConfigurationError) as info:
        gw.Gateway.from_config(config)
    assert str(info.value) == "plugins[0].config.allow[1]: invalid ip or cidr range: 'hello'"
