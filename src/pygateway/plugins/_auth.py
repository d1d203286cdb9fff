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
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import TYPE_CHECKING

from .._responses import Response, error_response

if TYPE_CHECKING:
    from .._context import Context
    from .._entities import Consumer, Credential
    from .._snapshot import Snapshot

__all__ = [
    "authenticate_anonymous",
    "find_credential",
    "skip_authentication",
    "unauthorized",
]

Found = tuple["Credential", "Consumer"]


def _digest(value: str | bytes) -> bytes:
    raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    return hashlib.sha256(raw).digest()


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
    found = credential_index(ctx.snapshot, kind, field).get(_digest(value))
    if found is None:
        return None
    expected = getattr(found[0], field)
    expected_raw = (
        expected.encode("utf-8", "surrogateescape") if isinstance(expected, str) else expected
    )
    given = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    return found if hmac.compare_digest(expected_raw, given) else None


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
