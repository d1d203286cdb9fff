"""basic-auth: authenticate a request by HTTP Basic credentials (Kong's), and
`BasicAuthCredential`, which keeps only a salted hash of the password.

Passwords are hashed with PBKDF2-HMAC-SHA256 into a self-describing string,
`pbkdf2_sha256$<iterations>$<salt>$<hash>` (salt and hash in unpadded URL-safe base64): a
credential built with a password holds that string instead, `dump` exports it, and loading it
back keeps it. A value in exactly that form is taken as a hash; anything else is a password.

Deriving a hash takes tens of milliseconds on purpose, so it runs in a worker thread (never on
the event loop), at most a few at a time, and a successful check is remembered for the life of
the configuration: a credential in use is derived once, not on every request. When more than
`KDF_QUEUE_MAX` derivations are already waiting, a request that needs one is refused at once
(401) instead of joining the queue: a flood of guesses costs its senders, not everyone.
An unknown username costs a derivation too, whichever header named it, so the time of the
answer does not tell which usernames exist.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

import attrs
import cachetools

from .._entities import Credential
from .._exceptions import ConfigurationError
from .._schema import field
from ._auth import (
    check_anonymous,
    find_credential,
    kdf_limiter,
    run_kdf,
    skip_authentication,
    unauthorized,
)
from ._base import Plugin
from ._registry import register

if TYPE_CHECKING:
    from .._context import Context
    from .._responses import Response

__all__ = [
    "KDF_QUEUE_MAX",
    "BasicAuth",
    "BasicAuthCredential",
    "hash_password",
    "verify_password",
]

#: PBKDF2 iterations for new hashes. ~55 ms per derivation on a 2-core CI machine (600,000,
#: OWASP's figure for PBKDF2-SHA256, takes ~200 ms there): strong enough for a credential
#: that is also rate limited at the gateway, and cheap enough to hash a few hundred
#: plaintext passwords when a configuration is loaded.
PBKDF2_ITERATIONS = 100_000
_MIN_ITERATIONS = 1_000
_MAX_ITERATIONS = 10_000_000
_PREFIX = "pbkdf2_sha256"
_HASHED = re.compile(
    r"pbkdf2_sha256\$([1-9][0-9]{0,7})\$([A-Za-z0-9_-]{16,64})\$([A-Za-z0-9_-]{43})"
)
# Kong's pattern, searched anywhere in the header (no leading `\s*`: it would make the
# search quadratic on a header of spaces).
_BASIC = re.compile(r"[Bb]asic\s*(.+)")

KIND = "basicauth_credentials"
MESSAGE = "Unauthorized"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def hash_password(password: str, *, iterations: int = PBKDF2_ITERATIONS) -> str:
    """`password` as a `pbkdf2_sha256$iterations$salt$hash` string, with a random salt.

    Use it to keep hashes rather than passwords in a declarative file:
    `BasicAuthCredential(username="ada", password=hash_password("s3cret"))`.
    """
    if not _MIN_ITERATIONS <= iterations <= _MAX_ITERATIONS:
        raise ValueError(f"iterations must be between {_MIN_ITERATIONS} and {_MAX_ITERATIONS}")
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", _utf8(password), salt, iterations)
    return f"{_PREFIX}${iterations}${_b64(salt)}${_b64(digest)}"


def is_password_hash(value: str) -> bool:
    """Is `value` in the form `hash_password` produces (and so kept as is)?"""
    return _HASHED.fullmatch(value) is not None


def verify_password(encoded: str, password: str) -> bool:
    """Does `password` match `encoded` (a `hash_password` string)? Compared in constant time.

    Slow by design (a full key derivation): in async code, run it in a worker thread.
    """
    match = _HASHED.fullmatch(encoded)
    if match is None:
        return False
    iterations = int(match.group(1))
    salt, expected = _unb64(match.group(2)), _unb64(match.group(3))
    derived = hashlib.pbkdf2_hmac("sha256", _utf8(password), salt, iterations)
    return hmac.compare_digest(derived, expected)


def _check_hash(value: str) -> str | None:
    """Why an already-hashed password cannot be used (its text is never echoed)."""
    match = _HASHED.fullmatch(value)
    if match is None:
        return None
    if not _MIN_ITERATIONS <= int(match.group(1)) <= _MAX_ITERATIONS:
        return (
            f"invalid password hash: iterations must be between {_MIN_ITERATIONS} "
            f"and {_MAX_ITERATIONS}"
        )
    try:
        _unb64(match.group(2))
    except (binascii.Error, ValueError):
        return "invalid password hash: the salt is not base64"
    return None


def _check_not_empty(value: str | None) -> str | None:
    return "length must be at least 1" if value == "" else None


@attrs.frozen(kw_only=True)
class BasicAuthCredential(Credential):
    """A username and password for the basic-auth plugin.

    The password is hashed when the credential is built (PBKDF2-HMAC-SHA256, random salt):
    `password` then holds `pbkdf2_sha256$<iterations>$<salt>$<hash>`, never the password.
    A value already in that form is kept as is, so an exported configuration loads back
    unchanged. Usernames are unique across consumers; `X-Credential-Identifier` carries the
    username, as in Kong.
    """

    kind: ClassVar[str] = KIND
    plugin: ClassVar[str] = "basic-auth"
    unique: ClassVar[tuple[str, ...]] = ("username",)

    username: str = field(check=_check_not_empty, kw_only=True)
    password: str = attrs.field(repr=False, metadata={"checks": [_check_not_empty]})

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        reason = _check_hash(self.password)
        if reason is not None:
            raise ConfigurationError(reason, path=("password",))
        if not is_password_hash(self.password):
            object.__setattr__(self, "password", hash_password(self.password))

    @property
    def identifier(self) -> str:
        return self.username


@attrs.frozen(kw_only=True)
class BasicAuth(Plugin):
    """Let in requests whose `Proxy-Authorization` or `Authorization` header carries
    `Basic base64(username:password)` of a consumer's `BasicAuthCredential`.

    Refused requests get `401 {"message": "Unauthorized"}` with
    `WWW-Authenticate: Basic realm="<realm>"`. With `anonymous` (a consumer id or username),
    they go on as that consumer instead. `hide_credentials` keeps the header that carried
    the credentials from the upstream.
    """

    name = "basic-auth"
    priority = 1100
    scopes = frozenset({"global", "service", "route"})

    anonymous: str | None = field(None, check=check_anonymous)
    hide_credentials: bool = False
    realm: str = "service"

    async def access(self, ctx: Context) -> Response | None:
        if skip_authentication(ctx, self.anonymous):
            return None
        if await self._authenticate(ctx):
            return None
        challenge = f'Basic realm="{self.realm}"'
        return unauthorized(ctx, self.anonymous, MESSAGE, headers={"WWW-Authenticate": challenge})

    async def _authenticate(self, ctx: Context) -> bool:
        headers = ctx.request.headers
        authorization = headers.get("authorization")
        proxy_authorization = headers.get("proxy-authorization")
        if authorization is None and proxy_authorization is None:
            return False
        # Kong's order: Proxy-Authorization first; Authorization only when that one names
        # no known user (a known user with a wrong password is a failure).
        found = None
        given = self._read(ctx, "proxy-authorization", proxy_authorization)
        if given is not None:
            found = find_credential(ctx, KIND, "username", given[0])
        if found is None:
            from_authorization = self._read(ctx, "authorization", authorization)
            if from_authorization is not None:
                given = from_authorization
                found = find_credential(ctx, KIND, "username", given[0])
        if found is None or given is None:
            if given is not None:
                # Spend the time a known user costs, whichever header named the unknown
                # one, so the answer does not tell who exists.
                await _derive(_verify_nobody, given[1])
            return False
        username, password = given
        credential, consumer = found
        if not await _verified(ctx, credential, username, password):
            return False
        ctx.authenticate(consumer, credential)
        return True

    def _read(self, ctx: Context, header: str, value: str | None) -> tuple[str, str] | None:
        """(username, password) from one header, or None; the header is dropped from the
        upstream request when `hide_credentials` is on."""
        upstream = ctx.upstream_request
        if self.hide_credentials and upstream is not None and header in upstream.headers:
            del upstream.headers[header]
        if value is None:
            return None
        match = _BASIC.search(value)
        if match is None:
            return None
        try:
            decoded = base64.b64decode(match.group(1).strip(), validate=True)
        except (binascii.Error, ValueError):
            return None
        username, colon, password = decoded.decode("utf-8", "surrogateescape").partition(":")
        if not colon or not username:
            return None
        return username, password


# -- verification ------------------------------------------------------------------------------

_VERIFIED = ("basic-auth", "verified")
#: Successful checks remembered per configuration; the least recently used are dropped.
_VERIFIED_MAX = 4096
#: Key derivations that may wait for a worker thread (per event loop, shared with every
#: plugin that uses `run_kdf`): past it, a request that needs one is refused at once.
KDF_QUEUE_MAX = 32
_DUMMY_SALT = secrets.token_bytes(16)


class _Verified:
    """The (username, password) pairs verified against this configuration's credentials,
    as HMACs under a random key made with the cache: no password is kept. (Whoever can read
    the process's memory has the key too and could test guesses against these marks faster
    than against the stored hashes: that is what remembering costs, for recent pairs only.)
    """

    __slots__ = ("_key", "pairs")

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)
        self.pairs: cachetools.LRUCache[bytes, bool] = cachetools.LRUCache(_VERIFIED_MAX)

    def mark(self, credential: BasicAuthCredential, username: str, password: str) -> bytes:
        user, secret = _utf8(username), _utf8(password)
        message = b"%d:%s%d:%s%s" % (
            len(user),
            user,
            len(secret),
            secret,
            _utf8(credential.password),
        )
        return hmac.new(self._key, message, hashlib.sha256).digest()


def _verify_nobody(password: str) -> bool:
    hashlib.pbkdf2_hmac("sha256", _utf8(password), _DUMMY_SALT, PBKDF2_ITERATIONS)
    return False


async def _derive(function: Callable[..., bool], *args: str) -> bool:
    """`function(*args)` in a worker thread; False at once when too many derivations wait
    already (the queue would only grow under a flood, and every request in it wait)."""
    if kdf_limiter().statistics().tasks_waiting > KDF_QUEUE_MAX:
        return False
    return await run_kdf(function, *args)


async def _verified(ctx: Context, credential: Credential, username: str, password: str) -> bool:
    if not isinstance(credential, BasicAuthCredential):
        return False
    cache: _Verified | None = ctx.snapshot.derived.get(_VERIFIED)
    if cache is None:
        cache = ctx.snapshot.derived[_VERIFIED] = _Verified()
    mark = cache.mark(credential, username, password)
    if cache.pairs.get(mark):
        return True
    if not await _derive(verify_password, credential.password, password):
        return False
    cache.pairs[mark] = True
    return True


register(BasicAuth)
