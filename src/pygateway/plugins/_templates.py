"""Kong's `$(...)` value templates for the transformer plugins, without running code.

Kong renders a config value such as `Bearer $(headers.token)` with Lua templates. Here only
lookups are allowed, parsed once when the config is built:

    $(headers.x_api_key)          a client request header (`_` matches `-`, any case)
    $(headers["x-api-key"])       the same, with the name quoted
    $(query_params.page)          a query argument of the client's request
    $(uri_captures.version)       a named regex capture of the matched route path
    $(uri_captures[1])            a positional one
    $(shared.tenant)              a value another plugin put in `ctx.shared`
    $(headers.x or "default")     a fallback when the value is missing

A missing value without a fallback renders as an empty string. A repeated header or query
argument renders as its values joined with ", ".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from .._context import Context

__all__ = ["Template", "TemplateError", "compile_template"]

SOURCES = ("headers", "query_params", "uri_captures", "shared")

_EXPRESSION = re.compile(
    r"""\s*(?P<source>[a-z_]+)
        (?: \.(?P<attr>[A-Za-z_][A-Za-z0-9_]*)
          | \[\s*(?:"(?P<dq>[^"]*)"|'(?P<sq>[^']*)'|(?P<index>\d+))\s*\]
        )
        (?:\s+or\s+(?:"(?P<ddq>[^"]*)"|'(?P<dsq>[^']*)'))?\s*""",
    re.VERBOSE,
)


class TemplateError(ValueError):
    """A `$(...)` expression that is not one of the supported lookups."""


@attrs.frozen
class _Lookup:
    source: str
    key: str
    default: str | None


@attrs.frozen
class Template:
    """A compiled value: literal text and lookups, in order."""

    parts: tuple[str | _Lookup, ...]

    @property
    def is_static(self) -> bool:
        return all(isinstance(p, str) for p in self.parts)

    def render(self, ctx: Context) -> str:
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            value = _lookup(ctx, part)
            out.append(part.default or "" if value is None else value)
        return "".join(out)


def compile_template(text: str) -> Template:
    """Parse `text`; raises TemplateError naming the expression that is not supported."""
    parts: list[str | _Lookup] = []
    pos = 0
    while True:
        start = text.find("$(", pos)
        if start < 0:
            break
        end = text.find(")", start)
        if end < 0:
            raise TemplateError(f"unclosed '$(' in '{text}'")
        expression = text[start + 2 : end]
        match = _EXPRESSION.fullmatch(expression)
        if match is None or match["source"] not in SOURCES:
            raise TemplateError(
                f"unsupported template expression '$({expression})': expected a lookup in "
                + ", ".join(SOURCES)
            )
        if text[pos:start]:
            parts.append(text[pos:start])
        key = next(match[g] for g in ("attr", "dq", "sq", "index") if match[g] is not None)
        default = match["ddq"] if match["ddq"] is not None else match["dsq"]
        parts.append(_Lookup(match["source"], key, default))
        pos = end + 1
    if text[pos:]:
        parts.append(text[pos:])
    return Template(tuple(parts))


def _joined(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


def _lookup(ctx: Context, lookup: _Lookup) -> str | None:
    key = lookup.key
    if lookup.source == "headers":
        values = ctx.request.headers.getlist(key.replace("_", "-"))
        if not values and "_" in key:
            values = ctx.request.headers.getlist(key)
        return ", ".join(values) if values else None
    source: Mapping[str, Any]
    if lookup.source == "query_params":
        source = ctx.request.query_params
    elif lookup.source == "uri_captures":
        source = ctx.uri_captures
    else:
        source = ctx.shared
    return _joined(source.get(key))
