"""Request bodies as Kong's Admin API reads them.

JSON is taken as is. Form bodies (`application/x-www-form-urlencoded` and
`multipart/form-data`) use Kong's notation, where every value is a string:

    paths[]=/a&paths[]=/b     an array (also `paths[1]=/a&paths[2]=/b`, or `paths=/a` alone)
    config.minute=5           a nested field
    service.id=<uuid>         a reference (`service.name=` too)

and each string is then converted to what the field holds (integer, number, boolean,
array, ...), read from the entity's or the plugin's field annotations.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Union
from urllib.parse import parse_qsl

import attrs

from ..plugins import _registry
from ..plugins._base import Scoped
from ._errors import ApiError

__all__ = ["convert_fields", "parse_body"]


def parse_body(content_type: str, body: bytes) -> tuple[dict[str, Any], bool]:
    """The body as a mapping, and whether it came as a form (strings to convert)."""
    media = content_type.split(";", 1)[0].strip().lower()
    if not body.strip():
        return {}, False
    if media == "application/x-www-form-urlencoded":
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, {"message": "Cannot parse form body"}) from None
        return nest(parse_qsl(text, keep_blank_values=True)), True
    if media == "multipart/form-data":
        return nest(_multipart(content_type, body)), True
    if media in ("application/json", "") or media.endswith("+json"):
        try:
            data = json.loads(body)
        except ValueError:
            raise ApiError(400, {"message": "Cannot parse JSON body"}) from None
        if not isinstance(data, dict):
            raise ApiError(400, {"message": "Cannot parse JSON body"})
        return data, False
    raise ApiError(415, {"message": f"Unsupported Content-Type: {media}"})


def _multipart(content_type: str, body: bytes) -> list[tuple[str, str]]:
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise ApiError(400, {"message": "Cannot parse multipart body"})
    out = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            out.append((name, payload.decode("utf-8", "replace")))
    return out


class _Array(dict[int, Any]):
    """An array being assembled from `a[]=` / `a[2]=` keys: position -> value."""


def _tokens(key: str) -> list[str | int | None]:
    """`config.policies[1]` -> `["config", "policies", 1]`; `paths[]` -> `["paths", None]`."""
    out: list[str | int | None] = []
    for part in key.split("."):
        name, bracket, rest = part.partition("[")
        out.append(name)
        while bracket:
            inner, _, rest = rest.partition("]")
            out.append(int(inner) if inner.isdigit() else (inner or None))
            _, bracket, rest = rest.partition("[")
    return out


def nest(pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """Form pairs as nested data: dicts for `.`/`[name]`, arrays for `[]`/`[n]`."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        tokens = _tokens(key)
        node: Any = root
        for token, following in zip(tokens, [*tokens[1:], ...], strict=True):
            last = following is ...
            if isinstance(node, _Array):
                if isinstance(token, str):  # `paths[1]=..&paths[x]=..`
                    raise ApiError(400, {"message": f"Cannot parse form key '{key}'"})
                slot: Any = len(node) if token is None else token
            else:
                slot = "" if token is None else str(token)
            if last:
                if not isinstance(node, _Array) and slot in node:
                    # `paths=/a&paths=/b`: a repeated key makes an array
                    before = node[slot]
                    node[slot] = [*(before if isinstance(before, list) else [before]), value]
                else:
                    node[slot] = value
                break
            wanted = _Array if following is None or isinstance(following, int) else dict
            if not isinstance(node.get(slot), wanted):
                node[slot] = wanted()
            node = node[slot]
    finished: dict[str, Any] = _finish(root)
    return finished


def _finish(value: Any) -> Any:
    if isinstance(value, _Array):
        return [_finish(value[k]) for k in sorted(value)]
    if isinstance(value, dict):
        return {k: _finish(v) for k, v in value.items()}
    return value


# -- strings to typed values --------------------------------------------------------------


def convert_fields(cls: type[Any] | None, data: Mapping[str, Any]) -> dict[str, Any]:
    """Convert a form's strings to the types of `cls`'s fields (left as they are where a
    field is unknown or a string does not convert: validation then reports it)."""
    if cls is None or not attrs.has(cls):
        return dict(data)
    hints = typing.get_type_hints(cls)
    by_name = {a.alias or a.name: a.name for a in attrs.fields(cls)}
    out = {}
    for key, value in data.items():
        name = by_name.get(key)
        out[key] = value if name is None else convert(value, hints.get(name, Any))
    return out


def convert_plugin(data: Mapping[str, Any], name: Any) -> dict[str, Any]:
    """A plugin entity from a form: its metadata, and `config` by plugin `name`'s fields."""
    out = convert_fields(Scoped, {k: v for k, v in data.items() if k != "config"})
    config = data.get("config")
    if isinstance(config, Mapping):
        try:
            cls: type[Any] | None = _registry.get(str(name))
        except LookupError:
            cls = None
        out["config"] = convert_fields(cls, config)
    elif "config" in data:
        out["config"] = config
    return out


def convert(value: Any, hint: Any) -> Any:
    """One form value (a string, or arrays and maps of them) converted to `hint`."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        if value == "" and type(None) in args:
            return None  # `hosts=` clears a field, as in Kong
        for option in (a for a in args if a is not type(None)):
            converted = convert(value, option)
            if converted is not value or (isinstance(value, str) and option is str):
                return converted
        return value
    if origin is Literal:
        for allowed in typing.get_args(hint):
            if isinstance(value, str) and str(allowed).lower() == value.lower():
                return allowed
        return value
    if origin in (tuple, list, Sequence) or hint in (tuple, list):
        args = typing.get_args(hint)
        item = args[0] if args else Any
        if isinstance(value, str):
            return [] if value == "" else [convert(value, item)]
        if isinstance(value, list):
            return [convert(v, item) for v in value]
        return value
    if origin in (dict, Mapping):
        args = typing.get_args(hint)
        item = args[1] if len(args) == 2 else Any
        if isinstance(value, Mapping):
            return {k: convert(v, item) for k, v in value.items()}
        return value
    if not isinstance(value, str):
        if isinstance(value, Mapping) and isinstance(hint, type) and attrs.has(hint):
            return convert_fields(hint, value)
        return value
    return _scalar(value, hint)


def _scalar(value: str, hint: Any) -> Any:
    try:
        if hint is bool:
            lowered = value.lower()
            return {"true": True, "false": False}.get(lowered, value)
        if hint is int:
            return int(value)
        if hint is float:
            return float(value)
    except ValueError:
        return value
    return value
