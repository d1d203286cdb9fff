"""The bundled jwt plugin and its credentials, after Kong's spec for it
(spec/03-plugins/16-jwt), plus the attacks a JWT verifier must resist."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from typing import Any

import attrs
import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import get_default_algorithms

import pygateway as gw
from pygateway.plugins._jwt import Jwt, JWTCredential
from pygateway.testing import client, echo_engine

# -- keys, tokens and a gateway -------------------------------------------------------------

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEYS = {
    "ES256": ec.generate_private_key(ec.SECP256R1()),
    "ES384": ec.generate_private_key(ec.SECP384R1()),
    "ES512": ec.generate_private_key(ec.SECP521R1()),
}
ED25519_KEY = ed25519.Ed25519PrivateKey.generate()
ED448_KEY = ed448.Ed448PrivateKey.generate()

SECRET = "a-secret-of-some-length-for-hmac-256-384-512-tests-0123456789"
NOW = time.time()
VALID = {"exp": NOW + 3600, "nbf": NOW - 30, "iat": NOW - 30}


def pem(private_key: Any) -> str:
    public = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return str(public.decode())


def private_pem(private_key: Any) -> str:
    data = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return str(data.decode())


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(
    claims: dict[str, Any] | str,
    key: Any = SECRET,
    alg: str = "HS256",
    *,
    header: dict[str, Any] | None = None,
) -> str:
    """A compact JWS built by hand, so that tests can forge what libraries refuse to make.

    HS* sign with `key` as raw HMAC bytes (whatever it is: a PEM public key too); the others
    with PyJWT's algorithm for `alg` and a private key. `claims` given as text is used as is.
    """
    head = header if header is not None else {"typ": "JWT", "alg": alg}
    payload = claims if isinstance(claims, str) else json.dumps(claims)
    signing_input = f"{b64(json.dumps(head).encode())}.{b64(payload.encode())}".encode()
    if alg.startswith("HS"):
        raw = key.encode() if isinstance(key, str) else key
        digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
        signature = hmac.new(raw, signing_input, digest[alg]).digest()
    else:
        signature = get_default_algorithms()[alg].sign(signing_input, key)
    return f"{signing_input.decode()}.{b64(signature)}"


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


HS = JWTCredential(key="hs-key", secret=SECRET)
RS = JWTCredential(key="rs-key", algorithm="RS256", rsa_public_key=pem(RSA_KEY))


def gateway(
    *plugins: Any,
    credentials: tuple[JWTCredential, ...] = (HS, RS),
    consumers: tuple[gw.Consumer, ...] = (),
) -> gw.Gateway:
    """Route `/r` to the echo upstream with `plugins` on it; consumer "alice" holds
    `credentials`."""
    return gw.Gateway(
        services=[
            gw.Service(
                name="s",
                url="http://echo.internal",
                routes=[gw.Route(name="r", paths=["/r"], plugins=plugins)],
            )
        ],
        consumers=[gw.Consumer(username="alice", credentials=credentials), *consumers],
        engines={"echo.internal": echo_engine()},
    )


async def call(gateway: gw.Gateway, method: str = "GET", **kwargs: Any) -> httpx.Response:
    async with client(gateway) as http:
        return await http.request(method, "/r", **kwargs)


def upstream_headers(response: httpx.Response) -> dict[str, list[str]]:
    assert response.status_code == 200, response.text
    headers: dict[str, list[str]] = response.json()["headers"]
    return headers


async def refusal(
    plugin: Jwt, token: str | None = None, **kwargs: Any
) -> tuple[dict[str, Any], str]:
    """The 401 body and WWW-Authenticate of a request with `token` as Bearer (or kwargs)."""
    if token is not None:
        kwargs.setdefault("headers", bearer(token))
    response = await call(gateway(plugin), **kwargs)
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    return response.json(), response.headers["www-authenticate"]


# -- configuration --------------------------------------------------------------------------


def test_the_plugin_has_kongs_name_priority_defaults_and_scopes() -> None:
    assert gw.plugins.get("jwt") is Jwt
    assert (Jwt.name, Jwt.priority) == ("jwt", 1450)
    assert Jwt().to_config() == {
        "uri_param_names": ["jwt"],
        "cookie_names": [],
        "key_claim_name": "iss",
        "secret_is_base64": False,
        "claims_to_verify": None,
        "anonymous": None,
        "run_on_preflight": True,
        "maximum_expiration": 0,
        "header_names": ["authorization"],
        "realm": None,
    }


def test_a_configuration_survives_a_round_trip_through_its_config() -> None:
    plugin = Jwt(
        uri_param_names=["token"],
        cookie_names=["session"],
        key_claim_name="kid",
        secret_is_base64=True,
        claims_to_verify=["exp", "nbf"],
        anonymous="guest",
        run_on_preflight=False,
        maximum_expiration=300,
        header_names=["x-token"],
        realm="api",
    )

    assert Jwt.from_config(plugin.to_config()) == plugin


def test_repeated_names_count_once_as_in_kongs_sets() -> None:
    plugin = Jwt(uri_param_names=["jwt", "token", "jwt"], claims_to_verify=["exp", "exp"])

    assert plugin.uri_param_names == ("jwt", "token")
    assert plugin.claims_to_verify == ("exp",)


@pytest.mark.parametrize(
    ("config", "error"),
    [
        ({"maximum_expiration": 60}, "claims_to_verify: expected to contain: exp"),
        (
            {"maximum_expiration": 60, "claims_to_verify": ["nbf"]},
            "claims_to_verify: expected to contain: exp",
        ),
        (
            {"maximum_expiration": -1, "claims_to_verify": ["exp"]},
            "maximum_expiration: value should be between 0 and 31536000",
        ),
        (
            {"maximum_expiration": 31_536_001, "claims_to_verify": ["exp"]},
            "maximum_expiration: value should be between 0 and 31536000",
        ),
        ({"claims_to_verify": ["iat"]}, "claims_to_verify[0]: expected one of: exp, nbf"),
        ({"key_claim_name": ""}, "key_claim_name: length must be at least 1"),
        ({"uri_param_names": ["jwt", ""]}, "uri_param_names: length must be at least 1"),
        ({"header_names": "authorization"}, "header_names: expected an array"),
        ({"anonymous": ""}, "anonymous: length must be at least 1"),
        ({"realm": "a\r\nb"}, "realm: invalid value: control characters cannot be sent"),
        ({"secret_is_base64": "yes"}, "secret_is_base64: expected a boolean"),
        ({"hide_credentials": True}, "hide_credentials: unknown field"),
    ],
)
def test_an_invalid_configuration_is_refused_with_kongs_message(
    config: dict[str, Any], error: str
) -> None:
    with pytest.raises(gw.ConfigurationError) as caught:
        Jwt.from_config(config)

    assert str(caught.value).startswith(error)


def test_maximum_expiration_with_exp_verified_is_accepted() -> None:
    plugin = Jwt(maximum_expiration=60, claims_to_verify=["exp", "nbf"])

    assert plugin.maximum_expiration == 60


def test_the_plugin_cannot_be_applied_to_a_consumer() -> None:
    with pytest.raises(gw.ConfigurationError, match="cannot be applied"):
        gw.Gateway(consumers=[gw.Consumer(username="alice", plugins=[Jwt()])])


async def test_a_declarative_file_with_jwt_secrets_loads_runs_and_round_trips() -> None:
    config = {
        "_format_version": "3.0",
        "services": [
            {
                "name": "s",
                "url": "http://echo.internal",
                "routes": [{"name": "r", "paths": ["/r"]}],
                "plugins": [{"name": "jwt", "config": {"claims_to_verify": ["exp"]}}],
            }
        ],
        "consumers": [
            {
                "username": "alice",
                "jwt_secrets": [
                    {"key": "hs-key", "secret": SECRET},
                    {"key": "rs-key", "algorithm": "RS256", "rsa_public_key": pem(RSA_KEY)},
                ],
            }
        ],
    }
    loaded = gw.Gateway.from_config(config, engines={"echo.internal": echo_engine()})

    for token in (
        sign({"iss": "hs-key", **VALID}),
        sign({"iss": "rs-key", **VALID}, RSA_KEY, "RS256"),
    ):
        headers = upstream_headers(await call(loaded, headers=bearer(token)))
        assert headers["x-consumer-username"] == ["alice"]
    again = gw.Gateway.from_config(loaded.to_config())
    assert again.config == loaded.config
    dumped = loaded.to_config()["consumers"][0]["jwt_secrets"]
    assert [c["key"] for c in dumped] == ["hs-key", "rs-key"]
    assert dumped[1]["algorithm"] == "RS256"


# -- credentials ----------------------------------------------------------------------------


def test_a_credential_gets_a_random_key_and_secret_as_in_kong() -> None:
    one, two = JWTCredential(), JWTCredential()

    for credential in (one, two):
        assert re.fullmatch(r"[A-Za-z0-9]{32}", credential.key)
        assert re.fullmatch(r"[A-Za-z0-9]{32}", credential.secret)
        assert credential.algorithm == "HS256"
    assert one.key != two.key
    assert one.secret != two.secret
    assert one.id != two.id


def test_the_secret_is_not_in_the_repr_and_the_identifier_is_the_key() -> None:
    credential = JWTCredential(key="visible", secret="hidden-secret")

    assert "hidden-secret" not in repr(credential)
    assert credential.identifier == "visible"


@pytest.mark.parametrize("algorithm", ["RS256", "RS512", "PS256", "ES256", "ES512", "EdDSA"])
def test_asymmetric_algorithms_require_a_public_key(algorithm: str) -> None:
    with pytest.raises(gw.ConfigurationError) as caught:
        JWTCredential(algorithm=algorithm)

    assert caught.value.errors == [
        (("rsa_public_key",), "required field missing"),
        ((), "failed conditional validation given value of field 'algorithm'"),
    ]


@pytest.mark.parametrize(
    ("algorithm", "key", "error"),
    [
        ("RS256", "test", "rsa_public_key: invalid key"),
        ("RS256", pem(EC_KEYS["ES256"]), "rsa_public_key: invalid key: RS256 needs an RSA"),
        ("PS384", pem(ED25519_KEY), "rsa_public_key: invalid key: PS384 needs an RSA"),
        ("ES256", pem(RSA_KEY), "rsa_public_key: invalid key: ES256 needs an EC public key"),
        ("ES256", pem(EC_KEYS["ES384"]), "rsa_public_key: invalid key: The key's curve"),
        ("EdDSA", pem(RSA_KEY), "rsa_public_key: invalid key: EdDSA needs an Ed25519 or Ed448"),
        ("RS256", private_pem(RSA_KEY), "rsa_public_key: invalid key: this is a private key"),
        ("RS256", "", "rsa_public_key: length must be at least 1"),
    ],
)
def test_a_public_key_must_parse_and_fit_the_algorithm(
    algorithm: str, key: str, error: str
) -> None:
    with pytest.raises(gw.ConfigurationError) as caught:
        JWTCredential(algorithm=algorithm, rsa_public_key=key)

    assert str(caught.value).startswith(error)


def test_a_pem_with_crlf_line_ends_is_accepted() -> None:
    credential = JWTCredential(algorithm="RS256", rsa_public_key=pem(RSA_KEY).replace("\n", "\r\n"))

    assert credential.algorithm == "RS256"


def test_an_hmac_secret_that_is_a_public_key_is_refused() -> None:
    with pytest.raises(gw.ConfigurationError) as caught:
        JWTCredential(secret=pem(RSA_KEY))

    assert str(caught.value).startswith("secret: not usable as an HMAC secret")


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"algorithm": "none"}, "algorithm: expected one of: HS256, HS384, HS512, RS256"),
        ({"algorithm": "ES256K"}, "algorithm: expected one of:"),
        ({"key": ""}, "key: length must be at least 1"),
        ({"secret": ""}, "secret: length must be at least 1"),
    ],
)
def test_invalid_credential_fields_are_refused(fields: dict[str, Any], error: str) -> None:
    with pytest.raises(gw.ConfigurationError) as caught:
        JWTCredential(**fields)

    assert str(caught.value).startswith(error)


def test_a_key_is_unique_across_consumers() -> None:
    with pytest.raises(gw.ConfigurationError, match="UNIQUE violation detected on 'key'"):
        gw.Gateway(
            consumers=[
                gw.Consumer(username="a", credentials=[JWTCredential(key="same")]),
                gw.Consumer(username="b", credentials=[JWTCredential(key="same")]),
            ]
        )


# -- verified tokens ------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["HS256", "HS384", "HS512"])
async def test_an_hmac_token_is_verified_and_the_consumer_sent_upstream(algorithm: str) -> None:
    credential = JWTCredential(key=f"key-{algorithm}", secret=SECRET, algorithm=algorithm)
    token = sign({"iss": credential.key, **VALID}, SECRET, algorithm)

    response = await call(gateway(Jwt(), credentials=(credential,)), headers=bearer(token))

    headers = upstream_headers(response)
    assert headers["authorization"] == [f"Bearer {token}"]  # forwarded: no hide_credentials
    assert headers["x-consumer-username"] == ["alice"]
    assert headers["x-credential-identifier"] == [credential.key]
    assert "x-anonymous-consumer" not in headers


ASYMMETRIC = [
    ("RS256", RSA_KEY),
    ("RS384", RSA_KEY),
    ("RS512", RSA_KEY),
    ("PS256", RSA_KEY),
    ("PS384", RSA_KEY),
    ("PS512", RSA_KEY),
    ("ES256", EC_KEYS["ES256"]),
    ("ES384", EC_KEYS["ES384"]),
    ("ES512", EC_KEYS["ES512"]),
    ("EdDSA", ED25519_KEY),
    ("EdDSA", ED448_KEY),
]


@pytest.mark.parametrize(("algorithm", "private_key"), ASYMMETRIC)
async def test_a_token_signed_with_a_private_key_is_verified_with_its_public_key(
    algorithm: str, private_key: Any
) -> None:
    credential = JWTCredential(key="signer", algorithm=algorithm, rsa_public_key=pem(private_key))
    token = sign({"iss": "signer", **VALID}, private_key, algorithm)

    response = await call(gateway(Jwt(), credentials=(credential,)), headers=bearer(token))

    headers = upstream_headers(response)
    assert headers["x-consumer-username"] == ["alice"]
    assert headers["x-credential-identifier"] == ["signer"]


@pytest.mark.parametrize(("algorithm", "private_key"), ASYMMETRIC[:1] + ASYMMETRIC[6:])
async def test_a_token_signed_with_another_private_key_is_refused(
    algorithm: str, private_key: Any
) -> None:
    credential = JWTCredential(key="signer", algorithm=algorithm, rsa_public_key=pem(private_key))
    if isinstance(private_key, rsa.RSAPrivateKey):
        other: Any = OTHER_RSA_KEY
    elif isinstance(private_key, ec.EllipticCurvePrivateKey):
        other = ec.generate_private_key(private_key.curve)
    elif isinstance(private_key, ed25519.Ed25519PrivateKey):
        other = ed25519.Ed25519PrivateKey.generate()
    else:
        other = ed448.Ed448PrivateKey.generate()
    token = sign({"iss": "signer"}, other, algorithm)

    response = await call(gateway(Jwt(), credentials=(credential,)), headers=bearer(token))

    assert response.status_code == 401
    assert response.json() == {"message": "Invalid signature"}


@attrs.frozen
class ShowSharedToken(gw.Plugin):
    """Sends `ctx.shared["authenticated_jwt_token"]` upstream, as Kong's ctx-checker."""

    name = "show-shared-token"
    priority = 100

    async def access(self, ctx: gw.Context) -> gw.Response | None:
        assert ctx.upstream_request is not None
        ctx.upstream_request.headers["x-shared-token"] = str(
            ctx.shared.get("authenticated_jwt_token")
        )
        return None


