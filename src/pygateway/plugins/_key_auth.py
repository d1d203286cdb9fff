"""key-auth: authenticate a request by an API key in a header, the query or the body (Kong's).

The key is looked for under each of `key_names` in turn; for one name, a header wins over a
query argument, which wins over a body field. A name given twice in the same place is refused
("Duplicate API key found"), as Kong does. Keys are `KeyAuthCredential`s of consumers.

A body is read only when a key is looked for there (`key_in_body`, and no header or query
argument held it), only a form or JSON body, and only when its Content-Length is at most
`CREDENTIAL_BODY_MAX` (64 KiB): the client is not authenticated yet.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote_plus

import attrs

from .._entities import KeyAuthCredential
from .._exceptions import ConfigurationError, PathPart
from .._schema import field
from ._auth import (
    check_anonymous,
    credential_body,
    find_credential,
    skip_authentication,
    unauthorized,
)
from ._base import Plugin
from ._registry import register

if TYPE_CHECKING:
    from .._context import Context
    from .._entities import Credential
    from .._headers import Headers
    from .._responses import Response
    from .._snapshot import Snapshot
    from .._types import RawHeaders

__all__ = ["KeyAuth"]

KIND = KeyAuthCredential.kind
NO_KEY = "No API key found in request"
DUPLICATE = "Duplicate API key found"
INVALID = "Unauthorized"

_KEY_NAME = re.compile(r"[A-Za-z0-9_-]+")
_FORM = "application/x-www-form-urlencoded"

#: The clock credential `ttl`s are measured with (a module attribute so tests can move it).
_clock = time.monotonic


@attrs.frozen(kw_only=True)
class KeyAuth(Plugin):
    """Let in requests that carry the key of a consumer's `KeyAuthCredential`.

    `KeyAuth()` reads an `apikey` header or query argument; `key_names` changes the names,
    `key_in_header` / `key_in_query` / `key_in_body` where they are read. The upstream learns
    the consumer from the `X-Consumer-*` headers and the credential's id from
    `X-Credential-Identifier`. With `anonymous` (a consumer id or username), a request without
    a valid key goes on as that consumer instead of being refused.
    """

    name = "key-auth"
    priority = 1250
    scopes = frozenset({"global", "service", "route"})

    key_names: Sequence[str] = ("apikey",)
    hide_credentials: bool = False
    anonymous: str | None = field(None, check=check_anonymous)
    key_in_header: bool = True
    key_in_query: bool = True
    key_in_body: bool = False
    run_on_preflight: bool = True
    realm: str | None = None

    # Derived once from the config (not config: init=False): for each key name, the header
    # names it is read from, as ASGI spells them.
    _header_names: tuple[tuple[bytes, ...], ...] = attrs.field(
        init=False, eq=False, repr=False, default=()
    )

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        errors: list[tuple[tuple[PathPart, ...], str]] = []
        for i, key_name in enumerate(self.key_names):
            if not key_name:
                errors.append((("key_names", i), "no header name provided"))
            elif not _KEY_NAME.fullmatch(key_name):
                errors.append(
                    (
                        ("key_names", i),
                        f"bad header name '{key_name}', allowed characters are "
                        "A-Z, a-z, 0-9, '_', and '-'",
                    )
                )
        if errors:
            raise ConfigurationError(errors=errors)
        object.__setattr__(self, "_header_names", tuple(map(_spellings, self.key_names)))

    async def access(self, ctx: Context) -> Response | None:
        if not self.run_on_preflight and ctx.request.method == "OPTIONS":
            return None
        if skip_authentication(ctx, self.anonymous):
            return None
        failure = await self._authenticate(ctx)
        if failure is None:
            return None
        challenge = f'Key realm="{self.realm}"' if self.realm is not None else "Key"
        return unauthorized(ctx, self.anonymous, failure, headers={"WWW-Authenticate": challenge})

    async def _authenticate(self, ctx: Context) -> str | None:
        """None once the consumer is authenticated, else the reason to refuse."""
        request = ctx.request
        body: dict[str, Any] | None = None
        key: str | None = None
        for key_name, header_names in zip(self.key_names, self._header_names, strict=True):
            value: Any = None
            if self.key_in_header:
                value = _header(request.headers.raw, header_names)
            if value is None and self.key_in_query:
                value = request.query_params.get(key_name)
            if value is None and self.key_in_body:
                if body is None:
                    body = await _body_arguments(ctx)
                value = body.get(key_name)
            if isinstance(value, str):
                key = value
                if self.hide_credentials:
                    # The body only if it was read: not for a key from a header or the query.
                    await _hide(ctx, key_name, body)
                break
            if isinstance(value, list | dict):
                return DUPLICATE
            # Other JSON values (numbers, booleans, null) are no key: try the next name.
        if not key:
            return NO_KEY
        found = find_credential(ctx, KIND, "key", key)
        if found is None or not _alive(ctx, found[0]):
            return INVALID
        credential, consumer = found
        ctx.authenticate(consumer, credential)
        return None


def _spellings(key_name: str) -> tuple[bytes, ...]:
    """The header names `key_name` is read from, in the order they are tried (lower-case
    bytes, as in ASGI). As in Kong (nginx), a name with underscores also finds the header
    spelled with hyphens: `api_key` reads `Api-Key`."""
    name = key_name.lower().encode("ascii")  # `_KEY_NAME` allows ASCII only
    return (name, name.replace(b"_", b"-")) if b"_" in name else (name,)


def _header(raw: RawHeaders, names: tuple[bytes, ...]) -> str | list[str] | None:
    """The key header's value (a list when sent more than once), under the first of `names`
    the request has."""
    for name in names:
        values = []
        for k, v in raw:
            if k == name:
                values.append(v.decode("utf-8", "surrogateescape"))
        if values:
            return values[0] if len(values) == 1 else values
    return None


def _media_type(headers: Headers) -> str:
    return (headers.get("content-type") or "").partition(";")[0].strip().lower()


def _is_json(media_type: str) -> bool:
    return media_type == "application/json" or media_type.endswith("+json")


async def _body_arguments(ctx: Context) -> dict[str, Any]:
    """The body's arguments: a form's fields (a list when repeated) or a JSON object's
    members. Any other body (or one that does not parse, or is too large to read) has
    none."""
    media_type = _media_type(ctx.request.headers)
    if media_type != _FORM and not _is_json(media_type):
        return {}
    raw = await credential_body(ctx.request)
    if raw is None:
        return {}
    if media_type == _FORM:
        text = raw.decode("utf-8", "surrogateescape")
        arguments: dict[str, Any] = {}
        for key, value in parse_qsl(text, keep_blank_values=True, errors="surrogateescape"):
            previous = arguments.get(key)
            if previous is None:
                arguments[key] = value
            elif isinstance(previous, list):
                previous.append(value)
            else:
                arguments[key] = [previous, value]
        return arguments
    try:
        document = json.loads(raw) if raw else None
    except (ValueError, RecursionError):
        return {}
    return document if isinstance(document, dict) else {}


def _without(query: str, key_name: str) -> str:
    """`query` minus the arguments named `key_name`; the others are kept as sent, in order."""
    kept = [
        part
        for part in query.split("&")
        if part and unquote_plus(part.partition("=")[0]) != key_name
    ]
    return "&".join(kept)


async def _hide(ctx: Context, key_name: str, body: dict[str, Any] | None) -> None:
    """Take the key out of what the upstream gets: the header, the query argument and, when
    keys are read from the body, the body field (Kong clears all three)."""
    upstream = ctx.upstream_request
    if upstream is None:
        return
    for header in {key_name, key_name.replace("_", "-")}:
        if header in upstream.headers:
            del upstream.headers[header]
    if upstream.query_string:
        upstream.query_string = _without(upstream.query_string, key_name)
    if body is None or key_name not in body:
        return
    media_type = _media_type(ctx.request.headers)
    raw = upstream.body if upstream.body is not None else await ctx.request.body()
    if media_type == _FORM:
        text = raw.decode("utf-8", "surrogateescape")
        upstream.body = _without(text, key_name).encode("utf-8", "surrogateescape")
    elif _is_json(media_type):
        document = dict(body)
        del document[key_name]
        text = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
        try:
            upstream.body = text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate escape: keep the document ASCII
            upstream.body = json.dumps(document, separators=(",", ":")).encode("ascii")


# -- credential ttl --------------------------------------------------------------------------

_FIRST_SEEN = ("key-auth", "first-seen")
_DEADLINES = ("key-auth", "deadlines")


def _alive(ctx: Context, credential: Credential) -> bool:
    """Is the credential within its `ttl` (seconds since this gateway first loaded it)?"""
    ttl = credential.ttl if isinstance(credential, KeyAuthCredential) else None
    if not ttl:
        return True  # no ttl, or 0: Kong's "never expires"
    deadline = _deadlines(ctx).get(id(credential))
    return deadline is not None and _clock() < deadline


def _deadlines(ctx: Context) -> dict[int, float]:
    """When each credential with a ttl stops working, per configuration.

    The clock of a key starts when a configuration holding it was first loaded, and a later
    configuration that still holds the same key with the same ttl keeps that start, so
    reconfiguring does not extend a key's life. Changing the ttl (or removing the key and
    adding it back) starts it again, as re-creating a credential does in Kong. Start times
    are kept per process, by the SHA-256 of the key (never the key itself).
    """
    snapshot: Snapshot = ctx.snapshot
    deadlines: dict[int, float] | None = snapshot.derived.get(_DEADLINES)
    if deadlines is not None:
        return deadlines
    # When the configuration was loaded (on the monotonic clock).
    start = snapshot.loaded_at
    seen_before: dict[tuple[bytes, int], float] = ctx.gateway.shared.get(_FIRST_SEEN, {})
    seen: dict[tuple[bytes, int], float] = {}
    deadlines = {}
    for credential, _ in snapshot.credentials.get(KIND, ()):
        if not isinstance(credential, KeyAuthCredential) or not credential.ttl:
            continue
        ttl = credential.ttl
        mark = (hashlib.sha256(credential.key.encode("utf-8", "surrogateescape")).digest(), ttl)
        first = seen[mark] = seen_before.get(mark, start)
        deadlines[id(credential)] = first + ttl
    ctx.gateway.shared[_FIRST_SEEN] = seen
    snapshot.derived[_DEADLINES] = deadlines
    return deadlines


register(KeyAuth)
