"""`OAuth2Credential`: a client application of a consumer, and how its secret is kept.

With `hash_secret`, the client secret is stored as a PBKDF2 hash in Kong's own format
(`$pbkdf2-sha512$i=10000,l=32$<salt>$<hash>`, base64 without padding), so secrets hashed by
Kong verify here and the other way round. A `client_secret` that already reads as such a
hash is kept as it is: that is how an exported configuration loads back unchanged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import string
from collections.abc import Sequence
from typing import ClassVar, Literal
from urllib.parse import urlsplit

import attrs

from ... import _schema
from ..._entities import Credential
from ..._exceptions import ConfigurationError, PathPart

__all__ = ["OAuth2Credential", "hash_secret", "random_string", "verify_secret"]

_ALPHANUMERIC = string.ascii_letters + string.digits
_PBKDF2_DIGEST = "sha512"
_PBKDF2_ITERATIONS = 10_000
_PBKDF2_LENGTH = 32
_PBKDF2_SALT = 16
_PHC = re.compile(
    r"^\$pbkdf2-(?P<digest>sha1|sha256|sha384|sha512)\$i=(?P<i>\d+),l=(?P<l>\d+)"
    r"\$(?P<salt>[A-Za-z0-9+/]+={0,2})\$(?P<hash>[A-Za-z0-9+/]+={0,2})$"
)


def random_string() -> str:
    """32 random letters and digits: Kong's shape for client ids, secrets, codes, tokens."""
    return "".join(secrets.choice(_ALPHANUMERIC) for _ in range(32))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def hash_secret(secret: str) -> str:
    """`secret` as a salted PBKDF2 hash in Kong's format."""
    salt = secrets.token_bytes(_PBKDF2_SALT)
    derived = hashlib.pbkdf2_hmac(
        _PBKDF2_DIGEST, secret.encode("utf-8"), salt, _PBKDF2_ITERATIONS, _PBKDF2_LENGTH
    )
    return (
        f"$pbkdf2-{_PBKDF2_DIGEST}$i={_PBKDF2_ITERATIONS},l={_PBKDF2_LENGTH}"
        f"${_b64(salt)}${_b64(derived)}"
    )


def is_hashed(value: str) -> bool:
    """Does `value` read as a hash made by `hash_secret` (or by Kong)?"""
    return _PHC.fullmatch(value) is not None


def verify_secret(secret: str | bytes, hashed: str) -> bool:
    """Does `secret` match the PBKDF2 hash `hashed`? (The comparison is constant-time.)"""
    match = _PHC.fullmatch(hashed)
    if match is None:
        return False
    try:
        salt, expected = _unb64(match["salt"]), _unb64(match["hash"])
    except (binascii.Error, ValueError):
        return False
    iterations, length = int(match["i"]), int(match["l"])
    if not 0 < iterations <= 10_000_000 or length != len(expected):
        return False
    raw = secret if isinstance(secret, bytes) else secret.encode("utf-8", "surrogateescape")
    derived = hashlib.pbkdf2_hmac(match["digest"], raw, salt, iterations, length)
    return hmac.compare_digest(derived, expected)


def _check_redirect_uri(uri: str) -> str | None:
    """Kong's rule: an absolute URL (scheme and host), without a fragment."""
    try:
        parts = urlsplit(uri)
        host = parts.hostname
    except ValueError:
        return f"cannot parse '{uri}'"
    if not parts.scheme or not host:
        return f"cannot parse '{uri}'"
    if "#" in uri:
        return f"fragment not allowed in '{uri}'"
    return None


@attrs.frozen(kw_only=True)
class OAuth2Credential(Credential):
    """A client application registered for a consumer, for the oauth2 plugin.

    `client_id` and `client_secret` are generated (32 letters and digits) when not given;
    `client_id` is unique across all consumers. With `hash_secret=True` only a PBKDF2 hash of
    the secret is kept (give the secret: a generated one would be lost, as in Kong).
    `redirect_uris` are the absolute URLs the authorization endpoint may send the user back
    to; the first is the default. A `public` client (a browser or mobile app that cannot
    keep a secret) authenticates with its `client_id` alone, and must use PKCE unless the
    plugin's `pkce` is "none".

    The upstream sees the client id as `X-Credential-Identifier`.
    """

    kind: ClassVar[str] = "oauth2_credentials"
    plugin: ClassVar[str] = "oauth2"
    unique: ClassVar[tuple[str, ...]] = ("client_id",)

    name: str | None = None
    client_id: str = _schema.field(factory=random_string)
    client_secret: str = attrs.field(factory=random_string, repr=False)
    hash_secret: bool = False
    redirect_uris: Sequence[str] | None = None
    client_type: Literal["confidential", "public"] = "confidential"

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        errors: list[tuple[tuple[PathPart, ...], str]] = []
        if self.name is None:
            errors.append((("name",), "required field missing"))
        for i, uri in enumerate(self.redirect_uris or ()):
            reason = _check_redirect_uri(uri)
            if reason:
                errors.append((("redirect_uris", i), reason))
        if errors:
            raise ConfigurationError(errors=errors)
        if self.hash_secret and not is_hashed(self.client_secret):
            object.__setattr__(self, "client_secret", hash_secret(self.client_secret))

    @property
    def identifier(self) -> str:
        """Kong sends the client id as `X-Credential-Identifier` for oauth2."""
        return self.client_id

    def check_secret(self, secret: str | bytes) -> bool:
        """Does `secret` authenticate this client? Constant-time; hashed secrets are
        derived again (about 10 ms: call it from a worker thread)."""
        if self.hash_secret:
            return verify_secret(secret, self.client_secret)
        given = secret if isinstance(secret, bytes) else secret.encode("utf-8", "surrogateescape")
        return hmac.compare_digest(self.client_secret.encode("utf-8", "surrogateescape"), given)