async def test_the_verified_token_is_shared_with_later_plugins() -> None:
    token = sign({"iss": "hs-key"})

    response = await call(gateway(Jwt(), ShowSharedToken()), headers=bearer(token))

    assert upstream_headers(response)["x-shared-token"] == [token]


async def test_the_key_may_be_in_another_claim() -> None:
    token = sign({"aud": "hs-key", "iss": "someone-else"})

    response = await call(gateway(Jwt(key_claim_name="aud")), headers=bearer(token))

    assert upstream_headers(response)["x-credential-identifier"] == ["hs-key"]


async def test_the_key_may_be_the_header_kid() -> None:
    token = sign({"sub": "x"}, header={"typ": "JWT", "alg": "HS256", "kid": "hs-key"})

    response = await call(gateway(Jwt(key_claim_name="kid")), headers=bearer(token))

    assert upstream_headers(response)["x-credential-identifier"] == ["hs-key"]


async def test_the_claim_wins_over_the_header_parameter() -> None:
    token = sign({"kid": "nobody"}, header={"typ": "JWT", "alg": "HS256", "kid": "hs-key"})

    body, _ = await refusal(Jwt(key_claim_name="kid"), token)

    assert body == {"message": "No credentials found for given 'kid'"}


async def test_a_base64_secret_verifies_tokens_signed_with_the_decoded_secret() -> None:
    raw = b"\xfb\xff binary secret bytes that need base64 \xfe"
    standard = JWTCredential(key="std", secret=base64.b64encode(raw).decode())
    urlsafe = JWTCredential(key="url", secret=base64.urlsafe_b64encode(raw).decode().rstrip("="))
    plugin = Jwt(secret_is_base64=True)

    for key in ("std", "url"):
        token = sign({"iss": key}, raw)
        response = await call(
            gateway(plugin, credentials=(standard, urlsafe, RS)), headers=bearer(token)
        )
        assert upstream_headers(response)["x-credential-identifier"] == [key]
    # It concerns HMAC secrets only: RS256 tokens still verify with the public key.
    token = sign({"iss": "rs-key"}, RSA_KEY, "RS256")
    response = await call(gateway(plugin, credentials=(standard, RS)), headers=bearer(token))
    assert upstream_headers(response)["x-credential-identifier"] == ["rs-key"]


