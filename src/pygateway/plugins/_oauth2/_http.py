"""The HTTP details the oauth2 plugin shares: reading OAuth parameters from the query and
the body, removing the access token from what goes upstream, building redirect URIs and
answers, and Kong's test of whether a request came over HTTPS.

Bodies are read before anyone is authenticated, so only bodies that can hold parameters
(a form, JSON or multipart for the endpoints; a form for an access token, RFC 6750 §2.2)
and whose Content-Length is at most `CREDENTIAL_BODY_MAX` (64 KiB) are read.
"""

from __future__ import annotations

import base64
import binascii
import email.parser
import email.policy
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote_plus, urlsplit, urlunsplit

from ..._responses import Response
from .._auth import credential_body

if TYPE_CHECKING:
    from ..._context import Context

__all__ = [
    "b64url",
    "check_https",
    "encode_args",
    "exit_response",
    "form_body",
    "parameters",
    "parsed_body",
    "redirect_with",
    "unb64url",
    "without_param",
    "www_authenticate",
]

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_FORM = "application/x-www-form-urlencoded"
_PARSED = (_FORM, "application/json", "multipart/form-data")
_NO_STORE = {"cache-control": "no-store", "pragma": "no-cache"}


def _pairs_to_dict(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Query-style pairs as a dict; a repeated name gives a list (as Kong's)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            previous = out[key]
            out[key] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            out[key] = value
    return out


def _multipart(body: bytes, content_type: str) -> dict[str, Any]:
    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", "replace")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        return {}
    pairs: list[tuple[str, str]] = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        pairs.append((name, data.decode("utf-8", "replace")))
    return _pairs_to_dict(pairs)


def parsed_body(body: bytes, content_type: str | None) -> dict[str, Any]:
    """The arguments in a form, multipart or JSON object body (as Kong's `get_body`);
    anything else, or a body that does not parse, gives none."""
    kind = (content_type or "").lower()
    if "application/x-www-form-urlencoded" in kind:
        text = body.decode("utf-8", "replace")
        return _pairs_to_dict(parse_qsl(text, keep_blank_values=True))
    if "application/json" in kind:
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
            return {}
        return data if isinstance(data, dict) else {}
    if "multipart/form-data" in kind:
        try:
            return _multipart(body, content_type or "")
        except (ValueError, LookupError):
            return {}
    return {}


def _media_type(ctx: Context) -> str:
    return (ctx.request.headers.get("content-type") or "").lower()


async def parameters(ctx: Context, *, form_only: bool = False) -> dict[str, Any]:
    """The OAuth parameters of the request: its query arguments, and for POST, PUT and PATCH
    its body arguments on top (Kong's `retrieve_parameters`): from a form, JSON or multipart
    body, or only a form with `form_only`. A larger body than `CREDENTIAL_BODY_MAX`, or one
    without a Content-Length, is not read: it gives no parameters."""
    request = ctx.request
    params: dict[str, Any] = dict(request.query_params)
    kind = _media_type(ctx)
    if request.method in _BODY_METHODS and any(
        media in kind for media in ((_FORM,) if form_only else _PARSED)
    ):
        body = await credential_body(request)
        if body:
            params.update(parsed_body(body, request.headers.get("content-type")))
    return params


async def form_body(ctx: Context) -> bytes | None:
    """The body of a form request (not GET) small enough to read, else None."""
    if ctx.request.method == "GET" or _FORM not in _media_type(ctx):
        return None
    return await credential_body(ctx.request)


def without_param(encoded: str, name: str) -> str:
    """A query string (or form body) without the arguments called `name`; the other
    arguments are kept byte for byte."""
    kept = [
        part
        for part in encoded.split("&")
        if part and unquote_plus(part.partition("=")[0], errors="surrogateescape") != name
    ]
    return "&".join(kept)


def _escape(value: str) -> str:
    # As LuaSocket's url.escape, which Kong uses here: all but letters, digits and "_".
    return "".join(
        chr(b) if chr(b).isascii() and (chr(b).isalnum() or b == 0x5F) else f"%{b:02x}"
        for b in value.encode("utf-8", "surrogateescape")
    )


def encode_args(args: Mapping[str, Any]) -> str:
    """Arguments as a query string, sorted by name (Kong's `encode_args`)."""
    parts: list[str] = []
    for key in sorted(args):
        values = args[key]
        for value in values if isinstance(values, list) else [values]:
            parts.append(f"{_escape(key)}={_escape(_text(value))}")
    return "&".join(parts)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def redirect_with(uri: str, args: Mapping[str, Any], *, fragment: bool) -> str:
    """`uri` with `args` merged into its query (or its fragment, for the implicit grant)."""
    parts = urlsplit(uri)
    existing = parts.fragment if fragment else parts.query
    merged = _pairs_to_dict(parse_qsl(existing, keep_blank_values=True))
    merged.update(args)
    encoded = encode_args(merged)
    if fragment:
        return urlunsplit(parts._replace(fragment=encoded))
    return urlunsplit(parts._replace(query=encoded))


def check_https(ctx: Context, accept_terminated: bool) -> tuple[bool, str | None]:
    """Kong's `check_https`: the request came over HTTPS, or — when `accept_terminated` —
    a trusted peer (`trusted_ips`) says so in a single `X-Forwarded-Proto`."""
    request = ctx.request
    if request.scheme.lower() == "https":
        return True, None
    if not accept_terminated:
        return False, None
    if not ctx.gateway.settings.trusted_ips.contains(request.peer_ip):
        return False, None
    values = request.headers.getlist("x-forwarded-proto")
    if not values:
        return False, None
    proto = ", ".join(values)
    if "," in proto:
        return False, "Only one X-Forwarded-Proto header allowed"
    return proto.strip().lower() == "https", None


def www_authenticate(
    realm: str | None, error: str | None = None, description: str | None = None
) -> str:
    """The `WWW-Authenticate: Bearer ...` challenge (RFC 6750)."""
    params = []
    if realm:
        params.append(f'realm="{realm}"')
    if error:
        params.append(f'error="{error}"')
    if description:
        params.append(f'error_description="{description}"')
    return "Bearer " + ", ".join(params) if params else "Bearer"


def exit_response(
    status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> Response:
    """An answer of the token or authorization endpoint: JSON, never cached."""
    return Response(status, json=dict(body), headers={**_NO_STORE, **(headers or {})})


def b64url(data: bytes) -> str:
    """base64url without padding (RFC 7636's encoding of the S256 challenge)."""
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def unb64url(text: str) -> bytes | None:
    """Decode base64url or standard base64, padded or not; None if it is neither."""
    standard = text.replace("-", "+").replace("_", "/").rstrip("=")
    if len(standard) % 4 == 1:
        return None
    try:
        return base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
