"""The `OAuth2` plugin: Kong's OAuth 2.0 provider.

On a route it does two things: it answers `POST <any path>/oauth2/token` and
`POST <any path>/oauth2/authorize` itself (see `_grants.py`), and it lets every other request
through only with a valid access token (`Authorization: Bearer <token>`, or an
`access_token` query or body argument), telling the upstream who the consumer is and which
user and scopes the token was issued for.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import attrs

from ..._exceptions import ConfigurationError
from ..._responses import Response
from ..._schema import field
from .._auth import (
    authenticate_anonymous,
    check_anonymous,
    find_credential,
    skip_authentication,
)
from .._base import Plugin
from ._credential import OAuth2Credential, random_string
from ._grants import access_key, authorize, issue_token, service_key
from ._http import form_body, parameters, without_param, www_authenticate
from ._store import token_store

if TYPE_CHECKING:
    from ..._context import Context

__all__ = ["OAuth2"]

_FLOWS = (
    "enable_authorization_code",
    "enable_implicit_grant",
    "enable_client_credentials",
    "enable_password_grant",
)
_INVALID = "The access token is invalid or has expired"
_SCOPE_HEADER = "x-authenticated-scope"
_USERID_HEADER = "x-authenticated-userid"
_DAO_MAX_TTL = 100_000_000


def _endpoint(path: str) -> str | None:
    """Which endpoint `path` ends with, as Kong tells: "token", "authorize" or None (a
    final "/" is allowed)."""
    if path.endswith("/"):
        path = path[:-1]
    if path.endswith("/oauth2/token"):
        return "token"
    if path.endswith("/oauth2/authorize"):
        return "authorize"
    return None


@attrs.frozen(kw_only=True)
class OAuth2(Plugin):
    """Kong's OAuth 2.0 provider: issue tokens at `.../oauth2/token` and
    `.../oauth2/authorize`, and require one on every other request of the route.

    Enable at least one flow: `enable_authorization_code`, `enable_implicit_grant`,
    `enable_client_credentials` or `enable_password_grant`. Clients are the consumers'
    `OAuth2Credential`s. `provision_key` (generated when not given) is the secret your
    application's backend presents to the authorize endpoint and for the password grant.

    Tokens live in the gateway's `TokenStore` (`gateway.shared`, per process unless a shared
    store is installed): they do not survive a restart, and each worker process has its own.
    """

    name = "oauth2"
    priority = 1400
    scopes = frozenset({"global", "service", "route"})  # Kong: no consumer

    #: Kong's `scopes` config field. `Plugin.scopes` already names where a plugin may be
    #: applied, so the attribute is `token_scopes`; the argument and the declarative key
    #: are `scopes`, as in Kong: `OAuth2(scopes=["email"], ...)`.
    token_scopes: Sequence[str] | None = attrs.field(default=None, alias="scopes")
    mandatory_scope: bool = False
    provision_key: str = attrs.field(factory=random_string, repr=False)
    token_expiration: float = 7200
    enable_authorization_code: bool = False
    enable_implicit_grant: bool = False
    enable_client_credentials: bool = False
    enable_password_grant: bool = False
    hide_credentials: bool = False
    accept_http_if_already_terminated: bool = False
    anonymous: str | None = field(None, check=check_anonymous)
    global_credentials: bool = False
    auth_header_name: str = "authorization"
    refresh_token_ttl: float = field(1_209_600, between=(0, _DAO_MAX_TTL))
    reuse_refresh_token: bool = False
    pkce: Literal["none", "lax", "strict"] = "lax"
    realm: str | None = None

    def __attrs_post_init__(self) -> None:
        try:
            super().__attrs_post_init__()
        except ConfigurationError as exc:
            raise ConfigurationError(
                errors=[(_kong_path(path), reason) for path, reason in exc.errors]
            ) from None
        if isinstance(self.token_expiration, float) and self.token_expiration.is_integer():
            object.__setattr__(self, "token_expiration", int(self.token_expiration))
        if isinstance(self.refresh_token_ttl, float) and self.refresh_token_ttl.is_integer():
            object.__setattr__(self, "refresh_token_ttl", int(self.refresh_token_ttl))
        if not any(getattr(self, flow) for flow in _FLOWS):
            raise ConfigurationError(
                "at least one of these fields must be true: " + ", ".join(_FLOWS)
            )
        if self.mandatory_scope and self.token_scopes is None:
            raise ConfigurationError("required field missing", path=("scopes",))

    @property
    def plugin_id(self) -> str:
        """Identifies this configuration in the codes it issues (Kong refuses, with
        `global_credentials`, a code issued by another oauth2 plugin): derived from the
        provision key, which is unique per plugin."""
        digest = hashlib.sha256(self.provision_key.encode("utf-8", "surrogateescape"))
        return digest.hexdigest()[:32]

    async def access(self, ctx: Context) -> Response | None:
        endpoint = _endpoint(ctx.request.path)
        if endpoint is not None:
            if ctx.request.method != "POST":
                name = "token" if endpoint == "token" else "authorization"
                description = (
                    f"The HTTP method {ctx.request.method} is invalid for the {name} endpoint"
                )
                return Response(
                    405,
                    json={"error": "invalid_method", "error_description": description},
                    headers={
                        "www-authenticate": www_authenticate(
                            self.realm, "invalid_method", description
                        )
                    },
                )
            if endpoint == "token":
                return await issue_token(self, ctx)
            return await authorize(self, ctx)
        if self.anonymous:
            if skip_authentication(ctx, self.anonymous):
                # Another plugin authenticated the request ("logical OR"): no token claims.
                _clear_token_headers(ctx)
                return None
            failure = await self._authenticate(ctx)
            if failure is None:
                return None
            if failure[1]:
                return failure[0]
            _clear_token_headers(ctx)
            return authenticate_anonymous(ctx, self.anonymous)
        failure = await self._authenticate(ctx)
        return None if failure is None else failure[0]

    async def _authenticate(self, ctx: Context) -> tuple[Response, bool] | None:
        """None when a valid token authenticated the request; else the answer to refuse it
        with, and whether it stands even with `anonymous` (Kong's global-token case)."""
        token = await self._access_token(ctx)
        if not token:
            return self._refusal("invalid_request", "The access token is missing"), False
        store = token_store(ctx.gateway)
        grant = await store.get(access_key(token))
        if grant is None:
            return self._invalid(), False
        bound_to = grant.get("service")
        if not self.global_credentials:
            if bound_to is None:
                description = (
                    "The access token is global, but the current plugin is configured "
                    "without 'global_credentials'"
                )
                return self._refusal("invalid_token", description), True
            if bound_to != service_key(ctx):
                return self._invalid(), False
        elif bound_to is not None and bound_to != service_key(ctx):
            return self._invalid(), False
        expires_in = grant.get("expires_in") or 0
        created_at = grant.get("created_at") or 0
        if expires_in > 0 and store.now() - created_at > expires_in:
            return self._invalid(), False
        found = find_credential(ctx, OAuth2Credential.kind, "client_id", grant["client_id"])
        if found is None:  # the client application was removed since
            return self._invalid(), False
        credential, consumer = found
        ctx.authenticate(consumer, credential)
        headers = ctx.upstream_request.headers if ctx.upstream_request else None
        if headers is not None:
            for header, value in (
                (_SCOPE_HEADER, grant.get("scope")),
                (_USERID_HEADER, grant.get("authenticated_userid")),
            ):
                if value:
                    headers[header] = str(value)
                elif header in headers:
                    del headers[header]
        return None

    async def _access_token(self, ctx: Context) -> str | None:
        """The token the client sent (Kong's `parse_access_token`), hidden from the upstream
        with `hide_credentials`."""
        request = ctx.request
        header = request.headers.get(self.auth_header_name)
        in_header = header is not None
        if header is not None:
            parts = header.split()
            if len(parts) == 2 and parts[0].lower() in ("bearer", "token"):
                token = parts[1]
            else:
                token = header  # Kong takes a bare header value as the token itself
        else:
            # RFC 6750 §2.2: a token in the body comes in a form, nothing else.
            found = (await parameters(ctx, form_only=True)).get("access_token")
            if not isinstance(found, str):
                return None
            token = found
        upstream = ctx.upstream_request
        if self.hide_credentials and upstream is not None:
            if in_header:
                if self.auth_header_name in upstream.headers:
                    del upstream.headers[self.auth_header_name]
            else:
                upstream.query_string = without_param(upstream.query_string, "access_token")
                body = await form_body(ctx)
                if body is not None:
                    if upstream.body is not None:  # another plugin's version of the form
                        body = upstream.body
                    text = body.decode("latin-1")
                    upstream.body = without_param(text, "access_token").encode("latin-1")
        return token

    def _refusal(self, error: str, description: str) -> Response:
        challenge = (
            www_authenticate(self.realm)
            if error == "invalid_request"
            else www_authenticate(self.realm, "invalid_token", _INVALID)
        )
        return Response(
            401,
            json={"error": error, "error_description": description},
            headers={"www-authenticate": challenge},
        )

    def _invalid(self) -> Response:
        return self._refusal("invalid_token", _INVALID)


def _kong_path(path: tuple[Any, ...]) -> tuple[Any, ...]:
    return ("scopes", *path[1:]) if path[:1] == ("token_scopes",) else path


def _clear_token_headers(ctx: Context) -> None:
    if ctx.upstream_request is not None:
        headers = ctx.upstream_request.headers
        for header in (_SCOPE_HEADER, _USERID_HEADER):
            if header in headers:
                del headers[header]