async def test_a_secret_that_is_not_base64_gives_invalid_key_secret() -> None:
    credential = JWTCredential(key="plain", secret="not base64!")
    token = sign({"iss": "plain"}, "not base64!")

    response = await call(
        gateway(Jwt(secret_is_base64=True), credentials=(credential,)), headers=bearer(token)
    )

    assert response.status_code == 401
    assert response.json() == {"message": "Invalid key/secret"}


# -- where the token is found ---------------------------------------------------------------


async def test_the_token_is_read_from_the_jwt_query_argument() -> None:
    response = await call(gateway(Jwt()), params={"jwt": sign({"iss": "hs-key"})})

    assert upstream_headers(response)["x-consumer-username"] == ["alice"]


async def test_custom_query_arguments_are_read() -> None:
    plugin = Jwt(uri_param_names=["token", "jwt"])

    response = await call(gateway(plugin), params={"token": sign({"iss": "hs-key"})})

    assert upstream_headers(response)["x-consumer-username"] == ["alice"]


@pytest.mark.parametrize("name", ["silly", "crumble"])
async def test_the_token_is_read_from_configured_cookies(name: str) -> None:
    token = sign({"iss": "hs-key"})
    cookie = f"other=1; {name}={token}; path=/;domain=.jwt9.test"

    response = await call(
        gateway(Jwt(cookie_names=["silly", "crumble"])), headers={"cookie": cookie}
    )

    assert upstream_headers(response)["x-consumer-username"] == ["alice"]


