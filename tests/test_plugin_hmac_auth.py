"""The bundled hmac-auth plugin, after Kong's spec for it (19-hmac-auth/01-schema_spec,
03-access_spec)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from email.utils import formatdate
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import httpx
import pytest

import pygateway as gw
from pygateway._config import dump, load
from pygateway.plugins import _hmac_auth
from pygateway.plugins._hmac_auth import HmacAuth, HMACAuthCredential
from pygateway.testing import client, echo_engine

CREDENTIAL = HMACAuthCredential(username="bob", secret="secret")
BOB = gw.Consumer(username="bob", custom_id="1234", credentials=[CREDENTIAL])
NOBODY = gw.Consumer(username="no-body")

NOT_VALID = "HMAC signature cannot be verified"
NOT_SAME = "HMAC signature does not match"
NO_DATE = (
    "HMAC signature cannot be verified, a valid date or x-date header is required for "
    "HMAC Authentication"
)


def now(offset: float = 0) -> str:
    return formatdate(time.time() + offset, usegmt=True)


def sign(text: str, algorithm: str = "hmac-sha1", secret: str = "secret") -> str:
    digest = getattr(hashlib, algorithm.removeprefix("hmac-"))
    return base64.b64encode(hmac.new(secret.encode(), text.encode(), digest).digest()).decode()


def hmac_header(
    signature: str,
    headers: str = "date",
    algorithm: str = "hmac-sha1",
    username: str = "bob",
) -> str:
    return (
        f'hmac username="{username}", algorithm="{algorithm}", headers="{headers}", '
        f'signature="{signature}"'
    )


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


ROUTE = HmacAuth(clock_skew=3000, realm="test-realm")


async def call(
    gateway: gw.Gateway, method: str = "GET", path: str = "/request", **kwargs: Any
) -> httpx.Response:
    async with client(gateway) as http:
        return await http.request(method, path, **kwargs)


def upstream(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def refused(
    response: httpx.Response, message: str, challenge: str = 'hmac realm="test-realm"'
) -> None:
    assert response.status_code == 401
    assert response.json()["message"] == message
    assert response.json()["request_id"]
    assert response.headers["www-authenticate"] == challenge


# -- refused requests -----------------------------------------------------------------------


async def test_a_request_without_credentials_is_unauthorized_with_the_realm() -> None:
    refused(await call(gateway_with(ROUTE), "POST", headers={"date": now()}), "Unauthorized")


async def test_without_a_realm_the_challenge_is_plain_hmac() -> None:
    response = await call(
        gateway_with(HmacAuth()),
        headers={"date": now(), "proxy-authorization": "this is no hmac token at all is it?"},
    )
    refused(response, NOT_VALID, "hmac")


@pytest.mark.parametrize("header", ["authorization", "proxy-authorization"])
@pytest.mark.parametrize(
    "value",
    [
        "asd",
        "hmac :dXNlcm5hbWU6cGFzc3dvcmQ=",
        "hmac username=,algorithm,headers,dXNlcm5hbWU6cGFzc3dvcmQ=",
        "hmac username",
        'hmac algorithm="hmac-sha1", headers="date", signature="c2lnbmF0dXJl"',
        'hmac username="bob", algorithm="hmac-sha1", headers="date"',
    ],
    ids=["garbage", "digest-only", "unquoted", "username-only", "no-username", "no-signature"],
)
async def test_unparseable_credentials_cannot_be_verified(header: str, value: str) -> None:
    response = await call(gateway_with(ROUTE), headers={"date": now(), header: value})
    refused(response, NOT_VALID)


async def test_a_signature_that_is_not_base64_does_not_match() -> None:
    value = hmac_header("not really a base64 encoded value!!!")
    response = await call(gateway_with(ROUTE), headers={"date": now(), "authorization": value})
    refused(response, NOT_SAME)


async def test_a_wrong_signature_does_not_match() -> None:
    date = now()
    value = hmac_header(sign(f"date: {date}", secret="not-the-secret"))
    response = await call(gateway_with(ROUTE), headers={"date": date, "authorization": value})
    refused(response, NOT_SAME)


async def test_an_unknown_username_cannot_be_verified() -> None:
    date = now()
    value = hmac_header(sign(f"date: {date}"), username="bobb")
    response = await call(gateway_with(ROUTE), headers={"date": date, "authorization": value})
    refused(response, NOT_VALID)


async def test_a_request_without_a_date_is_refused_before_anything_else() -> None:
    response = await call(gateway_with(ROUTE), headers={"authorization": "asd"})
    refused(response, NO_DATE)


@pytest.mark.parametrize("algorithm", ["hmac-sha", "HMAC-SHA1", "sha256"])
async def test_an_unknown_algorithm_cannot_be_verified(algorithm: str) -> None:
    date = now()
    value = hmac_header(sign(f"date: {date}"), algorithm=algorithm)
    response = await call(gateway_with(ROUTE), headers={"date": date, "authorization": value})
    refused(response, NOT_VALID)


async def test_an_algorithm_left_out_of_algorithms_cannot_be_verified() -> None:
    date = now()
    value = hmac_header(sign(f"date: {date}", "hmac-sha512"), algorithm="hmac-sha512")
    plugin = HmacAuth(algorithms=["hmac-sha1", "hmac-sha256"])
    response = await call(gateway_with(plugin), headers={"date": date, "authorization": value})
    refused(response, NOT_VALID, "hmac")


# -- accepted requests ----------------------------------------------------------------------


async def test_a_signed_date_authenticates_and_the_upstream_learns_the_consumer() -> None:
    date = now()
    value = hmac_header(sign(f"date: {date}"))
    response = await call(gateway_with(ROUTE), headers={"date": date, "authorization": value})
    headers = upstream(response)["headers"]
    assert headers["authorization"] == [value]  # not hidden by default
    assert headers["x-consumer-id"] == [BOB.id]
    assert headers["x-consumer-username"] == ["bob"]
    assert headers["x-consumer-custom-id"] == ["1234"]
    assert headers["x-credential-identifier"] == ["bob"]  # the username, as Kong sends it
    assert "x-anonymous-consumer" not in headers


async def test_a_post_with_a_signed_date_authenticates() -> None:
    date = now()
    value = hmac_header(sign(f"date: {date}"))
    upstream(
        await call(
            gateway_with(ROUTE), "POST", headers={"date": date, "authorization": value}, json={}
        )
    )


@pytest.mark.parametrize("algorithm", ["hmac-sha1", "hmac-sha256", "hmac-sha384", "hmac-sha512"])
async def test_every_algorithm_is_accepted_by_default(algorithm: str) -> None:
    date = now()
    text = f"date: {date}\ncontent-md5: md5\nGET /request HTTP/1.1"
    value = hmac_header(sign(text, algorithm), "date content-md5 request-line", algorithm)
    response = await call(
        gateway_with(ROUTE),
        headers={"date": date, "content-md5": "md5", "proxy-authorization": value},
    )
    upstream(response)


async def test_proxy_authorization_is_read_first() -> None:
    date = now()
    value = hmac_header(sign(f"date: {date}"))
    headers = {"date": date, "proxy-authorization": value, "authorization": "hello"}
    upstream(await call(gateway_with(ROUTE), headers=headers))


async def test_an_unparseable_proxy_authorization_falls_back_to_authorization() -> None:
    date = now()
    value = hmac_header(sign(f"date: {date}"))
    headers = {"date": date, "proxy-authorization": "hmac username", "authorization": value}
    upstream(await call(gateway_with(ROUTE), headers=headers))


async def test_a_stray_quote_before_the_scheme_is_tolerated_as_kong_does() -> None:
    date = now()
    value = '"' + hmac_header(sign(f"date: {date}"))
    upstream(await call(gateway_with(ROUTE), headers={"date": date, "authorization": value}))


@pytest.mark.parametrize(
    "value",
    [" " * 16000 + "hmac", 'hmac username="' + 'x",algorithm="' * 1000, "hmac " * 3000],
    ids=["spaces", "repeated-fields", "repeated-scheme"],
)
async def test_a_huge_hostile_header_is_simply_refused(value: str) -> None:
    response = await call(gateway_with(ROUTE), headers={"date": now(), "authorization": value})
    refused(response, NOT_VALID)


async def test_fields_may_be_separated_with_or_without_spaces() -> None:
    date = now()
    signature = sign(f"date: {date}")
    value = f'hmac username="bob",algorithm="hmac-sha1",  headers="date",signature="{signature}"'
    upstream(await call(gateway_with(ROUTE), headers={"date": date, "authorization": value}))


# -- the signing string ----------------------------------------------------------------------


async def test_the_request_line_is_signed_with_the_target_as_sent() -> None:
    date = now()
    text = f"date: {date}\ncontent-md5: md5\nGET /request HTTP/1.1"
    value = hmac_header(sign(text), "date content-md5 request-line")
    headers = {"date": date, "content-md5": "md5", "authorization": value}
    upstream(await call(gateway_with(ROUTE), headers=headers))


async def test_the_request_target_pseudo_header_is_signed_with_a_lower_case_method() -> None:
    date = now()
    text = f"date: {date}\ncontent-md5: md5\n@request-target: get /request"
    value = hmac_header(sign(text), "date content-md5 @request-target")
    headers = {"date": date, "content-md5": "md5", "authorization": value}
    upstream(await call(gateway_with(ROUTE), headers=headers))


@pytest.mark.parametrize(
    ("pseudo", "line"),
    [("@request-target", "@request-target: get /public"), ("request-line", "GET /public HTTP/1.1")],
)
async def test_a_client_header_named_as_a_pseudo_header_does_not_replace_the_request_target(
    pseudo: str, line: str
) -> None:
    date = now()
    value = hmac_header(sign(f"date: {date}\n{line}"), f"date {pseudo}")
    forged = line if pseudo == "request-line" else line.removeprefix("@request-target: ")
    headers = {"date": date, "authorization": value, pseudo: forged}
    refused(await call(gateway_with(ROUTE), path="/admin/delete", headers=headers), NOT_SAME)
    # Signed for the target it is sent to, it passes, the header notwithstanding.
    upstream(await call(gateway_with(ROUTE), path="/public", headers=headers))


@pytest.mark.parametrize(
    ("signed", "sent"),
    [("/request", "/request?name=foo"), ("/request/", "/request/?name=foo")],
)
async def test_a_request_line_signed_without_the_query_does_not_match(
    signed: str, sent: str
) -> None:
    date = now()
    value = hmac_header(sign(f"date: {date}\nGET {signed} HTTP/1.1"), "date request-line")
    response = await call(
        gateway_with(ROUTE), path=sent, headers={"date": date, "authorization": value}
    )
    refused(response, NOT_SAME)


@pytest.mark.parametrize(
    "target",
    [
        "/request?name=foo",
        "/request/?name=foo",
        "/request?name=" + quote("foo bar"),
        "/request?name=" + quote("foo bár"),
        "/request?name=foo&name=bar",
        "/request?name={}&address={}".format(quote("foo bar"), quote("san francisco")),
        "/request/{}/?name=foo&name=bar".format(quote("some value")),
        "/",
    ],
)
async def test_a_request_line_is_signed_as_the_client_encoded_it(target: str) -> None:
    date = now()
    value = hmac_header(sign(f"date: {date}\nGET {target} HTTP/1.1"), "date request-line")
    response = await call(
        gateway_with(ROUTE), path=target, headers={"date": date, "authorization": value}
    )
    upstream(response)


async def test_header_names_are_matched_whatever_their_case_and_signed_as_listed() -> None:
    date = now()
    value = hmac_header(sign(f"Date: {date}\nX-Custom: v"), "Date X-Custom")
    headers = {"DATE": date, "x-custom": "v", "authorization": value}
    upstream(await call(gateway_with(ROUTE), headers=headers))


async def test_a_signed_header_the_request_lacks_is_signed_as_its_name_and_a_colon() -> None:
    date = now()
    value = hmac_header(sign(f"date: {date}\nx-missing:"), "date x-missing")
    upstream(await call(gateway_with(ROUTE), headers={"date": date, "authorization": value}))


def test_the_request_line_names_the_http_version_as_kong_prints_it() -> None:
    for given, printed in [("1.0", "1.0"), ("1.1", "1.1"), ("2", "2.0"), ("3", "3.0")]:
        request = SimpleNamespace(http_version=given)
        assert _hmac_auth._http_version(request) == printed  # type: ignore[arg-type]


# -- dates and replays -----------------------------------------------------------------------


async def test_an_x_date_header_may_stand_in_for_date() -> None:
    date = now()
    text = f"x-date: {date}\ncontent-md5: md5\nGET /request HTTP/1.1"
    value = hmac_header(sign(text), "x-date content-md5 request-line")
    headers = {"x-date": date, "content-md5": "md5", "authorization": value}
    upstream(await call(gateway_with(ROUTE), headers=headers))


async def test_a_malformed_x_date_without_a_date_is_refused() -> None:
    value = hmac_header(sign("x-date: wrong date"), "x-date")
    response = await call(
        gateway_with(ROUTE), headers={"x-date": "wrong date", "authorization": value}
    )
    refused(response, NO_DATE)


def signed_with_dates(x_date: str, date: str, signed: str) -> dict[str, str]:
    values = {"x-date": x_date, "date": date}
    values = {k: now() if v == "now" else v for k, v in values.items()}
    text = "\n".join(
        f"{name}: {values[name]}" if name in values else f"{name}:" for name in signed.split(" ")
    )
    return {**values, "authorization": hmac_header(sign(text), signed)}


@pytest.mark.parametrize(
    ("x_date", "date", "signed"),
    [
        ("wrong date", "now", "date"),  # an unsigned malformed x-date does not matter
        ("now", "wrong date", "x-date"),
        ("now", "wrong date", "x-date date"),
        ("now", "now", "date x-date"),
    ],
)
async def test_a_valid_signed_date_header_is_enough(x_date: str, date: str, signed: str) -> None:
    upstream(await call(gateway_with(ROUTE), headers=signed_with_dates(x_date, date, signed)))


@pytest.mark.parametrize(
    ("x_date", "date", "signed"),
    [
        ("wrong date", "now", "x-date"),  # a valid unsigned date does not rescue it
        ("now", "wrong date", "date"),  # nor does a valid unsigned x-date
        ("wrong date", "now", "x-date date"),  # x-date decides when both are signed
        ("wrong date", "now", "date x-date"),
    ],
)
async def test_only_the_signed_date_header_decides_whether_the_request_is_fresh(
    x_date: str, date: str, signed: str
) -> None:
    headers = signed_with_dates(x_date, date, signed)
    refused(await call(gateway_with(ROUTE), headers=headers), NO_DATE)


async def test_a_day_old_signed_request_cannot_be_replayed_with_a_fresh_unsigned_x_date() -> None:
    old = now(-86400)
    text = f"date: {old}\nGET /request HTTP/1.1"
    value = hmac_header(sign(text), "date request-line")
    plugin = HmacAuth(enforce_headers=["date", "request-line"])
    headers = {"date": old, "x-date": now(), "authorization": value}
    refused(await call(gateway_with(plugin), headers=headers), NO_DATE, "hmac")


@pytest.mark.parametrize(("x_date", "date"), [("now", "wrong date"), ("wrong date", "now")])
async def test_with_no_date_signed_either_valid_date_header_is_enough(
    x_date: str, date: str
) -> None:
    headers = signed_with_dates(x_date, date, "content-md5")
    upstream(await call(gateway_with(ROUTE), headers=headers))


@pytest.mark.parametrize("offset", [-400, 400, -86400])
async def test_a_replayed_request_outside_the_clock_skew_is_refused(offset: int) -> None:
    date = now(offset)
    value = hmac_header(sign(f"date: {date}"))
    response = await call(
        gateway_with(HmacAuth(clock_skew=300)), headers={"date": date, "authorization": value}
    )
    refused(response, NO_DATE, "hmac")


@pytest.mark.parametrize("offset", [-200, 200])
async def test_a_request_within_the_clock_skew_is_accepted(offset: int) -> None:
    date = now(offset)
    value = hmac_header(sign(f"date: {date}"))
    response = await call(
        gateway_with(HmacAuth(clock_skew=300)), headers={"date": date, "authorization": value}
    )
    upstream(response)


async def test_the_same_signed_request_is_refused_once_it_is_older_than_the_skew(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    date = now()
    headers = {"date": date, "authorization": hmac_header(sign(f"date: {date}"))}
    gateway = gateway_with(HmacAuth(clock_skew=300))
    upstream(await call(gateway, headers=headers))
    later = time.time() + 301
    monkeypatch.setattr(_hmac_auth, "_now", lambda: later)
    refused(await call(gateway, headers=headers), NO_DATE, "hmac")


# -- enforce_headers and the body ------------------------------------------------------------


async def test_an_enforced_header_left_unsigned_cannot_be_verified() -> None:
    date = now()
    value = hmac_header(sign(f"date: {date}\ncontent-md5: md5"), "date content-md5")
    plugin = HmacAuth(enforce_headers=["date", "request-line"])
    headers = {"date": date, "content-md5": "md5", "authorization": value}
    refused(await call(gateway_with(plugin), headers=headers), NOT_VALID, "hmac")


BODY = '{"a":"apple","b":"ball"}'
DIGEST = "SHA-256=" + base64.b64encode(hashlib.sha256(BODY.encode()).digest()).decode()
EMPTY_DIGEST = "SHA-256=" + base64.b64encode(hashlib.sha256(b"").digest()).decode()
CHECKS_BODY = HmacAuth(validate_request_body=True)


async def test_with_body_validation_a_body_without_a_digest_does_not_match() -> None:
    date = now()
    value = hmac_header(sign(f"date: {date}"))
    response = await call(
        gateway_with(CHECKS_BODY),
        "POST",
        content=BODY,
        headers={"date": date, "authorization": value},
    )
    refused(response, NOT_SAME, "hmac")


@pytest.mark.parametrize("digest", [None, EMPTY_DIGEST])
async def test_with_body_validation_no_body_passes_with_or_without_a_digest(
    digest: str | None,
) -> None:
    date = now()
    headers = {"date": date}
    signed = "date"
    if digest:
        headers["digest"] = digest
        signed = "date digest"
    text = "\n".join(f"{name}: {headers[name]}" for name in signed.split(" "))
    headers["authorization"] = hmac_header(sign(text), signed)
    upstream(await call(gateway_with(CHECKS_BODY), headers=headers))


async def test_with_body_validation_a_matching_digest_passes() -> None:
    date = now()
    value = hmac_header(sign(f"date: {date}\ndigest: {DIGEST}"), "date digest")
    response = await call(
        gateway_with(CHECKS_BODY),
        "POST",
        content=BODY,
        headers={"date": date, "digest": DIGEST, "authorization": value},
    )
    assert upstream(response)["body"] == BODY


@pytest.mark.parametrize(
    ("body", "digest"),
    [("abc", DIGEST), (BODY, DIGEST[:-4] + "AAA="), (BODY, DIGEST.lower())],
    ids=["tampered-body", "tampered-digest", "digest-case"],
)
async def test_with_body_validation_a_tampered_body_or_digest_does_not_match(
    body: str, digest: str
) -> None:
    date = now()
    value = hmac_header(sign(f"date: {date}\ndigest: {digest}"), "date digest")
    response = await call(
        gateway_with(CHECKS_BODY),
        "POST",
        content=body,
        headers={"date": date, "digest": digest, "authorization": value},
    )
    refused(response, NOT_SAME, "hmac")


async def test_without_body_validation_the_body_is_not_checked() -> None:
    date = now()
    value = hmac_header(sign(f"date: {date}"))
    response = await call(
        gateway_with(ROUTE), "POST", content="abc", headers={"date": date, "authorization": value}
    )
    upstream(response)


# -- hide_credentials and anonymous ----------------------------------------------------------


async def test_hide_credentials_keeps_the_authorization_header_from_the_upstream() -> None:
    date = now()
    value = hmac_header(sign(f"date: {date}"))
    gateway = gateway_with(HmacAuth(hide_credentials=True))
    headers = upstream(await call(gateway, headers={"date": date, "authorization": value}))
    assert "authorization" not in headers["headers"]


async def test_hide_credentials_removes_only_the_header_that_was_used() -> None:
    date = now()
    value = hmac_header(sign(f"date: {date}"))
    gateway = gateway_with(HmacAuth(hide_credentials=True))
    response = await call(
        gateway, headers={"date": date, "proxy-authorization": value, "authorization": "mine"}
    )
    headers = upstream(response)["headers"]
    assert "proxy-authorization" not in headers
    assert headers["authorization"] == ["mine"]


async def test_with_anonymous_a_signed_request_still_authenticates_its_consumer() -> None:
    date = now()
    value = hmac_header(sign(f"date: {date}"))
    gateway = gateway_with(HmacAuth(anonymous=NOBODY.id))
    headers = upstream(await call(gateway, headers={"date": date, "authorization": value}))
    assert headers["headers"]["x-consumer-username"] == ["bob"]
    assert headers["headers"]["x-credential-identifier"] == ["bob"]
    assert "x-anonymous-consumer" not in headers["headers"]


@pytest.mark.parametrize("anonymous", [NOBODY.id, "no-body"], ids=["id", "username"])
@pytest.mark.parametrize("offset", [0, -3600])
async def test_with_anonymous_a_failed_request_goes_on_as_the_anonymous_consumer(
    anonymous: str, offset: int
) -> None:
    date = now(offset)
    value = hmac_header(sign(f"date: {date}", secret="wrong"))
    gateway = gateway_with(HmacAuth(anonymous=anonymous))
    headers = upstream(await call(gateway, headers={"date": date, "authorization": value}))
    assert headers["headers"]["x-anonymous-consumer"] == ["true"]
    assert headers["headers"]["x-consumer-username"] == ["no-body"]
    assert "x-credential-identifier" not in headers["headers"]


async def test_an_anonymous_consumer_that_does_not_exist_is_a_500() -> None:
    missing = "00000000-0000-4000-8000-000000000000"
    response = await call(gateway_with(HmacAuth(anonymous=missing)))
    assert response.status_code == 500
    assert response.json()["message"] == (
        f"anonymous consumer {missing} is configured but doesn't exist"
    )


async def test_forged_consumer_headers_never_reach_the_upstream() -> None:
    date = now()
    forged = {
        "x-consumer-id": "forged",
        "x-consumer-username": "admin",
        "x-credential-identifier": "admin",
        "x-anonymous-consumer": "false",
    }
    refused(await call(gateway_with(ROUTE), headers={**forged, "date": date}), "Unauthorized")
    value = hmac_header(sign(f"date: {date}"))
    response = await call(
        gateway_with(ROUTE), headers={**forged, "date": date, "authorization": value}
    )
    headers = upstream(response)["headers"]
    assert headers["x-consumer-username"] == ["bob"]
    assert headers["x-credential-identifier"] == ["bob"]
    assert "x-anonymous-consumer" not in headers


# -- configuration ---------------------------------------------------------------------------


def test_the_defaults_are_kongs() -> None:
    assert (HmacAuth.name, HmacAuth.priority) == ("hmac-auth", 1030)
    assert HmacAuth().to_config() == {
        "hide_credentials": False,
        "clock_skew": 300,
        "anonymous": None,
        "validate_request_body": False,
        "enforce_headers": [],
        "algorithms": ["hmac-sha1", "hmac-sha256", "hmac-sha384", "hmac-sha512"],
        "realm": None,
    }


@pytest.mark.parametrize(
    ("config", "path", "message"),
    [
        ({"clock_skew": -10}, ("clock_skew",), "value must be greater than 0"),
        ({"clock_skew": 0}, ("clock_skew",), "value must be greater than 0"),
        ({"clock_skew": "5"}, ("clock_skew",), "expected a number"),
        (
            {"algorithms": ["hmac-sha1", "sha1024"]},
            ("algorithms", 1),
            "expected one of: hmac-sha1, hmac-sha256, hmac-sha384, hmac-sha512",
        ),
        ({"algorithms": []}, ("algorithms",), "length must be at least 1"),
        ({"enforce_headers": "date"}, ("enforce_headers",), "expected an array"),
        ({"anonymous": ""}, ("anonymous",), "length must be at least 1"),
        ({"skew": 1}, ("skew",), "unknown field"),
    ],
)
def test_a_wrong_config_is_refused_naming_the_field(
    config: dict[str, Any], path: tuple[Any, ...], message: str
) -> None:
    with pytest.raises(gw.ConfigurationError) as excinfo:
        HmacAuth.from_config(config)
    assert excinfo.value.errors == [(path, message)]


def test_hmac_auth_cannot_be_applied_to_a_consumer() -> None:
    with pytest.raises(gw.ConfigurationError, match="cannot be applied to a consumer"):
        gw.Gateway(consumers=[gw.Consumer(username="a", plugins=[HmacAuth()])])


def test_a_secret_is_generated_when_none_is_given_and_never_shown() -> None:
    first, second = HMACAuthCredential(username="a"), HMACAuthCredential(username="b")
    assert len(first.secret) >= 32
    assert first.secret != second.secret
    assert first.secret not in repr(first)


def test_an_empty_username_or_secret_is_refused() -> None:
    with pytest.raises(gw.ConfigurationError) as excinfo:
        HMACAuthCredential(username="", secret="")
    assert excinfo.value.errors == [
        (("username",), "length must be at least 1"),
        (("secret",), "length must be at least 1"),
    ]


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
                            "name": "hmac-auth",
                            "config": {"clock_skew": 60, "enforce_headers": ["date"]},
                        }
                    ],
                }
            ],
        }
    ],
    "consumers": [
        {"username": "bob", "hmacauth_credentials": [{"username": "bob-hmac", "secret": "s"}]},
        {"username": "eve", "hmacauth_credentials": [{"username": "eve-hmac"}]},
    ],
}


async def test_a_declarative_config_authenticates_and_round_trips() -> None:
    gateway = gw.Gateway.from_config(DECLARATIVE, engines={"echo.internal": echo_engine()})
    date = now()
    value = hmac_header(sign(f"date: {date}", secret="s"), username="bob-hmac")
    headers = upstream(await call(gateway, headers={"date": date, "authorization": value}))
    assert headers["headers"]["x-credential-identifier"] == ["bob-hmac"]
    assert load(dump(gateway.config)) == gateway.config
    # A generated secret is exported, so the reloaded credential keeps it.
    [eve] = dump(gateway.config)["consumers"][1]["hmacauth_credentials"]
    assert eve["secret"] == gateway.config.consumers[1].credentials[0].secret  # type: ignore[attr-defined]
