"""The bundled basic-auth plugin and its hashed credentials, after Kong's spec for them
(10-basic-auth/03-access_spec, 05-declarative_spec)."""

from __future__ import annotations

import base64
import threading
from typing import Any

import anyio
import httpx
import pytest

import pygateway as gw
from pygateway._config import dump, load
from pygateway.plugins import _basic_auth
from pygateway.plugins._auth import kdf_limiter
from pygateway.plugins._basic_auth import (
    KDF_QUEUE_MAX,
    BasicAuth,
    BasicAuthCredential,
    hash_password,
    is_password_hash,
    verify_password,
)
from pygateway.testing import client, echo_engine

# Hashed once, with few iterations: the suite stays fast, and the credentials are built
# the way an exported configuration loads them (from hashes, kept as they are).
FAST = 1000
BOB_CRED = BasicAuthCredential(username="bob", password=hash_password("kong", iterations=FAST))
USER123 = BasicAuthCredential(
    username="user123", password=hash_password("password123", iterations=FAST)
)
USER321 = BasicAuthCredential(
    username="user321", password=hash_password("password:123", iterations=FAST)
)
BOB = gw.Consumer(username="bob", credentials=[BOB_CRED, USER123, USER321])
NOBODY = gw.Consumer(username="no-body")


def basic(userpass: bytes) -> str:
    return "Basic " + base64.b64encode(userpass).decode()


def gateway_with(*plugins: Any, consumers: Any = (BOB, NOBODY)) -> gw.Gateway:
    return gw.Gateway(
        services=[
            gw.Service(
                name="echo",
                url="http://echo.internal",
                routes=[gw.Route(name="r", paths=["/"], plugins=list(plugins))],
            )
        ],
        consumers=list(consumers),
        engines={"echo.internal": echo_engine()},
    )


async def call(gateway: gw.Gateway, path: str = "/request", **kwargs: Any) -> httpx.Response:
    async with client(gateway) as http:
        return await http.get(path, **kwargs)