async def test_cookies_are_not_read_unless_configured() -> None:
    body, challenge = await refusal(Jwt(), headers={"cookie": f"jwt={sign({'iss': 'hs-key'})}"})

    assert (body, challenge) == ({"message": "Unauthorized"}, "Bearer")


async def test_a_custom_header_is_read_and_only_its_first_occurrence() -> None:
    token = sign({"iss": "hs-key"})
    headers = [("CustomAuthorization", f"Bearer {token}"), ("CustomAuthorization", "Bearer x")]

    response = await call(gateway(Jwt(header_names=["CustomAuthorization"])), headers=headers)

    assert upstream_headers(response)["x-consumer-username"] == ["alice"]


@pytest.mark.parametrize(
    "value", ["bearer {t}", "Bearer   {t}", "Basic abc, Bearer {t}", "BEARER {t}", "  bEaReR {t}"]
)
async def test_the_bearer_scheme_is_found_anywhere_and_in_any_case(value: str) -> None:
    token = sign({"iss": "hs-key"})

    response = await call(gateway(Jwt()), headers={"authorization": value.format(t=token)})

    assert upstream_headers(response)["x-consumer-username"] == ["alice"]


@pytest.mark.parametrize("value", ["{t}", "Token {t}", "Bearer{t}", "Bearer", "Bearer   "])
async def test_a_header_without_a_bearer_token_carries_no_token(value: str) -> None:
    token = sign({"iss": "hs-key"})

    body, challenge = await refusal(Jwt(), headers={"authorization": value.format(t=token)})

    assert (body, challenge) == ({"message": "Unauthorized"}, "Bearer")


