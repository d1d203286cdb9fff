"""A gateway's configuration as the Admin API sees it: Kong's flat entity documents.

`documents(config)` lists every entity of a `Configuration` as a flat document by kind
(Kong's collection names) and id, foreign keys written `{"id": ...}`, with the
`created_at`/`updated_at` stamps Kong shows. `configuration(entities)` builds (and so
validates, cross-entity rules included) a `Configuration` back from such documents; its
errors name the entity they are about, by kind and id, so the Admin API can report a
problem on the entity a request touched.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from .._config import dump_plugin, entity_fields, load
from .._entities import (
    SNI,
    CACertificate,
    Certificate,
    Consumer,
    Credential,
    Route,
    Service,
    Target,
    Upstream,
    entity_id,
)
from .._exceptions import ConfigurationError, PathPart
from .._snapshot import Configuration, Snapshot
from ..plugins._base import Plugin, Scoped

__all__ = ["EntityError", "InvalidEntities", "configuration", "documents"]

#: kind -> id -> document.
Entities = dict[str, dict[str, dict[str, Any]]]
Path = tuple[PathPart, ...]

#: The entity class of each kind whose fields the Admin API shows (credentials are added
#: from `Credential.registry`); plugins and ACLs are described apart.
CLASSES: dict[str, type[Any]] = {
    "services": Service,
    "routes": Route,
    "consumers": Consumer,
    "upstreams": Upstream,
    "targets": Target,
    "certificates": Certificate,
    "ca_certificates": CACertificate,
    "snis": SNI,
}
#: Fields that hold children, which the flat form lists as entities of their own.
CHILDREN = frozenset({"routes", "plugins", "targets", "credentials", "acls", "url"})


@attrs.frozen
class EntityError:
    """One problem: on the entity `kind`/`id` (None when it is about no single entity),
    at `path` inside it."""

    kind: str | None
    id: str | None
    path: Path
    message: str


class InvalidEntities(ConfigurationError):
    """The documents do not make a valid configuration; `problems` says where."""

    def __init__(self, problems: Sequence[EntityError]) -> None:
        super().__init__(
            errors=[
                ((p.kind, p.id, *p.path) if p.kind and p.id else p.path, p.message)
                for p in problems
            ]
        )
        self.problems = list(problems)


def now() -> int:
    """Kong's timestamps: whole epoch seconds."""
    return int(time.time())


def documents(config: Configuration, previous: Entities | None = None) -> Entities:
    """Every entity of `config` as a flat document, with an id (a new uuid4 for those that
    have none) and timestamps (kept from `previous` where it holds the same entity)."""
    out: Entities = {}
    stamp = now()

    def add(kind: str, doc: dict[str, Any]) -> str:
        id_ = doc.get("id") or str(uuid.uuid4())
        doc["id"] = id_
        before = (previous or {}).get(kind, {}).get(id_, {})
        doc["created_at"] = before.get("created_at", stamp)
        doc["updated_at"] = before.get("updated_at", doc["created_at"])
        out.setdefault(kind, {})[id_] = doc
        return id_

    keys: dict[str, dict[str, str]] = {"services": {}, "routes": {}, "consumers": {}}

    def remember(kind: str, id_: str, *names: str | None) -> None:
        for name in (id_, *names):
            if name:
                keys[kind].setdefault(name, id_)

    def ref(kind: str, value: str | None) -> dict[str, str] | None:
        return None if value is None else {"id": keys[kind].get(value, value)}

    plugins: list[tuple[Plugin | Scoped, dict[str, str]]] = []
    for service in config.services:
        sid = add("services", entity_fields(service, skip=("routes", "plugins")))
        remember("services", sid, service.name)
        for route in service.routes:
            doc = entity_fields(route, skip=("plugins", "service"))
            rid = add("routes", {**doc, "service": {"id": sid}})
            remember("routes", rid, route.name)
            plugins += [(p, {"route": rid}) for p in route.plugins]
        plugins += [(p, {"service": sid}) for p in service.plugins]
    for route in config.routes:
        doc = entity_fields(route, skip=("plugins", "service"))
        doc["service"] = ref("services", route.service)
        rid = add("routes", doc)
        remember("routes", rid, route.name)
        plugins += [(p, {"route": rid}) for p in route.plugins]
    for consumer in config.consumers:
        doc = entity_fields(consumer, skip=("credentials", "acls", "plugins"))
        cid = add("consumers", doc)
        remember("consumers", cid, consumer.username, consumer.custom_id)
        for credential in consumer.credentials:
            add(credential.kind, {**entity_fields(credential), "consumer": {"id": cid}})
        for group in consumer.acls:
            acl = {"id": entity_id("acls", f"{cid}:{group}"), "group": group}
            add("acls", {**acl, "consumer": {"id": cid}})
        plugins += [(p, {"consumer": cid}) for p in consumer.plugins]
    for upstream in config.upstreams:
        uid = add("upstreams", entity_fields(upstream, skip=("targets",)))
        for target in upstream.targets:
            add("targets", {**entity_fields(target), "upstream": {"id": uid}})
    for certificate in config.certificates:
        add("certificates", entity_fields(certificate))
    for authority in config.ca_certificates:
        add("ca_certificates", entity_fields(authority))
    for sni in config.snis:
        doc = entity_fields(sni, skip=("certificate",))
        owner = sni.certificate if isinstance(sni.certificate, str) else sni.certificate.id
        add("snis", {**doc, "certificate": {"id": owner}})
    plugins += [(p, {}) for p in config.plugins]
    for entry, scope in plugins:
        doc = dump_plugin(entry)
        for key in ("route", "service", "consumer"):
            value = doc.pop(key, None) or scope.get(key)
            doc[key] = ref(f"{key}s", value)
        add("plugins", doc)
    return out


