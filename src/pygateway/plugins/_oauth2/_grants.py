"""The oauth2 plugin's endpoints: `POST .../oauth2/token` and `POST .../oauth2/authorize`.

The checks follow Kong's `access.lua` in order, and as there a later failed check replaces
the error of an earlier one (so a request with nothing in it is told `invalid_client`, not
`unsupported_grant_type`). Answers are RFC 6749 JSON bodies with `Cache-Control:
no-store`.

What is issued goes to the gateway's `TokenStore` under the SHA-256 of the token or code:

- `oauth2:access:<hash>`: the access token's grant (client, service, user, scope, dates),
  kept `token_expiration` seconds;
- `oauth2:refresh:<hash>`: the same grant and the key of its current access token, kept
  `refresh_token_ttl` seconds;
- `oauth2:code:<hash>`: an authorization code, kept 5 minutes, spent once.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from typing import TYPE_CHECKING, Any

from .._auth import credentials_from_header, find_credential, run_kdf
from ._credential import OAuth2Credential, random_string
from ._http import (
    b64url,
    check_https,
    exit_response,
    parameters,
    redirect_with,
    unb64url,
)
from ._store import TokenStore, token_store

if TYPE_CHECKING:
    from ..._context import Context
    from ..._entities import Consumer
    from ..._responses import Response
    from ._plugin import OAuth2

__all__ = ["access_key", "authorize", "issue_token", "service_key"]

_CODE_TTL = 300  # seconds an authorization code may wait to be exchanged (Kong's)
_KIND = OAuth2Credential.kind

Params = dict[str, Any]
Client = tuple[OAuth2Credential, "Consumer"]


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()


def access_key(token: str) -> str:
    return f"oauth2:access:{_hash(token)}"


def _refresh_key(token: str) -> str:
    return f"oauth2:refresh:{_hash(token)}"


def _code_key(code: str) -> str:
    return f"oauth2:code:{_hash(code)}"


def _error(error: str, description: str) -> Params:
    return {"error": error, "error_description": description}


_INVALID_CLIENT = ("invalid_client", "Invalid client authentication")
_INVALID_CODE = ("invalid_request", "Invalid code")
_INVALID_PROVISION_KEY = ("invalid_provision_key", "Invalid provision_key")
_PUBLIC_CLIENT = (
    "unauthorized_client",
    "The client_credentials grant is for confidential clients only",
)
_MISSING_USERID = ("invalid_authenticated_userid", "Missing authenticated_userid parameter")
_BAD_REDIRECT = (
    "invalid_request",
    "Invalid redirect_uri that does not match with any redirect_uri created with the application",
)


def service_key(ctx: Context) -> str | None:
    """What a token is bound to when `global_credentials` is off: the matched service."""
    service = ctx.service
    if service is None:
        return None
    if service.id:
        return service.id
    if service.name:
        return service.name
    return f"{service.protocol}://{service.host}:{service.port}{service.path or ''}"


def _binding(conf: OAuth2, ctx: Context) -> str | None:
    return None if conf.global_credentials else service_key(ctx)


def _find_client(ctx: Context, client_id: Any) -> Client | None:
    if not isinstance(client_id, str) or not client_id:
        return None
    found = find_credential(ctx, _KIND, "client_id", client_id)
    if found is None or not isinstance(found[0], OAuth2Credential):
        return None
    return found[0], found[1]


def _provision_key_ok(conf: OAuth2, given: Any) -> bool:
    if not isinstance(given, str):
        return False
    return hmac.compare_digest(
        conf.provision_key.encode("utf-8", "surrogateescape"),
        given.encode("utf-8", "surrogateescape"),
    )


def _userid(params: Params) -> str | None:
    value = params.get("authenticated_userid")
    return value if isinstance(value, str) and value.strip() else None


def _scope(conf: OAuth2, params: Params) -> tuple[str | None, Params | None]:
    """The requested scope, checked against `scopes` (Kong's `retrieve_scope`)."""
    scope = params.get("scope")
    if conf.token_scopes is not None and scope is not None:
        if not isinstance(scope, str):
            return None, _error("invalid_scope", "scope must be a string")
        names = scope.split()
        for name in names:
            if name not in conf.token_scopes:
                return None, _error("invalid_scope", f'"{name}" is an invalid scope')
        if names:
            return " ".join(names), None
    if conf.mandatory_scope and not (isinstance(scope, str) and scope.split()):
        # Kong lets an empty `scope` through here; mandatory means at least one.
        return None, _error("invalid_scope", "You must specify a scope")
    return None, None


def _requires_pkce(conf: OAuth2, client: OAuth2Credential, used: Any = None) -> bool:
    return bool(
        used
        or (client.client_type == "public" and conf.pkce != "none")
        or (client.client_type == "confidential" and conf.pkce == "strict")
    )


def _code_challenge(params: Params) -> tuple[str | None, str | None, str | None]:
    """(challenge, error, method) from an authorization request (Kong's rules: S256 only,
    the challenge normalized to unpadded base64url)."""
    challenge = params.get("code_challenge")
    method = params.get("code_challenge_method")
    if not isinstance(challenge, str) or not challenge:
        challenge = None
    if method and challenge is None:
        return None, "code_challenge is required when code_method is present", None
    if challenge is not None:
        decoded = unb64url(challenge)
        if decoded:
            challenge = b64url(decoded)
        if method and method != "S256":
            if method != "s256":
                return None, "code_challenge_method is not supported, must be S256", None
            method = "S256"
    return challenge, None, (method if isinstance(method, str) else None) or "S256"


def _check_verifier(params: Params, code: Params) -> Params | None:
    verifier = params.get("code_verifier")
    if verifier is None:
        return _error(
            "invalid_request", "code_verifier is required for PKCE authorization requests"
        )
    if not isinstance(verifier, str):
        return _error("invalid_request", "code_verifier is not a string")
    if not 43 <= len(verifier) <= 128:
        return _error("invalid_request", "code_verifier must be between 43 and 128 characters")
    expected = code.get("challenge")
    computed = b64url(hashlib.sha256(verifier.encode("utf-8", "surrogateescape")).digest())
    if not isinstance(expected, str) or not hmac.compare_digest(
        computed.encode("ascii"), expected.encode("utf-8", "surrogateescape")
    ):
        return _error("invalid_grant", "Invalid code")
    return None


async def _new_token(
    conf: OAuth2,
    ctx: Context,
    store: TokenStore,
    client: OAuth2Credential,
    userid: str | None,
    scope: str | None,
    *,
    refreshable: bool = True,
    reuse: tuple[str, str | None] | None = None,
) -> Params:
    """Issue an access token, and a refresh token unless `refreshable` is off (Kong's
    `generate_token`). `reuse` is (refresh token, its service binding) when
    `reuse_refresh_token` keeps the refresh token: it then points at the new access token.
    """
    expiration = conf.token_expiration
    # Kong drops the whole grant after refresh_token_ttl (0: never), expired or not.
    grant_ttl = conf.refresh_token_ttl if expiration > 0 and conf.refresh_token_ttl > 0 else None
    access_ttl: float | None = expiration if expiration > 0 else None
    if grant_ttl is not None and access_ttl is not None:
        access_ttl = min(access_ttl, grant_ttl)
    access_token = random_string()
    key = access_key(access_token)
    grant: Params = {
        "id": str(uuid.uuid4()),
        "client_id": client.client_id,
        "service": _binding(conf, ctx) if reuse is None else reuse[1],
        "authenticated_userid": userid,
        "scope": scope,
        "expires_in": expiration,
        "created_at": store.now(),
        "plugin": conf.plugin_id,
    }
    refresh_token: str | None = None
    if reuse is not None:
        refresh_token = reuse[0]
    elif refreshable and expiration > 0:
        refresh_token = random_string()
    await store.put(key, grant, ttl=access_ttl)
    if refresh_token is not None:
        await store.put(_refresh_key(refresh_token), {**grant, "access": key}, ttl=grant_ttl)
    answer: Params = {"access_token": access_token, "token_type": "bearer"}
    if expiration > 0:
        answer["expires_in"] = expiration
    if refresh_token is not None:
        answer["refresh_token"] = refresh_token
    return answer


def _client_credentials(conf: OAuth2, ctx: Context, params: Params) -> tuple[Any, Any, bool]:
    """(client_id, client_secret, from the Authorization header)."""
    if params.get("client_id") is not None and params.get("client_secret") is not None:
        return params["client_id"], params["client_secret"], False
    header = ctx.request.headers.get(conf.auth_header_name)
    if header is not None:
        encoded = credentials_from_header(header, "basic")
        decoded = unb64url(encoded) if encoded else None
        if decoded is None:
            return None, None, True
        text = decoded.decode("utf-8", "surrogateescape")
        client_id, colon, secret = text.partition(":")
        return client_id, (secret if colon else None), True
    return params.get("client_id"), None, False


async def _authenticated(client: OAuth2Credential, secret: Any) -> bool:
    if not isinstance(secret, str):
        return False
    if client.hash_secret:  # PBKDF2: milliseconds of CPU, off the event loop, a few at once
        return await run_kdf(client.check_secret, secret)
    return client.check_secret(secret)


async def issue_token(conf: OAuth2, ctx: Context) -> Response:
    """`POST .../oauth2/token`."""
    params = await parameters(ctx)
    state = params.get("state")
    answer: Params = {}
    unauthorized = False  # a bad secret given in the Authorization header: 401
    https, reason = check_https(ctx, conf.accept_http_if_already_terminated)
    if not https:
        answer = _error("access_denied", reason or "You must use HTTPS")
    else:
        grant_type = params.get("grant_type")
        if not (
            grant_type in ("authorization_code", "refresh_token")
            or (conf.enable_client_credentials and grant_type == "client_credentials")
            or (conf.enable_password_grant and grant_type == "password")
        ):
            answer = _error("unsupported_grant_type", "Invalid grant_type")
        client_id, secret, from_header = _client_credentials(conf, ctx, params)
        found = _find_client(ctx, client_id)
        client = found[0] if found else None
        if grant_type != "client_credentials":
            if client is not None and client.redirect_uris is not None:
                allowed = list(client.redirect_uris)
                redirect_uri = params.get("redirect_uri") or (allowed[0] if allowed else None)
                if redirect_uri not in allowed:
                    answer = _error(*_BAD_REDIRECT)
            else:
                answer = _error(*_INVALID_CLIENT)
                unauthorized = unauthorized or from_header
        if client is not None:
            if client.client_type == "confidential":
                if not await _authenticated(client, secret):
                    answer = _error(*_INVALID_CLIENT)
                    unauthorized = unauthorized or from_header
            elif secret is not None and (not isinstance(secret, str) or secret.strip()):
                answer = _error("invalid_request", "client_secret is disallowed for public clients")
        if "error" not in answer:
            answer = await _grant(conf, ctx, params, grant_type, client)
    if state is not None:
        answer["state"] = state
    if "error" not in answer:
        return exit_response(200, answer)
    if unauthorized:
        return exit_response(401, answer, {"www-authenticate": 'Basic realm="OAuth2.0"'})
    return exit_response(400, answer)


async def _grant(
    conf: OAuth2, ctx: Context, params: Params, grant_type: Any, client: OAuth2Credential | None
) -> Params:
    store = token_store(ctx.gateway)
    if grant_type == "authorization_code":
        assert client is not None  # refused above when unknown
        return await _exchange_code(conf, ctx, store, params, client)
    if grant_type == "client_credentials":
        userid = params.get("authenticated_userid")
        if userid is not None and not _provision_key_ok(conf, params.get("provision_key")):
            return _error(*_INVALID_PROVISION_KEY)
        if client is None:
            return _error(*_INVALID_CLIENT)
        if client.client_type != "confidential":
            # RFC 6749 §4.4: the client authenticates, so only a confidential client may
            # (Kong gives a public client a token for its client_id alone).
            return _error(*_PUBLIC_CLIENT)
        scope, error = _scope(conf, params)
        if error:
            return error
        return await _new_token(
            conf,
            ctx,
            store,
            client,
            userid if isinstance(userid, str) else None,
            scope,
            refreshable=False,
        )
    if grant_type == "password":
        assert client is not None
        if not _provision_key_ok(conf, params.get("provision_key")):
            return _error(*_INVALID_PROVISION_KEY)
        userid = _userid(params)
        if userid is None:
            return _error(*_MISSING_USERID)
        scope, error = _scope(conf, params)
        if error:
            return error
        return await _new_token(conf, ctx, store, client, userid, scope)
    assert client is not None  # refused above when unknown
    return await _refresh(conf, ctx, store, params, client)


async def _exchange_code(
    conf: OAuth2, ctx: Context, store: TokenStore, params: Params, client: OAuth2Credential
) -> Params:
    code = params.get("code")
    key = _code_key(code) if isinstance(code, str) and code else None
    binding = _binding(conf, ctx)
    record = await store.get(key) if key else None
    if record is None or (binding is not None and binding != record.get("service")):
        return _error(*_INVALID_CODE)
    if record.get("client_id") != client.client_id:
        return _error(*_INVALID_CODE)
    if _requires_pkce(conf, client, record.get("challenge_method")):
        error = _check_verifier(params, record)
        if error:
            return error
    if conf.global_credentials and record.get("plugin") not in (None, conf.plugin_id):
        return _error(*_INVALID_CODE)
    # Spent by whoever deletes it first: two concurrent exchanges cannot both succeed.
    if key is None or not await store.delete(key):
        return _error(*_INVALID_CODE)
    return await _new_token(
        conf, ctx, store, client, record.get("authenticated_userid"), record.get("scope")
    )


async def _refresh(
    conf: OAuth2, ctx: Context, store: TokenStore, params: Params, client: OAuth2Credential
) -> Params:
    token = params.get("refresh_token")
    binding = _binding(conf, ctx)
    key = _refresh_key(token) if isinstance(token, str) and token else None
    record = await store.get(key) if key else None
    if record is None or (binding is not None and binding != record.get("service")):
        return _error("invalid_request", "Invalid refresh_token")
    if record.get("client_id") != client.client_id:
        return _error(*_INVALID_CLIENT)
    scope = record.get("scope")
    if isinstance(scope, str):
        for name in scope.split():
            if name not in (conf.token_scopes or ()):
                return _error("invalid_scope", "Scope mismatch")
    userid = record.get("authenticated_userid")
    old_access = record.get("access")
    if conf.reuse_refresh_token:
        if isinstance(old_access, str):
            await store.delete(old_access)
        assert isinstance(token, str)
        return await _new_token(
            conf, ctx, store, client, userid, scope, reuse=(token, record.get("service"))
        )
    # Spent by whoever deletes it first; its access token goes with it (as Kong's row).
    if key is None or not await store.delete(key):
        return _error("invalid_request", "Invalid refresh_token")
    if isinstance(old_access, str):
        await store.delete(old_access)
    return await _new_token(conf, ctx, store, client, userid, scope)


async def authorize(conf: OAuth2, ctx: Context) -> Response:
    """`POST .../oauth2/authorize`, called by the application's backend once the user
    consented: answers with the `redirect_uri` carrying a code (or, for the implicit grant,
    a token)."""
    params = await parameters(ctx)
    state = params.get("state")
    answer: Params = {}
    redirect_uri: str | None = None
    implicit = False
    https, reason = check_https(ctx, conf.accept_http_if_already_terminated)
    if not https:
        answer = _error("access_denied", reason or "You must use HTTPS")
    elif not _provision_key_ok(conf, params.get("provision_key")):
        answer = _error(*_INVALID_PROVISION_KEY)
    elif _userid(params) is None:
        answer = _error(*_MISSING_USERID)
    else:
        response_type = params.get("response_type")
        if not (
            (response_type == "code" and conf.enable_authorization_code)
            or (response_type == "token" and conf.enable_implicit_grant)
        ):
            answer = _error("unsupported_response_type", "Invalid response_type")
        scope, error = _scope(conf, params)
        if error:
            answer = error
        found = _find_client(ctx, params.get("client_id"))
        client = found[0] if found else None
        if client is None or client.redirect_uris is None:
            answer = _error(*_INVALID_CLIENT)
        else:
            allowed = list(client.redirect_uris)
            redirect_uri = params.get("redirect_uri") or (allowed[0] if allowed else None)
            if redirect_uri not in allowed:
                answer = _error(*_BAD_REDIRECT)
                # The error goes to the application's first registered URI.
                redirect_uri = allowed[0] if allowed else None
        challenge, problem, method = _code_challenge(params)
        if problem:
            answer = _error("invalid_request", problem)
        elif client is not None and challenge is None and _requires_pkce(conf, client):
            answer = _error(
                "invalid_request", f"code_challenge is required for {client.client_type} clients"
            )
        if "error" not in answer and client is not None:
            store = token_store(ctx.gateway)
            if response_type == "code":
                code = random_string()
                record: Params = {
                    "client_id": client.client_id,
                    "service": _binding(conf, ctx),
                    "authenticated_userid": params.get("authenticated_userid"),
                    "scope": scope,
                    "challenge": challenge,
                    "challenge_method": method if challenge is not None else None,
                    "plugin": conf.plugin_id,
                }
                await store.put(_code_key(code), record, ttl=_CODE_TTL)
                answer = {"code": code}
            else:
                answer = await _new_token(
                    conf, ctx, store, client, _userid(params), scope, refreshable=False
                )
                implicit = True
    if state is not None:
        answer["state"] = state
    status = 400 if "error" in answer else 200
    if redirect_uri is None:
        return exit_response(status, answer)
    try:
        location = redirect_with(redirect_uri, answer, fragment=implicit)
    except ValueError:  # a redirect_uri that no longer parses
        return exit_response(400, _error(*_BAD_REDIRECT))
    return exit_response(status, {"redirect_uri": location})