async def test_the_same_token_in_several_places_counts_once() -> None:
    token = sign({"iss": "hs-key"})

    response = await call(
        gateway(Jwt(cookie_names=["jwt"])),
        params={"jwt": token},
        headers={**bearer(token), "cookie": f"jwt={token}"},
    )

    assert upstream_headers(response)["x-consumer-username"] == ["alice"]


@pytest.mark.parametrize(
    "where",
    [
        {"params": {"jwt": "{a}"}, "headers": {"authorization": "Bearer {b}"}},
        {"params": {"jwt": "{a}"}, "headers": {"cookie": "jwt={b}"}},
        {"headers": {"cookie": "jwt={a}", "authorization": "Bearer {b}"}},
        {"params": [("jwt", "{a}"), ("jwt", "{b}")]},
    ],
)
async def test_different_tokens_are_refused_whichever_places_they_come_from(
    where: dict[str, Any],
) -> None:
    a, b = sign({"iss": "hs-key"}), sign({"iss": "hs-key", "n": 2})
    kwargs: dict[str, Any] = {}
    for name, value in where.items():
        items = value.items() if isinstance(value, dict) else value
        kwargs[name] = [(k, v.format(a=a, b=b)) for k, v in items]

    body, challenge = await refusal(Jwt(cookie_names=["jwt"]), **kwargs)

    assert body == {"message": "Multiple tokens provided"}
    assert challenge == 'Bearer error="invalid_token"'


