"""The Admin API's informational answers: `GET /`, `/status`, `/schemas/...`, and the
parsing of a declarative document sent to `POST /config`."""

from __future__ import annotations

import hashlib
import json
import socket
import typing
from collections.abc import Mapping
from typing import Any

import attrs

from .._schema import describe
from .._version import __version__
from ..plugins import _registry
from ._errors import ApiError
from ._kinds import Kind

__all__ = ["configuration_hash", "declarative", "node_info", "schema", "yaml_text"]


def node_info(
    node_id: str, entities: Mapping[str, Mapping[str, Any]], settings: Mapping[str, Any]
) -> dict[str, Any]:
    """`GET /`: this node, the plugins it has and those the configuration uses."""
    available = _registry.available()
    return {
        "version": __version__,
        "tagline": "Welcome to pygateway",
        "hostname": socket.gethostname(),
        "node_id": node_id,
        "plugins": {
            "available_on_server": {
                name: {"version": __version__, "priority": cls.priority}
                for name, cls in sorted(available.items())
            },
            "enabled_in_cluster": sorted({d["name"] for d in entities.get("plugins", {}).values()}),
        },
        "configuration": dict(settings),
    }


def configuration_hash(entities: Mapping[str, Any]) -> str:
    """What `/status` shows to tell configurations apart (not a security measure)."""
    text = json.dumps(entities, sort_keys=True).encode("utf-8")
    return hashlib.md5(text, usedforsecurity=False).hexdigest()


def schema(kinds: Mapping[str, Kind], rest: list[str]) -> dict[str, Any]:
    """`/schemas/{entity}` and `/schemas/plugins/{name}`: each field's type, default and
    whether it is required (simpler than Kong's, same top-level shape)."""
    if len(rest) == 2 and rest[0] == "plugins":
        try:
            cls: type[Any] = _registry.get(rest[1])
        except LookupError:
            raise ApiError(404, {"message": f"No plugin named '{rest[1]}'"}) from None
        return {"fields": [{"config": {"type": "record", "fields": _fields(cls)}}]}
    kind = kinds.get(rest[0]) if len(rest) == 1 else None
    if kind is None or kind.cls is None:
        name = rest[0] if rest else ""
        raise ApiError(404, {"message": f"No entity named '{name}'"})
    fields = _fields(kind.cls)
    if kind.name == "certificates":
        # Kong's shorthand: the names of its SNIs, created, replaced or (null) deleted.
        fields.append({"snis": {"type": "array", "elements": {"type": "string"}}})
    return {"fields": fields}


def field_types(cls: type[Any]) -> dict[str, Any]:
    """An attrs class's field types; none for a class whose annotations cannot be resolved
    (a plugin defined in a function, say), described untyped rather than failing."""
    try:
        return typing.get_type_hints(cls)
    except (NameError, TypeError):
        return {}


def _fields(cls: type[Any]) -> list[dict[str, Any]]:
    hints = field_types(cls)
    out = []
    for a in attrs.fields(cls):
        if not a.init:
            continue
        spec: dict[str, Any] = {"type": describe(hints.get(a.name, Any))}
        if a.default is attrs.NOTHING:
            spec["required"] = True
        elif not isinstance(a.default, attrs.Factory):  # type: ignore[arg-type]
            spec["default"] = _jsonable(a.default)
        out.append({a.alias or a.name: spec})
    return out


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return str(value)
    return list(value) if isinstance(value, tuple) else value


def declarative(body: Mapping[str, Any]) -> Mapping[str, Any]:
    """The document `POST /config` was sent: the JSON body itself, or the text of its
    `config` field (JSON, or YAML when PyYAML is installed)."""
    document: Any = body.get("config", body)
    if isinstance(document, str):
        try:
            document = json.loads(document)
        except ValueError:
            document = _yaml(document)
    if not isinstance(document, Mapping):
        raise ApiError(400, {"message": "expected a declarative configuration"})
    return document


def _yaml(text: str) -> Any:
    try:
        import yaml
    except ImportError:
        raise ApiError(400, {"message": "expected a JSON declarative configuration"}) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise ApiError(400, {"message": "cannot parse the declarative configuration"}) from None


def yaml_text(document: Mapping[str, Any]) -> str | None:
    """`document` as YAML text (keys in their order), or None without PyYAML."""
    try:
        import yaml
    except ImportError:
        return None
    plain = json.loads(json.dumps(document))  # tuples as lists: what safe_dump writes
    text: str = yaml.safe_dump(plain, sort_keys=False, allow_unicode=True)
    return text
