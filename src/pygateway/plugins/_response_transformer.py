"""response-transformer: change the headers and the JSON body of responses (Kong's).

Each operation runs in Kong's order, remove -> rename -> replace -> add -> append, first on
the headers (`header_filter`), then on the JSON body (`body_filter`).

Only what must change is held in memory: the body is buffered only when the configuration
changes JSON *and* the response says it is JSON (`Content-Type` containing
`application/json`); every other response streams through chunk by chunk. A body that does
not parse as a JSON object is sent unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import attrs

from .._headers import _checked_name
from .._schema import Record, field
from ._base import Plugin
from ._registry import register

if TYPE_CHECKING:
    from .._context import Context

__all__ = [
    "ResponseTransformer",
    "ResponseTransformerChanges",
    "ResponseTransformerRemove",
    "ResponseTransformerRename",
]

JsonType = Literal["boolean", "number", "string"]


def check_pairs(values: Sequence[str]) -> str | None:
    """Kong's rule for `name:value` entries."""
    for entry in values:
        if ":" not in entry:
            return f"key '{entry}' has no value"
    return None


def check_header_names(values: Sequence[str], *, pairs: bool = True) -> str | None:
    """Kong's rule for header entries: `name:value` (when `pairs`) with a valid name."""
    if pairs:
        reason = check_pairs(values)
        if reason:
            return reason
    for entry in values:
        name = split_pair(entry)[0] if pairs else entry
        try:
            _checked_name(name)
        except ValueError:
            return f"'{name}' is not a valid header name"
    return None


def _check_header_list(values: Sequence[str]) -> str | None:
    return check_header_names(values, pairs=False)


def split_pair(entry: str) -> tuple[str, str]:
    """`name:value` as Kong splits it: at the first colon, dropping any colons after it."""
    name, _, value = entry.partition(":")
    return name, value.lstrip(":")


@attrs.frozen(kw_only=True)
class ResponseTransformerRemove(Record):
    """Names of the headers and of the top-level JSON keys to remove."""

    headers: Sequence[str] = field((), check=_check_header_list)
    json: Sequence[str] = ()


@attrs.frozen(kw_only=True)
class ResponseTransformerRename(Record):
    """`old:new` entries for headers and top-level JSON keys."""

    headers: Sequence[str] = field((), check=check_header_names)
    json: Sequence[str] = field((), check=check_pairs)


@attrs.frozen(kw_only=True)
class ResponseTransformerChanges(Record):
    """`name:value` entries; `json_types[i]` is the type of the i-th `json` value."""

    headers: Sequence[str] = field((), check=check_header_names)
    json: Sequence[str] = field((), check=check_pairs)
    json_types: Sequence[JsonType] = ()


def _cast(value: str, kind: str | None) -> Any:
    if kind == "boolean":
        return value == "true"
    if kind == "number":
        try:
            number = float(value)
        except ValueError:
            return None  # Kong's tonumber() gives nil: the entry does nothing
        return int(number) if number.is_integer() and "." not in value else number
    return value


def _typed(changes: ResponseTransformerChanges) -> tuple[tuple[str, Any], ...]:
    out = []
    for i, entry in enumerate(changes.json):
        name, value = split_pair(entry)
        kind = changes.json_types[i] if i < len(changes.json_types) else None
        cast = _cast(value, kind) if value else None
        if cast is not None:  # as in Kong, an entry without a (valid) value does nothing
            out.append((name, cast))
    return tuple(out)


def _append(current: Any, value: Any) -> list[Any]:
    if current is None:
        return [value]
    if isinstance(current, list):
        return [*current, value]
    return [current, value]


@attrs.frozen(kw_only=True)
class ResponseTransformer(Plugin):
    """Remove, rename, replace, add and append response headers and JSON keys.

        ResponseTransformer(
            remove={"headers": ["server"], "json": ["internal_id"]},
            add={"headers": ["x-api-version:2"], "json": ["deprecated:true"],
                 "json_types": ["boolean"]},
        )

    `replace` changes only what is present, `add` only what is absent; `append` adds
    another header value, or turns a JSON key into a list and adds to it.
    """

    name = "response-transformer"
    priority = 800

    remove: ResponseTransformerRemove = attrs.field(factory=ResponseTransformerRemove)
    rename: ResponseTransformerRename = attrs.field(factory=ResponseTransformerRename)
    replace: ResponseTransformerChanges = attrs.field(factory=ResponseTransformerChanges)
    add: ResponseTransformerChanges = attrs.field(factory=ResponseTransformerChanges)
    append: ResponseTransformerChanges = attrs.field(factory=ResponseTransformerChanges)

    # Derived once from the config (not config: init=False).
    _json_ops: tuple[Any, ...] = attrs.field(init=False, eq=False, repr=False, default=())

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        ops = (
            tuple(self.remove.json),
            tuple(split_pair(e) for e in self.rename.json),
            _typed(self.replace),
            _typed(self.add),
            _typed(self.append),
        )
        object.__setattr__(self, "_json_ops", ops if any(ops) else ())

    async def header_filter(self, ctx: Context) -> None:
        response = ctx.response
        assert response is not None
        headers = response.headers
        for name in self.remove.headers:
            headers.pop(name, None)
        for entry in self.rename.headers:
            old, new = split_pair(entry)
            values = headers.getlist(old)
            if values:
                del headers[old]
                for value in values:
                    headers.add(new, value)
        for entry in self.replace.headers:
            name, value = split_pair(entry)
            if name in headers:
                headers[name] = value
        for entry in self.add.headers:
            name, value = split_pair(entry)
            if name not in headers:
                headers[name] = value
        for entry in self.append.headers:
            name, value = split_pair(entry)
            headers.add(name, value)
        if self._json_ops and "application/json" in headers.get("content-type", "").lower():
            # The body will change: collect it (the runloop drops Content-Length, since a
            # body_filter runs, and frames what is sent instead).
            ctx.plugin_state["chunks"] = []

    async def body_filter(self, ctx: Context, chunk: bytes, last: bool) -> bytes:
        chunks: list[bytes] | None = ctx.plugin_state.get("chunks")
        if chunks is None:
            return chunk  # nothing to change here: stream through
        if chunk:
            chunks.append(chunk)
        if not last:
            return b""
        body = b"".join(chunks)
        chunks.clear()
        return self._transform(body)

    def _transform(self, body: bytes) -> bytes:
        try:
            data = json.loads(body)
        except ValueError:
            return body
        if not isinstance(data, dict):
            return body
        remove, rename, replace, add, append = self._json_ops
        for name in remove:
            data.pop(name, None)
        for old, new in rename:
            if old in data:
                data[new] = data.pop(old)
        for name, value in replace:
            if name in data:
                data[name] = value
        for name, value in add:
            if name not in data:
                data[name] = value
        for name, value in append:
            data[name] = _append(data.get(name), value)
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


register(ResponseTransformer)
