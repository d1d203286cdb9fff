"""jwt: authenticate requests carrying a signed JSON Web Token (Kong's `jwt` plugin).

A consumer's `JWTCredential` (`jwt_secrets` in declarative files) holds a `key`, which
tokens name in a claim (`iss` by default), and what verifies their signature: an HMAC
`secret`, or a PEM public key for the RSA, ECDSA and EdDSA algorithms.

Kong's order of checks, and its answers (all 401 with `WWW-Authenticate: Bearer ...`):

    no token ............................ {"message": "Unauthorized"}
    different tokens in several places .. {"message": "Multiple tokens provided"}
    not a JWS we can read ............... {"message": "Bad token; invalid JSON"} (or alg,
                                          claims, signature)
    no key claim (claims, then header) .. {"message": "No mandatory 'iss' in claims"}
    empty key claim ..................... {"message": "Invalid 'iss' in claims"}
    no credential with that key ......... {"message": "No credentials found for given 'iss'"}
    alg differs from the credential's ... {"message": "Invalid algorithm"}
    undecodable base64 secret ........... {"message": "Invalid key/secret"}
    bad signature ....................... {"message": "Invalid signature"}
    claims_to_verify fail ............... {"exp": "token expired", "nbf": "must be a number", ...}
    lifetime over maximum_expiration .... {"exp": "exceeds maximum allowed expiration"}

The token chooses nothing: the credential's algorithm picks PyJWT's algorithm object, and
the key it verifies with is checked for that algorithm when the credential is built (and
prepared once per configuration), so an RS256 credential's public key can never be used as
an HMAC secret.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
import secrets
import string
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeGuard, get_args

import attrs
from jwt.algorithms import Algorithm, get_default_algorithms
from jwt.exceptions import InvalidKeyError

from .._entities import Credential
from .._exceptions import ConfigurationError, PathPart
from .._responses import Response
from .._schema import field
from ._auth import (
    authenticate_anonymous,
    check_anonymous,
    credentials_from_header,
    skip_authentication,
)
from ._base import Plugin
from ._registry import register

if TYPE_CHECKING:
    from .._context import Context, Request
    from .._entities import Consumer
    from .._snapshot import Snapshot

__all__ = ["JWTCredential", "Jwt"]

JWTAlgorithm = Literal[
    "HS256",
    "HS384",
    "HS512",
    "RS256",
    "RS384",
    "RS512",
    "ES256",
    "ES384",
    "ES512",
    "PS256",
    "PS384",
    "PS512",
    "EdDSA",
]
#: Kong's algorithms. PyJWT knows a few more ("none", "ES256K", "ES521"): tokens naming
#: them are refused like any unknown algorithm, before a credential is even looked up.
ALGORITHMS: tuple[str, ...] = get_args(JWTAlgorithm)
_PYJWT: dict[str, Algorithm] = get_default_algorithms()
_ALPHANUMERIC = string.ascii_letters + string.digits
_SHARED_TOKEN = "authenticated_jwt_token"


def _random_string() -> str:
    """What Kong's `auto` strings look like: 32 random alphanumerics."""
    return "".join(secrets.choice(_ALPHANUMERIC) for _ in range(32))


def _is_hmac(algorithm: str) -> bool:
    return algorithm.startswith("HS")


# -- credentials ----------------------------------------------------------------------------


