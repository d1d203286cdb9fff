"""The bundled key-auth plugin, after Kong's spec for it (09-key-auth/02-access_spec)."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest
from upstreams import call_asgi

import pygateway as gw
import pygateway._snapshot
from pygateway._config import dump, load
from pygateway.plugins import _key_auth
from pygateway.plugins._basic_auth import BasicAuth, BasicAuthCredential, hash_password
from pygateway.plugins._key_auth import KeyAuth
from pygateway.testing import client, echo_engine

KONG = gw.KeyAuthCredential(key="kong")
BOB = gw.Consumer(username="bob", credentials=[KONG])
NOBODY = gw.Consumer(username="no-body")


def gateway_with(*plugins: Any, consumers: Any = (BOB, NOBODY), **route: Any) -> gw.Gateway:
    """One service on the echo upstream; `plugins` on its route `/`."""
    return gw.Gateway(
        services=[
            gw.Service(
                name="echo",
                url="http://echo.internal",
                routes=[gw.Route(name="r", paths=["/"], plugins=list(plugins), **route)],
            )
        ],
        consumers=list(consumers),
        engines={"echo.internal": echo_engine()},
    )


async def call(
    gateway: gw.Gateway, method: str = "GET", path: str = "/request", **kwargs: Any
) -> httpx.Response:
    async with client(gateway) as http:
        return await http.request(method, path, **kwargs)


def upstream(response: httpx.Response) -> dict[str, Any]:
    """What the echo upstream received (headers by name -> list of values)."""
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def refused(response: httpx.Response, message: str, challenge: str = "Key") -> None:
    assert response.status_code == 401
    body = response.json()
    assert body["message"] == message
    assert body["request_id"]
    assert response.headers["www-authenticate"] == challenge


# -- refused requests -----------------------------------------------------------------------


async def test_a_request_without_a_key_is_refused_with_a_key_challenge() -> None:
    refused(await call(gateway_with(KeyAuth())), "No API key found in request")


async def test_an_empty_key_header_counts_as_no_key() -> None:
    response = await call(gateway_with(KeyAuth()), headers={"apikey": ""})
    refused(response, "No API key found in request")


async def test_a_configured_realm_is_named_in_the_challenge() -> None:
    response = await call(gateway_with(KeyAuth(realm="test-realm")), headers={"apikey": ""})
    refused(response, "No API key found in request", 'Key realm="test-realm"')


@pytest.mark.parametrize("query", ["apikey", "apikey="])
async def test_an_empty_key_in_the_query_counts_as_no_key(query: str) -> None:
    refused(await call(gateway_with(KeyAuth()), path=f"/r?{query}"), "No API key found in request")


async def test_an_unknown_key_is_unauthorized() -> None:
    refused(await call(gateway_with(KeyAuth()), path="/r?apikey=123"), "Unauthorized")
    refused(await call(gateway_with(KeyAuth()), headers={"apikey": "123"}), "Unauthorized")


async def test_a_key_that_differs_only_in_case_is_unauthorized() -> None:
    refused(await call(gateway_with(KeyAuth()), headers={"apikey": "KONG"}), "Unauthorized")


async def test_a_key_repeated_in_the_query_is_a_duplicate() -> None:
    response = await call(gateway_with(KeyAuth()), path="/r?apikey=kong&apikey=kong")
    refused(response, "Duplicate API key found")


async def test_a_key_header_sent_twice_is_a_duplicate() -> None:
    response = await call(gateway_with(KeyAuth()), headers=[("apikey", "kong"), ("apikey", "kong")])
    refused(response, "Duplicate API key found")


# -- where the key is read -------------------------------------------------------------------


async def test_a_key_in_the_query_authenticates_and_the_upstream_learns_the_consumer() -> None:
    seen = upstream(await call(gateway_with(KeyAuth()), path="/request?apikey=kong"))
    headers = seen["headers"]
    assert headers["x-consumer-id"] == [BOB.id]
    assert headers["x-consumer-username"] == ["bob"]
    assert headers["x-credential-identifier"] == [KONG.id]
    assert "x-anonymous-consumer" not in headers
    assert "x-consumer-custom-id" not in headers


async def test_a_key_in_a_header_authenticates() -> None:
    upstream(await call(gateway_with(KeyAuth()), headers={"apikey": "kong"}))


@pytest.mark.parametrize("spelling", ["APIKEY", "ApiKey", "apiKey"])
async def test_header_names_are_matched_whatever_their_case(spelling: str) -> None:
    upstream(await call(gateway_with(KeyAuth()), headers={spelling: "kong"}))


async def test_a_key_name_in_capitals_reads_its_header_whatever_its_case() -> None:
    gateway = gateway_with(KeyAuth(key_names=["X-Api-Key"]))
    upstream(await call(gateway, headers={"x-api-key": "kong"}))
    upstream(await call(gateway, headers={"X-API-KEY": "kong"}))


async def test_query_argument_names_are_case_sensitive() -> None:
    response = await call(gateway_with(KeyAuth()), path="/r?APIKEY=kong")
    refused(response, "No API key found in request")


@pytest.mark.parametrize("header", ["api_key", "api-key", "Api-Key"])
async def test_a_key_name_with_an_underscore_also_reads_the_hyphenated_header(
    header: str,
) -> None:
    gateway = gateway_with(KeyAuth(key_names=["api_key"]))
    upstream(await call(gateway, headers={header: "kong"}))
    refused(await call(gateway, headers={header: "123"}), "Unauthorized")


async def test_a_hyphenated_key_name_does_not_read_an_underscored_header() -> None:
    gateway = gateway_with(KeyAuth(key_names=["api-key"]))
    refused(await call(gateway, headers={"api_key": "kong"}), "No API key found in request")


async def test_key_names_are_tried_in_order() -> None:
    gateway = gateway_with(KeyAuth(key_names=["first", "second"]))
    upstream(await call(gateway, headers={"second": "kong"}))
    refused(await call(gateway, headers={"first": "nope", "second": "kong"}), "Unauthorized")


@pytest.mark.parametrize(
    "body",
    [
        {"data": {"apikey": "kong"}},
        {"json": {"apikey": "kong"}},
        {"json": {"apikey": "kong"}, "headers": {"content-type": "application/vnd.api+json"}},
    ],
    ids=["form", "json", "json-suffix"],
)
async def test_a_key_in_the_body_authenticates_when_the_body_is_read(body: Any) -> None:
    upstream(await call(gateway_with(KeyAuth(key_in_body=True)), "POST", **body))
    refused(await call(gateway_with(KeyAuth()), "POST", **body), "No API key found in request")


@pytest.mark.parametrize("encode", ["data", "json"])
async def test_a_wrong_key_in_the_body_is_unauthorized(encode: str) -> None:
    response = await call(
        gateway_with(KeyAuth(key_in_body=True)), "POST", **{encode: {"apikey": "123"}}
    )
    refused(response, "Unauthorized")


async def test_a_key_repeated_in_a_form_body_is_a_duplicate() -> None:
    response = await call(
        gateway_with(KeyAuth(key_in_body=True)),
        "POST",
        content=b"apikey=kong&apikey=kong",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    refused(response, "Duplicate API key found")


@pytest.mark.parametrize("value", [["kong", "kong"], {"key": "kong"}])
async def test_a_json_array_or_object_key_is_a_duplicate(value: Any) -> None:
    response = await call(gateway_with(KeyAuth(key_in_body=True)), "POST", json={"apikey": value})
    refused(response, "Duplicate API key found")


@pytest.mark.parametrize("form", [b"apikey[]=kong&apikey[]=kong", b"apikey[1]=kong&apikey[1]=kong"])
async def test_bracketed_form_fields_are_not_keys(form: bytes) -> None:
    response = await call(
        gateway_with(KeyAuth(key_in_body=True)),
        "POST",
        content=form,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    refused(response, "No API key found in request")


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"apikey=kong", "text/plain"),
        (b"not json", "application/json"),
        (b'["kong"]', "application/json"),
        (b'{"apikey": 42}', "application/json"),
    ],
)
async def test_a_body_that_holds_no_key_string_gives_no_key(
    content: bytes, content_type: str
) -> None:
    response = await call(
        gateway_with(KeyAuth(key_in_body=True)),
        "POST",
        content=content,
        headers={"content-type": content_type},
    )
    refused(response, "No API key found in request")


# Kong's precedence: for a name, a header wins over the query, which wins over the body;
# the first place holding the name decides, right or wrong.
PLACES = {
    "ttt": (True, True, True),
    "ttf": (True, True, False),
    "tff": (True, False, False),
    "fff": (False, False, False),
    "fft": (False, False, True),
    "tft": (True, False, True),
    "ftf": (False, True, False),
}
VALUES = [None, "right", "wrong"]


@pytest.mark.parametrize("places", sorted(PLACES))
async def test_the_first_enabled_place_holding_the_key_decides(places: str) -> None:
    in_header, in_query, in_body = PLACES[places]
    right = gw.Consumer(username="right", credentials=[gw.KeyAuthCredential(key="right")])
    gateway = gateway_with(
        KeyAuth(key_in_header=in_header, key_in_query=in_query, key_in_body=in_body),
        consumers=[right],
    )
    async with client(gateway) as http:
        for header in VALUES:
            for query in VALUES:
                for body in VALUES:
                    response = await http.post(
                        "/request" + (f"?apikey={query}" if query else ""),
                        content=f"apikey={body}".encode() if body else b"",
                        headers={
                            "content-type": "application/x-www-form-urlencoded",
                            **({"apikey": header} if header else {}),
                        },
                    )
                    offered = [
                        value
                        for value, enabled in (
                            (header, in_header),
                            (query, in_query),
                            (body, in_body),
                        )
                        if enabled and value is not None
                    ]
                    expected = 200 if offered[:1] == ["right"] else 401
                    assert response.status_code == expected, (places, header, query, body)
                    if expected == 401:
                        assert response.headers["www-authenticate"] == "Key"


async def test_a_right_header_key_wins_over_a_wrong_query_key_without_a_duplicate() -> None:
    upstream(await call(gateway_with(KeyAuth()), path="/r?apikey=123", headers={"apikey": "kong"}))
    response = await call(gateway_with(KeyAuth()), path="/r?apikey=kong", headers={"apikey": "1"})
    refused(response, "Unauthorized")


async def test_an_empty_header_key_wins_over_a_right_query_key() -> None:
    response = await call(gateway_with(KeyAuth()), path="/r?apikey=kong", headers={"apikey": ""})
    refused(response, "No API key found in request")


# -- preflight -------------------------------------------------------------------------------


async def test_preflight_requests_are_authenticated_by_default() -> None:
    refused(await call(gateway_with(KeyAuth()), "OPTIONS"), "No API key found in request")


async def test_preflight_requests_pass_when_run_on_preflight_is_off() -> None:
    seen = upstream(await call(gateway_with(KeyAuth(run_on_preflight=False)), "OPTIONS"))
    assert "x-consumer-id" not in seen["headers"]
    refused(
        await call(gateway_with(KeyAuth(run_on_preflight=False))), "No API key found in request"
    )


# -- hide_credentials ------------------------------------------------------------------------


async def test_without_hide_credentials_the_key_reaches_the_upstream() -> None:
    gateway = gateway_with(KeyAuth(key_in_body=True))
    assert upstream(await call(gateway, path="/r?apikey=kong"))["query"] == "apikey=kong"
    assert upstream(await call(gateway, headers={"apikey": "kong"}))["headers"]["apikey"] == [
        "kong"
    ]
    seen = upstream(await call(gateway, "POST", json={"apikey": "kong"}))
    assert json.loads(seen["body"]) == {"apikey": "kong"}


async def test_hide_credentials_strips_the_key_from_the_headers() -> None:
    seen = upstream(
        await call(gateway_with(KeyAuth(hide_credentials=True)), headers={"ApiKey": "kong"})
    )
    assert "apikey" not in seen["headers"]


async def test_hide_credentials_strips_the_hyphenated_header_of_an_underscored_name() -> None:
    gateway = gateway_with(KeyAuth(key_names=["api_key"], hide_credentials=True))
    seen = upstream(await call(gateway, headers={"api-key": "kong"}))
    assert "api-key" not in seen["headers"]


async def test_hide_credentials_removes_the_key_and_keeps_the_other_arguments_in_order() -> None:
    gateway = gateway_with(KeyAuth(hide_credentials=True))
    seen = upstream(await call(gateway, path="/request?c=value1&b=value2&apikey=kong&a=value3"))
    assert seen["query"] == "c=value1&b=value2&a=value3"


async def test_hide_credentials_removes_a_percent_encoded_key_name() -> None:
    gateway = gateway_with(KeyAuth(hide_credentials=True))
    seen = upstream(await call(gateway, path="/request?c=valu%651&api%6B%65%79=kong&a=x"))
    assert seen["query"] == "c=valu%651&a=x"


async def test_without_hide_credentials_the_query_is_forwarded_unchanged() -> None:
    seen = upstream(await call(gateway_with(KeyAuth()), path="/request?c=1&apikey=kong&a=3"))
    assert seen["query"] == "c=1&apikey=kong&a=3"


async def test_hide_credentials_removes_the_key_from_a_form_body_and_keeps_its_type() -> None:
    gateway = gateway_with(KeyAuth(key_in_body=True, hide_credentials=True))
    seen = upstream(await call(gateway, "POST", data={"apikey": "kong", "foo": "bar"}))
    assert seen["body"] == "foo=bar"
    assert seen["headers"]["content-type"] == ["application/x-www-form-urlencoded"]
    assert seen["headers"]["content-length"] == [str(len("foo=bar"))]


async def test_hide_credentials_removes_the_key_from_a_json_body_and_keeps_its_type() -> None:
    gateway = gateway_with(KeyAuth(key_in_body=True, hide_credentials=True))
    seen = upstream(await call(gateway, "POST", json={"apikey": "kong", "foo": "bär"}))
    assert json.loads(seen["body"]) == {"foo": "bär"}
    assert seen["headers"]["content-type"] == ["application/json"]


@pytest.mark.parametrize("place", ["header", "query"])
async def test_hide_credentials_leaves_the_body_unread_when_the_key_came_before_it(
    place: str,
) -> None:
    gateway = gateway_with(KeyAuth(key_in_body=True, hide_credentials=True))
    where: dict[str, Any] = (
        {"headers": {"apikey": "kong"}} if place == "header" else {"path": "/r?apikey=kong"}
    )
    seen = upstream(await call(gateway, "POST", content=b'{"apikey": "other"}', **where))
    assert seen["body"] == '{"apikey": "other"}'
    assert "apikey" not in seen["headers"]
    assert seen["query"] == ""


async def test_a_key_in_a_body_over_64_kib_is_not_looked_for() -> None:
    gateway = gateway_with(KeyAuth(key_in_body=True))
    padding = "x" * (64 * 1024)
    large = await call(gateway, "POST", json={"apikey": "kong", "padding": padding})
    small = await call(gateway, "POST", json={"apikey": "kong", "padding": "x"})
    refused(large, "No API key found in request")
    upstream(small)


@pytest.mark.parametrize("content_type", ["application/octet-stream", "application/json"])
async def test_a_body_without_a_length_or_a_key_type_is_not_read(content_type: str) -> None:
    read = 0

    def chunks() -> Any:
        nonlocal read
        for _ in range(64):
            read += 1
            yield b"x" * 65536

    gateway = gateway_with(KeyAuth(key_in_body=True))
    async with gateway:
        response = await call_asgi(
            gateway,
            "/request",
            method="POST",
            headers=[(b"content-type", content_type.encode()), (b"transfer-encoding", b"chunked")],
            body=chunks(),
        )
    assert response.status == 401
    assert read < 64


async def test_hide_credentials_leaves_a_body_without_the_key_untouched() -> None:
    gateway = gateway_with(KeyAuth(key_in_body=True, hide_credentials=True))
    seen = upstream(await call(gateway, "POST", content=b'{"n":  1}', headers={"apikey": "kong"}))
    assert seen["body"] == '{"n":  1}'


# -- anonymous -------------------------------------------------------------------------------


async def test_with_anonymous_a_right_key_still_authenticates_its_consumer() -> None:
    seen = upstream(await call(gateway_with(KeyAuth(anonymous=NOBODY.id)), path="/r?apikey=kong"))
    assert seen["headers"]["x-consumer-username"] == ["bob"]
    assert seen["headers"]["x-credential-identifier"] == [KONG.id]
    assert "x-anonymous-consumer" not in seen["headers"]


@pytest.mark.parametrize("anonymous", [NOBODY.id, "no-body"], ids=["id", "username"])
@pytest.mark.parametrize("path", ["/r", "/r?apikey=123", "/r?apikey=1&apikey=2"])
async def test_with_anonymous_a_failed_request_goes_on_as_the_anonymous_consumer(
    anonymous: str, path: str
) -> None:
    seen = upstream(await call(gateway_with(KeyAuth(anonymous=anonymous)), path=path))
    assert seen["headers"]["x-anonymous-consumer"] == ["true"]
    assert seen["headers"]["x-consumer-username"] == ["no-body"]
    assert seen["headers"]["x-consumer-id"] == [NOBODY.id]
    assert "x-credential-identifier" not in seen["headers"]


async def test_an_anonymous_consumer_that_does_not_exist_is_a_500() -> None:
    missing = "00000000-0000-4000-8000-000000000000"
    response = await call(gateway_with(KeyAuth(anonymous=missing)))
    assert response.status_code == 500
    assert response.json()["message"] == (
        f"anonymous consumer {missing} is configured but doesn't exist"
    )


# -- forged identity headers -----------------------------------------------------------------

FORGED = {
    "x-consumer-id": "forged",
    "x-consumer-username": "admin",
    "x-consumer-custom-id": "forged",
    "x-credential-identifier": "forged",
    "x-anonymous-consumer": "false",
    "x-consumer-groups": "admins",
    "x_consumer_username": "admin",
}


async def test_forged_consumer_headers_are_replaced_after_authentication() -> None:
    seen = upstream(await call(gateway_with(KeyAuth()), headers={**FORGED, "apikey": "kong"}))
    headers = seen["headers"]
    assert headers["x-consumer-id"] == [BOB.id]
    assert headers["x-consumer-username"] == ["bob"]
    assert headers["x-credential-identifier"] == [KONG.id]
    for name in ("x-consumer-custom-id", "x-anonymous-consumer", "x-consumer-groups"):
        assert name not in headers
    assert "x_consumer_username" not in headers


async def test_forged_consumer_headers_do_not_authenticate_and_never_reach_the_upstream() -> None:
    refused(await call(gateway_with(KeyAuth()), headers=FORGED), "No API key found in request")
    seen = upstream(await call(gateway_with(KeyAuth(anonymous="no-body")), headers=FORGED))
    assert seen["headers"]["x-consumer-username"] == ["no-body"]
    assert seen["headers"]["x-anonymous-consumer"] == ["true"]
    assert "x-credential-identifier" not in seen["headers"]


# -- credential ttl --------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(_key_auth, "_clock", fake)
    monkeypatch.setattr(pygateway._snapshot, "clock", fake)
    return fake


def expiring(ttl: int | None, key: str = "temporary") -> gw.Consumer:
    return gw.Consumer(username="jafar", credentials=[gw.KeyAuthCredential(key=key, ttl=ttl)])


async def test_a_key_with_a_ttl_works_until_the_ttl_has_passed(clock: Clock) -> None:
    gateway = gateway_with(KeyAuth(), consumers=[expiring(30)])
    upstream(await call(gateway, headers={"apikey": "temporary"}))
    clock.now += 29
    upstream(await call(gateway, headers={"apikey": "temporary"}))
    clock.now += 1
    refused(await call(gateway, headers={"apikey": "temporary"}), "Unauthorized")


@pytest.mark.parametrize("ttl", [None, 0])
async def test_a_key_without_a_ttl_never_expires(clock: Clock, ttl: int | None) -> None:
    gateway = gateway_with(KeyAuth(), consumers=[expiring(ttl)])
    upstream(await call(gateway, headers={"apikey": "temporary"}))
    clock.now += 10**9
    upstream(await call(gateway, headers={"apikey": "temporary"}))


async def test_reconfiguring_does_not_extend_the_life_of_a_key(clock: Clock) -> None:
    gateway = gateway_with(KeyAuth(), consumers=[expiring(30)])
    upstream(await call(gateway, headers={"apikey": "temporary"}))
    clock.now += 20
    # The same key in a new configuration (a new credential id, even): same deadline.
    gateway.configure(gateway_with(KeyAuth(), consumers=[expiring(30)]).config)
    upstream(await call(gateway, headers={"apikey": "temporary"}))
    clock.now += 10
    refused(await call(gateway, headers={"apikey": "temporary"}), "Unauthorized")


async def test_a_new_ttl_starts_the_clock_again(clock: Clock) -> None:
    gateway = gateway_with(KeyAuth(), consumers=[expiring(30)])
    upstream(await call(gateway, headers={"apikey": "temporary"}))
    clock.now += 40
    refused(await call(gateway, headers={"apikey": "temporary"}), "Unauthorized")
    gateway.configure(gateway_with(KeyAuth(), consumers=[expiring(60)]).config)
    upstream(await call(gateway, headers={"apikey": "temporary"}))


async def test_an_expired_key_with_anonymous_goes_on_as_the_anonymous_consumer(
    clock: Clock,
) -> None:
    gateway = gateway_with(KeyAuth(anonymous="no-body"), consumers=[expiring(5), NOBODY])
    seen = upstream(await call(gateway, headers={"apikey": "temporary"}))
    assert seen["headers"]["x-consumer-username"] == ["jafar"]
    clock.now += 5
    seen = upstream(await call(gateway, headers={"apikey": "temporary"}))
    assert seen["headers"]["x-anonymous-consumer"] == ["true"]


async def test_the_ttl_counts_from_when_the_configuration_was_loaded(clock: Clock) -> None:
    gateway = gateway_with(KeyAuth(), consumers=[expiring(30)])
    # A snapshot that says when it was loaded (Snapshot.loaded_at, on the monotonic clock).
    gateway.snapshot.loaded_at = clock.now - 25  # type: ignore[attr-defined]
    upstream(await call(gateway, headers={"apikey": "temporary"}))
    clock.now += 5
    refused(await call(gateway, headers={"apikey": "temporary"}), "Unauthorized")


async def test_the_ttl_start_is_kept_by_a_digest_never_by_the_key(clock: Clock) -> None:
    gateway = gateway_with(KeyAuth(), consumers=[expiring(30, key="super-secret-key")])
    upstream(await call(gateway, headers={"apikey": "super-secret-key"}))
    assert "super-secret-key" not in repr(gateway.shared)


# -- key-auth and basic-auth on one route (Kong's logical AND / OR) --------------------------

MICKEY = gw.Consumer(username="Mickey", credentials=[gw.KeyAuthCredential(key="Mouse")])
ALADDIN = gw.Consumer(
    username="Aladdin",
    credentials=[
        BasicAuthCredential(
            username="Aladdin", password=hash_password("OpenSesame", iterations=1000)
        )
    ],
)
ANONYMOUS = gw.Consumer(username="Anonymous")
BASIC = {"authorization": "Basic " + base64.b64encode(b"Aladdin:OpenSesame").decode()}


def both(anonymous: str | None) -> gw.Gateway:
    return gateway_with(
        BasicAuth(anonymous=anonymous),
        KeyAuth(anonymous=anonymous),
        consumers=[MICKEY, ALADDIN, ANONYMOUS],
    )


async def test_and_both_credentials_pass_as_one_of_their_consumers() -> None:
    seen = upstream(await call(both(None), headers={"apikey": "Mouse", **BASIC}))
    assert seen["headers"]["x-consumer-id"][0] in (MICKEY.id, ALADDIN.id)
    assert "x-anonymous-consumer" not in seen["headers"]


async def test_and_only_the_key_is_refused_by_basic_auth() -> None:
    response = await call(both(None), headers={"apikey": "Mouse"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Basic realm="service"'


async def test_and_only_the_basic_credentials_are_refused_by_key_auth() -> None:
    response = await call(both(None), headers=BASIC)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Key"


async def test_and_no_credential_is_refused() -> None:
    assert (await call(both(None))).status_code == 401


async def test_or_both_credentials_pass_as_a_real_consumer() -> None:
    seen = upstream(await call(both(ANONYMOUS.id), headers={"apikey": "Mouse", **BASIC}))
    assert seen["headers"]["x-consumer-id"][0] in (MICKEY.id, ALADDIN.id)
    assert "x-anonymous-consumer" not in seen["headers"]


async def test_or_only_the_key_passes_as_its_consumer() -> None:
    seen = upstream(await call(both(ANONYMOUS.id), headers={"apikey": "Mouse"}))
    assert seen["headers"]["x-consumer-id"] == [MICKEY.id]
    assert "x-anonymous-consumer" not in seen["headers"]


async def test_or_only_the_basic_credentials_pass_as_their_consumer() -> None:
    seen = upstream(await call(both(ANONYMOUS.id), headers=BASIC))
    assert seen["headers"]["x-consumer-id"] == [ALADDIN.id]
    assert seen["headers"]["x-credential-identifier"] == ["Aladdin"]
    assert "x-anonymous-consumer" not in seen["headers"]


async def test_or_no_credential_passes_as_the_anonymous_consumer() -> None:
    seen = upstream(await call(both(ANONYMOUS.id)))
    assert seen["headers"]["x-consumer-id"] == [ANONYMOUS.id]
    assert seen["headers"]["x-anonymous-consumer"] == ["true"]


# -- configuration ---------------------------------------------------------------------------


def test_the_defaults_are_kongs() -> None:
    plugin = KeyAuth()
    assert (KeyAuth.name, KeyAuth.priority) == ("key-auth", 1250)
    assert plugin.to_config() == {
        "key_names": ["apikey"],
        "hide_credentials": False,
        "anonymous": None,
        "key_in_header": True,
        "key_in_query": True,
        "key_in_body": False,
        "run_on_preflight": True,
        "realm": None,
    }


def test_a_key_name_outside_kongs_characters_is_refused_with_its_path() -> None:
    with pytest.raises(gw.ConfigurationError) as excinfo:
        KeyAuth(key_names=["apikey", "api key", ""])
    assert excinfo.value.errors == [
        (
            ("key_names", 1),
            "bad header name 'api key', allowed characters are A-Z, a-z, 0-9, '_', and '-'",
        ),
        (("key_names", 2), "no header name provided"),
    ]


@pytest.mark.parametrize(
    ("config", "path", "message"),
    [
        ({"key_names": "apikey"}, ("key_names",), "expected an array"),
        ({"hide_credentials": "yes"}, ("hide_credentials",), "expected a boolean"),
        ({"anonymous": ""}, ("anonymous",), "length must be at least 1"),
        ({"realm": 1}, ("realm",), "expected a string"),
        ({"key_in_bodies": True}, ("key_in_bodies",), "unknown field"),
    ],
)
def test_a_wrong_config_is_refused_naming_the_field(
    config: dict[str, Any], path: tuple[Any, ...], message: str
) -> None:
    with pytest.raises(gw.ConfigurationError) as excinfo:
        KeyAuth.from_config(config)
    assert excinfo.value.errors == [(path, message)]


def test_key_auth_cannot_be_applied_to_a_consumer() -> None:
    with pytest.raises(gw.ConfigurationError, match="cannot be applied to a consumer"):
        gw.Gateway(consumers=[gw.Consumer(username="a", plugins=[KeyAuth()])])


DECLARATIVE: dict[str, Any] = {
    "_format_version": "3.0",
    "services": [
        {
            "name": "echo",
            "url": "http://echo.internal",
            "routes": [
                {
                    "name": "r",
                    "paths": ["/"],
                    "plugins": [
                        {
                            "name": "key-auth",
                            "config": {"key_names": ["x-api-key"], "hide_credentials": True},
                        }
                    ],
                }
            ],
        }
    ],
    "consumers": [{"username": "bob", "keyauth_credentials": [{"key": "kong", "ttl": 3600}]}],
}


async def test_a_declarative_config_authenticates_and_round_trips() -> None:
    gateway = gw.Gateway.from_config(DECLARATIVE, engines={"echo.internal": echo_engine()})
    seen = upstream(await call(gateway, headers={"X-Api-Key": "kong"}))
    assert seen["headers"]["x-consumer-username"] == ["bob"]
    assert "x-api-key" not in seen["headers"]
    plugin = gateway.config.services[0].routes[0].plugins[0]
    assert plugin == KeyAuth(key_names=["x-api-key"], hide_credentials=True)
    assert load(dump(gateway.config)) == gateway.config


def test_a_declarative_config_error_is_reported_under_the_plugin_config() -> None:
    data = json.loads(json.dumps(DECLARATIVE))
    data["services"][0]["routes"][0]["plugins"][0]["config"]["key_names"] = ["ok", "not ok"]
    with pytest.raises(gw.ConfigurationError) as excinfo:
        load(data)
    [(path, _)] = excinfo.value.errors
    assert path == ("services", 0, "routes", 0, "plugins", 0, "config", "key_names", 1)
