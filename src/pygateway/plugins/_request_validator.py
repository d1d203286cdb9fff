"""request-validator: check a request's parameters and JSON body against schemas (Kong's).

Parameters (`parameter_schema`: query arguments, headers, path captures) are checked first,
each deserialized with its OpenAPI 3 `style`/`explode` and validated against a JSON Schema
draft 4 (strings are coerced to the numbers and booleans the schema asks for, as Kong's
validator does). Then, with `body_schema`, the `Content-Type` must be one of
`allowed_content_types`, and a JSON body (`application/json` or `*/*+json`) is validated
against the schema. A failure is a `400` with Kong's messages; `verbose_response` tells why.

Schemas are compiled when the plugin is built, with the `jsonschema` library (the optional
extra `pygateway[validation]`), imported only then. Kong's own schema format
(`version: kong`) is not implemented: a `body_schema` needs a JSON Schema `version`.
"""

from __future__ import annotations

import datetime
import functools
import importlib
import json
import logging
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote

import attrs

from .. import _schema
from .._exceptions import ConfigurationError, PathPart
from .._responses import Response
from ._base import Plugin
from ._registry import register

if TYPE_CHECKING:
    from .._context import Context

__all__ = ["RequestValidator"]

logger = logging.getLogger("pygateway.plugins.request_validator")

DENY_BODY = "request body doesn't conform to schema"
DENY_CONTENT_TYPE = "specified Content-Type is not allowed"
DENY_PARAM = "request param doesn't conform to schema"
INVALID_JSON = "request body is not valid JSON"

Version = Literal["kong", "draft4", "draft6", "draft7", "draft201909", "draft202012"]
_DRAFTS = {
    "draft4": ("Draft4Validator", "draft 4"),
    "draft6": ("Draft6Validator", "draft 6"),
    "draft7": ("Draft7Validator", "draft 7"),
    "draft201909": ("Draft201909Validator", "draft 2019-09"),
    "draft202012": ("Draft202012Validator", "draft 2020-12"),
}
_LOCATIONS = ("query", "header", "path")
_STYLES = ("label", "form", "matrix", "simple", "spaceDelimited", "pipeDelimited", "deepObject")
_ALLOWED_STYLES = {
    "header": {"simple"},
    "path": {"label", "matrix", "simple"},
    "query": {"form", "spaceDelimited", "pipeDelimited", "deepObject"},
}
_PARAM_FIELDS = ("in", "name", "required", "style", "explode", "schema")
_MESSAGE_LIMIT = 500
Errors = list[tuple[tuple[PathPart, ...], str]]


# -- media types (RFC 2045, as Kong's kong.tools.mime_type) ---------------------------------

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
# The parameters are taken whole here and parsed strictly by `_PARAM` below: a repeated
# group here would backtrack exponentially on a value that does not match (a newline).
_MEDIA_TYPE = re.compile(rf"(?:({_TOKEN})/({_TOKEN})|(\*))((?:[ \t]*;.*)?)", re.DOTALL)
_PARAM = re.compile(rf'[ \t]*;[ \t]*({_TOKEN})=({_TOKEN}|"(?:[^"\\\x00-\x1f\x7f]|\\[\x00-\x7f])*")')

MediaType = tuple[str, str, tuple[tuple[str, str], ...]]


@functools.lru_cache(maxsize=1024)
def parse_media_type(value: str) -> MediaType | None:
    """`("application", "json", (("charset", "utf-8"),))`, or None if it is not one.

    Type, subtype and parameter names are lower-cased; a lone `*` is `*/*`.
    """
    m = _MEDIA_TYPE.fullmatch(value)
    if m is None:
        return None
    kind, subtype = (m[1].lower(), m[2].lower()) if m[3] is None else ("*", "*")
    params: list[tuple[str, str]] = []
    rest = m[4]
    while rest:
        p = _PARAM.match(rest)
        if p is None:
            return None
        raw = p[2]
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params.append((p[1].lower(), raw))
        rest = rest[p.end() :]
    return kind, subtype, tuple(params)


def _params_match(allowed: MediaType, given: MediaType) -> bool:
    """Kong: the same parameters, the charset's value compared case-insensitively."""
    if len(allowed[2]) != len(given[2]):
        return False
    given_params = dict(given[2])
    for key, value in allowed[2]:
        other = given_params.get(key)
        if key == "charset":  # case-insensitive (RFC 2046)
            if other is None or value.lower() != other.lower():
                return False
        elif value != other:
            return False
    return True