def load_public_key(algorithm: str, pem: str) -> Any:
    """The key object `algorithm` verifies with, from a PEM public key.

    Raises ConfigurationError (on `rsa_public_key`) when the text is not a public key, or a
    key of another family (an EC key for RS256, a P-384 key for ES256...).
    """
    try:
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
        from cryptography.hazmat.primitives.serialization import (
            load_pem_private_key,
            load_pem_public_key,
        )
    except ImportError:  # pragma: no cover - cryptography is a test dependency
        raise ConfigurationError(
            f"{algorithm} needs the 'cryptography' package: pip install cryptography",
            path=("rsa_public_key",),
        ) from None
    data = pem.encode("utf-8", "surrogateescape")
    try:
        key: Any = load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        try:
            load_pem_private_key(data, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise ConfigurationError("invalid key", path=("rsa_public_key",)) from None
        # Kong would accept it; a key that can mint tokens has no place in this config.
        raise ConfigurationError(
            "invalid key: this is a private key; give the public key only",
            path=("rsa_public_key",),
        ) from None
    family: tuple[type, ...]
    if algorithm[:2] in ("RS", "PS"):
        family, wanted = (rsa.RSAPublicKey,), "an RSA public key"
    elif algorithm.startswith("ES"):
        family, wanted = (ec.EllipticCurvePublicKey,), "an EC public key"
    else:
        family = (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)
        wanted = "an Ed25519 or Ed448 public key"
    if not isinstance(key, family):
        raise ConfigurationError(
            f"invalid key: {algorithm} needs {wanted}", path=("rsa_public_key",)
        )
    try:
        # PyJWT's own check of the key for this algorithm (the curve, for ES*).
        return _PYJWT[algorithm].prepare_key(key)
    except InvalidKeyError as exc:
        raise ConfigurationError(f"invalid key: {exc}", path=("rsa_public_key",)) from None


def _check_hmac_secret(algorithm: str, secret: str | bytes) -> bytes:
    """The secret as HMAC key bytes; refuses public keys, certificates and JWKs, which
    someone able to read them could sign with."""
    try:
        key: bytes = _PYJWT[algorithm].prepare_key(secret)
    except InvalidKeyError as exc:
        raise ConfigurationError(f"not usable as an HMAC secret: {exc}", path=("secret",)) from None
    return key


@attrs.frozen(kw_only=True)
class JWTCredential(Credential):
    """A consumer's JWT credential (Kong's `jwt_secrets`).

    Tokens name the credential by its `key` in the plugin's `key_claim_name` claim (`iss`
    by default); `key` and `secret` are random when not given, as in Kong. HS256/384/512
    tokens are verified with `secret`; every other algorithm needs `rsa_public_key`, a PEM
    public key of the algorithm's family (RSA for RS* and PS*, EC on the matching curve
    for ES*, Ed25519 or Ed448 for EdDSA), checked when the credential is built:

        JWTCredential(key="mobile-app", algorithm="RS256", rsa_public_key=pem)

    Keys are unique across consumers. `X-Credential-Identifier` carries the key.
    The key it verifies with is prepared once, when the credential is built, and kept.
    """

    kind: ClassVar[str] = "jwt_secrets"
    plugin: ClassVar[str] = "jwt"
    unique: ClassVar[tuple[str, ...]] = ("key",)

    key: str = attrs.field(factory=_random_string)
    secret: str = attrs.field(factory=_random_string, repr=False)
    rsa_public_key: str | None = None
    algorithm: JWTAlgorithm = "HS256"

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        errors: list[tuple[tuple[PathPart, ...], str]] = []
        for name in ("key", "secret", "rsa_public_key"):
            if getattr(self, name) == "":
                errors.append(((name,), "length must be at least 1"))
        if errors:
            raise ConfigurationError(errors=errors)
        if not _is_hmac(self.algorithm) and self.rsa_public_key is None:
            raise ConfigurationError(
                errors=[
                    (("rsa_public_key",), "required field missing"),
                    ((), "failed conditional validation given value of field 'algorithm'"),
                ]
            )
        # Checks the key, and keeps it prepared: parsing thousands of PEM keys again on the
        # first request after each reload would stall it.
        self.verification_key  # noqa: B018

    @functools.cached_property
    def verification_key(self) -> Any:
        """The public key object, or the secret's bytes for HS*."""
        if _is_hmac(self.algorithm):
            return _check_hmac_secret(self.algorithm, self.secret)
        return load_public_key(self.algorithm, self.rsa_public_key or "")

    @functools.cached_property
    def decoded_secret(self) -> bytes | None:
        """The secret decoded from base64 (for `secret_is_base64`), None if it does not
        decode (or the algorithm is not HS*)."""
        return _decoded_secret(self)

    @property
    def identifier(self) -> str:
        """Kong sends the credential's key as `X-Credential-Identifier`."""
        return self.key


@attrs.frozen
class _Entry:
    """A credential ready to verify with: what the index of a configuration holds."""

    credential: JWTCredential
    consumer: Consumer
    algorithm: Algorithm


def _decoded_secret(credential: JWTCredential) -> bytes | None:
    if not _is_hmac(credential.algorithm):
        return None
    # Kong decodes the URL-safe alphabet; secrets are usually given in the standard one.
    text = credential.secret.rstrip("=").replace("-", "+").replace("_", "/")
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        return _check_hmac_secret(credential.algorithm, raw)
    except (binascii.Error, ValueError):  # ConfigurationError is a ValueError
        return None


def _index(snapshot: Snapshot) -> Mapping[str, _Entry]:
    """The configuration's JWT credentials by key, built once per configuration.

    A plain dict: the key is no secret (every token carries it in clear), so looking it up
    needs no constant-time index.
    """
    index: dict[str, _Entry] | None = snapshot.derived.get(("jwt", "credentials"))
    if index is None:
        index = {}
        for credential, consumer in snapshot.credentials.get(JWTCredential.kind, ()):
            assert isinstance(credential, JWTCredential)
            # The credential's keys were prepared when it was built.
            index[credential.key] = _Entry(credential, consumer, _PYJWT[credential.algorithm])
        snapshot.derived[("jwt", "credentials")] = index
    return index


# -- tokens ---------------------------------------------------------------------------------

_BASE64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}")