# -- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize("filler", [" ", "\t", "Bearer"])
async def test_a_100_kb_header_of_spaces_is_answered(filler: str) -> None:
    value = "x" + filler * (100_000 // len(filler)) + "x"

    body, challenge = await refusal(Jwt(), headers={"authorization": value})

    assert (body, challenge) == ({"message": "Unauthorized"}, "Bearer")


async def test_the_first_request_after_a_reload_parses_no_public_key_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    credential = JWTCredential(key="rs-key", algorithm="RS256", rsa_public_key=pem(RSA_KEY))
    token = sign({"iss": "rs-key"}, alg="RS256", key=RSA_KEY)

    def parse_again(algorithm: str, pem: str) -> Any:
        raise AssertionError("the public key was parsed again")

    monkeypatch.setattr("pygateway.plugins._jwt.load_public_key", parse_again)
    response = await call(gateway(Jwt(), credentials=(credential,)), headers=bearer(token))

    assert upstream_headers(response)["x-credential-identifier"] == ["rs-key"]


async def test_no_token_is_401_unauthorized_with_a_bare_bearer_challenge() -> None:
    response = await call(gateway(Jwt()))

    assert response.status_code == 401
    # kong.response.exit: the message alone, no request_id.
    assert response.content == b'{"message":"Unauthorized"}'
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        ({"sub": "x"}, "No mandatory 'iss' in claims"),
        ({"iss": None}, "No mandatory 'iss' in claims"),
        ({"iss": ""}, "Invalid 'iss' in claims"),
        ({"iss": "123456789"}, "No credentials found for given 'iss'"),
        ({"iss": 123456789}, "No credentials found for given 'iss'"),
        ({"iss": ["hs-key"]}, "No credentials found for given 'iss'"),
    ],
)
async def test_a_token_must_name_an_existing_credential(
    claims: dict[str, Any], message: str
) -> None:
    body, challenge = await refusal(Jwt(), sign(claims))

    assert body == {"message": message}
    assert challenge == 'Bearer error="invalid_token"'


async def test_a_token_signed_with_the_wrong_secret_has_an_invalid_signature() -> None:
    body, _ = await refusal(Jwt(), sign({"iss": "hs-key"}, "foo"))

    assert body == {"message": "Invalid signature"}


async def test_a_token_whose_claims_were_changed_after_signing_is_refused() -> None:
    header, _, signature = sign({"iss": "hs-key", "admin": False}).split(".")
    forged = f"{header}.{b64(json.dumps({'iss': 'hs-key', 'admin': True}).encode())}.{signature}"

    body, _ = await refusal(Jwt(), forged)

    assert body == {"message": "Invalid signature"}


async def test_an_alg_other_than_the_credentials_is_an_invalid_algorithm() -> None:
    token = sign({"iss": "hs-key"}, header={"typ": "JWT", "alg": "RS256"})

    body, _ = await refusal(Jwt(), token)

    assert body == {"message": "Invalid algorithm"}


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("no-way-this-works" + sign({"iss": "hs-key"}), "invalid JSON"),
        ("only.two", "invalid JSON"),
        ("abc", "invalid JSON"),
        (f"{b64(b'not json')}.{b64(b'{}')}.", "invalid JSON"),
        (f"{b64(b'{}')}.{b64(b'{}')}.", "invalid alg"),
        (f"{b64(b'[1]')}.{b64(b'{}')}.", "invalid alg"),
        (f"{b64(json.dumps({'alg': 'HS257'}).encode())}.{b64(b'{}')}.", "invalid alg"),
        (f"{b64(json.dumps({'alg': 256}).encode())}.{b64(b'{}')}.", "invalid alg"),
        (f"{b64(json.dumps({'alg': 'HS256'}).encode())}.{b64(b'null')}.", "invalid claims"),
        (f"{b64(json.dumps({'alg': 'HS256'}).encode())}.{b64(b'[]')}.", "invalid claims"),
        (f"{b64(json.dumps({'alg': 'HS256'}).encode())}.{b64(b'{}')}.a!b", "invalid signature"),
        (sign({"iss": "hs-key"}) + ".extra", "invalid signature"),
    ],
)
async def test_a_token_that_cannot_be_read_is_a_bad_token(token: str, reason: str) -> None:
    body, challenge = await refusal(Jwt(), token)

    assert body == {"message": f"Bad token; {reason}"}
    assert challenge == 'Bearer error="invalid_token"'


async def test_claims_to_verify_require_numbers() -> None:
    body, challenge = await refusal(Jwt(claims_to_verify=["nbf", "exp"]), sign({"iss": "hs-key"}))

    assert body == {"nbf": "must be a number", "exp": "must be a number"}
    assert challenge == 'Bearer error="invalid_token"'