def _check_content_types(value: Sequence[str]) -> Errors:
    errors: Errors = []
    for i, content_type in enumerate(value):
        if not content_type:
            errors.append((("allowed_content_types", i), "content type cannot be empty"))
            continue
        parsed = parse_media_type(content_type)
        if parsed is None:
            errors.append((("allowed_content_types", i), f"invalid value: {content_type}"))
        elif len(parsed[2]) > 1:
            # Kong: the RFC says nothing of several parameters; only one (charset) is taken.
            errors.append(
                (
                    ("allowed_content_types", i),
                    f"does not support multiple parameters: {content_type}",
                )
            )
    return errors


def _is_json(media: MediaType) -> bool:
    return media[0] == "application" and (media[1] == "json" or media[1].endswith("+json"))


# -- schemas --------------------------------------------------------------------------------


def _jsonschema() -> Any:
    """The jsonschema module, imported on first use: it is an optional dependency."""
    try:
        return importlib.import_module("jsonschema")
    except ImportError:
        raise ConfigurationError(
            "request-validator needs the jsonschema library: "
            "install it with `pip install pygateway[validation]`"
        ) from None


_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_TIME = re.compile(
    r"(\d{2}):(\d{2}):(\d{2})(?:\.\d+)?(?:(?P<z>[Zz])|(?P<sign>[+-])(\d{2}):(\d{2}))?"
)


def _is_date(value: object) -> bool:
    if not isinstance(value, str):
        return True
    m = _DATE.fullmatch(value)
    if m is None:
        return False
    try:
        datetime.date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError:
        return False
    return True


def _is_time(value: object, *, offset: bool = False) -> bool:
    if not isinstance(value, str):
        return True
    m = _TIME.fullmatch(value)
    if m is None or (offset and m["z"] is None and m["sign"] is None):
        return False
    hour, minute, second = int(m[1]), int(m[2]), int(m[3])
    if hour > 23 or minute > 59 or second > 60:  # 60: a leap second
        return False
    return m["sign"] is None or (int(m[6]) <= 23 and int(m[7]) <= 59)


def _is_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    date, sep, time = value.partition("T") if "T" in value else value.partition("t")
    return bool(sep) and _is_date(date) and _is_time(time, offset=True)


@functools.cache
def _format_checker() -> Any:
    """The formats Kong's draft 4 validator checks (RFC 3339 `date`, `date-time`, `time`);
    other `format` values are annotations only."""
    checker = _jsonschema().FormatChecker(formats=())
    checker.checks("date")(_is_date)
    checker.checks("time")(_is_time)
    checker.checks("date-time")(_is_date_time)
    return checker


class _SchemaError(Exception):
    """A schema that cannot be used; its text is the configuration error's."""


def _decode(value: str | Mapping[str, Any] | bool) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError as exc:
            raise _SchemaError(f"failed decoding schema: {exc}") from None
    return _schema.plain(value)


_REF_KEYWORDS = frozenset({"$ref", "$dynamicRef", "$recursiveRef"})
_SPECIFICATIONS = {
    "draft4": "DRAFT4",
    "draft6": "DRAFT6",
    "draft7": "DRAFT7",
    "draft201909": "DRAFT201909",
    "draft202012": "DRAFT202012",
}


def _walk_refs(node: Any) -> list[str]:
    refs: list[str] = []
    if isinstance(node, Mapping):
        for key, value in node.items():
            if key in _REF_KEYWORDS and isinstance(value, str):
                refs.append(value)
            else:
                refs.extend(_walk_refs(value))
    elif isinstance(node, list):
        for value in node:
            refs.extend(_walk_refs(value))
    return refs


def _check_refs(decoded: Any, version: str) -> Any:
    """An empty `referencing.Registry` (it retrieves nothing, ever) after checking that
    every reference in `decoded` is local and resolves within it."""
    referencing = importlib.import_module("referencing")
    specification = getattr(
        importlib.import_module("referencing.jsonschema"), _SPECIFICATIONS[version]
    )
    registry = referencing.Registry()
    for ref in _walk_refs(decoded):
        if not ref.startswith("#"):
            raise _SchemaError(f"remote references are not supported: '{ref}'")
    root = specification.create_resource(decoded)
    resolver = registry.resolver_with_root(root)

    def walk(node: Any, resolver: Any) -> None:
        if isinstance(node, Mapping):
            if isinstance(node.get("$id", node.get("id")), str):
                resolver = resolver.in_subresource(specification.create_resource(node))
            for key, value in node.items():
                if key in _REF_KEYWORDS and isinstance(value, str):
                    try:
                        resolver.lookup(value)
                    except Exception:  # Unresolvable, or a malformed pointer
                        raise _SchemaError(f"unresolvable reference: '{value}'") from None
                else:
                    walk(value, resolver)
        elif isinstance(node, list):
            for value in node:
                walk(value, resolver)

    walk(decoded, resolver)
    return registry


