"""The oauth2 plugin, after Kong's spec for it (spec/03-plugins/25-oauth2): every grant end to
end through a gateway (the token endpoint, then an API call with the token), PKCE, refresh
token rotation, scopes, anonymous, hide_credentials and the HTTPS requirement."""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import attrs
import httpx
import pytest
from upstreams import call_asgi, wait_until

import pygateway as gw
from pygateway import KeyAuthCredential
from pygateway.plugins._auth import KDF_THREADS, kdf_limiter, run_kdf
from pygateway.plugins._oauth2 import (
    STORE_KEY,
    MemoryTokenStore,
    OAuth2,
    OAuth2Credential,
    TokenStore,
    token_store,
)
from pygateway.plugins._oauth2._credential import hash_secret, verify_secret
from pygateway.testing import client, echo_engine

PROVISION_KEY = "provision123"
REDIRECT = "http://google.test/kong"
CONFIDENTIAL = OAuth2Credential(
    name="app", client_id="clientid123", client_secret="secret123", redirect_uris=[REDIRECT]
)
PUBLIC = OAuth2Credential(
    name="spa", client_id="clientid11211", client_type="public", redirect_uris=[REDIRECT]
)
HASHED = OAuth2Credential(
    name="hashed",
    client_id="clientid999",
    client_secret="hashedsecret",
    hash_secret=True,
    redirect_uris=[REDIRECT],
)
NO_REDIRECT = OAuth2Credential(name="m2m", client_id="clientid10112", client_secret="secret10112")
OTHER = OAuth2Credential(
    name="other",
    client_id="clientid456",
    client_secret="secret456",
    redirect_uris=["http://one.test/one/", "http://two.test/two"],
)
CONSUMERS = [
    gw.Consumer(username="bob", credentials=[CONFIDENTIAL, PUBLIC, HASHED, NO_REDIRECT]),
    gw.Consumer(username="alice", credentials=[OTHER]),
    gw.Consumer(username="no-body"),
]
ALL_FLOWS = {
    "enable_authorization_code": True,
    "enable_implicit_grant": True,
    "enable_client_credentials": True,
    "enable_password_grant": True,
}
VERIFIER = "abcdelfhigklmnopqrstuvwxyz0123456789abcdefg"