def _b64url(segment: str) -> bytes | None:
    if not _BASE64URL.fullmatch(segment):
        return None
    stripped = segment.rstrip("=")
    if len(stripped) % 4 == 1:
        return None
    return base64.urlsafe_b64decode(stripped + "=" * (-len(stripped) % 4))


def _refuse_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; an `exp` of Infinity would never expire.
    raise ValueError(f"{name} is not JSON")


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise ValueError("invalid JSON") from None


@attrs.frozen
class _Token:
    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes


def decode_token(token: str) -> _Token | str:
    """The parts of a compact JWS, or what is wrong with it, in Kong's words."""
    parts = token.split(".", 2)
    if len(parts) != 3:
        return "invalid JSON"
    header_raw, claims_raw = _b64url(parts[0]), _b64url(parts[1])
    if header_raw is None or claims_raw is None:
        return "invalid JSON"
    try:
        header, claims = _json(header_raw), _json(claims_raw)
    except ValueError:
        return "invalid JSON"
    alg = header.get("alg") if isinstance(header, dict) else None
    if not isinstance(alg, str) or alg not in ALGORITHMS:
        return "invalid alg"  # "none" included
    if not isinstance(claims, dict):
        return "invalid claims"
    signature = _b64url(parts[2])
    if signature is None:
        return "invalid signature"
    signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
    return _Token(header, claims, signing_input, signature)