def _pointer(root: Any, ref: str) -> Any:
    """The target of a local `#/a/b` reference; KeyError if there is none."""
    node = root
    for part in unquote(ref[1:]).split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise KeyError(ref)
    return node


def _compile(decoded: Any, version: str) -> Any:
    """A jsonschema validator for a decoded schema, checked against its draft's metaschema;
    references must be local (nothing is fetched at request time)."""
    js = _jsonschema()
    class_name, label = _DRAFTS[version]
    cls = getattr(js, class_name)
    try:
        cls.check_schema(decoded)
    except js.SchemaError as exc:
        where = f" (at {exc.json_path})" if exc.path else ""
        hint = (
            " (Kong's own schema format, version 'kong', is not supported)"
            if isinstance(decoded, list)
            else ""
        )
        raise _SchemaError(
            f"not a valid JSONschema {label} schema: {exc.message}{where}{hint}"
        ) from None
    # An empty registry: a reference the schema cannot resolve itself fails now, never
    # by fetching a document (a blocking request, from the event loop) at request time.
    registry = _check_refs(decoded, version)
    validator = cls(decoded, format_checker=_format_checker(), registry=registry)
    try:
        validator.is_valid({})  # as Kong: run it once, so a broken schema fails now
    except Exception as exc:
        raise _SchemaError(f"failed to generate schema validator: {exc}") from None
    return validator


def _resolve(schema: Any, root: Any) -> Any:
    """`schema`, following local `$ref`s (a few hops at most)."""
    for _ in range(8):
        if not isinstance(schema, Mapping):
            return schema
        ref = schema.get("$ref")
        if not isinstance(ref, str) or not (ref == "#" or ref.startswith("#/")):
            return schema
        try:
            schema = _pointer(root, ref)
        except KeyError:
            return schema
    return schema


def _describe(error: Any) -> str:
    """A validation error as one line: where in the document (`property a.b[0]`, or
    `item [1]` in an array), and what."""
    where = ""
    for part in error.absolute_path:
        where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else str(part))
    message = str(error.message)
    if where:
        kind = "item" if where.startswith("[") else "property"
        message = f"{kind} {where} validation failed: {message}"
    if len(message) > _MESSAGE_LIMIT:
        message = message[: _MESSAGE_LIMIT - 3] + "..."
    return message


@functools.cache
def _best_match() -> Any:
    return _jsonschema().exceptions.best_match


def _first_error(validator: Any, instance: Any) -> str | None:
    """The most relevant reason `instance` is invalid, or None if it is valid."""
    best = _best_match()(validator.iter_errors(instance))
    return None if best is None else _describe(best)


# -- parameters -----------------------------------------------------------------------------

_MISSING: Any = object()
_INTEGER = re.compile(r"[+-]?\d+")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


class _Invalid(Exception):
    """A parameter value that cannot be deserialized with its style."""


def _convert(value: str, kind: str) -> Any:
    if kind == "integer" and _INTEGER.fullmatch(value):
        return int(value)
    if kind == "number" and _NUMBER.fullmatch(value):
        return int(value) if _INTEGER.fullmatch(value) else float(value)
    if kind == "boolean" and value in ("true", "false"):
        return value == "true"
    if kind == "null" and value == "null":
        return None
    return _MISSING


def _coerce(value: Any, schema: Any, root: Any, depth: int = 0) -> Any:
    """Parameter strings as the numbers and booleans the schema asks for (Kong's validator
    coerces them the same way); anything else is left for validation to refuse."""
    schema = _resolve(schema, root)
    if depth > 16 or not isinstance(schema, Mapping):
        return value
    kinds = schema.get("type")
    kinds = [kinds] if isinstance(kinds, str) else list(kinds or ())
    if isinstance(value, str):
        if "string" in kinds:
            return value
        for kind in ("integer", "number", "boolean", "null"):
            if kind in kinds and (converted := _convert(value, kind)) is not _MISSING:
                return converted
        return value
    if isinstance(value, list):
        items = schema.get("items")
        prefix = schema.get("prefixItems")
        if isinstance(items, list):  # draft 4 tuple validation
            prefix, items = items, schema.get("additionalItems")
        out = []
        for i, item in enumerate(value):
            sub = prefix[i] if isinstance(prefix, list) and i < len(prefix) else items
            out.append(_coerce(item, sub, root, depth + 1))
        return out
    if isinstance(value, dict):
        properties = schema.get("properties")
        properties = properties if isinstance(properties, Mapping) else {}
        extra = schema.get("additionalProperties")
        return {k: _coerce(v, properties.get(k, extra), root, depth + 1) for k, v in value.items()}
    return value


