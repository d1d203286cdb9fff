"""The Admin API described as an OpenAPI 3.1 document, served at `GET /openapi.json`.

The document is generated, not written by hand, so it cannot drift from what the API
serves: the paths come from the kinds table (every collection, its entities by id or
endpoint key, the nested collections under their parents, the references), and the
bodies from the entity and plugin classes' attrs fields, read the way `/schemas/{entity}`
reads them (names, defaults, required) with each field's annotation turned into JSON
Schema. Errors share one component in Kong's shape.

A tool such as schemathesis, Swagger UI or a client generator can read it; the test suite
runs schemathesis against it to check that no request makes the API answer 500.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Union

import attrs

from .._version import __version__
from ..plugins import _registry
from ..plugins._base import Scoped
from ._info import _fields, field_types
from ._kinds import Kind
from ._model import CHILDREN, CLASSES
from ._paging import DEFAULT_SIZE, MAX_SIZE

if TYPE_CHECKING:
    from ._api import AdminAPI

__all__ = ["openapi"]

Schema = dict[str, Any]

_JSON = "application/json"
#: The body media types the API reads besides JSON, in Kong's form notation.
_FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")

_REF = "#/components/schemas/"
_STRING: Schema = {"type": "string"}

#: Entity classes a field may hold, written in the flat documents as a reference.
_ENTITY_CLASSES = frozenset(CLASSES.values())


def openapi(api: AdminAPI) -> dict[str, Any]:
    """The OpenAPI document of `api`: its kinds (credential kinds as registered when it was
    made), the plugins registered now, and a security scheme when it needs a token."""
    document = _Builder(api.kinds).document()
    if api.token is not None:
        document["security"] = [{"token": []}, {"bearer": []}]
    return document


class _Builder:
    """Collects the paths and the component schemas while walking the kinds."""

    def __init__(self, kinds: Mapping[str, Kind]) -> None:
        self.kinds = kinds
        self.schemas: dict[str, Schema] = {}
        self.paths: dict[str, dict[str, Any]] = {}

    def document(self) -> dict[str, Any]:
        self.schemas.update(_common_schemas())
        for kind in self.kinds.values():
            self.schemas[kind.name] = self.entity(kind)
            partial = {k: v for k, v in self.schemas[kind.name].items() if k != "required"}
            self.schemas[f"{kind.name}.patch"] = partial
            self.schemas[f"{kind.name}.shown"] = _shown(kind, self.schemas[kind.name])
            self.schemas[f"{kind.name}.page"] = _page(kind)
        for name, cls in sorted(_registry.available().items()):
            self.schemas[f"plugin-config.{name}"] = self.record(cls)
        self.informational()
        for kind in self.kinds.values():
            if kind.name != "targets":  # only under their upstream, as in Kong
                self.kind_paths(kind)
        self.upstream_health()
        return {
            "openapi": "3.1.0",
            "info": {
                "title": "pygateway Admin API",
                "version": __version__,
                "description": "Kong's Admin API, as pygateway serves it. Bodies may also be "
                "sent form-encoded or as multipart, in Kong's notation "
                "(`paths[]=/a`, `config.minute=5`, `service.id=...`).",
            },
            "paths": self.paths,
            "components": {
                "schemas": self.schemas,
                "securitySchemes": {
                    "token": {"type": "apiKey", "in": "header", "name": "Kong-Admin-Token"},
                    "bearer": {"type": "http", "scheme": "bearer"},
                },
            },
        }

    # -- schemas --------------------------------------------------------------------------

    def entity(self, kind: Kind) -> Schema:
        """The body that creates or replaces an entity of `kind`."""
        if kind.name == "plugins":
            out = self.record(Scoped, skip={"plugin"})
            names = sorted(_registry.available())
            out["properties"] = {
                "name": {"type": "string", "enum": names},
                "config": {
                    "type": "object",
                    "description": "the plugin's configuration, as in "
                    "`components.schemas.plugin-config.<name>`",
                },
                **out["properties"],
            }
            out["required"] = ["name"]
        elif kind.name == "acls":
            out = {
                "type": "object",
                "properties": {
                    "group": {"type": "string"},
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "id": {"type": "string", "format": "uuid"},
                },
                "required": ["group"],
                "additionalProperties": False,
            }
        else:
            assert kind.cls is not None
            out = self.record(kind.cls, skip=CHILDREN - {"url"})
            if kind.name == "certificates":
                out["properties"]["snis"] = {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "the names of its SNIs (given: they replace them)",
                }
        for field in kind.parents:
            out["properties"][field] = {
                "anyOf": [{"$ref": _REF + "Reference"}, {"type": "string"}, {"type": "null"}]
            }
        if "id" in out["properties"]:
            out["properties"]["id"] = {"type": "string", "format": "uuid"}
        return out

    def record(self, cls: type[Any], skip: frozenset[str] | set[str] = frozenset()) -> Schema:
        """An attrs class as a JSON object: the fields `/schemas` lists, typed."""
        hints = field_types(cls)
        by_alias = {a.alias or a.name: a.name for a in attrs.fields(cls)}
        properties: dict[str, Schema] = {}
        required = []
        for entry in _fields(cls):
            ((name, spec),) = entry.items()
            if name in skip:
                continue
            schema = self.hint(hints.get(by_alias.get(name, name), Any))
            if "default" in spec:
                schema = {**schema, "default": spec["default"]}
            if spec.get("required"):
                required.append(name)
            properties[name] = schema
        out: Schema = {"type": "object", "properties": properties, "additionalProperties": False}
        if required:
            out["required"] = required
        return out

    def hint(self, hint: Any) -> Schema:
        """A field's annotation as JSON Schema."""
        if hint is Any:
            return {}
        if hint is str:
            return {"type": "string"}
        if hint is bool:
            return {"type": "boolean"}
        if hint is int:
            return {"type": "integer"}
        if hint is float:
            return {"type": "number"}
        if hint in _ENTITY_CLASSES:
            return {"$ref": _REF + "Reference"}
        origin = typing.get_origin(hint)
        args = typing.get_args(hint)
        if origin in (Union, types.UnionType):
            return self.union(args)
        if origin is Literal:
            return _enum(args)
        if origin in (tuple, list, set, frozenset, Sequence) or hint in (tuple, list):
            items = [a for a in args if a is not Ellipsis]
            item = (
                self.union(tuple(items))
                if len(items) > 1
                else self.hint(items[0] if items else Any)
            )
            return {"type": "array", "items": item}
        if origin in (dict, Mapping) or hint in (dict, Mapping):
            value = args[1] if len(args) == 2 else Any
            return {"type": "object", "additionalProperties": self.hint(value)}
        if isinstance(hint, type) and attrs.has(hint):
            name = hint.__name__
            if name not in self.schemas:
                self.schemas[name] = {}  # a placeholder while a recursive record is walked
                self.schemas[name] = self.record(hint)
            return {"$ref": _REF + name}
        return {}

    def union(self, args: tuple[Any, ...]) -> Schema:
        options = [a for a in args if a is not type(None)]
        nullable = len(options) < len(args)
        if set(options) == {int, float}:
            schemas: list[Schema] = [{"type": "number"}]
        else:
            schemas = []
            for option in options:
                schema = self.hint(option)
                if schema == {}:
                    return {}
                if schema not in schemas:
                    schemas.append(schema)
        if nullable:
            schemas.append({"type": "null"})
        return schemas[0] if len(schemas) == 1 else {"anyOf": schemas}

    # -- paths ----------------------------------------------------------------------------

    def add(self, path: str, method: str, operation: dict[str, Any]) -> None:
        responses = operation.setdefault("responses", {})
        responses.setdefault("401", _error("the token is missing or wrong"))
        responses.setdefault("405", _error("the method is not allowed, or the API is read-only"))
        if "requestBody" in operation:
            responses.setdefault("400", _error("the body is not valid"))
            responses.setdefault("415", _error("the body's media type is not read"))
        self.paths.setdefault(path, {})[method] = operation

    def informational(self) -> None:
        def get(path: str, summary: str, schema: Schema, **extra: Any) -> None:
            operation = {"summary": summary, "responses": {"200": _ok(schema)}, **extra}
            self.add(path, "get", operation)

        get("/", "This node: version, node id, plugins available and in use", _object())
        get("/status", "Whether the store is reachable; the configuration's hash", _object())
        enabled = {"enabled_plugins": {"type": "array", "items": {"type": "string"}}}
        get("/plugins/enabled", "The plugins this node has", _object(enabled))
        get("/openapi.json", "This document", _object())
        dumped = {"config": {"anyOf": [{"type": "string"}, {"type": "object"}]}}
        get(
            "/config",
            "The whole configuration, as a declarative document",
            _object(dumped, required=["config"]),
            description="YAML text when PyYAML is installed and the request does not "
            "accept `application/json`; else the document itself.",
        )
        config_body = {
            "required": True,
            "content": {
                _JSON: {"schema": {"type": "object"}},
                **{m: {"schema": _object({"config": {"type": "string"}})} for m in _FORMS},
            },
        }
        self.add(
            "/config",
            "post",
            {
                "summary": "Replace every entity with those of a declarative document",
                "description": "A JSON document, or its text (JSON or YAML) in a `config` field.",
                "requestBody": config_body,
                "responses": {"201": _ok(_object(), "The entities now configured")},
            },
        )
        entities = sorted(k.name for k in self.kinds.values() if k.cls is not None)
        get(
            "/schemas/{entity}",
            "An entity's fields: type, default, whether required",
            _object(),
            parameters=[_path("entity", "an entity name", enum=entities)],
            responses={"200": _ok(_object()), "404": _error("no such entity")},
        )
        get(
            "/schemas/plugins/{name}",
            "A plugin's configuration fields",
            _object(),
            parameters=[_path("name", "a plugin name")],
            responses={"200": _ok(_object()), "404": _error("no such plugin")},
        )
        self.validation()
        self.tag_paths()

    def validation(self) -> None:
        """`POST /schemas/{entity}/validate` and `/schemas/plugins/validate`."""
        checked = _ok(_object({"message": {"type": "string"}}, required=["message"]))
        body = {
            "required": True,
            "content": {m: {"schema": {"type": "object"}} for m in (_JSON, *_FORMS)},
        }
        responses = {
            "200": checked,
            "404": _error("no such entity"),
            "409": _error("another entity has the same unique value"),
        }
        names = sorted(self.kinds)
        self.add(
            "/schemas/{entity}/validate",
            "post",
            {
                "operationId": "validate-entity",
                "summary": "Check a body as creating the entity would, without writing it",
                "parameters": [_path("entity", "an entity name", enum=names)],
                "requestBody": body,
                "responses": dict(responses),
            },
        )
        self.add(
            "/schemas/plugins/validate",
            "post",
            {
                "operationId": "validate-plugin",
                "summary": "Check a plugin body as creating the plugin would, without writing it",
                "requestBody": body,
                "responses": dict(responses),
            },
        )

    def tag_paths(self) -> None:
        """`GET /tags` and `GET /tags/{tag}`: every tagged entity, a row per tag."""
        row = _object(
            {
                "entity_name": {"type": "string"},
                "entity_id": {"type": "string", "format": "uuid"},
                "tag": {"type": "string"},
            },
            required=["entity_name", "entity_id", "tag"],
        )
        nullable = {"type": ["string", "null"]}
        listed = _object(
            {"data": {"type": "array", "items": row}, "next": nullable, "offset": nullable},
            required=["data", "next", "offset"],
        )
        query = [
            _query("size", f"rows per page (1 to {MAX_SIZE})", _size()),
            _query("offset", "where the previous page ended (its `offset`)", {"type": "string"}),
        ]
        for path, summary, parameters in (
            ("/tags", "Every tag of every entity", query),
            ("/tags/{tag}", "The entities tagged `tag`", [_path("tag", "a tag"), *query]),
        ):
            self.add(
                path,
                "get",
                {
                    "operationId": "list-tags" if path == "/tags" else "list-tagged",
                    "tags": ["tags"],
                    "summary": f"{summary}, a page at a time",
                    "parameters": parameters,
                    "responses": {"200": _ok(listed), "400": _error("invalid size or offset")},
                },
            )

    def kind_paths(self, kind: Kind) -> None:
        base = f"/{kind.path}"
        self.collection(base, kind, [], kind.name)
        param = _param_name(kind)
        item = f"{base}/{{{param}}}"
        key = [_path(param, _key_description(kind))]
        self.item(item, kind, key, kind.name)
        for field, parent in kind.parents.items():
            target = self.kinds[parent]
            self.add(
                f"{item}/{field}",
                "get",
                {
                    "operationId": f"get-{kind.name}-{field}",
                    "tags": [kind.name],
                    "summary": f"The {field} this entity refers to",
                    "parameters": key,
                    "responses": {"200": _ok(_ref(f"{target.name}.shown")), "404": _not_found()},
                },
            )
        for child in self.kinds.values():
            for field, parent in child.parents.items():
                if parent != kind.name:
                    continue
                nested = f"{item}/{child.nested}"
                label = f"{kind.name}-{child.name}-by-{field}"
                self.collection(nested, child, key, label, parent_field=field)
                child_param = _param_name(child)
                if child_param == param:
                    child_param = f"{param}_child"
                child_key = [_path(child_param, _key_description(child))]
                self.item(f"{nested}/{{{child_param}}}", child, key + child_key, label)

    def collection(
        self,
        path: str,
        kind: Kind,
        parameters: list[dict[str, Any]],
        label: str,
        parent_field: str | None = None,
    ) -> None:
        query = [
            _query("size", f"entities per page (1 to {MAX_SIZE})", _size()),
            _query("offset", "where the previous page ended (its `offset`)", {"type": "string"}),
            _query("tags", "`a,b`: tagged with both; `a/b`: with either", {"type": "string"}),
        ]
        if kind.name == "consumers" and parent_field is None:
            query.append(_query("custom_id", "only the consumer with this custom_id", {}))
        where = f" under their {parent_field}" if parent_field else ""
        missing = {"404": _not_found()} if parameters else {}
        self.add(
            path,
            "get",
            {
                "operationId": f"list-{label}",
                "tags": [kind.name],
                "summary": f"List {kind.name}{where}, a page at a time",
                "parameters": parameters + query,
                "responses": {
                    "200": _ok(_ref(f"{kind.name}.page")),
                    "400": _error("invalid size or offset"),
                    **missing,
                },
            },
        )
        self.add(
            path,
            "post",
            {
                "operationId": f"create-{label}",
                "tags": [kind.name],
                "summary": f"Create one of {kind.name}{where}",
                "parameters": parameters,
                "requestBody": _body(kind.name, required=True),
                "responses": {
                    "201": _ok(_ref(f"{kind.name}.shown"), "Created"),
                    "409": _error("another entity has the same unique value"),
                    **missing,
                },
            },
        )

    def item(self, path: str, kind: Kind, parameters: list[dict[str, Any]], label: str) -> None:
        shown = _ok(_ref(f"{kind.name}.shown"))
        conflict = _error("another entity has the same unique value")
        common: dict[str, Any] = {"tags": [kind.name], "parameters": parameters}
        operations: dict[str, dict[str, Any]] = {
            "get": {"summary": "Read one", "responses": {"200": shown, "404": _not_found()}},
            "put": {
                "summary": "Create or replace one (fields left out get their defaults)",
                "requestBody": _body(kind.name, required=False),
                "responses": {"200": shown, "404": _not_found(), "409": conflict},
            },
            "patch": {
                "summary": "Change the fields given (records merged field by field)",
                "requestBody": _body(kind.name, required=False, partial=True),
                "responses": {"200": shown, "404": _not_found(), "409": conflict},
            },
            "delete": {
                "summary": "Delete one (also when there is none)",
                "responses": {
                    "204": {"description": "Deleted, or there was nothing to delete"},
                    "400": _error("other entities still refer to it"),
                    "404": _not_found(),
                },
            },
        }
        verbs = {"get": "get", "put": "upsert", "patch": "update", "delete": "delete"}
        for method, operation in operations.items():
            operation = {"operationId": f"{verbs[method]}-{label}-item", **common, **operation}
            self.add(path, method, operation)

    def upstream_health(self) -> None:
        upstream = _path("upstream", "the upstream's id or name")
        target = _path("target", "the target's id or `host:port`")
        address = _path("address", "one address (`ip:port`) the target resolves to")
        balancer = _query(
            "balancer_health", "`1`: the balancer's own health", {"type": "string", "enum": ["1"]}
        )
        self.add(
            "/upstreams/{upstream}/targets/all",
            "get",
            {
                "operationId": "list-upstream-targets-all",
                "tags": ["upstreams"],
                "summary": "Every target of the upstream, weight 0 ones included",
                "parameters": [
                    upstream,
                    _query("size", f"entities per page (1 to {MAX_SIZE})", _size()),
                    _query("offset", "where the previous page ended", {"type": "string"}),
                    _query("tags", "`a,b`: tagged with both; `a/b`: with either", _STRING),
                ],
                "responses": {
                    "200": _ok(_ref("targets.page")),
                    "400": _error("invalid size or offset"),
                    "404": _not_found(),
                },
            },
        )
        self.add(
            "/upstreams/{upstream}/health",
            "get",
            {
                "operationId": "get-upstream-health",
                "tags": ["upstreams"],
                "summary": "The health of the upstream's targets",
                "parameters": [upstream, balancer],
                "responses": {"200": _ok(_object()), "404": _not_found()},
            },
        )
        for state in ("healthy", "unhealthy"):
            for where, parameters in (
                ("", [upstream, target]),
                ("/{address}", [upstream, target, address]),
            ):
                self.add(
                    f"/upstreams/{{upstream}}/targets/{{target}}{where}/{state}",
                    "post",
                    {
                        "operationId": f"set-target{'-address' if where else ''}-{state}",
                        "tags": ["upstreams"],
                        "summary": f"Mark the target{' address' if where else ''} {state}",
                        "parameters": parameters,
                        "responses": {
                            "204": {"description": "Done"},
                            "400": _error("the upstream has no active health checks"),
                            "404": _not_found(),
                        },
                    },
                )