def _is_number(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _cookie(headers: list[str], name: str) -> str | None:
    """The first cookie called `name` (case-insensitive, as nginx's `$cookie_<name>`)."""
    for header in headers:
        for part in header.split(";"):
            key, sep, value = part.strip().partition("=")
            if sep and key.lower() == name:
                return value.strip()
    return None


# -- the plugin -----------------------------------------------------------------------------


def _check_names(names: Sequence[str]) -> str | None:
    if any(name == "" for name in names):
        return "length must be at least 1"
    return None


def _check_nonempty(value: str | None) -> str | None:
    return "length must be at least 1" if value == "" else None


def _check_realm(value: str | None) -> str | None:
    if value is not None and any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return "invalid value: control characters cannot be sent in a header"
    return _check_nonempty(value)


class _Failure(Exception):
    """Authentication failed; `body` is what Kong answers with."""

    def __init__(self, body: dict[str, str], *, with_error: bool = True) -> None:
        super().__init__()
        self.body = body
        self.with_error = with_error


def _fail(message: str) -> _Failure:
    return _Failure({"message": message})


@attrs.frozen(kw_only=True)
class Jwt(Plugin):
    """Authenticate requests with a JSON Web Token signed for a consumer's `JWTCredential`.

    The token is read from the query (`uri_param_names`), cookies (`cookie_names`) and
    `Bearer` headers (`header_names`; the scheme in any case); finding different tokens is
    an error. Its `key_claim_name` claim (or header parameter, e.g. `kid`) names the
    credential; its `alg` must be the credential's algorithm; `claims_to_verify` lists the
    registered claims that are checked (none by default: add "exp" to refuse expired
    tokens).

    On success the consumer headers (`X-Consumer-*`, `X-Credential-Identifier`: the key) go
    upstream and `ctx.shared["authenticated_jwt_token"]` holds the token. The token itself
    is forwarded unchanged (Kong's jwt has no `hide_credentials`).
    """

    name = "jwt"
    priority = 1450
    scopes = frozenset({"global", "service", "route"})

    uri_param_names: Sequence[str] = field(("jwt",), check=_check_names)
    cookie_names: Sequence[str] = field((), check=_check_names)
    key_claim_name: str = field("iss", check=_check_nonempty)
    secret_is_base64: bool = False
    claims_to_verify: Sequence[Literal["exp", "nbf"]] | None = None
    anonymous: str | None = field(None, check=check_anonymous)
    run_on_preflight: bool = True
    maximum_expiration: float = field(0, between=(0, 31_536_000))
    header_names: Sequence[str] = field(("authorization",), check=_check_names)
    realm: str | None = field(None, check=_check_realm)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        # Kong's fields are sets: repeated names count once.
        for name in ("uri_param_names", "cookie_names", "header_names", "claims_to_verify"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(dict.fromkeys(value)))
        if self.maximum_expiration > 0 and "exp" not in (self.claims_to_verify or ()):
            raise ConfigurationError("expected to contain: exp", path=("claims_to_verify",))

    async def access(self, ctx: Context) -> Response | None:
        if not self.run_on_preflight and ctx.request.method == "OPTIONS":
            return None
        if skip_authentication(ctx, self.anonymous):
            return None
        try:
            self._authenticate(ctx)
        except _Failure as failure:
            if self.anonymous:
                response = authenticate_anonymous(ctx, self.anonymous)
                if response is None:
                    ctx.shared.pop(_SHARED_TOKEN, None)
                return response
            # Kong's jwt answers with kong.response.exit: the body as is, no request_id.
            challenge = self._challenge(with_error=failure.with_error)
            return Response(401, json=failure.body, headers={"www-authenticate": challenge})
        return None

    def _challenge(self, *, with_error: bool) -> str:
        """The `WWW-Authenticate` value: `Bearer`, with the realm and the error if any."""
        params = []
        if self.realm is not None:
            # A quoted-string (Kong does not escape, and a quote would break the header).
            realm = self.realm.replace("\\", "\\\\").replace('"', '\\"')
            params.append(f'realm="{realm}"')
        if with_error:
            params.append('error="invalid_token"')
        return "Bearer " + ", ".join(params) if params else "Bearer"

    def _authenticate(self, ctx: Context) -> None:
        """Authenticate the request's consumer, or raise `_Failure`."""
        tokens = self._tokens(ctx.request)
        if not tokens:
            raise _Failure({"message": "Unauthorized"}, with_error=False)
        if len(tokens) > 1:
            raise _fail("Multiple tokens provided")
        token = tokens[0]
        parsed = decode_token(token)
        if isinstance(parsed, str):
            raise _fail(f"Bad token; {parsed}")

        claim = self.key_claim_name
        key = parsed.claims.get(claim)
        if key is None or key is False:  # Kong: `claims[name] or header[name]`
            key = parsed.header.get(claim)
        if key is None or key is False:
            raise _fail(f"No mandatory '{claim}' in claims")
        if key == "":
            raise _fail(f"Invalid '{claim}' in claims")
        # Keys are strings: a number or an object names no credential.
        entry = _index(ctx.snapshot).get(key) if isinstance(key, str) else None
        if entry is None:
            raise _fail(f"No credentials found for given '{claim}'")

        credential = entry.credential
        if parsed.header["alg"] != credential.algorithm:
            raise _fail("Invalid algorithm")
        verify_key = credential.verification_key
        if self.secret_is_base64 and _is_hmac(credential.algorithm):
            verify_key = credential.decoded_secret
            if verify_key is None:
                raise _fail("Invalid key/secret")
        # The credential's algorithm object and key, never anything the token chose.
        if not entry.algorithm.verify(parsed.signing_input, verify_key, parsed.signature):
            raise _fail("Invalid signature")

        self._verify_claims(parsed.claims)
        ctx.authenticate(entry.consumer, credential)
        ctx.shared[_SHARED_TOKEN] = token

    def _tokens(self, request: Request) -> list[str]:
        """Every distinct non-empty token in the request's query, cookies and headers."""
        found: dict[str, None] = {}
        if self.uri_param_names:
            query = request.query_params
            for name in self.uri_param_names:
                value = query.get(name)
                for item in value if isinstance(value, list) else (value,):
                    if item:
                        found[item] = None
        if self.cookie_names:
            cookies = request.headers.getlist("cookie")
            for name in self.cookie_names:
                value = _cookie(cookies, name.lower())
                if value:
                    found[value] = None
        for name in self.header_names:
            values = request.headers.getlist(name)
            if values:  # only the first of repeated headers, as Kong
                token = credentials_from_header(values[0], "bearer")
                if token:
                    found[token] = None
        return list(found)

    def _verify_claims(self, claims: dict[str, Any]) -> None:
        now = time.time()
        errors: dict[str, str] = {}
        for name in self.claims_to_verify or ():
            value = claims.get(name)
            if not _is_number(value):
                errors[name] = "must be a number"  # also "123": a string is not a date
            elif name == "exp" and value <= now:
                errors[name] = "token expired"
            elif name == "nbf" and value > now:
                errors[name] = "token not valid yet"
        if errors:
            raise _Failure(errors)
        if self.maximum_expiration > 0:
            exp = claims.get("exp")
            # Not `exp - now`: a huge integer `exp` cannot be converted to a float.
            if not _is_number(exp) or exp > now + self.maximum_expiration:
                raise _Failure({"exp": "exceeds maximum allowed expiration"})


register(Jwt)