def _pairs(items: list[str]) -> dict[str, str]:
    """`["role", "admin", "name", "Alex"]` -> `{"role": "admin", "name": "Alex"}`."""
    if len(items) % 2:
        raise _Invalid("an object needs key,value pairs (got an odd number of items)")
    return _unique(zip(items[::2], items[1::2], strict=True))


def _assignments(items: list[str], *, strip: bool = False) -> dict[str, str]:
    """`["role=admin", "name=Alex"]` -> `{"role": "admin", "name": "Alex"}`."""
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise _Invalid(f"'{item}' is not a key=value pair")
        out.append((key.strip(), value.strip()) if strip else (key, value))
    return _unique(out)


def _unique(pairs: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in pairs:
        if key in out:
            raise _Invalid(f"duplicate key '{key}'")
        out[key] = value
    return out


def _split(value: str, sep: str) -> list[str]:
    return value.split(sep) if value else []


@attrs.frozen
class _Param:
    """One compiled `parameter_schema` entry."""

    location: str
    name: str
    required: bool
    style: str | None = None
    explode: bool = False
    kind: str = "primitive"  # how the value deserializes: primitive, array or object
    schema: Any = None
    validator: Any = None

    def check(self, ctx: Context) -> tuple[str, Any] | None:
        """None if the parameter is fine, else (why, the value as deserialized or None)."""
        try:
            candidates = self._values(ctx)
        except _Invalid as exc:
            return str(exc), None
        if candidates is _MISSING:
            return ("required parameter missing", None) if self.required else None
        if self.validator is None:
            return None  # no style/explode/schema: only `required` is checked
        for value in candidates:
            reason = _first_error(self.validator, _coerce(value, self.schema, self.schema))
            if reason is not None:
                return reason, value
        return None

    def _values(self, ctx: Context) -> Any:
        """The values to validate (several for a repeated primitive), or _MISSING."""
        if self.location == "header":
            headers = ctx.request.headers.getlist(self.name)
            if not headers:
                return _MISSING
            return self._from_header(headers) if self.style else [headers]
        if self.location == "query":
            return self._from_query(ctx.request.query_params)
        raw = ctx.uri_captures.get(self.name)
        if raw is None:
            return _MISSING
        return [self._from_path(raw)] if self.style else [raw]

    def _from_header(self, values: list[str]) -> list[Any]:
        if self.kind == "primitive":
            return values  # each as is, whitespace and commas included
        # Whitespace around list items is not significant in headers (RFC 9110 5.6.1).
        items = [item.strip() for value in values for item in _split(value, ",")]
        if self.kind == "array":
            return [items]
        return [_assignments(items, strip=True) if self.explode else _pairs(items)]

    def _from_query(self, query: Mapping[str, str | list[str]]) -> Any:
        if self.style == "deepObject":
            prefix = f"{self.name}["
            found = {
                key[len(prefix) : -1]: value
                for key, value in query.items()
                if key.startswith(prefix) and key.endswith("]")
            }
            return [found] if found else _MISSING
        if self.kind == "object" and self.explode and self.style == "form":
            # role=admin&name=Alex: the object is the whole query.
            return [dict(query)] if query else _MISSING
        raw = query.get(self.name)
        if raw is None:
            return _MISSING
        values = raw if isinstance(raw, list) else [raw]
        if not self.style or self.kind == "primitive":
            return values
        sep = {"spaceDelimited": " ", "pipeDelimited": "|"}.get(self.style, ",")
        if self.kind == "array":
            if self.explode:
                return [values]
            return [[item for value in values for item in _split(value, sep)]]
        return [_pairs([item for value in values for item in _split(value, sep)])]

    def _from_path(self, raw: str) -> Any:
        style, explode, kind = self.style, self.explode, self.kind
        sep = ","
        if style == "label":
            if not raw.startswith("."):
                raise _Invalid("a label-style value starts with '.'")
            raw = raw[1:]
            if explode:
                sep = "."
        elif style == "matrix":
            if not raw.startswith(";"):
                raise _Invalid("a matrix-style value starts with ';'")
            segments = raw[1:].split(";")
            if kind == "object" and explode:
                return {unquote(k): unquote(v) for k, v in _assignments(segments).items()}
            values = []
            for segment in segments:
                key, found, value = segment.partition("=")
                if not found or unquote(key) != self.name:
                    raise _Invalid(f"expected ';{self.name}=...' (got ';{segment}')")
                values.append(value)
            if kind == "array" and explode:
                return [unquote(v) for v in values]
            if len(values) != 1:
                raise _Invalid(f"'{self.name}' is repeated")
            raw = values[0]
        if kind == "primitive":
            return unquote(raw)
        items = _split(raw, sep)
        if kind == "array":
            return [unquote(item) for item in items]
        pairs = _assignments(items) if explode else _pairs(items)
        return {unquote(k): unquote(v) for k, v in pairs.items()}


def _load_params(entries: Sequence[Mapping[str, Any]]) -> tuple[list[_Param], Errors]:
    """Kong's parameter entries (already checked to be mappings), compiled; or the errors."""
    params: list[_Param] = []
    errors: Errors = []
    for i, entry in enumerate(entries):
        path: tuple[PathPart, ...] = ("parameter_schema", i)
        before = len(errors)
        for key in entry:
            if key not in _PARAM_FIELDS:
                errors.append(((*path, key), "unknown field"))
        location: Any = entry.get("in")
        name: Any = entry.get("name")
        required: Any = entry.get("required")
        style: Any = entry.get("style")
        explode: Any = entry.get("explode")
        schema: Any = entry.get("schema")
        if location is None:
            errors.append(((*path, "in"), "required field missing"))
        elif location not in _LOCATIONS:
            errors.append(((*path, "in"), "expected one of: " + ", ".join(_LOCATIONS)))
        if name is None:
            errors.append(((*path, "name"), "required field missing"))
        elif not isinstance(name, str):
            errors.append(((*path, "name"), "expected a string"))
        if required is None:
            errors.append(((*path, "required"), "required field missing"))
        elif not isinstance(required, bool):
            errors.append(((*path, "required"), "expected a boolean"))
        if style is not None and style not in _STYLES:
            errors.append(((*path, "style"), "expected one of: " + ", ".join(_STYLES)))
        if explode is not None and not isinstance(explode, bool):
            errors.append(((*path, "explode"), "expected a boolean"))
        if len(errors) > before:
            continue
        if len({style is None, explode is None, schema is None}) > 1:
            errors.append(
                (path, "all or none of these fields must be set: 'style', 'explode', 'schema'")
            )
            continue
        if style is not None and style not in _ALLOWED_STYLES[location]:
            errors.append((path, f"style '{style}' not supported '{location}' parameter"))
            continue
        if schema is None:
            params.append(_Param(location, name, required))
            continue
        try:
            if not isinstance(schema, str | Mapping):
                raise _SchemaError("expected a string")
            decoded = _decode(schema)
            validator = _compile(decoded, "draft4")  # Kong: parameters are always draft 4
            top = _resolve(decoded, decoded)
            kind = top.get("type") if isinstance(top, Mapping) else None
            if kind is None:
                raise _SchemaError("the JSONschema is missing a top-level 'type' property")
        except _SchemaError as exc:
            errors.append(((*path, "schema"), str(exc)))
            continue
        params.append(
            _Param(
                location,
                name,
                required,
                style=style,
                explode=bool(explode),
                kind=kind if kind in ("array", "object") else "primitive",
                schema=decoded,
                validator=validator,
            )
        )
    return params, errors


# -- the plugin -----------------------------------------------------------------------------


@attrs.frozen
class _Compiled:
    params: tuple[_Param, ...]
    body: Any  # the body's validator, if body_schema is set
    content_types: tuple[MediaType, ...]


@attrs.frozen(kw_only=True)
class RequestValidator(Plugin):
    """Refuse requests whose parameters or JSON body do not match their schemas (Kong's
    `request-validator`).

    Args:
        body_schema: a JSON Schema (JSON text, as Kong, or a mapping) for the request body.
        version: the schema's draft: `draft4` (Kong's), `draft6`, `draft7`, `draft201909` or
            `draft202012`. Kong's default, `kong` (its own schema format), is not supported:
            with `body_schema`, set a draft.
        allowed_content_types: the `Content-Type`s accepted when `body_schema` is set;
            only JSON ones have their body validated.
        content_type_parameter_validation: compare the parameters (`charset=...`) too.
        parameter_schema: Kong's list of `{name, in, required, style, explode, schema}`
            (`in`: `query`, `header` or `path`; `schema`: JSON Schema draft 4 text).
        verbose_response: say in the 400 which check failed and why.

    Raises:
        ConfigurationError: an invalid schema or parameter entry (with its field path), or
            the `jsonschema` library missing (`pip install pygateway[validation]`).

    Example: `RequestValidator(version="draft4", body_schema='{"required": ["name"]}')`.
    """

    name = "request-validator"
    priority = 999

    body_schema: str | Mapping[str, Any] | None = None
    allowed_content_types: Sequence[str] = ("application/json",)
    version: Version = "kong"
    parameter_schema: Sequence[Mapping[str, Any]] | None = None
    verbose_response: bool = False
    content_type_parameter_validation: bool = True
    _compiled: Any = attrs.field(default=None, init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        errors: Errors = []
        # A mapping is a schema even when empty ({} accepts anything); Kong's text is "".
        has_body = isinstance(self.body_schema, Mapping) or bool(self.body_schema)
        if not has_body and not self.parameter_schema:
            errors.append(
                (
                    (),
                    "at least one of these fields must be non-empty: 'body_schema', "
                    "'parameter_schema'",
                )
            )
        errors.extend(_check_content_types(self.allowed_content_types))
        if errors:
            raise ConfigurationError(errors=errors)
        body = None
        if has_body:
            assert self.body_schema is not None
            if self.version == "kong":
                raise ConfigurationError(
                    "Kong's own schema format (version 'kong', Kong's default) is not "
                    "supported: write body_schema as a JSON Schema and set version to one "
                    "of: " + ", ".join(_DRAFTS),
                    path=("version",),
                )
            try:
                body = _compile(_decode(self.body_schema), self.version)
            except _SchemaError as exc:
                errors.append((("body_schema",), str(exc)))
        params, param_errors = _load_params(self.parameter_schema or ())
        errors.extend(param_errors)
        if errors:
            raise ConfigurationError(errors=errors)
        content_types = tuple(
            parsed
            for content_type in self.allowed_content_types
            if (parsed := parse_media_type(content_type)) is not None
        )
        object.__setattr__(self, "_compiled", _Compiled(tuple(params), body, content_types))

    async def access(self, ctx: Context) -> Response | None:
        compiled: _Compiled = self._compiled
        for param in compiled.params:
            failure = param.check(ctx)
            if failure is not None:
                reason, data = failure
                logger.debug(
                    "request %s: %s parameter '%s' refused",
                    ctx.request_id,
                    param.location,
                    param.name,
                )
                if not self.verbose_response:
                    return _deny(DENY_PARAM)
                return _deny(
                    f"{param.location} '{param.name}' validation failed, [error] {reason}", data
                )
        if compiled.body is None:
            return None
        header = ctx.request.headers.get("content-type")
        media = parse_media_type(header.strip()) if header is not None else None
        if header is None or not self._allowed(media):
            return _deny(DENY_CONTENT_TYPE if self.verbose_response else DENY_BODY)
        if media is None or not _is_json(media):
            return None  # an allowed type that is not JSON: its body is not validated
        raw = await ctx.request.body()
        try:
            body = json.loads(raw, parse_constant=_no_constant) if raw else {}
        except (ValueError, RecursionError):
            return _deny(INVALID_JSON)
        try:
            problem = _first_error(compiled.body, body)
        except RecursionError:
            problem = "the body is nested too deeply"
        if problem is None:
            return None
        logger.debug("request %s: body refused", ctx.request_id)
        return _deny(problem if self.verbose_response else DENY_BODY)

    def _allowed(self, media: MediaType | None) -> bool:
        compiled: _Compiled = self._compiled
        for allowed in compiled.content_types:
            if media is None:
                # Kong: a Content-Type it cannot parse passes only `*/*` (and is not JSON).
                if allowed[:2] == ("*", "*") and not allowed[2]:
                    return True
                continue
            if allowed[0] not in ("*", media[0]) or allowed[1] not in ("*", media[1]):
                continue
            if not self.content_type_parameter_validation or _params_match(allowed, media):
                return True
        return False


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _deny(message: str, data: Any = None) -> Response:
    content: dict[str, Any] = {"message": message}
    if data is not None:
        content["data"] = data
    return Response(400, json=content)


register(RequestValidator)