# -- pieces -------------------------------------------------------------------------------


def _common_schemas() -> dict[str, Schema]:
    return {
        "Error": {
            "type": "object",
            "description": "Kong's error shape: `message` always; `code`, `name` and the "
            "`fields` tree for schema, key and paging errors.",
            "properties": {
                "message": {"type": "string"},
                "code": {"type": "integer"},
                "name": {"type": "string"},
                "fields": {"type": "object"},
            },
            "required": ["message"],
        },
        "Reference": {
            "type": "object",
            "description": "Another entity, by id (or by name when writing)",
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "name": {"type": "string"},
            },
        },
    }


def _shown(kind: Kind, body: Schema) -> Schema:
    """An entity as the API answers it: every field shown, null when unset."""
    properties = {
        name: schema if _allows_null(schema) else {"anyOf": [schema, {"type": "null"}]}
        for name, schema in body["properties"].items()
        if name in kind.shown_fields()
    }
    for field in kind.parents:
        properties[field] = {"anyOf": [{"$ref": _REF + "Reference"}, {"type": "null"}]}
    properties["id"] = {"type": "string", "format": "uuid"}
    for stamp in ("created_at", "updated_at"):
        properties[stamp] = {"type": "integer", "description": "epoch seconds"}
    return {"type": "object", "properties": properties, "required": ["id"]}


