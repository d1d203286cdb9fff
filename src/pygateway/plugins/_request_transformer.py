"""request-transformer: change the request before it goes upstream (Kong's).

In `access`, in Kong's order: `replace.uri` (the upstream path), `http_method`, then the
headers, the body and the query string, each with remove -> rename -> replace -> add ->
append. Values may be templates (`$(headers.x)`, `$(query_params.y)`,
`$(uri_captures.name)`, `$(shared.k)`, see `_templates`), rendered from the client's
request as received; templates are lookups only, never code.

Bodies are changed when the client's `Content-Type` is JSON (`application/json`, a JSON
object), a form (`application/x-www-form-urlencoded`) or `multipart/form-data`, and there
are body operations; the body is read only then. Other bodies stream through.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

import attrs

from .._schema import Record, field
from ._base import Plugin
from ._registry import register
from ._response_transformer import check_header_names, check_pairs, split_pair
from ._templates import Template, TemplateError, compile_template

if TYPE_CHECKING:
    from .._context import Context
    from .._headers import Headers
    from .._responses import Response

__all__ = [
    "RequestTransformer",
    "RequestTransformerChanges",
    "RequestTransformerRemove",
    "RequestTransformerRename",
    "RequestTransformerReplace",
]

_METHOD = re.compile(r"^[A-Z]+$")
_BODYLESS_METHODS = ("GET", "HEAD", "TRACE")
_JSON, _FORM, _MULTIPART = "json", "form", "multipart"
_BOUNDARY = re.compile(r';\s*boundary=(?:"([^"]+)"|([^;\s]+))', re.IGNORECASE)
_PART_NAME = re.compile(rb'(?i)content-disposition:[^\r\n]*?;\s*name="([^"]*)"')


def _check_templates(values: Sequence[str]) -> str | None:
    reason = check_pairs(values)
    if reason:
        return reason
    for entry in values:
        try:
            compile_template(split_pair(entry)[1])
        except TemplateError as exc:
            return f"invalid template in '{entry}': {exc}"
    return None


def _check_header_templates(values: Sequence[str]) -> str | None:
    return check_header_names(values) or _check_templates(values)


def _check_removed_headers(values: Sequence[str]) -> str | None:
    return check_header_names(values, pairs=False)


def _check_uri(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        compile_template(value)
    except TemplateError as exc:
        return f"invalid template in '{value}': {exc}"
    return None


def _check_method(value: str | None) -> str | None:
    if value is not None and not _METHOD.fullmatch(value):
        return f"invalid value: {value}"
    return None


@attrs.frozen(kw_only=True)
class RequestTransformerRemove(Record):
    """Names of the headers, query arguments and body fields to remove."""

    headers: Sequence[str] = field((), check=_check_removed_headers)
    querystring: Sequence[str] = ()
    body: Sequence[str] = ()


@attrs.frozen(kw_only=True)
class RequestTransformerRename(Record):
    """`old:new` entries."""

    headers: Sequence[str] = field((), check=_check_header_templates)
    querystring: Sequence[str] = field((), check=_check_templates)
    body: Sequence[str] = field((), check=_check_templates)


@attrs.frozen(kw_only=True)
class RequestTransformerChanges(Record):
    """`name:value` entries (values may be templates), for `add` and `append`."""

    headers: Sequence[str] = field((), check=_check_header_templates)
    querystring: Sequence[str] = field((), check=_check_templates)
    body: Sequence[str] = field((), check=_check_templates)


@attrs.frozen(kw_only=True)
class RequestTransformerReplace(Record):
    """`name:value` entries, and `uri`: the upstream path (may be a template)."""

    headers: Sequence[str] = field((), check=_check_header_templates)
    querystring: Sequence[str] = field((), check=_check_templates)
    body: Sequence[str] = field((), check=_check_templates)
    uri: str | None = field(None, check=_check_uri)


Pairs = tuple[tuple[str, Template], ...]
Params = dict[str, Any]  # name -> str | list[str], in order


def _pairs(values: Sequence[str]) -> Pairs:
    # An entry with an empty value ("x:") does nothing, as in Kong.
    return tuple(
        (name, compile_template(value)) for name, value in (split_pair(e) for e in values) if value
    )


@attrs.frozen
class _Ops:
    """One of headers / querystring / body: each operation, compiled."""

    remove: tuple[str, ...]
    rename: Pairs
    replace: Pairs
    add: Pairs
    append: Pairs

    def __bool__(self) -> bool:
        return bool(self.remove or self.rename or self.replace or self.add or self.append)


def _append(current: Any, value: str) -> Any:
    if current is None:
        return [value]
    if isinstance(current, list):
        return [*current, value]
    return [current, value]


def _apply(params: Params, ops: _Ops, ctx: Context, *, has_content: bool = True) -> None:
    """The five operations on a name -> value(s) mapping (query arguments, body fields)."""
    if has_content:
        for name in ops.remove:
            params.pop(name, None)
        for old, new in ops.rename:
            if old in params:
                params[new.render(ctx)] = params.pop(old)
        for name, value in ops.replace:
            if name in params:
                params[name] = value.render(ctx)
    for name, value in ops.add:
        if name not in params:
            params[name] = value.render(ctx)
    for name, value in ops.append:
        params[name] = _append(params.get(name), value.render(ctx))


def _decode_form(text: str) -> Params:
    params: Params = {}
    for key, value in parse_qsl(text, keep_blank_values=True):
        if key in params:
            params[key] = _append(params[key], value)
        else:
            params[key] = value
    return params


def _encode_form(params: Params) -> str:
    return urlencode(list(params.items()), doseq=True)


def _content_kind(content_type: str | None) -> str | None:
    lowered = (content_type or "").lower()
    if "application/json" in lowered:
        return _JSON
    if "application/x-www-form-urlencoded" in lowered:
        return _FORM
    if "multipart/form-data" in lowered:
        return _MULTIPART
    return None


class _Multipart:
    """A multipart/form-data body as (name, raw part) pairs, rebuilt with the same boundary."""

    def __init__(self, boundary: bytes, parts: list[tuple[str, bytes]]) -> None:
        self.boundary = boundary
        self.parts = parts

    @classmethod
    def parse(cls, content_type: str, body: bytes) -> _Multipart | None:
        found = _BOUNDARY.search(content_type)
        if found is None:
            return None
        boundary = (found[1] or found[2]).encode("latin-1", "replace")
        delimiter = b"--" + boundary
        pieces = body.split(delimiter)
        if len(pieces) < 2 or not pieces[-1].startswith(b"--"):
            return None  # no closing delimiter: not a body this can rebuild faithfully
        parts = []
        for piece in pieces[1:-1]:
            if not piece.startswith(b"\r\n") or not piece.endswith(b"\r\n"):
                return None
            raw = piece[2:-2]
            head = raw.split(b"\r\n\r\n", 1)[0]
            name = _PART_NAME.search(head)
            if name is None:
                return None
            parts.append((name[1].decode("utf-8", "replace"), raw))
        return cls(boundary, parts)

    def has(self, name: str) -> bool:
        return any(n == name for n, _ in self.parts)

    def value(self, name: str) -> bytes:
        raw = next(r for n, r in self.parts if n == name)
        return raw.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in raw else b""

    def delete(self, name: str) -> None:
        self.parts = [(n, r) for n, r in self.parts if n != name]

    def set_simple(self, name: str, value: bytes) -> None:
        # As browsers encode a field name (WHATWG): no quote or line break can end it.
        quoted = name.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A").encode()
        if b"--" + self.boundary in value:
            # A templated value must not end its part and smuggle in others (say, one that
            # `remove` took out).
            raise ValueError("a multipart value may not contain the body's boundary")
        head = b'Content-Disposition: form-data; name="' + quoted + b'"'
        self.parts.append((name, head + b"\r\n\r\n" + value))

    def encode(self) -> bytes:
        delimiter = b"--" + self.boundary
        out = [delimiter + b"\r\n" + raw + b"\r\n" for _, raw in self.parts]
        return b"".join(out) + delimiter + b"--\r\n"


def _apply_multipart(form: _Multipart, ops: _Ops, ctx: Context, has_content: bool) -> None:
    """Kong's multipart operations: rename, remove, replace, add (no append)."""
    if has_content:
        for old, new in ops.rename:
            if form.has(old):
                value = form.value(old)
                form.delete(old)
                form.set_simple(new.render(ctx), value)
        for name in ops.remove:
            form.delete(name)
        for name, template in ops.replace:
            if form.has(name):
                form.delete(name)
                form.set_simple(name, template.render(ctx).encode())
    for name, template in ops.add:
        if not form.has(name):
            form.set_simple(name, template.render(ctx).encode())


