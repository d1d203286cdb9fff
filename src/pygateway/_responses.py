"""`Response` (what a plugin returns to answer without proxying) and the gateway's own errors.

Error bodies follow Kong: `{"message": "...", "request_id": "..."}` by default, or HTML, XML or
plain text when the client's `Accept` prefers one of those.
"""

from __future__ import annotations

import json as _json
from collections.abc import Iterable, Mapping
from html import escape as _html_escape
from typing import Any
from xml.sax.saxutils import escape as _xml_escape

from ._headers import Headers
from ._types import RawHeaders

__all__ = ["ErrorResponse", "Response", "error_response"]

_MISSING: Any = object()


class Response:
    """An answer produced by the gateway itself (a plugin's early return, an error).

    `Response(403, json={"message": "nope"})`, `Response(200, b"ok", headers={...})`.
    `json=` serializes the value and sets `Content-Type: application/json; charset=utf-8`.
    `headers` (a mapping, pairs or a `Headers`) is copied: the response owns its headers.
    """

    __slots__ = ("body", "headers", "status_code")

    def __init__(
        self,
        status_code: int = 200,
        content: bytes | str = b"",
        *,
        json: Any = _MISSING,
        headers: Headers | RawHeaders | Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    ) -> None:
        self.status_code = status_code
        # A copy: the gateway adds its own headers (request id, ...) to this list.
        self.headers = Headers(headers)
        if json is not _MISSING:
            self.body = _json.dumps(json, separators=(",", ":")).encode()
            if "content-type" not in self.headers:
                self.headers["content-type"] = "application/json; charset=utf-8"
        else:
            self.body = content.encode() if isinstance(content, str) else content
        if "content-length" in self.headers:
            del self.headers["content-length"]

    def __repr__(self) -> str:
        return f"<Response [{self.status_code}]>"


class ErrorResponse(Response):
    """A response the gateway generated for an error (as opposed to a plugin's answer)."""

    __slots__ = ()


_FORMATS = {
    "application/json": "json",
    "text/html": "html",
    "application/xml": "xml",
    "text/xml": "xml",
    "text/plain": "plain",
}


def negotiate(accept: str | None) -> str:
    """Pick json/html/xml/plain from an Accept header (q-values honoured; json by default)."""
    if not accept:
        return "json"
    best, best_q = "json", -1.0
    for position, item in enumerate(accept.split(",")):
        media, _, params = item.strip().partition(";")
        media = media.strip().lower()
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        fmt = _FORMATS.get(media)
        if fmt is None and media in ("*/*", "application/*"):
            fmt = "json"
        if fmt is not None and q > 0 and (q > best_q or (q == best_q and position == 0)):
            best, best_q = fmt, q
    return best


def error_response(
    status_code: int,
    message: str,
    request_id: str,
    *,
    accept: str | None = None,
    headers: dict[str, str] | None = None,
) -> ErrorResponse:
    """The gateway's own error page, formatted for the client's Accept header."""
    fmt = negotiate(accept)
    if fmt == "html":
        body = (
            '<!doctype html>\n<html>\n<head><meta charset="utf-8"><title>Error</title></head>\n'
            f"<body>\n<h1>Error</h1>\n<p>{_html_escape(message)}.</p>\n"
            f"<p>request_id: {_html_escape(request_id)}</p>\n</body>\n</html>\n"
        )
        ctype = "text/html; charset=utf-8"
    elif fmt == "xml":
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<error>\n'
            f"  <message>{_xml_escape(message)}</message>\n"
            f"  <requestid>{_xml_escape(request_id)}</requestid>\n</error>\n"
        )
        ctype = "application/xml; charset=utf-8"
    elif fmt == "plain":
        body = f"{message}\nrequest_id: {request_id}\n"
        ctype = "text/plain; charset=utf-8"
    else:
        body = _json.dumps({"message": message, "request_id": request_id})
        ctype = "application/json; charset=utf-8"
    response = ErrorResponse(status_code, body, headers=headers)
    response.headers["content-type"] = ctype
    return response