def _allows_null(schema: Schema) -> bool:
    return schema == {} or {"type": "null"} in schema.get("anyOf", ())


def _page(kind: Kind) -> Schema:
    nullable = {"type": ["string", "null"]}
    return _object(
        {
            "data": {"type": "array", "items": _ref(f"{kind.name}.shown")},
            "next": {**nullable, "description": "the next page's URL; null on the last"},
            "offset": {**nullable, "description": "give it as `offset` for the next page"},
        },
        required=["data", "next", "offset"],
    )


def _enum(values: tuple[Any, ...]) -> Schema:
    kinds = {type(v) for v in values}
    out: Schema = {"enum": list(values)}
    if kinds == {str}:
        out["type"] = "string"
    elif kinds == {int}:
        out["type"] = "integer"
    return out


def _body(name: str, *, required: bool, partial: bool = False) -> dict[str, Any]:
    schema = _ref(f"{name}.patch" if partial else name)  # PATCH: no field required
    content = {_JSON: {"schema": schema}, **{m: {"schema": schema} for m in _FORMS}}
    return {"required": required, "content": content}


def _ref(name: str) -> Schema:
    return {"$ref": _REF + name}


def _object(
    properties: dict[str, Schema] | None = None, required: list[str] | None = None
) -> Schema:
    out: Schema = {"type": "object"}
    if properties:
        out["properties"] = properties
    if required:
        out["required"] = required
    return out


def _ok(schema: Schema, description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": _ref("Error")}}}


def _not_found() -> dict[str, Any]:
    return _error("no such entity (or its parent)")


def _size() -> Schema:
    return {"type": "integer", "minimum": 1, "maximum": MAX_SIZE, "default": DEFAULT_SIZE}


def _path(name: str, description: str, enum: list[str] | None = None) -> dict[str, Any]:
    schema: Schema = {"type": "string", "minLength": 1}
    if enum is not None:
        schema["enum"] = enum
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema,
    }


def _query(name: str, description: str, schema: Schema) -> dict[str, Any]:
    return {"name": name, "in": "query", "description": description, "schema": schema}


def _param_name(kind: Kind) -> str:
    return kind.name.removesuffix("s")


def _key_description(kind: Kind) -> str:
    return f"its id, or its {kind.key}" if kind.key else "its id"
