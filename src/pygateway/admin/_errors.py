"""The Admin API's error answers, in Kong's shapes and with Kong's codes.

    {"code": 2, "name": "schema violation",
     "message": "schema violation (paths.1: should start with: /)",
     "fields": {"paths": ["should start with: /"]}}

Array positions in messages are 1-based, as Kong (Lua) writes them; in `fields` they are
positions in JSON arrays (missing ones null).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from .._exceptions import PathPart

__all__ = ["ApiError", "foreign_key", "not_found", "schema_violation", "unique_violation"]

#: Kong's error codes and names (kong/db/errors.lua).
SCHEMA_VIOLATION = 2
PRIMARY_KEY_VIOLATION = 3
FOREIGN_KEY_VIOLATION = 4
UNIQUE_VIOLATION = 5
INVALID_OFFSET = 7
DATABASE_ERROR = 8
INVALID_SIZE = 9
DECLARATIVE = 14

NAMES = {
    SCHEMA_VIOLATION: "schema violation",
    PRIMARY_KEY_VIOLATION: "primary key violation",
    FOREIGN_KEY_VIOLATION: "foreign key violation",
    UNIQUE_VIOLATION: "unique constraint violation",
    INVALID_OFFSET: "invalid offset",
    DATABASE_ERROR: "database error",
    INVALID_SIZE: "invalid size",
    DECLARATIVE: "invalid declarative configuration",
}


class ApiError(Exception):
    """An answer other than success: raised anywhere in a handler, rendered by the app."""

    def __init__(self, status: int, body: Mapping[str, Any]) -> None:
        super().__init__(body.get("message", status))
        self.status = status
        self.body = dict(body)

    @classmethod
    def coded(
        cls, status: int, code: int, message: str, fields: Mapping[str, Any] | None = None
    ) -> ApiError:
        body: dict[str, Any] = {"code": code, "name": NAMES[code], "message": message}
        if fields is not None:
            body["fields"] = dict(fields)
        return cls(status, body)


def not_found() -> ApiError:
    return ApiError(404, {"message": "Not found"})


def lua(value: Any) -> str:
    """A value as Kong's messages print it (`"x"`, `null`, `{id="..."}`)."""
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}={lua(v)}" for k, v in sorted(value.items())) + "}"
    if isinstance(value, str):
        return json.dumps(value)
    return json.dumps(value)


def unique_violation(key: Mapping[str, Any]) -> ApiError:
    """409: another entity has these values (`{name="x"}`)."""
    message = f"UNIQUE violation detected on '{lua(key)}'"
    return ApiError.coded(409, UNIQUE_VIOLATION, message, key)


def primary_key_violation(id_: str) -> ApiError:
    message = f"primary key violation on key '{lua({'id': id_})}'"
    return ApiError.coded(400, PRIMARY_KEY_VIOLATION, message, {"id": id_})


def foreign_key(field: str, kind: str, ref: Mapping[str, Any]) -> ApiError:
    """400: a reference to an entity that does not exist."""
    message = f"the foreign key '{lua(ref)}' does not reference an existing '{kind}' entity."
    return ApiError.coded(400, FOREIGN_KEY_VIOLATION, message, {field: dict(ref)})


def referenced_by(child: str, parent: str) -> ApiError:
    """400: deleting an entity others still refer to (Kong's "restrict")."""
    message = f"an existing '{child}' entity references this '{parent}' entity"
    return ApiError.coded(400, FOREIGN_KEY_VIOLATION, message, {"@referenced_by": child})


def dotted(path: Sequence[PathPart]) -> str:
    """`("paths", 0)` -> `paths.1` (Kong counts array positions from 1)."""
    return ".".join(str(p + 1) if isinstance(p, int) else str(p) for p in path)


def fields_of(problems: Sequence[tuple[Sequence[PathPart], str]]) -> dict[str, Any]:
    """The `fields` tree: each message at its path; entity-wide ones under `@entity`."""
    tree: dict[str, Any] = {}
    for path, message in problems:
        if not path:
            tree.setdefault("@entity", []).append(message)
            continue
        node: Any = tree
        for part, following in zip(path, [*path[1:], None], strict=True):
            last = following is None
            if isinstance(node, list):
                assert isinstance(part, int)
                node.extend([None] * (part + 1 - len(node)))
                if last:
                    node[part] = message
                else:
                    if not isinstance(node[part], list | dict):
                        node[part] = [] if isinstance(following, int) else {}
                    node = node[part]
            else:
                key = str(part)
                if last:
                    node[key] = message
                else:
                    if not isinstance(node.get(key), list | dict):
                        node[key] = [] if isinstance(following, int) else {}
                    node = node[key]
    return tree


def schema_violation(
    problems: Sequence[tuple[Sequence[PathPart], str]], *, code: int = SCHEMA_VIOLATION
) -> ApiError:
    """400 with every problem listed in the message and placed in `fields`."""
    parts = [f"{dotted(path)}: {message}" if path else message for path, message in problems]
    if code == DECLARATIVE:
        message = "declarative config is invalid: " + "; ".join(parts)
    elif len(parts) == 1:
        message = f"schema violation ({parts[0]})"
    else:
        message = f"{len(parts)} schema violations ({'; '.join(parts)})"
    return ApiError.coded(400, code, message, fields_of(problems))