def flat_document(entities: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """The declarative document (flat form) holding `entities`, in id order."""
    out: dict[str, Any] = {"_format_version": "3.0"}
    for kind, by_id in entities.items():
        if by_id:
            out[kind] = [dict(by_id[i]) for i in sorted(by_id)]
    return out


def configuration(entities: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> Configuration:
    """Build and check the configuration the documents describe (what the gateway would
    run, cross-entity rules included). Raises `InvalidEntities` naming each entity at fault."""
    order = {kind: sorted(by_id) for kind, by_id in entities.items()}
    try:
        config = load(flat_document(entities))
    except ConfigurationError as exc:
        raise InvalidEntities([_located(order, path, msg) for path, msg in exc.errors]) from None
    try:
        Snapshot(config)
    except ConfigurationError as exc:
        raise InvalidEntities([_in_config(config, path, msg) for path, msg in exc.errors]) from None
    return config


def _located(order: Mapping[str, Sequence[str]], path: Path, message: str) -> EntityError:
    """An error on the flat document (`("routes", 3, "paths", 0)`) as one on an entity."""
    if len(path) >= 2 and isinstance(path[0], str) and isinstance(path[1], int):
        ids = order.get(path[0], ())
        if path[1] < len(ids):
            return EntityError(path[0], ids[path[1]], path[2:], message)
    return EntityError(None, None, path, message)


def _in_config(config: Configuration, path: Path, message: str) -> EntityError:
    """An error on the built Configuration (as `Snapshot` reports them) as one on an entity:
    every entity is listed at the top level there, but credentials and targets, which sit
    under their consumer and upstream."""
    if len(path) < 2 or not isinstance(path[1], int):
        return EntityError(None, None, path, message)
    kind, index, rest = str(path[0]), path[1], path[2:]
    try:
        entity: Any = getattr(config, kind)[index]
        if kind == "consumers" and len(rest) >= 2 and rest[0] in Credential.registry:
            credentials = [c for c in entity.credentials if c.kind == rest[0]]
            return EntityError(str(rest[0]), credentials[int(rest[1])].id, rest[2:], message)
        if kind == "upstreams" and len(rest) >= 2 and rest[0] == "targets":
            return EntityError("targets", entity.targets[int(rest[1])].id, rest[2:], message)
    except (AttributeError, IndexError, TypeError, ValueError):
        return EntityError(None, None, path, message)
    return EntityError(kind, getattr(entity, "id", None), rest, message)
