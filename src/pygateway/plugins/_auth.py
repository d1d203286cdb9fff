"""What the authentication plugins share: finding a credential, `anonymous`, and Kong's
rules for several auth plugins on one route.

Kong's rules (its `kong.client.authenticate` and each auth plugin's `access`):

- Without `anonymous` ("logical AND"), every auth plugin on the route must succeed; each
  sets the consumer in turn.
- With `anonymous` ("logical OR"), a plugin does nothing when an earlier one already
  authenticated a real credential; when its own check fails, the request goes on as the
  anonymous consumer (`X-Anonymous-Consumer: true`) instead of being refused, so a later
  plugin may still authenticate it.

Credentials are found through an index keyed by the SHA-256 of the secret, then compared
with `hmac.compare_digest`: neither the lookup nor the comparison takes a time that depends
on how much of a guess was right.

What runs before anyone is authenticated must cost little whatever the client sends:
`credentials_from_header` reads a header in linear time, `credential_body` reads a body only
when it is declared small, and `run_kdf` keeps slow key derivations off the event loop, a
few at a time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, TypeVar

import anyio
import anyio.to_thread
from anyio.lowlevel import RunVar

from .._responses import Response, error_response

if TYPE_CHECKING:
    from .._context import Context, Request
    from .._entities import Consumer, Credential
    from .._snapshot import Snapshot

__all__ = [
    "CREDENTIAL_BODY_MAX",
    "KDF_THREADS",
    "authenticate_anonymous",
    "check_anonymous",
    "credential_body",
    "credentials_from_header",
    "find_credential",
    "kdf_limiter",
    "run_kdf",
    "skip_authentication",
    "unauthorized",
]

Found = tuple["Credential", "Consumer"]
T = TypeVar("T")

#: The largest request body searched for a credential (bytes, by its Content-Length).
CREDENTIAL_BODY_MAX = 64 * 1024
#: Key derivations running at once, per event loop.
KDF_THREADS = 4
_KDF_LIMITER: RunVar[anyio.CapacityLimiter] = RunVar("pygateway_auth_kdf")
_SCHEMES: dict[str, re.Pattern[str]] = {}


def _raw(value: str | bytes) -> bytes:
    return value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value


def _digest(value: str | bytes) -> bytes:
    return hashlib.sha256(_raw(value)).digest()


def credential_index(snapshot: Snapshot, kind: str, field: str) -> Mapping[bytes, Found]:
    """The credentials of `kind` by the SHA-256 of their `field`, built once per snapshot."""
    cache = snapshot.derived
    key = ("credentials", kind, field)
    index = cache.get(key)
    if index is None:
        index = {}
        for credential, consumer in snapshot.credentials.get(kind, ()):
            value = getattr(credential, field)
            if value is not None:
                index[_digest(value)] = (credential, consumer)
        cache[key] = index
    return index


def find_credential(ctx: Context, kind: str, field: str, value: str | bytes) -> Found | None:
    """The credential of `kind` whose `field` equals `value`, with its consumer (or None),
    compared in constant time."""
    given = _raw(value)
    found = credential_index(ctx.snapshot, kind, field).get(hashlib.sha256(given).digest())
    if found is None:
        return None
    return found if hmac.compare_digest(_raw(getattr(found[0], field)), given) else None


def skip_authentication(ctx: Context, anonymous: str | None) -> bool:
    """True when a plugin with `anonymous` set should not run: an earlier auth plugin
    already authenticated a real credential (Kong's "logical OR")."""
    return bool(anonymous) and ctx.credential is not None


def authenticate_anonymous(ctx: Context, anonymous: str) -> Response | None:
    """Go on as the `anonymous` consumer (an id or username), or Kong's 500 if it does not
    exist."""
    consumer = ctx.snapshot.consumers_by_key.get(anonymous)
    if consumer is None:
        return error_response(
            500,
            f"anonymous consumer {anonymous} is configured but doesn't exist",
            ctx.request_id,
            accept=ctx.request.headers.get("accept"),
        )
    ctx.authenticate(consumer, None, anonymous=True)
    return None


def unauthorized(
    ctx: Context,
    anonymous: str | None,
    message: str,
    *,
    status: int = 401,
    headers: Mapping[str, str] | None = None,
) -> Response | None:
    """A failed check: the anonymous consumer when configured, else Kong's error answer."""
    if anonymous:
        return authenticate_anonymous(ctx, anonymous)
    return error_response(
        status,
        message,
        ctx.request_id,
        accept=ctx.request.headers.get("accept"),
        headers=dict(headers) if headers else None,
    )


def check_anonymous(value: str | None) -> str | None:
    """The `anonymous` field's rule (a `field(check=...)`): an empty string names nobody,
    and would quietly turn "logical OR" off, so it is refused."""
    return "length must be at least 1" if value == "" else None


def credentials_from_header(value: str, scheme: str) -> str | None:
    """What follows `scheme` (any case, then whitespace) in an `Authorization`-style header
    value, stripped, or None. As Kong, the scheme is looked for anywhere in the value
    (`Basic abc, Bearer xyz` holds a bearer token).

    Linear in the length of `value`: the pattern starts with the scheme itself, never with
    `\\s*`, which would make the search quadratic on a header of spaces.
    """
    pattern = _SCHEMES.get(scheme)
    if pattern is None:
        pattern = re.compile(re.escape(scheme) + r"\s+(.+)", re.IGNORECASE | re.ASCII)
        _SCHEMES[scheme] = pattern
    match = pattern.search(value)
    if match is None:
        return None
    return match.group(1).strip() or None


def declared_length(request: Request) -> int | None:
    """The request's Content-Length, if it sent exactly one and it is a number."""
    values = request.headers.getlist("content-length")
    if len(values) != 1:
        return None
    value = values[0].strip()
    return int(value) if value.isascii() and value.isdigit() else None


async def credential_body(request: Request, limit: int = CREDENTIAL_BODY_MAX) -> bytes | None:
    """The request body, when its Content-Length says it is at most `limit` bytes; else None
    (and nothing is read). A body without a Content-Length (chunked, or HTTP/2 without one)
    is not read either: only its length, declared up front, bounds what an unauthenticated
    client makes the gateway buffer."""
    length = declared_length(request)
    if length is None or length > limit:
        return None
    return await request.body()


def kdf_limiter() -> anyio.CapacityLimiter:
    """This event loop's limiter for key derivations (`KDF_THREADS` at once)."""
    try:
        return _KDF_LIMITER.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(KDF_THREADS)
        _KDF_LIMITER.set(limiter)
        return limiter


async def run_kdf(fn: Callable[..., T], *args: object) -> T:
    """`fn(*args)` in a worker thread, at most `KDF_THREADS` at once per event loop: a flood
    of guesses at a hashed secret queues here instead of taking every worker thread."""
    return await anyio.to_thread.run_sync(fn, *args, limiter=kdf_limiter())