def upstream(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def refused(response: httpx.Response, realm: str = "service") -> None:
    assert response.status_code == 401
    assert response.json()["message"] == "Unauthorized"
    assert response.json()["request_id"]
    assert response.headers["www-authenticate"] == f'Basic realm="{realm}"'


# -- refused requests -----------------------------------------------------------------------


async def test_a_request_without_credentials_is_refused_with_the_default_realm() -> None:
    refused(await call(gateway_with(BasicAuth())))


async def test_a_configured_realm_is_named_in_the_challenge() -> None:
    refused(await call(gateway_with(BasicAuth(realm="test-realm"))), "test-realm")


@pytest.mark.parametrize("header", ["authorization", "proxy-authorization"])
@pytest.mark.parametrize(
    "value",
    [
        "foobar",
        basic(b"kong"),  # a password only
        basic(b"bob"),  # a username only
        basic(b":kong"),  # an empty username
        "Basic adXNlcjEyMzpwYXNzd29yZDEyMw==",  # not valid base64
        "Bearer Ym9iOmtvbmc=",
    ],
)
async def test_malformed_credentials_are_refused(header: str, value: str) -> None:
    refused(await call(gateway_with(BasicAuth()), headers={header: value}))


async def test_a_wrong_password_is_refused() -> None:
    refused(await call(gateway_with(BasicAuth()), headers={"authorization": basic(b"bob:nope")}))


async def test_an_unknown_user_is_refused() -> None:
    response = await call(gateway_with(BasicAuth()), headers={"authorization": basic(b"eve:kong")})
    refused(response)


async def test_usernames_are_case_sensitive() -> None:
    refused(await call(gateway_with(BasicAuth()), headers={"authorization": basic(b"BOB:kong")}))


# -- accepted requests ----------------------------------------------------------------------


async def test_right_credentials_authenticate_and_the_upstream_learns_the_consumer() -> None:
    response = await call(gateway_with(BasicAuth()), headers={"authorization": basic(b"bob:kong")})
    headers = upstream(response)["headers"]
    assert headers["x-consumer-id"] == [BOB.id]
    assert headers["x-consumer-username"] == ["bob"]
    assert headers["x-credential-identifier"] == ["bob"]  # the username, as Kong sends it
    assert "x-anonymous-consumer" not in headers


async def test_the_credential_identifier_is_the_username_that_authenticated() -> None:
    response = await call(
        gateway_with(BasicAuth()), headers={"authorization": basic(b"user123:password123")}
    )
    headers = upstream(response)["headers"]
    assert headers["x-consumer-username"] == ["bob"]
    assert headers["x-credential-identifier"] == ["user123"]


async def test_a_password_may_contain_a_colon() -> None:
    response = await call(
        gateway_with(BasicAuth()), headers={"authorization": basic(b"user321:password:123")}
    )
    assert upstream(response)["headers"]["x-credential-identifier"] == ["user321"]


@pytest.mark.parametrize("scheme", ["basic", "BASIC ", "  Basic"])
async def test_the_scheme_is_read_as_kong_reads_it(scheme: str) -> None:
    value = scheme + " " + base64.b64encode(b"bob:kong").decode()
    response = await call(gateway_with(BasicAuth()), headers={"Authorization": value})
    if scheme.strip() == "BASIC":
        refused(response)  # Kong's pattern takes [Bb]asic only
    else:
        upstream(response)


async def test_credentials_in_proxy_authorization_authenticate() -> None:
    response = await call(
        gateway_with(BasicAuth()), headers={"Proxy-Authorization": basic(b"bob:kong")}
    )
    upstream(response)


async def test_proxy_authorization_naming_an_unknown_user_falls_back_to_authorization() -> None:
    response = await call(
        gateway_with(BasicAuth()),
        headers={"proxy-authorization": basic(b"eve:x"), "authorization": basic(b"bob:kong")},
    )
    upstream(response)


async def test_a_known_user_with_a_wrong_password_in_proxy_authorization_is_refused() -> None:
    # Kong's order: the first header naming a known user decides.
    response = await call(
        gateway_with(BasicAuth()),
        headers={"proxy-authorization": basic(b"bob:nope"), "authorization": basic(b"bob:kong")},
    )
    refused(response)


async def test_non_ascii_credentials_are_compared_as_utf8() -> None:
    cred = BasicAuthCredential(username="zoë", password=hash_password("pässwörd", iterations=FAST))
    gateway = gateway_with(BasicAuth(), consumers=[gw.Consumer(username="zoe", credentials=[cred])])
    upstream(await call(gateway, headers={"authorization": basic("zoë:pässwörd".encode())}))
    refused(await call(gateway, headers={"authorization": basic("zoë:passwörd".encode())}))


# -- hide_credentials ------------------------------------------------------------------------


async def test_without_hide_credentials_the_header_reaches_the_upstream() -> None:
    value = basic(b"bob:kong")
    response = await call(gateway_with(BasicAuth()), headers={"authorization": value})
    assert upstream(response)["headers"]["authorization"] == [value]


async def test_hide_credentials_keeps_the_authorization_header_from_the_upstream() -> None:
    gateway = gateway_with(BasicAuth(hide_credentials=True))
    response = await call(gateway, headers={"authorization": basic(b"bob:kong")})
    assert "authorization" not in upstream(response)["headers"]


async def test_hide_credentials_keeps_the_proxy_authorization_header_from_the_upstream() -> None:
    gateway = gateway_with(BasicAuth(hide_credentials=True))
    response = await call(gateway, headers={"proxy-authorization": basic(b"bob:kong")})
    assert "proxy-authorization" not in upstream(response)["headers"]


# -- anonymous -------------------------------------------------------------------------------


async def test_with_anonymous_right_credentials_still_authenticate_their_consumer() -> None:
    gateway = gateway_with(BasicAuth(anonymous=NOBODY.id))
    response = await call(gateway, headers={"authorization": basic(b"user123:password123")})
    headers = upstream(response)["headers"]
    assert headers["x-consumer-username"] == ["bob"]
    assert headers["x-credential-identifier"] == ["user123"]
    assert "x-anonymous-consumer" not in headers


@pytest.mark.parametrize("anonymous", [NOBODY.id, "no-body"], ids=["id", "username"])
@pytest.mark.parametrize("authorization", [None, basic(b"bob:nope"), "garbage"])
async def test_with_anonymous_a_failed_request_goes_on_as_the_anonymous_consumer(
    anonymous: str, authorization: str | None
) -> None:
    headers = {"authorization": authorization} if authorization else {}
    response = await call(gateway_with(BasicAuth(anonymous=anonymous)), headers=headers)
    seen = upstream(response)["headers"]
    assert seen["x-anonymous-consumer"] == ["true"]
    assert seen["x-consumer-username"] == ["no-body"]
    assert "x-credential-identifier" not in seen


async def test_an_anonymous_consumer_that_does_not_exist_is_a_500() -> None:
    missing = "00000000-0000-4000-8000-000000000000"
    response = await call(gateway_with(BasicAuth(anonymous=missing)))
    assert response.status_code == 500
    assert response.json()["message"] == (
        f"anonymous consumer {missing} is configured but doesn't exist"
    )


async def test_forged_consumer_headers_never_reach_the_upstream() -> None:
    forged = {
        "x-consumer-id": "forged",
        "x-consumer-username": "admin",
        "x-credential-identifier": "admin",
        "x-anonymous-consumer": "false",
        "X-Consumer-Custom-Id": "forged",
    }
    refused(await call(gateway_with(BasicAuth()), headers=forged))
    response = await call(
        gateway_with(BasicAuth()), headers={**forged, "authorization": basic(b"bob:kong")}
    )
    headers = upstream(response)["headers"]
    assert headers["x-consumer-username"] == ["bob"]
    assert headers["x-credential-identifier"] == ["bob"]
    assert "x-consumer-custom-id" not in headers
    assert "x-anonymous-consumer" not in headers


# -- the stored hash -------------------------------------------------------------------------


def test_a_password_is_stored_as_a_salted_pbkdf2_hash() -> None:
    credential = BasicAuthCredential(username="ada", password="s3cret")
    prefix, iterations, salt, digest = credential.password.split("$")
    assert (prefix, int(iterations)) == ("pbkdf2_sha256", _basic_auth.PBKDF2_ITERATIONS)
    assert (len(salt), len(digest)) == (22, 43)  # 16 and 32 bytes, unpadded base64
    assert "s3cret" not in credential.password
    assert verify_password(credential.password, "s3cret")
    assert not verify_password(credential.password, "s3cret ")
    # A random salt: the same password never gives the same hash.
    assert BasicAuthCredential(username="ada", password="s3cret").password != credential.password


def test_neither_the_password_nor_its_hash_is_in_the_repr() -> None:
    credential = BasicAuthCredential(username="ada", password="s3cret")
    assert "s3cret" not in repr(credential)
    assert credential.password not in repr(credential)


def test_an_already_hashed_password_is_kept_as_is() -> None:
    hashed = hash_password("s3cret", iterations=FAST)
    assert is_password_hash(hashed)
    assert BasicAuthCredential(username="ada", password=hashed).password == hashed


@pytest.mark.parametrize(
    "password",
    [
        "pbkdf2_sha256",
        "pbkdf2_sha256$1000$c2FsdA$",
        "pbkdf2_sha256$abc$c2FsdHNhbHRzYWx0c2FsdA$" + "A" * 43,
        "argon2$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA",
        "a" * 40,  # a Kong (SHA-1) export is not recognized: it would be a password
    ],
)
def test_anything_not_exactly_in_the_hash_form_is_a_password(password: str) -> None:
    assert not is_password_hash(password)
    credential = BasicAuthCredential(username="ada", password=password)
    assert credential.password != password
    assert verify_password(credential.password, password)


@pytest.mark.parametrize("iterations", ["999", "10000001"])
def test_a_hash_with_out_of_range_iterations_is_refused_without_echoing_it(
    iterations: str,
) -> None:
    hashed = f"pbkdf2_sha256${iterations}$c2FsdHNhbHRzYWx0c2FsdA$" + "A" * 43
    with pytest.raises(gw.ConfigurationError) as excinfo:
        BasicAuthCredential(username="ada", password=hashed)
    [(path, message)] = excinfo.value.errors
    assert path == ("password",)
    assert "iterations must be between 1000 and 10000000" in message
    assert hashed not in str(excinfo.value)


@pytest.mark.parametrize("field", ["username", "password"])
def test_an_empty_username_or_password_is_refused(field: str) -> None:
    values = {"username": "ada", "password": "x", field: ""}
    with pytest.raises(gw.ConfigurationError) as excinfo:
        BasicAuthCredential(**values)
    assert excinfo.value.errors == [((field,), "length must be at least 1")]


def test_hash_password_refuses_too_few_iterations() -> None:
    with pytest.raises(ValueError, match="iterations"):
        hash_password("x", iterations=10)


def test_verify_password_is_false_for_something_that_is_no_hash() -> None:
    assert not verify_password("kong", "kong")


# -- verification cost -----------------------------------------------------------------------


class Counting:
    """Wraps a verification function, counting calls and recording the threads they ran on."""

    def __init__(self, function: Any) -> None:
        self.function = function
        self.threads: list[int] = []

    def __call__(self, *args: Any) -> Any:
        self.threads.append(threading.get_ident())
        return self.function(*args)


@pytest.fixture
def derivations(monkeypatch: pytest.MonkeyPatch) -> Counting:
    counting = Counting(_basic_auth.verify_password)
    monkeypatch.setattr(_basic_auth, "verify_password", counting)
    return counting


async def test_a_successful_check_is_derived_once_per_configuration(derivations: Counting) -> None:
    gateway = gateway_with(BasicAuth())
    headers = {"authorization": basic(b"bob:kong")}
    for _ in range(3):
        upstream(await call(gateway, headers=headers))
    assert len(derivations.threads) == 1
    gateway.configure(gateway_with(BasicAuth()).config)
    upstream(await call(gateway, headers=headers))
    assert len(derivations.threads) == 2


async def test_a_failed_check_is_derived_every_time(derivations: Counting) -> None:
    gateway = gateway_with(BasicAuth())
    for _ in range(2):
        refused(await call(gateway, headers={"authorization": basic(b"bob:nope")}))
    assert len(derivations.threads) == 2


async def test_a_remembered_check_does_not_accept_another_password(derivations: Counting) -> None:
    gateway = gateway_with(BasicAuth())
    upstream(await call(gateway, headers={"authorization": basic(b"bob:kong")}))
    refused(await call(gateway, headers={"authorization": basic(b"bob:kong2")}))
    refused(await call(gateway, headers={"authorization": basic(b"user123:kong")}))


async def test_keys_are_derived_off_the_event_loop(derivations: Counting) -> None:
    await call(gateway_with(BasicAuth()), headers={"authorization": basic(b"bob:kong")})
    assert derivations.threads
    assert threading.get_ident() not in derivations.threads


async def test_an_unknown_user_costs_a_derivation_too(monkeypatch: pytest.MonkeyPatch) -> None:
    counting = Counting(_basic_auth._verify_nobody)
    monkeypatch.setattr(_basic_auth, "_verify_nobody", counting)
    refused(await call(gateway_with(BasicAuth()), headers={"authorization": basic(b"eve:x")}))
    assert len(counting.threads) == 1
    assert threading.get_ident() not in counting.threads


@pytest.mark.parametrize(
    "headers",
    [
        {"proxy-authorization": basic(b"eve:x")},
        {"proxy-authorization": basic(b"eve:x"), "authorization": "Bearer not-basic"},
        {"proxy-authorization": basic(b"eve:x"), "authorization": basic(b"mallory:y")},
        {"proxy-authorization": "garbage", "authorization": basic(b"eve:x")},
    ],
    ids=["proxy-only", "proxy-and-other-scheme", "both-unknown", "garbage-proxy"],
)
async def test_an_unknown_user_costs_one_derivation_whichever_header_named_it(
    monkeypatch: pytest.MonkeyPatch, headers: dict[str, str]
) -> None:
    counting = Counting(_basic_auth._verify_nobody)
    monkeypatch.setattr(_basic_auth, "_verify_nobody", counting)
    refused(await call(gateway_with(BasicAuth()), headers=headers))
    assert len(counting.threads) == 1


async def test_credentials_that_name_nobody_cost_no_derivation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counting = Counting(_basic_auth._verify_nobody)
    monkeypatch.setattr(_basic_auth, "_verify_nobody", counting)
    headers = {"proxy-authorization": "garbage", "authorization": "Basic !!"}
    refused(await call(gateway_with(BasicAuth()), headers=headers))
    assert counting.threads == []


async def test_a_request_needing_a_derivation_is_refused_at_once_while_the_queue_is_long(
    derivations: Counting,
) -> None:
    limiter = kdf_limiter()
    holders = [object() for _ in range(int(limiter.total_tokens))]
    for holder in holders:
        await limiter.acquire_on_behalf_of(holder)
    gateway = gateway_with(BasicAuth())
    headers = {"authorization": basic(b"bob:kong")}
    release = anyio.Event()

    in_line = 0
    all_in_line = anyio.Event()

    async def wait_in_line() -> None:
        nonlocal in_line
        in_line += 1
        if in_line == KDF_QUEUE_MAX + 1:
            all_in_line.set()
        async with limiter:
            await release.wait()

    try:
        async with anyio.create_task_group() as tg:
            for _ in range(KDF_QUEUE_MAX + 1):
                tg.start_soon(wait_in_line)
            await all_in_line.wait()
            assert limiter.statistics().tasks_waiting == KDF_QUEUE_MAX + 1
            refused(await call(gateway, headers=headers))
            assert derivations.threads == []
            release.set()
            for holder in holders:
                limiter.release_on_behalf_of(holder)
            holders = []
    finally:
        for holder in holders:
            limiter.release_on_behalf_of(holder)
    # With the queue gone, the same request is derived and let in.
    upstream(await call(gateway, headers=headers))
    assert len(derivations.threads) == 1


async def test_a_request_joins_a_short_queue_and_is_let_in(derivations: Counting) -> None:
    limiter = kdf_limiter()
    holder = object()
    await limiter.acquire_on_behalf_of(holder)  # one thread busy, the rest free
    try:
        upstream(
            await call(gateway_with(BasicAuth()), headers={"authorization": basic(b"bob:kong")})
        )
    finally:
        limiter.release_on_behalf_of(holder)
    assert len(derivations.threads) == 1


async def test_a_password_hashed_at_the_default_cost_authenticates() -> None:
    cred = BasicAuthCredential(username="ada", password="s3cret")
    gateway = gateway_with(BasicAuth(), consumers=[gw.Consumer(username="ada", credentials=[cred])])
    upstream(await call(gateway, headers={"authorization": basic(b"ada:s3cret")}))


# -- configuration ---------------------------------------------------------------------------


def test_the_defaults_are_kongs() -> None:
    assert (BasicAuth.name, BasicAuth.priority) == ("basic-auth", 1100)
    assert BasicAuth().to_config() == {
        "anonymous": None,
        "hide_credentials": False,
        "realm": "service",
    }


@pytest.mark.parametrize(
    ("config", "path", "message"),
    [
        ({"realm": None}, ("realm",), "required field missing"),
        ({"anonymous": ""}, ("anonymous",), "length must be at least 1"),
        ({"hide_credentials": 1}, ("hide_credentials",), "expected a boolean"),
        ({"realms": "x"}, ("realms",), "unknown field"),
    ],
)
def test_a_wrong_config_is_refused_naming_the_field(
    config: dict[str, Any], path: tuple[Any, ...], message: str
) -> None:
    with pytest.raises(gw.ConfigurationError) as excinfo:
        BasicAuth.from_config(config)
    assert excinfo.value.errors == [(path, message)]


def test_basic_auth_cannot_be_applied_to_a_consumer() -> None:
    with pytest.raises(gw.ConfigurationError, match="cannot be applied to a consumer"):
        gw.Gateway(consumers=[gw.Consumer(username="a", plugins=[BasicAuth()])])


def test_usernames_are_unique_across_consumers() -> None:
    hashed = hash_password("x", iterations=FAST)
    with pytest.raises(gw.ConfigurationError) as excinfo:
        gw.Gateway(
            consumers=[
                gw.Consumer(
                    username="a", credentials=[BasicAuthCredential(username="u", password=hashed)]
                ),
                gw.Consumer(
                    username="b", credentials=[BasicAuthCredential(username="u", password=hashed)]
                ),
            ]
        )
    [(path, message)] = excinfo.value.errors
    assert path == ("consumers", 1, "basicauth_credentials", 0, "username")
    assert message.startswith("UNIQUE violation detected on 'username'")


def declarative(password: str) -> dict[str, Any]:
    return {
        "_format_version": "3.0",
        "services": [
            {
                "name": "echo",
                "url": "http://echo.internal",
                "plugins": [{"name": "basic-auth", "config": {"hide_credentials": True}}],
                "routes": [{"name": "r", "paths": ["/"]}],
            }
        ],
        "consumers": [
            {"username": "andru", "custom_id": "donalds"},
            {"username": "bond"},
        ],
        "basicauth_credentials": [
            {"username": "james", "password": password, "consumer": "andru"},
        ],
    }


async def test_a_declarative_password_is_hashed_when_loaded_and_authenticates() -> None:
    gateway = gw.Gateway.from_config(
        declarative("secret"), engines={"echo.internal": echo_engine()}
    )
    [credential] = gateway.config.consumers[0].credentials
    assert is_password_hash(credential.password)  # type: ignore[attr-defined]
    response = await call(gateway, headers={"authorization": basic(b"james:secret")})
    headers = upstream(response)["headers"]
    assert headers["x-consumer-username"] == ["andru"]
    assert headers["x-consumer-custom-id"] == ["donalds"]
    assert headers["x-credential-identifier"] == ["james"]
    assert "authorization" not in headers


async def test_an_export_holds_the_hash_and_loads_back_unchanged() -> None:
    gateway = gw.Gateway.from_config(
        declarative(hash_password("MI6", iterations=FAST)), engines={"echo.internal": echo_engine()}
    )
    exported = dump(gateway.config)
    [andru, _] = exported["consumers"]
    [entry] = andru["basicauth_credentials"]
    assert is_password_hash(entry["password"])
    assert "MI6" not in str(exported)
    reloaded = load(exported)
    assert reloaded == gateway.config
    assert reloaded.consumers[0].credentials[0].password == entry["password"]  # type: ignore[attr-defined]
    gateway.configure(reloaded)
    upstream(await call(gateway, headers={"authorization": basic(b"james:MI6")}))
