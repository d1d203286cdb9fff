"""The bundled acl plugin, after Kong's spec for it (spec/03-plugins/18-acl)."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

import pygateway as gw
from pygateway.plugins._acl import Acl
from pygateway.testing import client, echo_engine

# -- a stand-in authentication plugin -------------------------------------------------------


@attrs.frozen
class AclTestAuth(gw.Plugin):
    """Test-only authentication, driven by request headers (runs before acl, like key-auth):

    - `x-user: <username>`: that consumer, with its first credential (a real login);
    - `x-anonymous: <username>`: that consumer as the anonymous one (no credential);
    - `x-credential-only: 1`: a credential but no consumer;
    - `x-groups: a, b`: groups authenticated by this plugin (as ldap-auth sets them).
    """

    name = "acl-test-auth"
    priority = 1250

    async def access(self, ctx: gw.Context) -> gw.Response | None:
        headers = ctx.request.headers
        consumers = ctx.snapshot.consumers_by_key
        if "x-user" in headers:
            consumer = consumers[headers["x-user"]]
            ctx.authenticate(consumer, consumer.credentials[0])
        elif "x-anonymous" in headers:
            ctx.authenticate(consumers[headers["x-anonymous"]], None, anonymous=True)
        elif "x-credential-only" in headers:
            ctx.authenticate(None, gw.KeyAuthCredential(key="orphan"))
        if "x-groups" in headers:
            ctx.shared["authenticated_groups"] = [
                g.strip() for g in headers["x-groups"].split(",") if g.strip()
            ]
        return None


gw.plugins.register(AclTestAuth)


def consumer(username: str, *groups: str) -> gw.Consumer:
    return gw.Consumer(
        username=username,
        credentials=[gw.KeyAuthCredential(key=f"key-{username}")],
        acls=groups,
    )


CONSUMERS = [
    consumer("nogroup"),
    consumer("admin", "admin"),
    consumer("pro", "pro", "hello"),
    consumer("free", "free", "hello"),
    gw.Consumer(username="anonymous", acls=["anonymous"]),
    gw.Consumer(username="anonymous-nogroup"),
]


def gateway_with(acl: Acl | None, *, auth: bool = True) -> gw.Gateway:
    plugins: list[gw.Plugin] = [AclTestAuth()] if auth else []
    if acl is not None:
        plugins.append(acl)
    return gw.Gateway(
        services=[
            gw.Service(
                name="s",
                url="http://echo.internal",
                routes=[gw.Route(name="r", paths=["/"], plugins=plugins)],
            )
        ],
        consumers=CONSUMERS,
        engines={"echo.internal": echo_engine()},
    )


async def get(gateway: gw.Gateway, **headers: str) -> Any:
    async with client(gateway) as http:
        return await http.get(
            "/request", headers={k.replace("_", "-"): v for k, v in headers.items()}
        )


def upstream_headers(response: Any) -> dict[str, list[str]]:
    assert response.status_code == 200, response.text
    headers: dict[str, list[str]] = response.json()["headers"]
    return headers


def refused(response: Any, status: int, message: str) -> None:
    assert response.status_code == status
    body = response.json()
    assert body["message"] == message
    assert "request_id" in body
    assert "path" not in body  # Kong's error, not the upstream's echo


# -- who may pass --------------------------------------------------------------------------


async def test_an_unauthenticated_request_gets_401() -> None:
    gateway = gateway_with(Acl(allow=["admin"]), auth=False)
    refused(await get(gateway), 401, "Unauthorized")


@pytest.mark.parametrize("acl", [Acl(allow=["admin"]), Acl(deny=["admin"])])
async def test_without_authentication_every_list_gives_401(acl: Acl) -> None:
    refused(await get(gateway_with(acl)), 401, "Unauthorized")


async def test_a_credential_without_a_consumer_gets_403() -> None:
    gateway = gateway_with(Acl(allow=["admin"]))
    refused(await get(gateway, x_credential_only="1"), 403, "You cannot consume this service")


async def test_a_consumer_in_an_allowed_group_passes_and_the_upstream_gets_its_groups() -> None:
    headers = upstream_headers(await get(gateway_with(Acl(allow=["admin"])), x_user="admin"))
    assert headers["x-consumer-groups"] == ["admin"]
    assert "x-authenticated-groups" not in headers


async def test_a_consumer_in_no_allowed_group_gets_403() -> None:
    gateway = gateway_with(Acl(allow=["admin"]))
    refused(await get(gateway, x_user="free"), 403, "You cannot consume this service")


async def test_every_group_is_sent_upstream_comma_separated_in_order() -> None:
    headers = upstream_headers(await get(gateway_with(Acl(allow=["hello"])), x_user="pro"))
    assert headers["x-consumer-groups"] == ["pro, hello"]


async def test_one_allowed_group_is_enough() -> None:
    gateway = gateway_with(Acl(allow=["admin", "free"]))
    assert (await get(gateway, x_user="free")).status_code == 200
    refused(await get(gateway, x_user="pro"), 403, "You cannot consume this service")


async def test_a_consumer_in_a_denied_group_gets_403() -> None:
    gateway = gateway_with(Acl(deny=["free", "admin"]))
    refused(await get(gateway, x_user="free"), 403, "You cannot consume this service")
    headers = upstream_headers(await get(gateway, x_user="pro"))
    assert headers["x-consumer-groups"] == ["pro, hello"]


async def test_a_consumer_without_groups_fails_an_allow_list() -> None:
    gateway = gateway_with(Acl(allow=["admin"]))
    # With a credential, Kong says 403; as the anonymous consumer (no credential), 401.
    refused(await get(gateway, x_user="nogroup"), 403, "You cannot consume this service")
    refused(await get(gateway, x_anonymous="anonymous-nogroup"), 401, "Unauthorized")


async def test_a_consumer_without_groups_passes_a_deny_list_with_an_empty_groups_header() -> None:
    gateway = gateway_with(Acl(deny=["admin"]))
    for headers in ({"x_user": "nogroup"}, {"x_anonymous": "anonymous-nogroup"}):
        assert upstream_headers(await get(gateway, **headers))["x-consumer-groups"] == [""]


async def test_the_anonymous_consumers_groups_apply() -> None:
    allowed = gateway_with(Acl(allow=["anonymous"]))
    headers = upstream_headers(await get(allowed, x_anonymous="anonymous"))
    assert headers["x-consumer-groups"] == ["anonymous"]
    denied = gateway_with(Acl(deny=["anonymous"]))
    refused(await get(denied, x_anonymous="anonymous"), 403, "You cannot consume this service")


# -- authenticated groups ---------------------------------------------------------------------


async def test_authenticated_groups_without_a_consumer_are_checked_and_sent_upstream() -> None:
    gateway = gateway_with(Acl(allow=["admin"]))
    headers = upstream_headers(await get(gateway, x_groups="hello, admin"))
    assert headers["x-authenticated-groups"] == ["hello, admin"]
    assert "x-consumer-groups" not in headers
    refused(await get(gateway, x_groups="free"), 403, "You cannot consume this service")


async def test_authenticated_groups_in_a_denied_group_get_403() -> None:
    gateway = gateway_with(Acl(deny=["admin"]))
    refused(await get(gateway, x_groups="admin"), 403, "You cannot consume this service")
    assert (await get(gateway, x_groups="free")).status_code == 200


async def test_authenticated_groups_override_the_anonymous_consumers() -> None:
    gateway = gateway_with(Acl(allow=["admin"]))
    headers = upstream_headers(await get(gateway, x_anonymous="anonymous", x_groups="admin"))
    assert headers["x-authenticated-groups"] == ["admin"]
    assert "x-consumer-groups" not in headers
    denied = gateway_with(Acl(deny=["admin"]))
    refused(
        await get(denied, x_anonymous="anonymous", x_groups="admin"),
        403,
        "You cannot consume this service",
    )


async def test_a_real_consumers_groups_win_over_authenticated_groups_by_default() -> None:
    gateway = gateway_with(Acl(allow=["admin"]))
    headers = upstream_headers(await get(gateway, x_user="admin", x_groups="free"))
    assert headers["x-consumer-groups"] == ["admin"]
    assert "x-authenticated-groups" not in headers


async def test_always_use_authenticated_groups_prefers_them_and_falls_back_to_the_consumers() -> (
    None
):
    gateway = gateway_with(Acl(allow=["free"], always_use_authenticated_groups=True))
    headers = upstream_headers(await get(gateway, x_user="admin", x_groups="free"))
    assert headers["x-authenticated-groups"] == ["free"]
    assert "x-consumer-groups" not in headers
    refused(
        await get(gateway, x_user="free", x_groups="admin"), 403, "You cannot consume this service"
    )
    # Without authenticated groups, the consumer's own are used.
    assert upstream_headers(await get(gateway, x_user="free"))["x-consumer-groups"] == [
        "free, hello"
    ]
    refused(await get(gateway, x_user="admin"), 403, "You cannot consume this service")


# -- headers -------------------------------------------------------------------------------------


async def test_hide_groups_header_sends_no_groups_upstream() -> None:
    gateway = gateway_with(Acl(allow=["admin", "hello"], hide_groups_header=True))
    for headers in ({"x_user": "admin"}, {"x_groups": "hello"}):
        sent = upstream_headers(await get(gateway, **headers))
        assert "x-consumer-groups" not in sent
        assert "x-authenticated-groups" not in sent


@pytest.mark.parametrize("hide", [False, True])
async def test_a_client_cannot_claim_groups_in_the_headers_the_upstream_trusts(hide: bool) -> None:
    gateway = gateway_with(Acl(allow=["admin", "free"], hide_groups_header=hide))
    sent = upstream_headers(
        await get(
            gateway,
            x_user="free",
            x_consumer_groups="admin",
            x_authenticated_groups="admin",
        )
    )
    assert sent.get("x-consumer-groups") == (None if hide else ["free, hello"])
    assert "x-authenticated-groups" not in sent


async def test_errors_follow_the_clients_accept_header() -> None:
    response = await get(gateway_with(Acl(allow=["admin"])), accept="text/plain")
    assert response.status_code == 401
    assert response.text.startswith("Unauthorized\nrequest_id: ")


# -- configuration ----------------------------------------------------------------------------


def test_its_kong_name_priority_and_defaults() -> None:
    assert gw.plugins.get("acl") is Acl
    assert Acl.priority == 950
    acl = Acl(allow=["a"])
    assert acl.to_config() == {
        "allow": ["a"],
        "deny": None,
        "hide_groups_header": False,
        "always_use_authenticated_groups": False,
    }
    assert Acl.from_config(acl.to_config()) == acl


@pytest.mark.parametrize(
    ("config", "error"),
    [
        (
            {"allow": ["a"], "deny": ["b"]},
            "exactly one of these fields must be non-empty: 'config.allow', 'config.deny'",
        ),
        ({}, "at least one of these fields must be non-empty: 'config.allow', 'config.deny'"),
        (
            {"allow": [], "deny": []},
            "at least one of these fields must be non-empty: 'config.allow', 'config.deny'",
        ),
        ({"allow": "admin"}, "allow: expected an array"),
        ({"deny": [1]}, "deny[0]: expected a string"),
        ({"allow": ["a"], "hide_groups_header": "yes"}, "hide_groups_header: expected a boolean"),
    ],
)
def test_invalid_configurations_fail_with_kongs_messages(
    config: dict[str, Any], error: str
) -> None:
    with pytest.raises(gw.ConfigurationError) as info:
        Acl(**config)
    assert str(info.value) == error


def test_an_empty_list_beside_a_full_one_is_accepted() -> None:
    assert Acl(allow=[], deny=["b"]).deny == ("b",)


def test_it_cannot_be_applied_to_a_consumer() -> None:
    with pytest.raises(gw.ConfigurationError, match="consumer"):
        gw.Gateway(consumers=[gw.Consumer(username="c", plugins=[Acl(allow=["a"])])])


async def test_it_works_from_a_declarative_file_with_acls_nested_and_top_level() -> None:
    config = {
        "_format_version": "3.0",
        "services": [
            {
                "name": "s",
                "url": "http://echo.internal",
                "routes": [
                    {
                        "name": "r",
                        "paths": ["/"],
                        "plugins": [
                            {"name": "acl-test-auth"},
                            {"name": "acl", "config": {"allow": ["ops"]}},
                        ],
                    }
                ],
            }
        ],
        "consumers": [
            {
                "username": "ada",
                "keyauth_credentials": [{"key": "k-ada"}],
                "acls": [{"group": "ops"}],
            },
            {"username": "bob", "keyauth_credentials": [{"key": "k-bob"}]},
        ],
        "acls": [{"consumer": "bob", "group": "devs"}, {"consumer": "ada", "group": "devs"}],
    }
    gateway = gw.Gateway.from_config(config, engines={"echo.internal": echo_engine()})
    assert upstream_headers(await get(gateway, x_user="ada"))["x-consumer-groups"] == ["ops, devs"]
    refused(await get(gateway, x_user="bob"), 403, "You cannot consume this service")
    again = gw.Gateway.from_config(gateway.to_config(), engines={"echo.internal": echo_engine()})
    assert again.config == gateway.config


def test_declarative_errors_carry_the_plugin_path() -> None:
    config = {
        "_format_version": "3.0",
        "plugins": [{"name": "acl", "config": {"allow": ["a"], "deny": ["b"]}}],
    }
    with pytest.raises(gw.ConfigurationError) as info:
        gw.Gateway.from_config(config)
    assert str(info.value) == (
        "plugins[0].config: exactly one of these fields must be non-empty: "
        "'config.allow', 'config.deny'"
    )


# -- with key-auth, as in Kong's spec ------------------------------------------------------------


def behind_key_auth(acl: Acl, anonymous: str | None = None) -> gw.Gateway:
    from pygateway.plugins._key_auth import KeyAuth

    return gw.Gateway(
        services=[
            gw.Service(
                name="s",
                url="http://echo.internal",
                routes=[gw.Route(paths=["/"], plugins=[KeyAuth(anonymous=anonymous), acl])],
            )
        ],
        consumers=[*CONSUMERS, gw.Consumer(username="everyone", acls=["everyone"])],
        engines={"echo.internal": echo_engine()},
    )


async def test_behind_key_auth_a_key_of_an_allowed_consumer_passes() -> None:
    gateway = behind_key_auth(Acl(allow=["admin"]))
    headers = upstream_headers(await get(gateway, apikey="key-admin"))
    assert headers["x-consumer-groups"] == ["admin"]
    assert headers["x-consumer-username"] == ["admin"]
    refused(await get(gateway, apikey="key-free"), 403, "You cannot consume this service")


async def test_behind_key_auth_the_anonymous_consumers_groups_decide() -> None:
    with_group = behind_key_auth(Acl(allow=["everyone"]), anonymous="everyone")
    headers = upstream_headers(await get(with_group))
    assert headers["x-consumer-groups"] == ["everyone"]
    assert headers["x-anonymous-consumer"] == ["true"]
    refused(
        await get(behind_key_auth(Acl(allow=["none"]), anonymous="everyone")),
        403,
        "You cannot consume this service",
    )
    without_group = behind_key_auth(Acl(allow=["everyone"]), anonymous="anonymous-nogroup")
    refused(await get(without_group), 401, "Unauthorized")
    deny = behind_key_auth(Acl(deny=["everyone"]), anonymous="anonymous-nogroup")
    assert upstream_headers(await get(deny))["x-consumer-groups"] == [""]