@pytest.mark.parametrize("exp", [str(int(NOW) + 3600), True, None, [NOW + 3600]])
async def test_an_exp_that_is_not_a_number_is_refused_even_a_numeric_string(exp: Any) -> None:
    body, _ = await refusal(Jwt(claims_to_verify=["exp"]), sign({"iss": "hs-key", "exp": exp}))

    assert body == {"exp": "must be a number"}


async def test_an_expired_token_is_refused_when_exp_is_verified() -> None:
    token = sign({"iss": "hs-key", "exp": NOW - 10, "nbf": NOW - 10})

    response = await call(gateway(Jwt(claims_to_verify=["nbf", "exp"])), headers=bearer(token))

    assert response.status_code == 401
    assert response.content == b'{"exp":"token expired"}'
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'


async def test_a_token_not_valid_yet_is_refused_when_nbf_is_verified() -> None:
    token = sign({"iss": "hs-key", "exp": NOW + 3600, "nbf": NOW + 600})

    body, _ = await refusal(Jwt(claims_to_verify=["nbf", "exp"]), token)

    assert body == {"nbf": "token not valid yet"}


async def test_an_expired_token_passes_when_no_claim_is_verified_as_in_kong() -> None:
    token = sign({"iss": "hs-key", "exp": NOW - 10})

    response = await call(gateway(Jwt()), headers=bearer(token))

    assert upstream_headers(response)["x-consumer-username"] == ["alice"]


async def test_a_token_living_longer_than_maximum_expiration_is_refused() -> None:
    plugin = Jwt(claims_to_verify=["nbf", "exp"], maximum_expiration=300)

    too_long = sign({"iss": "hs-key", "exp": NOW + 3600, "nbf": NOW - 30})
    body, challenge = await refusal(plugin, too_long)
    assert body == {"exp": "exceeds maximum allowed expiration"}
    assert challenge == 'Bearer error="invalid_token"'

    within = sign({"iss": "hs-key", "exp": time.time() + 270, "nbf": NOW - 30})
    response = await call(gateway(plugin), params={"jwt": within})
    assert response.status_code == 200


async def test_a_huge_integer_exp_is_handled_as_a_number() -> None:
    plugin = Jwt(claims_to_verify=["exp"], maximum_expiration=300)
    token = sign(f'{{"iss": "hs-key", "exp": {10**400}}}')

    body, _ = await refusal(plugin, token)
    assert body == {"exp": "exceeds maximum allowed expiration"}

    response = await call(gateway(Jwt(claims_to_verify=["exp"])), headers=bearer(token))
    assert response.status_code == 200


async def test_the_realm_is_part_of_every_challenge() -> None:
    plugin = Jwt(realm="test-jwt")

    _, challenge = await refusal(plugin)
    assert challenge == 'Bearer realm="test-jwt"'
    _, challenge = await refusal(plugin, sign({"iss": "incorrect-issuer"}))
    assert challenge == 'Bearer realm="test-jwt", error="invalid_token"'


async def test_preflight_requests_pass_when_run_on_preflight_is_off() -> None:
    response = await call(gateway(Jwt(run_on_preflight=False)), "OPTIONS")
    assert response.status_code == 200

    response = await call(gateway(Jwt()), "OPTIONS")
    assert response.status_code == 401
    assert response.content == b'{"message":"Unauthorized"}'


# -- attacks --------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", ""])
async def test_an_unsigned_token_is_refused(alg: str) -> None:
    header = b64(json.dumps({"typ": "JWT", "alg": alg}).encode())
    token = f"{header}.{b64(json.dumps({'iss': 'hs-key'}).encode())}."

    body, _ = await refusal(Jwt(), token)

    assert body == {"message": "Bad token; invalid alg"}


async def test_an_hs256_token_signed_with_the_rsa_public_key_is_refused() -> None:
    # The classic confusion: a verifier that lets the token pick HMAC would use the
    # (public) RSA key as the secret, and accept this forgery.
    forged = sign({"iss": "rs-key", **VALID}, pem(RSA_KEY), "HS256")

    body, _ = await refusal(Jwt(), forged)

    assert body == {"message": "Invalid algorithm"}


async def test_an_hmac_signature_under_the_credentials_own_alg_is_refused() -> None:
    # Same forgery, with the header claiming the credential's algorithm.
    header = {"typ": "JWT", "alg": "RS256"}
    forged = sign({"iss": "rs-key"}, pem(RSA_KEY), "HS256", header=header)

    body, _ = await refusal(Jwt(), forged)

    assert body == {"message": "Invalid signature"}


async def test_an_rs256_token_for_an_es256_credential_is_refused() -> None:
    credential = JWTCredential(key="ec", algorithm="ES256", rsa_public_key=pem(EC_KEYS["ES256"]))
    token = sign({"iss": "ec"}, RSA_KEY, "RS256")

    response = await call(gateway(Jwt(), credentials=(credential,)), headers=bearer(token))

    assert response.json() == {"message": "Invalid algorithm"}


