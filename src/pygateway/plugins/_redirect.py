"""redirect: answer with a redirect to a fixed URL instead of proxying (Kong's redirect).

With `keep_incoming_path`, the request's path and query string replace those of `location`
(`https://new.example/old?x` + a request for `/a/b?q=1` -> `https://new.example/a/b?q=1`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import attrs

from .._proxy import escape_query
from .._responses import Response
from .._schema import field
from ._base import Plugin
from ._registry import register

if TYPE_CHECKING:
    from .._context import Context

__all__ = ["Redirect"]

_CONTROL = frozenset(map(chr, [*range(0x20), 0x7F]))


def _check_url(value: str | None) -> str | None:
    if value is None:
        return None
    if _CONTROL.intersection(value):
        return "could not parse url. control characters are not allowed"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (raises on a port that is not a number)
    except ValueError as exc:
        return f"could not parse url. {exc}"
    if not parts.hostname:
        return "missing host in url"
    if not parts.scheme:
        return "missing scheme in url"
    return None


@attrs.frozen(kw_only=True)
class Redirect(Plugin):
    """Answer every request with `status_code` (301) and `Location: <location>`.

        Redirect(location="https://new.example.com", keep_incoming_path=True)

    The body is `redirecting`. `keep_incoming_path` puts the request's path and query
    string in place of the location's.
    """

    name = "redirect"
    priority = 779

    status_code: int = field(301, between=(100, 599))
    location: str = field(None, check=_check_url)
    keep_incoming_path: bool = False

    async def access(self, ctx: Context) -> Response | None:
        location = self.location
        if self.keep_incoming_path:
            request = ctx.request
            parts = urlsplit(location)
            # The normalized path is percent-encoded already; the query string is as sent,
            # with anything a header cannot carry escaped.
            query = escape_query(request.query_string, "latin-1")
            location = urlunsplit(parts._replace(path=request.path, query=query))
        return Response(self.status_code, "redirecting", headers={"location": location})


register(Redirect)