@attrs.frozen(kw_only=True)
class RequestTransformer(Plugin):
    """Remove, rename, replace, add and append headers, query arguments and body fields of
    the request sent upstream; change its method (`http_method`) and path (`replace.uri`).

        RequestTransformer(
            remove={"headers": ["cookie"]},
            add={"headers": ["x-tenant:$(uri_captures.tenant)"], "querystring": ["v:2"]},
            replace={"uri": "/api/$(uri_captures.rest)"},
        )

    `replace` changes only what is present, `add` only what is absent, `append` adds
    another value (a JSON field becomes a list).
    """

    name = "request-transformer"
    priority = 801

    http_method: str | None = field(None, check=_check_method)
    remove: RequestTransformerRemove = attrs.field(factory=RequestTransformerRemove)
    rename: RequestTransformerRename = attrs.field(factory=RequestTransformerRename)
    replace: RequestTransformerReplace = attrs.field(factory=RequestTransformerReplace)
    add: RequestTransformerChanges = attrs.field(factory=RequestTransformerChanges)
    append: RequestTransformerChanges = attrs.field(factory=RequestTransformerChanges)

    # Derived once from the config (not config: init=False).
    _compiled: Any = attrs.field(init=False, eq=False, repr=False, default=None)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        compiled: dict[str, Any] = {}
        for part in ("headers", "querystring", "body"):
            compiled[part] = _Ops(
                tuple(getattr(self.remove, part)),
                _pairs(getattr(self.rename, part)),
                _pairs(getattr(self.replace, part)),
                _pairs(getattr(self.add, part)),
                _pairs(getattr(self.append, part)),
            )
        uri = self.replace.uri
        compiled["uri"] = compile_template(uri) if uri is not None else None
        object.__setattr__(self, "_compiled", compiled)

    async def access(self, ctx: Context) -> Response | None:
        state = ctx.upstream_request
        assert state is not None
        compiled = self._compiled
        uri: Template | None = compiled["uri"]
        if uri is not None:
            state.path = uri.render(ctx)
        kind = _content_kind(ctx.request.headers.get("content-type"))
        if self.http_method is not None:
            state.method = self.http_method
            if self.http_method in _BODYLESS_METHODS and kind == _FORM:
                # Kong moves a form body into the query string for a body-less method.
                form = _decode_form((await ctx.request.body()).decode("utf-8", "replace"))
                if form:
                    query = _decode_form(state.query_string)
                    for key, value in form.items():
                        values = value if isinstance(value, list) else [value]
                        for item in values:
                            query[key] = _append(query[key], item) if key in query else item
                    state.query_string = _encode_form(query)
        if compiled["headers"]:
            self._headers(ctx, state.headers, compiled["headers"])
        if compiled["body"] and kind is not None:
            body = await self._body(ctx, kind, compiled["body"])
            if body is not None:
                state.body = body
        if compiled["querystring"]:
            query = _decode_form(state.query_string)
            _apply(query, compiled["querystring"], ctx)
            state.query_string = _encode_form(query)
        return None

    def _headers(self, ctx: Context, headers: Headers, ops: _Ops) -> None:
        # The Host header is the gateway's (from the service or preserve_host): only
        # `replace` may set it, as in Kong.
        for name in ops.remove:
            if name.lower() != "host":
                headers.pop(name, None)
        for old, new in ops.rename:
            values = headers.getlist(old) if old.lower() != "host" else []
            if values:
                del headers[old]
                for value in values:
                    headers.add(new.render(ctx), value)
        for name, template in ops.replace:
            if name in headers or name.lower() == "host":
                headers[name] = template.render(ctx)
        for name, template in ops.add:
            if name not in headers and name.lower() != "host":
                headers[name] = template.render(ctx)
        for name, template in ops.append:
            if name.lower() != "host":
                headers.add(name, template.render(ctx))

    async def _body(self, ctx: Context, kind: str, ops: _Ops) -> bytes | None:
        """The new body, or None to send the client's unchanged."""
        raw = await ctx.request.body()
        if kind == _JSON:
            if raw.strip():
                try:
                    params = json.loads(raw)
                except ValueError:
                    return None  # not JSON after all: leave it alone
                if not isinstance(params, dict):
                    return None
            else:
                params = {}
            _apply(params, ops, ctx, has_content=bool(raw))
            return json.dumps(params, separators=(",", ":"), ensure_ascii=False).encode()
        if kind == _MULTIPART:
            content_type = ctx.request.headers.get("content-type", "")
            parts = _Multipart.parse(content_type, raw)
            if parts is None:
                return None  # not a body this can rebuild: leave it alone
            _apply_multipart(parts, ops, ctx, has_content=bool(raw))
            return parts.encode()
        form = _decode_form(raw.decode("utf-8", "replace"))
        _apply(form, ops, ctx, has_content=bool(raw))
        return _encode_form(form).encode()


register(RequestTransformer)
