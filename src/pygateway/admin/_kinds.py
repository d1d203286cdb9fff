"""What the Admin API knows of each kind of entity: its URL segment, the field it may be
named by in a URL (Kong's endpoint key), its references and its unique fields."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import attrs

from .._entities import Credential
from ..plugins._base import Scoped
from ._model import CHILDREN, CLASSES

__all__ = ["Kind", "kinds"]


@attrs.frozen
class Kind:
    #: The collection name, as in declarative files and stores: "keyauth_credentials".
    name: str
    #: The top-level URL segment: "key-auths".
    path: str
    #: The segment under a parent: "key-auth" in `/consumers/{c}/key-auth`.
    nested: str
    #: The field a URL may name it by instead of its id ("name"), if any.
    key: str | None
    #: Reference field -> the kind it refers to ("service" -> "services").
    parents: Mapping[str, str] = attrs.field(factory=dict)
    #: Fields whose values no two entities of this kind share.
    unique: tuple[str, ...] = ()
    #: The entity class, for field types and for the fields shown.
    cls: type[Any] | None = None
    #: Children deleted with the entity (kind, reference field), and children that keep
    #: it from being deleted.
    cascade: tuple[tuple[str, str], ...] = ()
    restrict: tuple[tuple[str, str], ...] = ()

    def shown_fields(self) -> list[str]:
        """Every field a document of this kind shows (null when unset), as Kong does."""
        if self.name == "plugins":
            names = ["name", "config", "route", "service", "consumer"]
            names += [a.name for a in attrs.fields(Scoped) if a.name != "plugin"]
        elif self.name == "acls":
            names = ["group", "tags", "consumer", "id"]
        elif self.cls is None:
            return []
        else:
            names = [a.name for a in attrs.fields(self.cls) if a.name not in CHILDREN]
            names += [p for p in self.parents if p not in names]
            if self.name == "certificates":
                names.append("snis")  # the names of its SNIs (Kong's shorthand)
        return [*names, "created_at", "updated_at"]

    def show(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = dict.fromkeys(self.shown_fields())
        out.update(doc)
        return out


def looks_like_id(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _credential_path(cls: type[Credential]) -> str:
    return cls.plugin if cls.plugin == "oauth2" else f"{cls.plugin}s"


def kinds() -> dict[str, Kind]:
    """Every kind by collection name (credential kinds as registered right now)."""
    consumer = {"consumer": "consumers"}
    table = [
        Kind(
            "services",
            "services",
            "service",
            "name",
            unique=("name",),
            cls=CLASSES["services"],
            cascade=(("plugins", "service"),),
            restrict=(("routes", "service"),),
        ),
        Kind(
            "routes",
            "routes",
            "routes",
            "name",
            {"service": "services"},
            ("name",),
            CLASSES["routes"],
            cascade=(("plugins", "route"),),
        ),
        Kind(
            "consumers",
            "consumers",
            "consumer",
            "username",
            unique=("username", "custom_id"),
            cls=CLASSES["consumers"],
            cascade=(
                ("plugins", "consumer"),
                ("acls", "consumer"),
                *((k, "consumer") for k in Credential.registry),
            ),
        ),
        Kind(
            "plugins",
            "plugins",
            "plugins",
            "instance_name",
            {"route": "routes", "service": "services", "consumer": "consumers"},
            ("instance_name",),
        ),
        Kind(
            "upstreams",
            "upstreams",
            "upstream",
            "name",
            unique=("name",),
            cls=CLASSES["upstreams"],
            cascade=(("targets", "upstream"),),
        ),
        Kind(
            "targets",
            "targets",
            "targets",
            "target",
            {"upstream": "upstreams"},
            ("target",),
            CLASSES["targets"],
        ),
        Kind(
            "certificates",
            "certificates",
            "certificates",
            None,
            cls=CLASSES["certificates"],
            cascade=(("snis", "certificate"),),
        ),
        Kind(
            "snis",
            "snis",
            "snis",
            "name",
            {"certificate": "certificates"},
            ("name",),
            CLASSES["snis"],
        ),
        Kind(
            "ca_certificates",
            "ca_certificates",
            "ca_certificates",
            None,
            cls=CLASSES["ca_certificates"],
        ),
        Kind("acls", "acls", "acls", None, consumer),
    ]
    for name, cls in Credential.registry.items():
        key = cls.unique[0] if cls.unique else None
        table.append(Kind(name, _credential_path(cls), cls.plugin, key, consumer, cls.unique, cls))
    return {k.name: k for k in table}
