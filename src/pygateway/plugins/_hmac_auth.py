"""hmac-auth: authenticate a request by an HMAC signature of some of its parts (Kong's), and
`HMACAuthCredential`, a consumer's username and shared secret.

The client sends

    Authorization: hmac username="alice", algorithm="hmac-sha256",
                   headers="date request-line", signature="<base64 HMAC>"

(or the same in `Proxy-Authorization`), where the signature is the HMAC, under the
credential's secret, of one line per name in `headers`, joined by "\\n":

- `<name>: <value>` for a header the request carries (the first value when repeated);
- `request-line` (not a header): `GET /path?query HTTP/1.1`, as the client sent the target;
- `@request-target` (not a header): `get /path?query` (lower-case method);
- `<name>:` for a header the request lacks.

A `Date` or `X-Date` header within `clock_skew` seconds of the gateway's clock is required,
which bounds how long a captured request can be replayed. Only a signed one counts: X-Date
if it is signed, else Date if it is signed; only when neither is signed does either do
(Kong's rule), so enforce one (`enforce_headers`) to make the bound hold. With
`validate_request_body`, the `Digest: SHA-256=<base64>` header must match the body (sign it
too, or it proves nothing).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Sequence
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, ClassVar, Literal

import attrs

from .._entities import Credential
from .._exceptions import ConfigurationError
from .._schema import field
from ._auth import check_anonymous, find_credential, skip_authentication, unauthorized
from ._base import Plugin
from ._registry import register

if TYPE_CHECKING:
    from .._context import Context, Request
    from .._headers import Headers
    from .._responses import Response

__all__ = ["HMACAuthCredential", "HmacAuth"]

KIND = "hmacauth_credentials"
UNAUTHORIZED = "Unauthorized"
NO_DATE = (
    "HMAC signature cannot be verified, a valid date or x-date header is required for "
    "HMAC Authentication"
)
NOT_VALID = "HMAC signature cannot be verified"
NOT_SAME = "HMAC signature does not match"

Algorithm = Literal["hmac-sha1", "hmac-sha256", "hmac-sha384", "hmac-sha512"]
ALGORITHMS: tuple[Algorithm, ...] = ("hmac-sha1", "hmac-sha256", "hmac-sha384", "hmac-sha512")
_DIGESTS = {
    "hmac-sha1": hashlib.sha1,
    "hmac-sha256": hashlib.sha256,
    "hmac-sha384": hashlib.sha384,
    "hmac-sha512": hashlib.sha512,
}
# Kong's pattern, searched anywhere in the header as Kong does. A value stops at a quote
# (Kong's `(.+)` may span quotes): the same fields for every well-formed header, and a
# search that stays linear on hostile ones.
_PARAMS = re.compile(
    r'[Hh]mac\s*username="([^"]+)",\s*algorithm="([^"]+)",\s*headers="([^"]+)",'
    r'\s*signature="([^"]+)"'
)

#: The clock `clock_skew` is checked against (a module attribute so tests can move it).
_now = time.time


def _check_not_empty(value: str | None) -> str | None:
    return "length must be at least 1" if value == "" else None


def _check_positive(value: float) -> str | None:
    return "value must be greater than 0" if value <= 0 else None


@attrs.frozen(kw_only=True)
class HMACAuthCredential(Credential):
    """A username and shared secret for the hmac-auth plugin; a random secret is generated
    when none is given. Usernames are unique across consumers; `X-Credential-Identifier`
    carries the username, as in Kong.

    The secret is kept as given (the gateway needs it to compute signatures), so a
    configuration holding these credentials must be protected like the secrets themselves.
    """

    kind: ClassVar[str] = KIND
    plugin: ClassVar[str] = "hmac-auth"
    unique: ClassVar[tuple[str, ...]] = ("username",)

    username: str = field(check=_check_not_empty, kw_only=True)
    secret: str = attrs.field(
        factory=lambda: secrets.token_urlsafe(24),
        repr=False,
        metadata={"checks": [_check_not_empty]},
    )

    @property
    def identifier(self) -> str:
        return self.username


@attrs.frozen(kw_only=True)
class HmacAuth(Plugin):
    """Let in requests signed with the secret of a consumer's `HMACAuthCredential`.

    Refused requests get a 401 with `WWW-Authenticate: hmac` (`hmac realm="<realm>"` with
    a realm) and Kong's messages. With `anonymous` (a consumer id or username), they go on
    as that consumer instead.
    """

    name = "hmac-auth"
    priority = 1030
    scopes = frozenset({"global", "service", "route"})

    hide_credentials: bool = False
    clock_skew: float = field(300, check=_check_positive)
    anonymous: str | None = field(None, check=check_anonymous)
    validate_request_body: bool = False
    enforce_headers: Sequence[str] = ()
    algorithms: Sequence[Algorithm] = ALGORITHMS
    realm: str | None = None

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if not self.algorithms:
            raise ConfigurationError("length must be at least 1", path=("algorithms",))

    async def access(self, ctx: Context) -> Response | None:
        if skip_authentication(ctx, self.anonymous):
            return None
        failure = await self._authenticate(ctx)
        if failure is None:
            return None
        challenge = f'hmac realm="{self.realm}"' if self.realm is not None else "hmac"
        return unauthorized(ctx, self.anonymous, failure, headers={"WWW-Authenticate": challenge})

    async def _authenticate(self, ctx: Context) -> str | None:
        """None once the consumer is authenticated, else the message to refuse with."""
        request = ctx.request
        authorization = request.headers.get("authorization")
        proxy_authorization = request.headers.get("proxy-authorization")
        if authorization is None and proxy_authorization is None:
            return UNAUTHORIZED
        params = _parse(proxy_authorization)
        used = "proxy-authorization"
        if params is None:
            params = _parse(authorization)
            used = "authorization"
        if not _dated(request.headers, params[2] if params else [], self.clock_skew):
            return NO_DATE
        upstream = ctx.upstream_request
        if self.hide_credentials and upstream is not None and used in upstream.headers:
            del upstream.headers[used]
        if params is None or not self._acceptable(params):
            return NOT_VALID
        username, algorithm, signed, signature = params
        found = find_credential(ctx, KIND, "username", username)
        if found is None:
            return NOT_VALID
        credential, consumer = found
        if not isinstance(credential, HMACAuthCredential):
            return NOT_VALID
        expected = hmac.new(
            credential.secret.encode("utf-8", "surrogateescape"),
            _signing_string(request, signed),
            _DIGESTS[algorithm],
        ).digest()
        if not hmac.compare_digest(expected, _decode_signature(signature)):
            return NOT_SAME
        if self.validate_request_body and not await _body_matches(ctx):
            return NOT_SAME
        ctx.authenticate(consumer, credential)
        return None

    def _acceptable(self, params: tuple[str, str, list[str], str]) -> bool:
        """Kong's checks before the signature: every enforced header is signed, and the
        algorithm is one this plugin allows."""
        _, algorithm, signed, _ = params
        if any(header not in signed for header in self.enforce_headers):
            return False
        return algorithm in self.algorithms


def _parse(value: str | None) -> tuple[str, str, list[str], str] | None:
    """(username, algorithm, signed header names, signature) from an `hmac ...` header."""
    if value is None:
        return None
    match = _PARAMS.search(value)
    if match is None:
        return None
    username, algorithm, names, signature = match.groups()
    return username, algorithm, names.split(" "), signature


def _dated(headers: Headers, signed: list[str], clock_skew: float) -> bool:
    """Is the request's date within `clock_skew` seconds of now?

    Only a signed date counts: X-Date if it is signed, else Date if it is signed (an
    unsigned one could be added to a captured request to replay it). When neither is
    signed, Kong's rule: either header will do.
    """
    for wanted in ("x-date", "date"):
        for name in signed:
            if name.lower().replace("_", "-") == wanted:
                # The very value that was signed (found as the signing string finds it).
                return _fresh(_header_value(headers, name), clock_skew)
    return _fresh(headers.get("x-date"), clock_skew) or _fresh(headers.get("date"), clock_skew)


def _fresh(value: str | None, clock_skew: float) -> bool:
    """Does `value` hold an HTTP date within `clock_skew` seconds of now?"""
    if not value:
        return False
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return False
    if moment.tzinfo is None:  # HTTP dates are GMT
        moment = moment.replace(tzinfo=UTC)
    return abs(_now() - moment.timestamp()) <= clock_skew


def _header_value(headers: Headers, name: str) -> str | None:
    # As Kong's `get_header`: case-insensitive, `_` also finds `-`, the first value.
    try:
        value = headers.get(name)
        if value is None and "_" in name:
            value = headers.get(name.replace("_", "-"))
    except UnicodeEncodeError:
        return None
    return value


def _signing_string(request: Request, signed: list[str]) -> bytes:
    """What the client signed: one line per name in its `headers` list (Kong's format)."""
    target = request.raw_path + (f"?{request.query_string}" if request.query_string else "")
    lines: list[bytes] = []
    for name in signed:
        # The pseudo-headers first: a client header of the same name must not stand in for
        # the request's own method and target.
        if name == "@request-target":
            lines.append(f"@request-target: {request.method.lower()} {target}".encode("latin-1"))
            continue
        if name == "request-line":
            version = _http_version(request)
            lines.append(f"{request.method} {target} HTTP/{version}".encode("latin-1"))
            continue
        value = _header_value(request.headers, name) if name else None
        raw_name = name.encode("utf-8", "surrogateescape")
        if value is not None:
            lines.append(raw_name + b": " + value.encode("utf-8", "surrogateescape"))
        else:
            lines.append(raw_name + b":")
    return b"\n".join(lines)


def _http_version(request: Request) -> str:
    """The request's HTTP version as Kong prints it in a request line: 1.0, 1.1, 2.0."""
    version = request.http_version
    try:
        return f"{float(version):.1f}"
    except ValueError:
        return "1.1"


def _decode_signature(signature: str) -> bytes:
    try:
        return base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        return b""  # never equal to an HMAC


async def _body_matches(ctx: Context) -> bool:
    """Kong's body check: without a `Digest` header only an empty body passes; with one, it
    must be exactly `SHA-256=<base64 of the body's SHA-256>`."""
    body = await ctx.request.body()
    digest = ctx.request.headers.get("digest")
    if digest is None:
        return body == b""
    expected = "SHA-256=" + base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")
    return hmac.compare_digest(expected.encode(), digest.encode("utf-8", "surrogateescape"))


register(HmacAuth)
