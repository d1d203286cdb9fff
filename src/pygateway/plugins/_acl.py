"""acl: let a consumer through by the groups it belongs to (Kong's acl plugin).

The groups are the consumer's `acls`, or the groups another plugin authenticated
(`ctx.shared["authenticated_groups"]`, Kong's `kong.ctx.shared.authenticated_groups`, as
ldap-auth sets them) when there is no consumer or it is the anonymous one. Kong's rules:

- nobody authenticated -> 401 `Unauthorized` (403 if a credential was found but no consumer);
- a consumer with no group, against an `allow` list -> 401 (403 with a credential);
- in a `deny` group, or in no `allow` group -> 403 `You cannot consume this service`;
- otherwise the upstream gets `X-Consumer-Groups: a, b` (or `X-Authenticated-Groups`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import attrs

from .._exceptions import ConfigurationError
from .._responses import error_response
from ._base import Plugin
from ._registry import register

if TYPE_CHECKING:
    from .._context import Context
    from .._responses import Response

__all__ = ["Acl"]

logger = logging.getLogger("pygateway.plugins.acl")

_BLOCKED = "You cannot consume this service"
_CONSUMER_GROUPS = "x-consumer-groups"
_AUTHENTICATED_GROUPS = "x-authenticated-groups"


@attrs.frozen(kw_only=True)
class Acl(Plugin):
    """Allow or deny consumers by group; exactly one of `allow` and `deny` is non-empty.

    Needs an authentication plugin before it (any of Kong's: they all run first). Groups
    come from `Consumer(acls=[...])`, or `acls: [{group: ...}]` in a declarative file.

        gw.Route(paths=["/admin"], plugins=[KeyAuth(), Acl(allow=["admins"])])
    """

    name = "acl"
    priority = 950
    scopes = frozenset({"global", "service", "route"})

    allow: Sequence[str] | None = None
    deny: Sequence[str] | None = None
    hide_groups_header: bool = False
    always_use_authenticated_groups: bool = False
    # The configured groups as a set, built once (not configuration: left out of eq/config).
    _groups: frozenset[str] = attrs.field(init=False, default=frozenset(), eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.allow and self.deny:
            raise ConfigurationError(
                "exactly one of these fields must be non-empty: 'config.allow', 'config.deny'"
            )
        if not self.allow and not self.deny:
            raise ConfigurationError(
                "at least one of these fields must be non-empty: 'config.allow', 'config.deny'"
            )
        object.__setattr__(self, "_groups", frozenset(self.deny or self.allow or ()))

    async def access(self, ctx: Context) -> Response | None:
        consumer, credential = ctx.consumer, ctx.credential
        authenticated = _authenticated_groups(ctx)
        if consumer is None:
            if authenticated is None:
                return self._refuse(ctx, 403 if credential is not None else 401)
            groups, header = authenticated, _AUTHENTICATED_GROUPS
        elif authenticated is not None and (
            credential is None or self.always_use_authenticated_groups
        ):
            # Groups another plugin authenticated override the anonymous consumer's (and,
            # with always_use_authenticated_groups, anyone's).
            groups, header = authenticated, _AUTHENTICATED_GROUPS
        else:
            groups, header = tuple(consumer.acls), _CONSUMER_GROUPS
            if not groups and not self.deny:
                return self._refuse(ctx, 403 if credential is not None else 401)
        listed = any(group in self._groups for group in groups)
        if listed == bool(self.deny):  # in a denied group, or in no allowed one
            return self._refuse(ctx, 403)
        assert ctx.upstream_request is not None
        headers = ctx.upstream_request.headers
        # The upstream trusts these: only the gateway may set them (the client's
        # X-Consumer-* headers are dropped on the way in already).
        if _AUTHENTICATED_GROUPS in headers:
            del headers[_AUTHENTICATED_GROUPS]
        if not self.hide_groups_header:
            headers[header] = ", ".join(groups)
        return None

    def _refuse(self, ctx: Context, status: int) -> Response:
        message = _BLOCKED if status == 403 else "Unauthorized"
        return error_response(
            status, message, ctx.request_id, accept=ctx.request.headers.get("accept")
        )


def _authenticated_groups(ctx: Context) -> tuple[str, ...] | None:
    """The groups another plugin authenticated for this request, if any."""
    groups = ctx.shared.get("authenticated_groups")
    if groups is None:
        return None
    if isinstance(groups, str) or not isinstance(groups, Sequence):
        logger.warning(
            "invalid authenticated_groups, a list of group names was expected (request %s)",
            ctx.request_id,
        )
        return None
    return tuple(str(group) for group in groups)


register(Acl)