def challenge_of(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


class Clock:
    """A clock the token store runs on, moved by hand."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def oauth2(**config: Any) -> OAuth2:
    config = {
        "scopes": ["email", "profile", "user.email"],
        "provision_key": PROVISION_KEY,
        **config,
    }
    if not any(config.get(flow) for flow in ALL_FLOWS):
        config.update(ALL_FLOWS)
    return OAuth2(**config)


def gateway_with(
    plugin: OAuth2 | None = None,
    *,
    others: dict[str, OAuth2] | None = None,
    clock: Clock | None = None,
    extra: tuple[gw.Plugin, ...] = (),
    **kwargs: Any,
) -> gw.Gateway:
    """Service "s" with route `/api` (the plugin on it), and one more service per `others`
    entry, with route `/<name>`."""
    services = [
        gw.Service(
            name="s",
            url="http://echo.internal",
            routes=[gw.Route(name="api", paths=["/api"], plugins=[plugin or oauth2(), *extra])],
        )
    ]
    for name, other in (others or {}).items():
        services.append(
            gw.Service(
                name=name,
                url="http://echo.internal",
                routes=[gw.Route(name=name, paths=[f"/{name}"], plugins=[other])],
            )
        )
    gateway = gw.Gateway(
        services=services,
        consumers=CONSUMERS,
        engines={"echo.internal": echo_engine()},
        **kwargs,
    )
    if clock is not None:
        gateway.shared[STORE_KEY] = MemoryTokenStore(clock=clock)
    return gateway


def https(gateway: gw.Gateway) -> httpx.AsyncClient:
    return client(gateway, base_url="https://gateway.test")


def upstream_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v[0] for k, v in response.json()["headers"].items()}


async def post_token(
    http: httpx.AsyncClient, prefix: str = "/api", **params: Any
) -> httpx.Response:
    """POST to the token endpoint as clientid123 (give `client_id=None` to send none)."""
    params = {"client_id": "clientid123", "client_secret": "secret123", **params}
    body = {k: v for k, v in params.items() if v is not None}
    return await http.post(f"{prefix}/oauth2/token", json=body)


async def token(http: httpx.AsyncClient, prefix: str = "/api", **params: Any) -> dict[str, Any]:
    response = await post_token(http, prefix, **params)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


async def client_credentials(http: httpx.AsyncClient, prefix: str = "/api", **params: Any) -> str:
    data = await token(http, prefix, grant_type="client_credentials", scope="email", **params)
    return str(data["access_token"])


async def code_for(http: httpx.AsyncClient, prefix: str = "/api", **params: Any) -> str:
    params = {
        "provision_key": PROVISION_KEY,
        "client_id": "clientid123",
        "authenticated_userid": "userid123",
        "scope": "email",
        "response_type": "code",
        **params,
    }
    response = await http.post(f"{prefix}/oauth2/authorize", json=params)
    assert response.status_code == 200, response.text
    location = urlsplit(response.json()["redirect_uri"])
    return parse_qs(location.query)["code"][0]


async def api(
    http: httpx.AsyncClient, access_token: str, path: str = "/api/request"
) -> httpx.Response:
    return await http.get(path, headers={"Authorization": f"Bearer {access_token}"})


# -- configuration --------------------------------------------------------------------------


def test_the_plugin_has_kongs_name_priority_and_defaults() -> None:
    plugin = OAuth2(enable_client_credentials=True)
    assert (OAuth2.name, OAuth2.priority) == ("oauth2", 1400)
    assert "consumer" not in OAuth2.scopes
    assert gw.plugins.get("oauth2") is OAuth2
    config = plugin.to_config()
    provision_key = config.pop("provision_key")
    assert re.fullmatch(r"[A-Za-z0-9]{32}", provision_key)
    assert config == {
        "scopes": None,
        "mandatory_scope": False,
        "token_expiration": 7200,
        "enable_authorization_code": False,
        "enable_implicit_grant": False,
        "enable_client_credentials": True,
        "enable_password_grant": False,
        "hide_credentials": False,
        "accept_http_if_already_terminated": False,
        "anonymous": None,
        "global_credentials": False,
        "auth_header_name": "authorization",
        "refresh_token_ttl": 1209600,
        "reuse_refresh_token": False,
        "pkce": "lax",
        "realm": None,
    }
    assert OAuth2(enable_client_credentials=True).provision_key != plugin.provision_key
    assert PROVISION_KEY not in repr(oauth2())


def test_at_least_one_flow_must_be_enabled() -> None:
    with pytest.raises(gw.ConfigurationError) as caught:
        OAuth2()
    assert str(caught.value) == (
        "at least one of these fields must be true: enable_authorization_code, "
        "enable_implicit_grant, enable_client_credentials, enable_password_grant"
    )


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"mandatory_scope": True}, "scopes: required field missing"),
        ({"scopes": "email"}, "scopes: expected an array"),
        ({"scopes": ["email", 3]}, "scopes[1]: expected a string"),
        (
            {"refresh_token_ttl": 252979200},
            "refresh_token_ttl: value should be between 0 and 100000000",
        ),
        ({"pkce": "always"}, "pkce: expected one of: none, lax, strict"),
        ({"token_expiration": "7200"}, "token_expiration: expected a number"),
        ({"anonymous": ""}, "anonymous: length must be at least 1"),
    ],
)
def test_invalid_configuration_names_kongs_field(config: dict[str, Any], message: str) -> None:
    with pytest.raises(gw.ConfigurationError) as caught:
        OAuth2(enable_client_credentials=True, **config)
    assert str(caught.value) == message


def test_declarative_configuration_loads_and_exports_unchanged() -> None:
    document = {
        "_format_version": "3.0",
        "services": [
            {
                "name": "s",
                "url": "http://echo.internal",
                "routes": [
                    {
                        "name": "api",
                        "paths": ["/api"],
                        "plugins": [
                            {
                                "name": "oauth2",
                                "config": {
                                    "scopes": ["email"],
                                    "mandatory_scope": True,
                                    "enable_authorization_code": True,
                                    "provision_key": PROVISION_KEY,
                                    "token_expiration": 60,
                                    "pkce": "strict",
                                },
                            }
                        ],
                    }
                ],
            }
        ],
        "consumers": [
            {
                "username": "bob",
                "oauth2_credentials": [
                    {"name": "app", "client_id": "cid", "client_secret": "s", "hash_secret": True}
                ],
            }
        ],
        "oauth2_credentials": [
            {"consumer": "bob", "name": "spa", "client_id": "spa", "client_type": "public"}
        ],
    }
    gateway = gw.Gateway.from_config(document)
    plugin = gateway.config.services[0].routes[0].plugins[0]
    assert isinstance(plugin, OAuth2)
    assert plugin.token_scopes == ("email",)
    assert (plugin.mandatory_scope, plugin.token_expiration, plugin.pkce) == (True, 60, "strict")
    credentials = gateway.config.consumers[0].credentials
    assert [c.client_id for c in credentials] == ["cid", "spa"]  # type: ignore[attr-defined]
    hashed = credentials[0]
    assert isinstance(hashed, OAuth2Credential)
    assert hashed.client_secret.startswith("$pbkdf2-sha512$i=10000,l=32$")
    assert verify_secret("s", hashed.client_secret)

    exported = gateway.to_config()
    assert '"s"' not in repr(exported["consumers"][0]["oauth2_credentials"][0]["client_secret"])
    again = gw.Gateway.from_config(exported)
    assert again.config == gateway.config
    assert again.config.consumers[0].credentials[0].client_secret == hashed.client_secret  # type: ignore[attr-defined]


def test_declarative_errors_are_located_under_the_plugin() -> None:
    document = {
        "_format_version": "3.0",
        "routes": [
            {
                "name": "api",
                "paths": ["/api"],
                "plugins": [{"name": "oauth2", "config": {"scopes": ["x"], "bogus": 1}}],
            }
        ],
    }
    with pytest.raises(gw.ConfigurationError) as caught:
        gw.Gateway.from_config(document)
    assert "routes[0].plugins[0].config.bogus: unknown field" in str(caught.value)


def test_the_plugin_cannot_be_applied_to_a_consumer() -> None:
    with pytest.raises(gw.ConfigurationError, match="cannot be applied to a consumer"):
        gw.Gateway(consumers=[gw.Consumer(username="bob", plugins=[oauth2()])])


def test_credentials_generate_their_client_id_and_secret() -> None:
    credential = OAuth2Credential(name="app")
    assert re.fullmatch(r"[A-Za-z0-9]{32}", credential.client_id)
    assert re.fullmatch(r"[A-Za-z0-9]{32}", credential.client_secret)
    assert credential.client_type == "confidential"
    assert credential.identifier == credential.client_id
    assert credential.client_secret not in repr(credential)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "name: required field missing"),
        (
            {"name": "a", "redirect_uris": ["not-valid"]},
            "redirect_uris[0]: cannot parse 'not-valid'",
        ),
        (
            {
                "name": "a",
                "redirect_uris": ["http://valid.test", "http://test.test/#with-fragment"],
            },
            "redirect_uris[1]: fragment not allowed in 'http://test.test/#with-fragment'",
        ),
        ({"name": "a", "client_type": "spa"}, "client_type: expected one of: confidential, public"),
    ],
)
def test_invalid_credentials_name_the_field(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(gw.ConfigurationError) as caught:
        OAuth2Credential(**fields)
    assert str(caught.value) == message


def test_a_hashed_secret_is_kept_as_a_kong_compatible_pbkdf2_hash() -> None:
    hashed = hash_secret("test")
    assert verify_secret("test", hashed)
    assert not verify_secret("invalid", hashed)
    # made by Kong 3.x (kong.plugins.oauth2.secret) for the secret "test"
    kong = (
        "$pbkdf2-sha512$i=10000,l=32$"
        + base64.b64encode(b"0123456789abcdef").decode().rstrip("=")
        + "$"
        + base64.b64encode(hashlib.pbkdf2_hmac("sha512", b"test", b"0123456789abcdef", 10000, 32))
        .decode()
        .rstrip("=")
    )
    credential = OAuth2Credential(name="a", client_secret=kong, hash_secret=True)
    assert credential.client_secret == kong
    assert credential.check_secret("test")
    assert not credential.check_secret("tesT")


# -- the client credentials grant -----------------------------------------------------------


async def test_client_credentials_token_then_an_api_call() -> None:
    async with https(gateway_with()) as http:
        response = await post_token(http, scope="email", grant_type="client_credentials")
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["pragma"] == "no-cache"
        body = response.json()
        assert body["token_type"] == "bearer"
        assert body["expires_in"] == 7200
        assert re.fullmatch(r"[A-Za-z0-9]{32}", body["access_token"])
        assert "refresh_token" not in body

        proxied = await api(http, body["access_token"])
    assert proxied.status_code == 200
    headers = upstream_headers(proxied)
    assert headers["x-consumer-username"] == "bob"
    assert headers["x-consumer-id"] == CONSUMERS[0].id
    assert headers["x-credential-identifier"] == "clientid123"
    assert headers["x-authenticated-scope"] == "email"
    assert "x-authenticated-userid" not in headers
    assert "x-anonymous-consumer" not in headers


async def test_client_credentials_with_a_user_needs_the_provision_key() -> None:
    async with https(gateway_with()) as http:
        for extra in ({}, {"provision_key": "hello"}):
            response = await post_token(
                http, grant_type="client_credentials", authenticated_userid="user123", **extra
            )
            assert response.status_code == 400
            assert response.json() == {
                "error": "invalid_provision_key",
                "error_description": "Invalid provision_key",
            }
        access_token = await client_credentials(
            http, authenticated_userid="hello", provision_key=PROVISION_KEY
        )
        headers = upstream_headers(await api(http, access_token))
    assert headers["x-authenticated-userid"] == "hello"


async def test_client_credentials_work_for_a_client_without_redirect_uris() -> None:
    async with https(gateway_with()) as http:
        access_token = await client_credentials(
            http, client_id="clientid10112", client_secret="secret10112"
        )
        assert (await api(http, access_token)).status_code == 200


async def test_a_public_client_gets_no_token_by_client_credentials() -> None:
    async with https(gateway_with()) as http:
        response = await http.post(
            "/api/oauth2/token",
            json={"grant_type": "client_credentials", "client_id": "clientid11211"},
        )
    assert response.status_code == 400
    assert response.json() == {
        "error": "unauthorized_client",
        "error_description": "The client_credentials grant is for confidential clients only",
    }
    assert response.headers["cache-control"] == "no-store"


@pytest.mark.parametrize("filler", [" ", "\t", "Basic"])
async def test_a_100_kb_authorization_header_of_spaces_is_answered(filler: str) -> None:
    value = "x" + filler * (100_000 // len(filler)) + "x"
    async with https(gateway_with()) as http:
        issued = await http.post(
            "/api/oauth2/token",
            json={"grant_type": "client_credentials"},
            headers={"Authorization": value},
        )
        called = await http.get("/api/request", headers={"Authorization": value})
    assert issued.status_code == 400
    assert issued.json()["error"] == "invalid_client"
    assert called.status_code == 401
    assert called.json()["error"] == "invalid_token"


@pytest.mark.parametrize("scheme", ["Basic", "basic", "BASIC"])
async def test_the_basic_scheme_of_a_client_is_read_in_any_case(scheme: str) -> None:
    basic = base64.b64encode(b"clientid123:secret123").decode()
    async with https(gateway_with()) as http:
        response = await http.post(
            "/api/oauth2/token",
            json={"scope": "email", "grant_type": "client_credentials"},
            headers={"Authorization": f"{scheme} {basic}"},
        )
    assert response.status_code == 200, response.text


async def test_hashed_secrets_are_checked_a_few_at_a_time() -> None:
    release = anyio.Event()
    done: list[httpx.Response] = []

    def busy() -> None:
        anyio.from_thread.run(release.wait)

    async with https(gateway_with()) as http, anyio.create_task_group() as tg:
        limiter = kdf_limiter()
        for _ in range(KDF_THREADS):
            tg.start_soon(run_kdf, busy)

        async def ask() -> None:
            done.append(
                await post_token(
                    http,
                    grant_type="client_credentials",
                    client_id="clientid999",
                    client_secret="hashedsecret",
                )
            )

        await wait_until(lambda: limiter.borrowed_tokens == KDF_THREADS)
        tg.start_soon(ask)
        # the token request queues behind the busy derivations
        await wait_until(lambda: limiter.statistics().tasks_waiting == 1)
        assert not done
        release.set()
    assert done[0].status_code == 200, done[0].text


async def test_the_client_may_authenticate_with_basic_auth() -> None:
    basic = base64.b64encode(b"clientid123:secret123").decode()
    wrong = base64.b64encode(b"clientid123:secret124").decode()
    async with https(gateway_with()) as http:
        body = {"scope": "email", "grant_type": "client_credentials"}
        ok = await http.post(
            "/api/oauth2/token", json=body, headers={"Authorization": f"Basic {basic}"}
        )
        assert ok.status_code == 200
        refused = await http.post(
            "/api/oauth2/token", json=body, headers={"Authorization": f"Basic {wrong}"}
        )
    assert refused.status_code == 401
    assert refused.json() == {
        "error": "invalid_client",
        "error_description": "Invalid client authentication",
    }
    assert refused.headers["www-authenticate"] == 'Basic realm="OAuth2.0"'


@pytest.mark.parametrize(
    "params",
    [
        {"client_id": "clientid123", "client_secret": "wrong"},
        {"client_id": "clientid123"},
        {"client_id": "", "client_secret": ""},
        {"client_id": "unknown", "client_secret": "secret123"},
        {},
    ],
)
async def test_a_wrong_client_secret_is_invalid_client(params: dict[str, str]) -> None:
    async with https(gateway_with()) as http:
        response = await http.post(
            "/api/oauth2/token", json={"grant_type": "client_credentials", **params}
        )
    assert response.status_code == 400
    assert response.json() == {
        "error": "invalid_client",
        "error_description": "Invalid client authentication",
    }
    assert "www-authenticate" not in response.headers


async def test_a_hashed_client_secret_authenticates() -> None:
    async with https(gateway_with()) as http:
        access_token = await client_credentials(
            http, client_id="clientid999", client_secret="hashedsecret"
        )
        assert (await api(http, access_token)).status_code == 200
        response = await http.post(
            "/api/oauth2/token",
            json={
                "grant_type": "client_credentials",
                "client_id": "clientid999",
                "client_secret": HASHED.client_secret,  # the hash is not the secret
            },
        )
    assert response.json()["error"] == "invalid_client"


async def test_a_grant_that_is_not_enabled_is_unsupported() -> None:
    async with https(gateway_with(oauth2(enable_authorization_code=True))) as http:
        for grant_type in ("client_credentials", "password", None):
            params = {"client_id": "clientid123", "client_secret": "secret123"}
            if grant_type:
                params["grant_type"] = grant_type
            response = await http.post("/api/oauth2/token", json=params)
            assert response.status_code == 400
            assert response.json() == {
                "error": "unsupported_grant_type",
                "error_description": "Invalid grant_type",
            }


async def test_the_token_endpoint_reads_form_and_multipart_bodies() -> None:
    params = {
        "client_id": "clientid123",
        "client_secret": "secret123",
        "scope": "email",
        "grant_type": "client_credentials",
    }
    async with https(gateway_with()) as http:
        form = await http.post("/api/oauth2/token", data=params)
        multipart = await http.post(
            "/api/oauth2/token", files={k: (None, v) for k, v in params.items()}
        )
        query = await http.post("/api/oauth2/token", params=params)
    assert form.status_code == multipart.status_code == query.status_code == 200


# -- the password grant ---------------------------------------------------------------------


async def test_password_grant_token_then_an_api_call_with_the_token_in_the_query() -> None:
    async with https(gateway_with()) as http:
        body = await token(
            http,
            grant_type="password",
            provision_key=PROVISION_KEY,
            authenticated_userid="id123",
            scope="email",
        )
        assert re.fullmatch(r"[A-Za-z0-9]{32}", body["refresh_token"])
        proxied = await http.get("/api/request", params={"access_token": body["access_token"]})
    assert proxied.status_code == 200
    headers = upstream_headers(proxied)
    assert headers["x-authenticated-userid"] == "id123"
    assert headers["x-authenticated-scope"] == "email"
    assert headers["x-credential-identifier"] == "clientid123"


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({}, ("invalid_provision_key", "Invalid provision_key")),
        ({"provision_key": "wrong"}, ("invalid_provision_key", "Invalid provision_key")),
        (
            {"provision_key": PROVISION_KEY, "authenticated_userid": "  "},
            ("invalid_authenticated_userid", "Missing authenticated_userid parameter"),
        ),
    ],
)
async def test_password_grant_needs_the_provision_key_and_a_user(
    params: dict[str, str], error: tuple[str, str]
) -> None:
    async with https(gateway_with()) as http:
        response = await post_token(http, grant_type="password", **params)
    assert response.status_code == 400
    assert response.json() == {"error": error[0], "error_description": error[1]}


# -- the authorization code grant -----------------------------------------------------------


async def test_authorization_code_then_token_then_an_api_call() -> None:
    async with https(gateway_with()) as http:
        response = await http.post(
            "/api/oauth2/authorize",
            json={
                "provision_key": PROVISION_KEY,
                "client_id": "clientid123",
                "authenticated_userid": "userid123",
                "scope": "email profile",
                "response_type": "code",
                "state": "hello",
            },
        )
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        location = response.json()["redirect_uri"]
        match = re.fullmatch(r"http://google\.test/kong\?code=(\w{32})&state=hello", location)
        assert match is not None

        body = await token(http, grant_type="authorization_code", code=match[1], state="wot")
        assert body["state"] == "wot"
        assert body["expires_in"] == 7200
        assert re.fullmatch(r"[A-Za-z0-9]{32}", body["refresh_token"])

        proxied = await api(http, body["access_token"])
    headers = upstream_headers(proxied)
    assert headers["x-authenticated-userid"] == "userid123"
    assert headers["x-authenticated-scope"] == "email profile"
    assert headers["x-consumer-username"] == "bob"


async def test_an_authorization_code_is_used_once() -> None:
    async with https(gateway_with()) as http:
        code = await code_for(http)
        await token(http, grant_type="authorization_code", code=code)
        again = await post_token(http, grant_type="authorization_code", code=code)
    assert again.status_code == 400
    assert again.json() == {"error": "invalid_request", "error_description": "Invalid code"}


async def test_concurrent_exchanges_of_one_code_give_one_token() -> None:
    statuses: list[int] = []
    async with https(gateway_with()) as http:
        code = await code_for(http)

        async def exchange() -> None:
            response = await post_token(http, grant_type="authorization_code", code=code)
            statuses.append(response.status_code)

        async with anyio.create_task_group() as group:
            for _ in range(5):
                group.start_soon(exchange)
    assert sorted(statuses) == [200, 400, 400, 400, 400]


async def test_a_code_is_refused_to_another_client_and_on_another_service() -> None:
    gateway = gw.Gateway(
        services=[
            gw.Service(
                name=name,
                url="http://echo.internal",
                routes=[gw.Route(name=name, paths=[f"/{name}"], plugins=[oauth2()])],
            )
            for name in ("api", "other")
        ],
        consumers=CONSUMERS,
        engines={"echo.internal": echo_engine()},
    )
    async with https(gateway) as http:
        code = await code_for(http)
        stolen = await http.post(
            "/api/oauth2/token",
            json={
                "client_id": "clientid456",
                "client_secret": "secret456",
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": "http://two.test/two",
            },
        )
        elsewhere = await post_token(http, "/other", grant_type="authorization_code", code=code)
        wrong = await post_token(http, grant_type="authorization_code", code=code + "hello")
        # none of these spent it
        assert await token(http, grant_type="authorization_code", code=code)
    invalid = {"error": "invalid_request", "error_description": "Invalid code"}
    assert stolen.json() == elsewhere.json() == wrong.json() == invalid


async def test_a_redirect_uri_the_client_did_not_register_is_refused() -> None:
    async with https(gateway_with()) as http:
        authorize = await http.post(
            "/api/oauth2/authorize",
            json={
                "provision_key": PROVISION_KEY,
                "client_id": "clientid123",
                "authenticated_userid": "id123",
                "scope": "email",
                "response_type": "code",
                "redirect_uri": "http://hello.test/",
            },
        )
        code = await code_for(http)
        exchange = await post_token(
            http, grant_type="authorization_code", code=code, redirect_uri="http://evil.test/kong"
        )
    assert authorize.status_code == 400
    # the error goes to the client's registered URI, never to the one asked for
    assert authorize.json() == {
        "redirect_uri": "http://google.test/kong?error=invalid_request&error_description="
        "Invalid%20redirect_uri%20that%20does%20not%20match%20with%20any%20redirect_uri"
        "%20created%20with%20the%20application"
    }
    assert exchange.status_code == 400
    assert exchange.json()["error"] == "invalid_request"
    assert exchange.json()["error_description"].startswith("Invalid redirect_uri")


async def test_a_client_with_several_redirect_uris_gets_the_first_by_default() -> None:
    async with https(gateway_with()) as http:
        first = await http.post(
            "/api/oauth2/authorize",
            json={
                "provision_key": PROVISION_KEY,
                "client_id": "clientid456",
                "authenticated_userid": "id123",
                "scope": "email",
                "response_type": "code",
            },
        )
        second = await http.post(
            "/api/oauth2/authorize",
            json={
                "provision_key": PROVISION_KEY,
                "client_id": "clientid456",
                "authenticated_userid": "id123",
                "scope": "email",
                "response_type": "code",
                "redirect_uri": "http://two.test/two",
            },
        )
    assert re.fullmatch(r"http://one\.test/one/\?code=\w{32}", first.json()["redirect_uri"])
    assert re.fullmatch(r"http://two\.test/two\?code=\w{32}", second.json()["redirect_uri"])


async def test_a_redirect_uri_with_a_query_keeps_it() -> None:
    credential = OAuth2Credential(
        name="q", client_id="clientid789", redirect_uris=["http://google.test/kong?foo=bar"]
    )
    gateway = gw.Gateway(
        services=[
            gw.Service(
                name="s",
                url="http://echo.internal",
                routes=[gw.Route(paths=["/api"], plugins=[oauth2()])],
            )
        ],
        consumers=[gw.Consumer(username="q", credentials=[credential])],
    )
    async with https(gateway) as http:
        response = await http.post(
            "/api/oauth2/authorize",
            json={
                "provision_key": PROVISION_KEY,
                "client_id": "clientid789",
                "authenticated_userid": "id123",
                "scope": "email",
                "response_type": "code",
            },
        )
    assert re.fullmatch(
        r"http://google\.test/kong\?code=\w{32}&foo=bar", response.json()["redirect_uri"]
    )


@pytest.mark.parametrize(
    ("params", "status", "body"),
    [
        ({}, 400, {"error": "invalid_provision_key", "error_description": "Invalid provision_key"}),
        (
            {"provision_key": PROVISION_KEY},
            400,
            {
                "error": "invalid_authenticated_userid",
                "error_description": "Missing authenticated_userid parameter",
            },
        ),
        (
            {"provision_key": PROVISION_KEY, "authenticated_userid": "id123"},
            400,
            {"error": "invalid_client", "error_description": "Invalid client authentication"},
        ),
        (
            {
                "provision_key": PROVISION_KEY,
                "authenticated_userid": "id123",
                "client_id": "clientid123",
                "scope": "wot",
                "response_type": "code",
            },
            400,
            {
                "redirect_uri": "http://google.test/kong?error=invalid_scope&error_description="
                "%22wot%22%20is%20an%20invalid%20scope"
            },
        ),
        (
            {
                "provision_key": PROVISION_KEY,
                "authenticated_userid": "id123",
                "client_id": "clientid123",
                "scope": "email",
                "state": "somestate",
            },
            400,
            {
                "redirect_uri": "http://google.test/kong?error=unsupported_response_type"
                "&error_description=Invalid%20response_type&state=somestate"
            },
        ),
    ],
)
async def test_authorize_errors_as_kong(
    params: dict[str, str], status: int, body: dict[str, str]
) -> None:
    async with https(gateway_with()) as http:
        response = await http.post("/api/oauth2/authorize", json=params)
    assert response.status_code == status
    assert response.json() == body
    assert response.headers["cache-control"] == "no-store"


# -- the implicit grant ---------------------------------------------------------------------


async def test_implicit_grant_puts_the_token_in_the_fragment() -> None:
    async with https(gateway_with()) as http:
        response = await http.post(
            "/api/oauth2/authorize",
            json={
                "provision_key": PROVISION_KEY,
                "client_id": "clientid123",
                "authenticated_userid": "userid123",
                "scope": "email  profile",
                "response_type": "token",
                "state": "wot",
            },
        )
        assert response.status_code == 200
        location = response.json()["redirect_uri"]
        match = re.fullmatch(
            r"http://google\.test/kong#access_token=(\w{32})&expires_in=7200&state=wot"
            r"&token_type=bearer",
            location,
        )
        assert match is not None
        headers = upstream_headers(await api(http, match[1]))
    assert headers["x-authenticated-scope"] == "email profile"
    assert headers["x-authenticated-userid"] == "userid123"
    assert headers["x-credential-identifier"] == "clientid123"


async def test_implicit_grant_must_be_enabled() -> None:
    async with https(gateway_with(oauth2(enable_authorization_code=True))) as http:
        response = await http.post(
            "/api/oauth2/authorize",
            json={
                "provision_key": PROVISION_KEY,
                "client_id": "clientid123",
                "authenticated_userid": "userid123",
                "scope": "email",
                "response_type": "token",
            },
        )
    assert response.status_code == 400
    assert "error=unsupported_response_type" in response.json()["redirect_uri"]


# -- PKCE ----------------------------------------------------------------------------------


async def test_pkce_s256_lets_a_public_client_in_without_a_secret() -> None:
    async with https(gateway_with()) as http:
        code = await code_for(
            http,
            client_id="clientid11211",
            code_challenge=challenge_of(VERIFIER),
            code_challenge_method="S256",
        )
        response = await http.post(
            "/api/oauth2/token",
            json={
                "client_id": "clientid11211",
                "grant_type": "authorization_code",
                "code": code,
                "code_verifier": VERIFIER,
            },
        )
        assert response.status_code == 200
        headers = upstream_headers(await api(http, response.json()["access_token"]))
    assert headers["x-credential-identifier"] == "clientid11211"


async def test_a_padded_standard_base64_challenge_is_accepted() -> None:
    verifier = "abcdelfhigklmnopqrstuvwxyz0123456789abcdefghijklmnop9"
    challenge = "0LoS6Gtrw16r07+ZXsCf8MeAi21QHmKc3LJdUCA5w/o="  # Kong's spec vector
    async with https(gateway_with()) as http:
        code = await code_for(http, client_id="clientid11211", code_challenge=challenge)
        response = await http.post(
            "/api/oauth2/token",
            json={
                "client_id": "clientid11211",
                "grant_type": "authorization_code",
                "code": code,
                "code_verifier": verifier,
            },
        )
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("verifier", "error"),
    [
        (None, ("invalid_request", "code_verifier is required for PKCE authorization requests")),
        (12, ("invalid_request", "code_verifier is not a string")),
        ("", ("invalid_request", "code_verifier must be between 43 and 128 characters")),
        ("abc123" * 30, ("invalid_request", "code_verifier must be between 43 and 128 characters")),
        ("x" * 43, ("invalid_grant", "Invalid code")),
    ],
)
async def test_a_wrong_or_missing_code_verifier_is_refused(
    verifier: Any, error: tuple[str, str]
) -> None:
    async with https(gateway_with()) as http:
        code = await code_for(
            http, client_id="clientid11211", code_challenge=challenge_of(VERIFIER)
        )
        params = {"client_id": "clientid11211", "grant_type": "authorization_code", "code": code}
        if verifier is not None:
            params["code_verifier"] = verifier
        response = await http.post("/api/oauth2/token", json=params)
    assert response.status_code == 400
    assert response.json() == {"error": error[0], "error_description": error[1]}


async def test_the_plain_method_is_refused_as_by_kong() -> None:
    async with https(gateway_with()) as http:
        response = await http.post(
            "/api/oauth2/authorize",
            json={
                "provision_key": PROVISION_KEY,
                "client_id": "clientid11211",
                "authenticated_userid": "userid123",
                "scope": "email",
                "response_type": "code",
                "state": "hello",
                "code_challenge": VERIFIER,
                "code_challenge_method": "plain",
            },
        )
        without_challenge = await http.post(
            "/api/oauth2/authorize",
            json={
                "provision_key": PROVISION_KEY,
                "client_id": "clientid11211",
                "authenticated_userid": "userid123",
                "scope": "email",
                "response_type": "code",
                "code_challenge_method": "S256",
            },
        )
    assert response.status_code == 400
    assert response.json() == {
        "redirect_uri": "http://google.test/kong?error=invalid_request&error_description="
        "code_challenge_method%20is%20not%20supported%2c%20must%20be%20S256&state=hello"
    }
    assert without_challenge.json() == {
        "redirect_uri": "http://google.test/kong?error=invalid_request&error_description="
        "code_challenge%20is%20required%20when%20code_method%20is%20present"
    }


@pytest.mark.parametrize(
    ("pkce", "client_id", "refused"),
    [
        ("lax", "clientid11211", "public"),
        ("lax", "clientid123", None),
        ("strict", "clientid123", "confidential"),
        ("strict", "clientid11211", "public"),
        ("none", "clientid11211", None),
    ],
)
async def test_whether_authorize_requires_a_challenge_depends_on_pkce_and_the_client(
    pkce: str, client_id: str, refused: str | None
) -> None:
    async with https(gateway_with(oauth2(pkce=pkce))) as http:
        response = await http.post(
            "/api/oauth2/authorize",
            json={
                "provision_key": PROVISION_KEY,
                "client_id": client_id,
                "authenticated_userid": "userid123",
                "scope": "email",
                "response_type": "code",
            },
        )
    location = response.json()["redirect_uri"]
    if refused:
        assert response.status_code == 400
        assert location == (
            "http://google.test/kong?error=invalid_request&error_description=code_challenge"
            f"%20is%20required%20for%20{refused}%20clients"
        )
    else:
        assert response.status_code == 200
        assert "code=" in location


async def test_strict_pkce_refuses_a_token_request_without_a_verifier() -> None:
    async with https(gateway_with(oauth2(pkce="strict"))) as http:
        code = await code_for(http, code_challenge=challenge_of(VERIFIER))
        refused = await post_token(http, grant_type="authorization_code", code=code)
        accepted = await token(
            http, grant_type="authorization_code", code=code, code_verifier=VERIFIER
        )
    assert refused.status_code == 400
    assert refused.json() == {
        "error": "invalid_request",
        "error_description": "code_verifier is required for PKCE authorization requests",
    }
    assert "access_token" in accepted


async def test_a_code_issued_with_a_challenge_needs_the_verifier_even_when_pkce_is_none() -> None:
    async with https(gateway_with(oauth2(pkce="none"))) as http:
        code = await code_for(http, code_challenge=challenge_of(VERIFIER))
        response = await post_token(http, grant_type="authorization_code", code=code)
    assert response.json()["error_description"] == (
        "code_verifier is required for PKCE authorization requests"
    )


async def test_a_public_client_may_not_send_a_secret() -> None:
    async with https(gateway_with()) as http:
        code = await code_for(
            http, client_id="clientid11211", code_challenge=challenge_of(VERIFIER)
        )
        in_body = await http.post(
            "/api/oauth2/token",
            json={
                "client_id": "clientid11211",
                "client_secret": "secret11211",
                "grant_type": "authorization_code",
                "code": code,
                "code_verifier": VERIFIER,
            },
        )
        blank = base64.b64encode(b"clientid11211:    ").decode()
        empty_secret = await http.post(
            "/api/oauth2/token",
            json={"grant_type": "authorization_code", "code": code, "code_verifier": VERIFIER},
            headers={"Authorization": f"Basic {blank}"},
        )
    assert in_body.status_code == 400
    assert in_body.json() == {
        "error": "invalid_request",
        "error_description": "client_secret is disallowed for public clients",
    }
    assert empty_secret.status_code == 200


# -- refresh tokens -------------------------------------------------------------------------


async def test_refreshing_rotates_the_refresh_token_and_retires_the_old_tokens() -> None:
    async with https(gateway_with()) as http:
        first = await token(http, grant_type="authorization_code", code=await code_for(http))
        second = await token(http, grant_type="refresh_token", refresh_token=first["refresh_token"])
        assert second["refresh_token"] != first["refresh_token"]
        assert second["access_token"] != first["access_token"]
        assert second["expires_in"] == 7200

        replay = await post_token(
            http, grant_type="refresh_token", refresh_token=first["refresh_token"]
        )
        assert replay.status_code == 400
        assert replay.json() == {
            "error": "invalid_request",
            "error_description": "Invalid refresh_token",
        }
        assert (await api(http, first["access_token"])).status_code == 401
        proxied = await api(http, second["access_token"])
    assert proxied.status_code == 200
    assert upstream_headers(proxied)["x-authenticated-userid"] == "userid123"
    assert upstream_headers(proxied)["x-authenticated-scope"] == "email"


async def test_reuse_refresh_token_keeps_it_and_retires_the_old_access_token() -> None:
    async with https(gateway_with(oauth2(reuse_refresh_token=True))) as http:
        first = await token(http, grant_type="authorization_code", code=await code_for(http))
        second = await token(http, grant_type="refresh_token", refresh_token=first["refresh_token"])
        third = await token(http, grant_type="refresh_token", refresh_token=first["refresh_token"])
        assert first["refresh_token"] == second["refresh_token"] == third["refresh_token"]
        assert (await api(http, first["access_token"])).status_code == 401
        assert (await api(http, second["access_token"])).status_code == 401
        assert (await api(http, third["access_token"])).status_code == 200


async def test_a_refresh_token_belongs_to_its_client() -> None:
    async with https(gateway_with()) as http:
        first = await token(http, grant_type="authorization_code", code=await code_for(http))
        response = await http.post(
            "/api/oauth2/token",
            json={
                "client_id": "clientid456",
                "client_secret": "secret456",
                "grant_type": "refresh_token",
                "refresh_token": first["refresh_token"],
                "redirect_uri": "http://two.test/two",
            },
        )
        no_secret = await http.post(
            "/api/oauth2/token",
            json={
                "client_id": "clientid123",
                "grant_type": "refresh_token",
                "refresh_token": first["refresh_token"],
            },
        )
        # the failed attempts did not spend it
        assert await token(http, grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert response.status_code == no_secret.status_code == 400
    assert response.json()["error"] == no_secret.json()["error"] == "invalid_client"


async def test_refreshing_where_the_scope_is_not_offered_is_a_scope_mismatch() -> None:
    gateway = gateway_with(
        oauth2(global_credentials=True, scopes=["email", "extra"]),
        others={"narrow": oauth2(global_credentials=True, scopes=["email"])},
    )
    async with https(gateway) as http:
        first = await token(
            http, grant_type="authorization_code", code=await code_for(http, scope="extra")
        )
        response = await post_token(
            http, "/narrow", grant_type="refresh_token", refresh_token=first["refresh_token"]
        )
    assert response.status_code == 400
    assert response.json() == {"error": "invalid_scope", "error_description": "Scope mismatch"}


# -- expiry ---------------------------------------------------------------------------------


async def test_an_expired_token_is_refused_and_can_be_refreshed() -> None:
    clock = Clock()
    async with https(gateway_with(oauth2(token_expiration=5), clock=clock)) as http:
        first = await token(http, grant_type="authorization_code", code=await code_for(http))
        assert first["expires_in"] == 5
        clock.now += 4
        assert (await api(http, first["access_token"])).status_code == 200
        clock.now += 2
        expired = await api(http, first["access_token"])
        second = await token(http, grant_type="refresh_token", refresh_token=first["refresh_token"])
        assert (await api(http, second["access_token"])).status_code == 200
    assert expired.status_code == 401
    assert expired.json() == {
        "error": "invalid_token",
        "error_description": "The access token is invalid or has expired",
    }
    assert expired.headers["www-authenticate"] == (
        'Bearer error="invalid_token", error_description="The access token is invalid or has '
        'expired"'
    )


async def test_refresh_tokens_expire_after_refresh_token_ttl() -> None:
    clock = Clock()
    async with https(gateway_with(oauth2(refresh_token_ttl=100), clock=clock)) as http:
        first = await token(http, grant_type="authorization_code", code=await code_for(http))
        clock.now += 101
        response = await post_token(
            http, grant_type="refresh_token", refresh_token=first["refresh_token"]
        )
    assert response.json()["error_description"] == "Invalid refresh_token"


async def test_token_expiration_zero_means_a_token_that_never_expires_and_no_refresh() -> None:
    clock = Clock()
    async with https(gateway_with(oauth2(token_expiration=0), clock=clock)) as http:
        body = await token(http, grant_type="authorization_code", code=await code_for(http))
        assert "expires_in" not in body
        assert "refresh_token" not in body
        clock.now += 10 * 365 * 86400
        assert (await api(http, body["access_token"])).status_code == 200


async def test_an_authorization_code_expires_after_five_minutes() -> None:
    clock = Clock()
    async with https(gateway_with(clock=clock)) as http:
        code = await code_for(http)
        clock.now += 301
        response = await post_token(http, grant_type="authorization_code", code=code)
    assert response.json() == {"error": "invalid_request", "error_description": "Invalid code"}


# -- scopes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "scope", "error"),
    [
        ({}, "email wot", '"wot" is an invalid scope'),
        ({}, ["email"], "scope must be a string"),
        ({}, 123, "scope must be a string"),
        ({"mandatory_scope": True}, None, "You must specify a scope"),
        ({"mandatory_scope": True}, "   ", "You must specify a scope"),
    ],
)
async def test_scopes_are_checked(config: dict[str, Any], scope: Any, error: str) -> None:
    async with https(gateway_with(oauth2(**config))) as http:
        response = await post_token(http, grant_type="client_credentials", scope=scope)
    assert response.status_code == 400
    assert response.json() == {"error": "invalid_scope", "error_description": error}


async def test_without_configured_scopes_a_requested_scope_is_ignored() -> None:
    async with https(gateway_with(oauth2(scopes=None))) as http:
        access_token = await client_credentials(http)
        headers = upstream_headers(await api(http, access_token))
    assert "x-authenticated-scope" not in headers


# -- checking the access token --------------------------------------------------------------


async def test_a_request_without_a_token_is_refused() -> None:
    async with https(gateway_with()) as http:
        response = await http.get("/api/request")
    assert response.status_code == 401
    assert response.json() == {
        "error": "invalid_request",
        "error_description": "The access token is missing",
    }
    assert response.headers["www-authenticate"] == "Bearer"


async def test_the_realm_is_in_the_challenge() -> None:
    async with https(gateway_with(oauth2(realm="test-oauth2"))) as http:
        missing = await http.get("/api/request")
        invalid = await api(http, "invalid")
    assert missing.headers["www-authenticate"] == 'Bearer realm="test-oauth2"'
    assert invalid.headers["www-authenticate"] == (
        'Bearer realm="test-oauth2", error="invalid_token", '
        'error_description="The access token is invalid or has expired"'
    )


@pytest.mark.parametrize("scheme", ["bearer", "Bearer", "token"])
async def test_the_token_may_be_sent_with_bearer_or_token(scheme: str) -> None:
    async with https(gateway_with()) as http:
        access_token = await client_credentials(http)
        response = await http.get(
            "/api/request", headers={"Authorization": f"{scheme} {access_token}"}
        )
    assert response.status_code == 200


async def test_the_token_may_be_sent_in_a_form_body_only() -> None:
    async with https(gateway_with()) as http:
        access_token = await client_credentials(http)
        form = await http.post("/api/request", data={"access_token": access_token})
        json_body = await http.post("/api/request", json={"access_token": access_token})
        missing = await http.post("/api/request", data={"other": "1"})
    assert form.status_code == 200
    assert json_body.status_code == missing.status_code == 401
    assert json_body.json()["error_description"] == "The access token is missing"


async def test_a_token_in_a_form_body_over_64_kib_is_not_looked_for() -> None:
    async with https(gateway_with()) as http:
        access_token = await client_credentials(http)
        padding = "x" * (64 * 1024)
        large = await http.post(
            "/api/request", data={"access_token": access_token, "padding": padding}
        )
        small = await http.post("/api/request", data={"access_token": access_token, "p": "x"})
    assert large.status_code == 401
    assert large.json()["error_description"] == "The access token is missing"
    assert small.status_code == 200


@pytest.mark.parametrize(
    "content_type", ["application/octet-stream", "application/x-www-form-urlencoded"]
)
async def test_an_unauthenticated_body_that_cannot_hold_a_token_is_not_read(
    content_type: str,
) -> None:
    read = 0

    def chunks() -> Any:
        nonlocal read
        for _ in range(64):
            read += 1
            yield b"x" * 65536

    gateway = gateway_with()
    async with gateway:
        response = await call_asgi(
            gateway,
            "/api/upload",
            method="POST",
            headers=[(b"content-type", content_type.encode()), (b"transfer-encoding", b"chunked")],
            body=chunks(),
        )
    assert response.status == 401
    assert read < 64


async def test_a_custom_auth_header_name_carries_the_token() -> None:
    async with https(gateway_with(oauth2(auth_header_name="custom_header_name"))) as http:
        access_token = await client_credentials(http)
        custom = await http.get(
            "/api/request", headers={"custom_header_name": f"bearer {access_token}"}
        )
        standard = await api(http, access_token)
        empty = await http.get("/api/request", headers={"custom_header_name": ""})
    assert custom.status_code == 200
    assert standard.status_code == 401  # the token is sent in the wrong header
    assert empty.status_code == 401
    assert empty.json()["error"] == "invalid_request"


async def test_a_token_works_only_for_the_service_it_was_issued_for() -> None:
    gateway = gateway_with(others={"other": oauth2()})
    async with https(gateway) as http:
        access_token = await client_credentials(http)
        elsewhere = await api(http, access_token, "/other/request")
        here = await api(http, access_token)
    assert elsewhere.status_code == 401
    assert elsewhere.json()["error"] == "invalid_token"
    assert here.status_code == 200


async def test_global_credentials_are_shared_by_plugins_that_allow_them() -> None:
    gateway = gateway_with(
        oauth2(global_credentials=True),
        others={"shared": oauth2(global_credentials=True), "own": oauth2()},
    )
    async with https(gateway) as http:
        access_token = await client_credentials(http)
        shared = await api(http, access_token, "/shared/request")
        own = await api(http, access_token, "/own/request")
    assert shared.status_code == 200
    assert own.status_code == 401
    assert own.json() == {
        "error": "invalid_token",
        "error_description": "The access token is global, but the current plugin is "
        "configured without 'global_credentials'",
    }
    assert own.headers["www-authenticate"] == (
        'Bearer error="invalid_token", error_description="The access token is invalid or has '
        'expired"'
    )


async def test_a_token_of_a_removed_client_stops_working() -> None:
    gateway = gateway_with()
    async with https(gateway) as http:
        access_token = await client_credentials(http)
        assert (await api(http, access_token)).status_code == 200
        consumers = [
            attrs.evolve(CONSUMERS[0], credentials=[PUBLIC]),
            *CONSUMERS[1:],
        ]
        gateway.configure(attrs.evolve(gateway.config, consumers=consumers))
        assert (await api(http, access_token)).status_code == 401


async def test_the_token_endpoint_works_under_any_path_and_with_a_final_slash() -> None:
    async with https(gateway_with()) as http:
        deep = await client_credentials(http, "/api/some/path")
        params = {
            "client_id": "clientid123",
            "client_secret": "secret123",
            "grant_type": "client_credentials",
        }
        slash = await http.post("/api/oauth2/token/", json=params)
        not_endpoint = await http.post("/api/oauth2/tokens", json=params)
    assert deep
    assert slash.status_code == 200
    assert not_endpoint.status_code == 401  # an ordinary request: it needs a token


@pytest.mark.parametrize(("path", "name"), [("token", "token"), ("authorize", "authorization")])
async def test_the_endpoints_answer_only_post(path: str, name: str) -> None:
    async with https(gateway_with(oauth2(realm="test-oauth2"))) as http:
        response = await http.get(f"/api/oauth2/{path}")
    description = f"The HTTP method GET is invalid for the {name} endpoint"
    assert response.status_code == 405
    assert response.json() == {"error": "invalid_method", "error_description": description}
    assert response.headers["www-authenticate"] == (
        f'Bearer realm="test-oauth2", error="invalid_method", error_description="{description}"'
    )


# -- HTTPS ----------------------------------------------------------------------------------


async def test_the_endpoints_refuse_plain_http() -> None:
    async with client(gateway_with()) as http:
        issued = await post_token(http, grant_type="client_credentials")
        authorize = await http.post(
            "/api/oauth2/authorize",
            json={"provision_key": PROVISION_KEY, "authenticated_userid": "u"},
            headers={"X-Forwarded-Proto": "https"},
        )
    refusal = {"error": "access_denied", "error_description": "You must use HTTPS"}
    assert (issued.status_code, issued.json()) == (400, refusal)
    assert (authorize.status_code, authorize.json()) == (400, refusal)


async def test_a_trusted_proxy_may_vouch_for_https() -> None:
    params = {
        "client_id": "clientid123",
        "client_secret": "secret123",
        "grant_type": "client_credentials",
    }
    terminated = oauth2(accept_http_if_already_terminated=True)
    trusted = gateway_with(terminated, trusted_ips=["127.0.0.1"])
    async with client(trusted) as http:
        ok = await http.post(
            "/api/oauth2/token", json=params, headers={"X-Forwarded-Proto": "https"}
        )
        twice = await http.post(
            "/api/oauth2/token",
            json=params,
            headers=[("X-Forwarded-Proto", "https"), ("X-Forwarded-Proto", "https")],
        )
        missing = await http.post("/api/oauth2/token", json=params)
    async with client(gateway_with(terminated)) as http:  # the peer is not trusted
        untrusted = await http.post(
            "/api/oauth2/token", json=params, headers={"X-Forwarded-Proto": "https"}
        )
    assert ok.status_code == 200
    assert twice.json() == {
        "error": "access_denied",
        "error_description": "Only one X-Forwarded-Proto header allowed",
    }
    assert missing.json()["error_description"] == "You must use HTTPS"
    assert untrusted.json()["error_description"] == "You must use HTTPS"


async def test_tokens_are_accepted_on_plain_http_api_calls() -> None:
    gateway = gateway_with()
    async with https(gateway) as secure:
        access_token = await client_credentials(secure)
    async with client(gateway) as plain:
        assert (await api(plain, access_token)).status_code == 200


# -- hide_credentials -----------------------------------------------------------------------


async def test_hide_credentials_removes_the_token_from_what_the_upstream_gets() -> None:
    async with https(gateway_with(oauth2(hide_credentials=True))) as http:
        access_token = await client_credentials(http)
        header = await api(http, access_token)
        query = await http.get("/api/request?a=1&access_token=" + access_token + "&b=%20x")
        form = await http.post(
            "/api/request",
            content=f"a=1&access_token={access_token}&b=2",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
    assert "authorization" not in header.json()["headers"]
    assert query.json()["query"] == "a=1&b=%20x"
    assert form.json()["body"] == "a=1&b=2"
    assert access_token not in header.text + query.text + form.text


@pytest.mark.parametrize("value", ["{t}", "Bearer {t}", "token {t}"])
async def test_hide_credentials_removes_the_header_however_the_token_is_sent_in_it(
    value: str,
) -> None:
    async with https(gateway_with(oauth2(hide_credentials=True))) as http:
        access_token = await client_credentials(http)
        response = await http.get(
            "/api/request", headers={"Authorization": value.format(t=access_token)}
        )
    assert "authorization" not in upstream_headers(response)


async def test_without_hide_credentials_the_upstream_gets_the_token() -> None:
    async with https(gateway_with()) as http:
        access_token = await client_credentials(http)
        header = await api(http, access_token)
        query = await http.get("/api/request", params={"access_token": access_token})
    assert header.json()["headers"]["authorization"] == [f"Bearer {access_token}"]
    assert query.json()["query"] == f"access_token={access_token}"


# -- anonymous and other authentication plugins ---------------------------------------------


async def test_anonymous_lets_a_request_without_a_valid_token_through() -> None:
    async with https(gateway_with(oauth2(anonymous="no-body"))) as http:
        access_token = await client_credentials(http)
        with_token = await api(http, access_token)
        without = await http.get(
            "/api/request",
            headers={"X-Authenticated-Scope": "all-access", "X-Authenticated-Userid": "admin"},
        )
        wrong = await api(http, "invalid")
    headers = upstream_headers(with_token)
    assert headers["x-consumer-username"] == "bob"
    assert "x-anonymous-consumer" not in headers
    for response in (without, wrong):
        assert response.status_code == 200
        headers = upstream_headers(response)
        assert headers["x-anonymous-consumer"] == "true"
        assert headers["x-consumer-username"] == "no-body"
        assert "x-credential-identifier" not in headers
        assert "x-authenticated-scope" not in headers
        assert "x-authenticated-userid" not in headers


async def test_an_anonymous_consumer_that_does_not_exist_is_a_500() -> None:
    async with https(gateway_with(oauth2(anonymous="ghost"))) as http:
        response = await http.get("/api/request")
    assert response.status_code == 500
    assert response.json()["message"] == "anonymous consumer ghost is configured but doesn't exist"


async def test_forged_authenticated_headers_never_reach_the_upstream() -> None:
    async with https(gateway_with()) as http:
        access_token = await client_credentials(http)
        response = await http.get(
            "/api/request",
            headers={
                "Authorization": f"Bearer {access_token}",
                "X-Authenticated-Userid": "admin",
                "X-Consumer-Username": "root",
                "X-Credential-Identifier": "forged",
            },
        )
    headers = upstream_headers(response)
    assert "x-authenticated-userid" not in headers
    assert headers["x-consumer-username"] == "bob"
    assert headers["x-credential-identifier"] == "clientid123"


@attrs.frozen
class HeaderKeyAuth(gw.Plugin):
    """A stand-in authentication plugin (key in `apikey`) that runs before oauth2."""

    name = "header-key-auth"
    priority = 1450
    anonymous: str | None = None

    async def access(self, ctx: gw.Context) -> gw.Response | None:
        if self.anonymous and ctx.credential is not None:
            return None
        key = ctx.request.headers.get("apikey")
        for credential, consumer in ctx.snapshot.credentials.get("keyauth_credentials", ()):
            if key is not None and getattr(credential, "key", None) == key:
                ctx.authenticate(consumer, credential)
                return None
        if self.anonymous:
            consumer = ctx.snapshot.consumers_by_key[self.anonymous]
            ctx.authenticate(consumer, None, anonymous=True)
            return None
        return gw.Response(401, json={"message": "No API key found in request"})


MICKEY_KEY = KeyAuthCredential(key="Mouse")
MICKEY = gw.Consumer(username="Mickey", credentials=[MICKEY_KEY])


def two_auth_gateway(anonymous: str | None) -> gw.Gateway:
    return gw.Gateway(
        services=[
            gw.Service(
                name="s",
                url="http://echo.internal",
                routes=[
                    gw.Route(
                        paths=["/api"],
                        plugins=[oauth2(anonymous=anonymous), HeaderKeyAuth(anonymous=anonymous)],
                    )
                ],
            )
        ],
        consumers=[*CONSUMERS, MICKEY],
        engines={"echo.internal": echo_engine()},
    )


async def test_with_anonymous_either_credential_is_enough() -> None:
    async with https(two_auth_gateway("no-body")) as http:
        access_token = await client_credentials(http)
        key_only = await http.get(
            "/api/request",
            headers={"apikey": "Mouse", "X-Authenticated-Scope": "all-access"},
        )
        token_only = await api(http, access_token)
        neither = await http.get("/api/request")
    headers = upstream_headers(key_only)
    assert headers["x-consumer-username"] == "Mickey"
    assert "x-authenticated-scope" not in headers
    assert upstream_headers(token_only)["x-credential-identifier"] == "clientid123"
    assert upstream_headers(neither)["x-anonymous-consumer"] == "true"


async def test_without_anonymous_both_credentials_are_needed() -> None:
    async with https(two_auth_gateway(None)) as http:
        # the stand-in runs first (as jwt does in Kong): it guards the token endpoint too
        issued = await http.post(
            "/api/oauth2/token",
            json={
                "client_id": "clientid123",
                "client_secret": "secret123",
                "grant_type": "client_credentials",
            },
            headers={"apikey": "Mouse"},
        )
        access_token = issued.json()["access_token"]
        key_only = await http.get("/api/request", headers={"apikey": "Mouse"})
        token_only = await api(http, access_token)
        both = await http.get(
            "/api/request",
            headers={"apikey": "Mouse", "Authorization": f"Bearer {access_token}"},
        )
    assert key_only.status_code == 401
    assert key_only.headers["www-authenticate"] == "Bearer"
    assert token_only.status_code == 401
    assert token_only.json() == {"message": "No API key found in request"}
    assert both.status_code == 200
    # each plugin authenticates in turn: oauth2, running last, names the consumer
    assert upstream_headers(both)["x-consumer-username"] == "bob"


# -- the token store ------------------------------------------------------------------------


async def test_the_store_keeps_hashes_of_tokens_never_the_tokens() -> None:
    store = MemoryTokenStore()
    gateway = gateway_with()
    gateway.shared[STORE_KEY] = store
    async with https(gateway) as http:
        code = await code_for(http)
        body = await token(http, grant_type="authorization_code", code=code)
        await code_for(http)
    assert token_store(gateway) is store
    dumped = repr(store._entries)
    assert len(store) == 3  # an access token, its refresh token, an unused code
    for secret in (body["access_token"], body["refresh_token"], code, "secret123"):
        assert secret not in dumped


async def test_the_memory_store_expires_entries_and_stays_bounded() -> None:
    clock = Clock()
    store = MemoryTokenStore(max_entries=3, clock=clock)
    await store.put("a", {"v": 1}, ttl=10)
    await store.put("b", {"v": 2})
    assert await store.get("a") == {"v": 1}
    clock.now += 10
    assert await store.get("a") is None
    assert not await store.delete("a")
    assert await store.delete("b")
    assert not await store.delete("b")
    for key in "cdef":
        await store.put(key, {"v": key})
    assert len(store) == 3
    assert await store.get("c") is None  # the oldest went first
    assert await store.get("f") == {"v": "f"}
    await store.put("g", {"v": "g"}, ttl=1)
    clock.now += 2
    await store.put("h", {"v": "h"})
    assert await store.get("g") is None
    assert await store.get("e") == {"v": "e"}


async def test_a_full_memory_store_drops_expired_entries_before_live_ones() -> None:
    clock = Clock()
    store = MemoryTokenStore(max_entries=3, clock=clock)
    await store.put("live", {"v": 1}, ttl=100)
    await store.put("soon", {"v": 2}, ttl=10)
    await store.put("forever", {"v": 3})
    clock.now += 20
    await store.put("new", {"v": 4}, ttl=100)
    assert len(store) == 3
    assert await store.get("live") == {"v": 1}  # the oldest, but still valid
    assert await store.get("forever") == {"v": 3}
    assert await store.get("new") == {"v": 4}


async def test_a_store_that_implements_nothing_says_what_to_implement() -> None:
    store = TokenStore()
    with pytest.raises(NotImplementedError, match="must implement `async def get"):
        await store.get("k")
    gateway = gateway_with()
    gateway.shared[STORE_KEY] = object()
    with pytest.raises(TypeError, match="must be a TokenStore"):
        token_store(gateway)