@pytest.mark.parametrize("length", [0, 63, 65, 128])
async def test_an_ecdsa_signature_of_the_wrong_length_is_an_invalid_signature(length: int) -> None:
    credential = JWTCredential(key="ec", algorithm="ES256", rsa_public_key=pem(EC_KEYS["ES256"]))
    signing_input = sign({"iss": "ec"}, EC_KEYS["ES256"], "ES256").rsplit(".", 1)[0]
    token = f"{signing_input}.{b64(b'x' * length)}"

    response = await call(gateway(Jwt(), credentials=(credential,)), headers=bearer(token))

    assert response.status_code == 401
    assert response.json() == {"message": "Invalid signature"}


@pytest.mark.parametrize("exp", ["Infinity", "NaN", "-Infinity"])
async def test_non_json_numbers_are_a_bad_token(exp: str) -> None:
    token = sign(f'{{"iss": "hs-key", "exp": {exp}}}')

    body, _ = await refusal(Jwt(claims_to_verify=["exp"]), token)

    assert body == {"message": "Bad token; invalid JSON"}


async def test_consumer_headers_sent_by_the_client_do_not_reach_the_upstream() -> None:
    forged = {"x-consumer-username": "root", "x-credential-identifier": "rs-key"}
    plugin = Jwt(anonymous="guest")
    guest = gw.Consumer(username="guest")

    response = await call(gateway(plugin, consumers=(guest,)), headers=forged)

    headers = upstream_headers(response)
    assert headers["x-consumer-username"] == ["guest"]
    assert "x-credential-identifier" not in headers


# -- anonymous and other auth plugins -------------------------------------------------------


@pytest.mark.parametrize("by", ["username", "id"])
async def test_a_failed_check_goes_on_as_the_anonymous_consumer(by: str) -> None:
    guest = gw.Consumer(username="no-body")
    plugin = Jwt(anonymous=getattr(guest, by))

    for kwargs in ({}, {"headers": bearer(sign({"iss": "hs-key"}, "wrong"))}):
        response = await call(gateway(plugin, ShowSharedToken(), consumers=(guest,)), **kwargs)
        headers = upstream_headers(response)
        assert headers["x-anonymous-consumer"] == ["true"]
        assert headers["x-consumer-username"] == ["no-body"]
        assert headers["x-consumer-id"] == [guest.id]
        assert "x-credential-identifier" not in headers
        assert headers["x-shared-token"] == ["None"]


async def test_a_valid_token_wins_over_anonymous() -> None:
    guest = gw.Consumer(username="no-body")

    response = await call(
        gateway(Jwt(anonymous="no-body"), consumers=(guest,)),
        headers=bearer(sign({"iss": "hs-key"})),
    )

    headers = upstream_headers(response)
    assert headers["x-consumer-username"] == ["alice"]
    assert headers["x-credential-identifier"] == ["hs-key"]
    assert "x-anonymous-consumer" not in headers


async def test_an_anonymous_consumer_that_does_not_exist_is_a_500() -> None:
    response = await call(gateway(Jwt(anonymous="ghost")))

    assert response.status_code == 500
    body = response.json()
    assert body["message"] == "anonymous consumer ghost is configured but doesn't exist"
    assert body["request_id"]


@attrs.frozen
class TrustHeader(gw.Plugin):
    """An auth plugin running before jwt: trusts `x-user` (for tests only)."""

    name = "trust-header"
    priority = 2000

    async def access(self, ctx: gw.Context) -> gw.Response | None:
        for consumer in ctx.snapshot.config.consumers:
            if consumer.username == ctx.request.headers.get("x-user"):
                credential = JWTCredential(key="from-header", secret=SECRET)
                ctx.authenticate(consumer, credential)
        return None


async def test_with_anonymous_jwt_does_not_run_once_another_plugin_authenticated() -> None:
    guest = gw.Consumer(username="no-body")
    bob = gw.Consumer(username="bob")

    response = await call(
        gateway(TrustHeader(), Jwt(anonymous="no-body"), consumers=(guest, bob)),
        headers={"x-user": "bob"},
    )

    headers = upstream_headers(response)
    assert headers["x-consumer-username"] == ["bob"]
    assert headers["x-credential-identifier"] == ["from-header"]


async def test_without_anonymous_jwt_must_succeed_too() -> None:
    bob = gw.Consumer(username="bob")

    response = await call(
        gateway(TrustHeader(), Jwt(), consumers=(bob,)), headers={"x-user": "bob"}
    )

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
