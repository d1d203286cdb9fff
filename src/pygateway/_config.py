"""Kong's declarative configuration format <-> entities.

`load` accepts `_format_version` "1.1", "2.1" or "3.0", YAML (with PyYAML installed) or JSON,
nested (`services[].routes[]`) or flat (`routes[].service: name`), plugins by Kong name.
Every problem is reported with its field path, e.g. `services[0].routes[1].paths[0]: ...`.
`dump` writes the nested 3.0 form; `load(dump(c))` gives back an equal configuration.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import attrs

from ._entities import (
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
from ._exceptions import ConfigurationError, PathPart
from ._schema import plain
from ._snapshot import Configuration
from .plugins import _registry
from .plugins._base import Plugin, Scoped

__all__ = ["dump", "load", "read"]

Path_ = tuple[PathPart, ...]
E = TypeVar("E")

_FORMAT_VERSIONS = ("1.1", "2.1", "3.0")
_IGNORED = frozenset({"created_at", "updated_at", "ws_id"})
_UNSUPPORTED_TOP = (
    "vaults",
    "key_sets",
    "keys",
    "filter_chains",
    "consumer_groups",
    "workspaces",
    "parameters",
)
_UNSUPPORTED_ROUTE = ("snis", "sources", "destinations", "expression", "priority")
_PLUGIN_META = ("enabled", "instance_name", "protocols", "tags", "id")


def read(source: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a declarative file (JSON, or YAML when PyYAML is installed) into plain data."""
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror or exc}") from None
    if path.suffix.lower() == ".json":
        return _parse_json(text, path)
    try:
        import yaml
    except ImportError:
        if path.suffix.lower() in (".yml", ".yaml"):
            raise ConfigurationError(
                f"{path} is YAML: install PyYAML to read it (pip install 'pygateway[yaml]')"
            ) from None
        return _parse_json(text, path)
    try:
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigurationError(f"{path}: expected a mapping at the top level")
    return data


def _parse_json(text: str, path: Path) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigurationError(f"{path}: invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigurationError(f"{path}: expected a mapping at the top level")
    return data


def load(source: str | os.PathLike[str] | Mapping[str, Any]) -> Configuration:
    """Build a `Configuration` from a declarative file path or an already parsed mapping."""
    data = dict(source) if isinstance(source, Mapping) else read(source)
    return _Loader().load(data)


class _Loader:
    def __init__(self) -> None:
        self.errors: list[tuple[Path_, str]] = []
        # Every consumer's id and username: a flat reference means one of those before it
        # means a custom_id (as the snapshot resolves references).
        self.consumer_ids: set[str] = set()
        self.consumer_usernames: set[str] = set()

    def fail(self, path: Path_, reason: str) -> None:
        self.errors.append((path, reason))

    def build(self, cls: Callable[..., E], kwargs: dict[str, Any], path: Path_) -> E | None:
        try:
            return cls(**kwargs)
        except ConfigurationError as exc:
            self.errors.extend(exc.prefixed(*path).errors)
        except TypeError as exc:  # an unexpected keyword slipped through
            self.fail(path, str(exc))
        return None

    def fields(self, raw: Any, path: Path_, allowed: set[str]) -> dict[str, Any] | None:
        if not isinstance(raw, Mapping):
            self.fail(path, "expected a record")
            return None
        out = {}
        for key, value in raw.items():
            if key in _IGNORED:
                continue
            if key not in allowed:
                if value is not None:  # Kong exports fields we lack as null (`ordering`)
                    self.fail((*path, key), "unknown field")
                continue
            if value is None:  # Kong exports unset fields as null: use the default
                continue
            out[key] = value
        return out

    def items(self, data: Mapping[str, Any], key: str, path: Path_) -> list[Any]:
        value = data.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail((*path, key), "expected an array")
            return []
        return value

    # -- the document -----------------------------------------------------------------

    def load(self, data: dict[str, Any]) -> Configuration:
        version = data.get("_format_version")
        if version is None:
            self.fail(("_format_version",), "required field missing")
        elif str(version) not in _FORMAT_VERSIONS:
            self.fail(("_format_version",), "expected one of: " + ", ".join(_FORMAT_VERSIONS))
        known = {
            "_format_version",
            "_transform",
            "_comment",
            "_ignore",
            "_workspace",
            "_info",
            "services",
            "routes",
            "consumers",
            "plugins",
            "upstreams",
            "targets",
            "acls",
            "certificates",
            "ca_certificates",
            "snis",
            *Credential.registry,
        }
        for key, value in data.items():
            if key in _UNSUPPORTED_TOP:
                if value:
                    self.fail((key,), "not supported by pygateway yet")
            elif key not in known:
                self.fail((key,), "unknown field")

        targets: dict[str, list[Target]] = {}
        # where each flat reference was first made, to point errors at it
        ref_paths: dict[tuple[str, str], Path_] = {}
        for i, raw in enumerate(self.items(data, "targets", ())):
            ref: Any = raw.get("upstream") if isinstance(raw, Mapping) else None
            target = self.target(raw, ("targets", i), allow_ref=True)
            if target is not None:
                upstream_key = _ref(ref)
                if upstream_key is None:
                    self.fail(("targets", i, "upstream"), "required field missing")
                else:
                    targets.setdefault(upstream_key, []).append(target)
                    ref_paths.setdefault(("upstreams", upstream_key), ("targets", i, "upstream"))

        extra_creds: dict[str, list[tuple[str, Credential]]] = {}
        extra_acls: dict[str, list[str]] = {}
        for kind, cls in Credential.registry.items():
            for i, raw in enumerate(self.items(data, kind, ())):
                ref = _ref(raw.get("consumer")) if isinstance(raw, Mapping) else None
                cred = self.credential(cls, raw, (kind, i), allow_ref=True)
                if cred is not None:
                    if ref is None:
                        self.fail((kind, i, "consumer"), "required field missing")
                    else:
                        extra_creds.setdefault(ref, []).append((kind, cred))
                        ref_paths.setdefault(("consumers", ref), (kind, i, "consumer"))
        for i, raw in enumerate(self.items(data, "acls", ())):
            fields = self.fields(raw, ("acls", i), {"group", "consumer", "tags", "id"})
            if fields is None:
                continue
            ref = _ref(fields.get("consumer"))
            if ref is None or not isinstance(fields.get("group"), str):
                self.fail(("acls", i), "'group' and 'consumer' are required")
                continue
            if not self.acl_checked(fields, ("acls", i)):
                continue
            extra_acls.setdefault(ref, []).append(fields["group"])
            ref_paths.setdefault(("consumers", ref), ("acls", i, "consumer"))

        services = [
            s
            for i, raw in enumerate(self.items(data, "services", ()))
            if (s := self.service(raw, ("services", i))) is not None
        ]
        routes = [
            r
            for i, raw in enumerate(self.items(data, "routes", ()))
            if (r := self.route(raw, ("routes", i), top_level=True)) is not None
        ]
        for raw in self.items(data, "consumers", ()):
            if isinstance(raw, Mapping):
                self.consumer_ids.add(_consumer_id(raw))
                if isinstance(raw.get("username"), str):
                    self.consumer_usernames.add(raw["username"])
        consumers = [
            c
            for i, raw in enumerate(self.items(data, "consumers", ()))
            if (c := self.consumer(raw, ("consumers", i), extra_creds, extra_acls)) is not None
        ]
        upstreams = [
            u
            for i, raw in enumerate(self.items(data, "upstreams", ()))
            if (u := self.upstream(raw, ("upstreams", i), targets)) is not None
        ]
        known_upstreams = {u.name for u in upstreams} | {u.id for u in upstreams}
        for ref in targets:
            if ref not in known_upstreams:
                self.fail(
                    ref_paths[("upstreams", ref)],
                    f"the foreign key '{ref}' does not reference an existing 'upstreams' entity",
                )
        known_consumers = {k for c in consumers for k in (c.username, c.custom_id, c.id) if k}
        for ref in dict.fromkeys([*extra_creds, *extra_acls]):
            if ref not in known_consumers:
                self.fail(
                    ref_paths[("consumers", ref)],
                    f"the foreign key '{ref}' does not reference an existing 'consumers' entity",
                )
        plugins = [
            p
            for i, raw in enumerate(self.items(data, "plugins", ()))
            if (p := self.plugin(raw, ("plugins", i), top_level=True)) is not None
        ]
        snis: list[tuple[SNI, Path_]] = []  # with where each is, for the snapshot's errors
        certificates = [
            cert
            for i, raw in enumerate(self.items(data, "certificates", ()))
            if (cert := self.certificate(raw, ("certificates", i), snis)) is not None
        ]
        snis += [
            (sni, ("snis", i))
            for i, raw in enumerate(self.items(data, "snis", ()))
            if (sni := self.sni(raw, ("snis", i), None)) is not None
        ]
        ca_certificates = [
            ca
            for i, raw in enumerate(self.items(data, "ca_certificates", ()))
            if (ca := self.ca_certificate(raw, ("ca_certificates", i))) is not None
        ]
        if self.errors:
            raise ConfigurationError(errors=self.errors)
        try:
            return Configuration(
                services=tuple(services),
                routes=tuple(routes),
                consumers=tuple(consumers),
                upstreams=tuple(upstreams),
                plugins=tuple(plugins),
                certificates=tuple(certificates),
                ca_certificates=tuple(ca_certificates),
                snis=tuple(sni for sni, _ in snis),
            ).with_sni_paths([path for _, path in snis])
        except ConfigurationError:
            raise

    # -- entities ---------------------------------------------------------------------

    def service(self, raw: Any, path: Path_) -> Service | None:
        allowed = {a.name for a in attrs.fields(Service)} | {"url"}
        fields = self.fields(raw, path, allowed)
        if fields is None:
            return None
        fields["routes"] = tuple(
            route
            for i, raw_route in enumerate(self.items(fields, "routes", path))
            if (route := self.route(raw_route, (*path, "routes", i), top_level=False)) is not None
        )
        fields["plugins"] = self.nested_plugins(fields, path)
        _certificate_refs(fields)
        return self.build(Service, fields, path)

    def route(self, raw: Any, path: Path_, *, top_level: bool) -> Route | None:
        allowed = {a.name for a in attrs.fields(Route)} | set(_UNSUPPORTED_ROUTE)
        fields = self.fields(raw, path, allowed)
        if fields is None:
            return None
        for key in _UNSUPPORTED_ROUTE:
            if fields.pop(key, None):
                self.fail((*path, key), "not supported by pygateway yet")
        if "service" in fields:
            fields["service"] = _ref(fields["service"])
        fields["plugins"] = self.nested_plugins(fields, path)
        return self.build(Route, fields, path)

    def consumer(
        self,
        raw: Any,
        path: Path_,
        extra_creds: dict[str, list[tuple[str, Credential]]],
        extra_acls: dict[str, list[str]],
    ) -> Consumer | None:
        allowed = {"username", "custom_id", "tags", "id", "plugins", "acls", *Credential.registry}
        fields = self.fields(raw, path, allowed)
        if fields is None:
            return None
        credentials: list[Credential] = []
        for kind, cls in Credential.registry.items():
            for i, c in enumerate(self.items(fields, kind, path)):
                cred = self.credential(cls, c, (*path, kind, i), allow_ref=False)
                if cred is not None:
                    credentials.append(cred)
            fields.pop(kind, None)
        acls: list[str] = []
        for i, a in enumerate(self.items(fields, "acls", path)):
            if isinstance(a, str):
                acls.append(a)
                continue
            acl = self.fields(a, (*path, "acls", i), {"group", "tags", "id"})
            if acl is not None:
                if not isinstance(acl.get("group"), str):
                    self.fail((*path, "acls", i, "group"), "required field missing")
                elif self.acl_checked(acl, (*path, "acls", i)):
                    acls.append(acl["group"])
        username, custom_id = fields.get("username"), fields.get("custom_id")
        # flat entries may name the consumer by the id it is about to be given
        keys = [_consumer_id(fields)]
        if isinstance(username, str) and username not in self.consumer_ids:
            keys.append(username)
        if isinstance(custom_id, str) and not (
            custom_id in self.consumer_ids or custom_id in self.consumer_usernames
        ):
            keys.append(custom_id)
        for key in keys:
            credentials.extend(c for _, c in extra_creds.pop(key, []))
            acls.extend(extra_acls.pop(key, []))
        fields["credentials"] = tuple(credentials)
        fields["acls"] = tuple(acls)
        fields["plugins"] = self.nested_plugins(fields, path)
        return self.build(Consumer, fields, path)

    def credential(
        self, cls: type[Credential], raw: Any, path: Path_, *, allow_ref: bool
    ) -> Credential | None:
        allowed = {a.name for a in attrs.fields(cls)} | ({"consumer"} if allow_ref else set())
        fields = self.fields(raw, path, allowed)
        if fields is None:
            return None
        fields.pop("consumer", None)
        return self.build(cls, fields, path)

    def upstream(self, raw: Any, path: Path_, extra: dict[str, list[Target]]) -> Upstream | None:
        allowed = {a.name for a in attrs.fields(Upstream)}
        fields = self.fields(raw, path, allowed)
        if fields is None:
            return None
        _certificate_refs(fields)
        targets = [
            target
            for i, raw_target in enumerate(self.items(fields, "targets", path))
            if (target := self.target(raw_target, (*path, "targets", i), allow_ref=False))
            is not None
        ]
        name = fields.get("name")
        keys = [k for k in (name, fields.get("id")) if isinstance(k, str)]
        if "id" not in fields and isinstance(name, str):
            keys.append(entity_id("upstreams", name))  # the id it is about to be given
        for key in keys:
            targets.extend(extra.pop(key, []))
        fields["targets"] = tuple(targets)
        return self.build(Upstream, fields, path)

    def target(self, raw: Any, path: Path_, *, allow_ref: bool) -> Target | None:
        allowed = {"target", "weight", "tags", "id"} | ({"upstream"} if allow_ref else set())
        fields = self.fields(raw, path, allowed)
        if fields is None:
            return None
        fields.pop("upstream", None)
        if "target" not in fields:
            self.fail((*path, "target"), "required field missing")
            return None
        return self.build(Target, fields, path)

    def certificate(
        self, raw: Any, path: Path_, snis: list[tuple[SNI, Path_]]
    ) -> Certificate | None:
        """A certificate; its nested `snis` (names, or records) are added to `snis`."""
        allowed = {a.name for a in attrs.fields(Certificate)} | {"snis"}
        fields = self.fields(raw, path, allowed)
        if fields is None:
            return None
        nested = self.items(fields, "snis", path)
        fields.pop("snis", None)
        if not self.required(fields, ("cert", "key"), path):
            return None
        certificate = self.build(Certificate, fields, path)
        if certificate is not None:
            for i, raw_sni in enumerate(nested):
                if isinstance(raw_sni, str):
                    raw_sni = {"name": raw_sni}
                sni = self.sni(raw_sni, (*path, "snis", i), certificate)
                if sni is not None:
                    snis.append((sni, (*path, "snis", i)))
        return certificate

    def sni(self, raw: Any, path: Path_, certificate: Certificate | None) -> SNI | None:
        """An SNI: nested under `certificate`, or top-level naming its certificate's id."""
        allowed = {"name", "tags", "id"} | ({"certificate"} if certificate is None else set())
        fields = self.fields(raw, path, allowed)
        if fields is None or not self.required(fields, ("name",), path):
            return None
        if certificate is not None:
            fields["certificate"] = certificate.id
        elif not self.required(fields, ("certificate",), path):
            return None
        else:
            fields["certificate"] = _ref_id(fields["certificate"])
        return self.build(SNI, fields, path)

    def ca_certificate(self, raw: Any, path: Path_) -> CACertificate | None:
        fields = self.fields(raw, path, {"cert", "cert_digest", "tags", "id"})
        if fields is None or not self.required(fields, ("cert",), path):
            return None
        fields.pop("cert_digest", None)  # computed from the certificate, as Kong does
        return self.build(CACertificate, fields, path)

    def acl_checked(self, fields: Mapping[str, Any], path: Path_) -> bool:
        """An ACL entry's group is not empty and its tags are strings (Kong's checks)."""
        ok = True
        if not fields["group"]:
            self.fail((*path, "group"), "length must be at least 1")
            ok = False
        tags = fields.get("tags")
        if tags is not None and not (
            isinstance(tags, list | tuple) and all(isinstance(t, str) for t in tags)
        ):
            self.fail((*path, "tags"), "expected an array of strings")
            ok = False
        return ok

    def required(self, fields: dict[str, Any], keys: tuple[str, ...], path: Path_) -> bool:
        missing = [key for key in keys if key not in fields]
        for key in missing:
            self.fail((*path, key), "required field missing")
        return not missing

    def nested_plugins(self, fields: dict[str, Any], path: Path_) -> tuple[Plugin | Scoped, ...]:
        raw = self.items(fields, "plugins", path)
        fields.pop("plugins", None)
        return tuple(
            p
            for i, r in enumerate(raw)
            if (p := self.plugin(r, (*path, "plugins", i), top_level=False)) is not None
        )

    def plugin(self, raw: Any, path: Path_, *, top_level: bool) -> Plugin | Scoped | None:
        allowed = {"name", "config", "route", "service", "consumer", *_PLUGIN_META}
        fields = self.fields(raw, path, allowed)
        if fields is None:
            return None
        name = fields.get("name")
        if not isinstance(name, str):
            self.fail((*path, "name"), "required field missing")
            return None
        try:
            cls = _registry.get(name)
        except LookupError as exc:
            self.fail((*path, "name"), str(exc.args[0]))
            return None
        config = fields.get("config")
        if config is not None and not isinstance(config, Mapping):
            self.fail((*path, "config"), "expected a record")
            return None
        try:
            plugin = cls.from_config(dict(config or {}))
        except ConfigurationError as exc:
            self.errors.extend(exc.prefixed(*path, "config").errors)
            return None
        except TypeError as exc:
            self.fail((*path, "config"), str(exc))
            return None
        meta = {k: fields[k] for k in _PLUGIN_META if k in fields}
        refs = {
            k: _ref(fields[k])
            for k in ("route", "service", "consumer")
            if fields.get(k) is not None
        }
        if not meta and not refs:
            return plugin
        return self.build(Scoped, {"plugin": plugin, **meta, **refs}, path)


def _consumer_id(fields: Mapping[str, Any]) -> str:
    """The id a consumer entry has, or is about to be given ("" if it cannot have one)."""
    if isinstance(fields.get("id"), str):
        return str(fields["id"])
    username, custom_id = fields.get("username"), fields.get("custom_id")
    if isinstance(username, str) and username:
        return entity_id("consumers", f"u:{username}")
    if isinstance(custom_id, str) and custom_id:
        return entity_id("consumers", f"c:{custom_id}")
    return ""


def _certificate_refs(fields: dict[str, Any]) -> None:
    """Kong writes `client_certificate: {id: ..}` and `ca_certificates: [id, ..]`: keep the
    ids (anything else is left for the entity to refuse)."""
    if "client_certificate" in fields:
        fields["client_certificate"] = _ref_id(fields["client_certificate"])
    if isinstance(fields.get("ca_certificates"), list):
        fields["ca_certificates"] = [_ref_id(v) for v in fields["ca_certificates"]]


def _ref_id(value: Any) -> Any:
    if isinstance(value, Mapping) and set(value) == {"id"}:
        return value["id"]
    return value


def _ref(value: Any) -> str | None:
    """A foreign key as Kong writes it: a name or id string, or `{id: ..}` / `{name: ..}`."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        for key in ("id", "name", "username"):
            if isinstance(value.get(key), str):
                return str(value[key])
        return None
    return str(value)


# -- dump ---------------------------------------------------------------------------------


def entity_fields(entity: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """An entity's own fields as plain data (None values and nested children left out)."""
    out: dict[str, Any] = {}
    for a in attrs.fields(type(entity)):
        if a.name in skip:
            continue
        value = getattr(entity, a.name)
        if value is None or a.name == "url":
            continue
        if a.name == "client_certificate":  # by id, even when given inline
            out[a.name] = {"id": _id_of(value)}
        elif a.name == "ca_certificates":
            out[a.name] = [_id_of(v) for v in value]
        else:
            out[a.name] = plain(value)
    return out


def _id_of(entity: Any) -> Any:
    return entity if isinstance(entity, str) else entity.id


def dump_plugin(entry: Plugin | Scoped) -> dict[str, Any]:
    plugin = entry.plugin if isinstance(entry, Scoped) else entry
    out: dict[str, Any] = {"name": plugin.name, "config": plugin.to_config()}
    if isinstance(entry, Scoped):
        for key in ("route", "service", "consumer", *_PLUGIN_META):
            value = getattr(entry, key)
            if value is not None:
                out[key] = plain(value)
    return out


def dump_route(route: Route) -> dict[str, Any]:
    out = entity_fields(route, skip=("plugins",))
    if route.plugins:
        out["plugins"] = [dump_plugin(p) for p in route.plugins]
    return out


def dump_service(service: Service) -> dict[str, Any]:
    out = entity_fields(service, skip=("routes", "plugins"))
    if service.routes:
        out["routes"] = [dump_route(r) for r in service.routes]
    if service.plugins:
        out["plugins"] = [dump_plugin(p) for p in service.plugins]
    return out


def dump(config: Configuration) -> dict[str, Any]:
    """The configuration as a Kong 3.0 declarative document (nested form)."""
    out: dict[str, Any] = {"_format_version": "3.0"}
    if config.certificates:
        out["certificates"] = certificates = []
        for certificate in config.certificates:
            item = entity_fields(certificate)
            nested = [s for s in config.snis if _id_of(s.certificate) == certificate.id]
            if nested:
                item["snis"] = [entity_fields(s, skip=("certificate",)) for s in nested]
            certificates.append(item)
    listed = {c.id for c in config.certificates}
    if any(_id_of(s.certificate) not in listed for s in config.snis):
        out["snis"] = [
            {
                **entity_fields(s, skip=("certificate",)),
                "certificate": {"id": _id_of(s.certificate)},
            }
            for s in config.snis
            if _id_of(s.certificate) not in listed
        ]
    if config.ca_certificates:
        out["ca_certificates"] = [entity_fields(c) for c in config.ca_certificates]
    if config.services:
        out["services"] = [dump_service(s) for s in config.services]
    if config.routes:
        out["routes"] = [dump_route(r) for r in config.routes]
    if config.consumers:
        consumers = []
        for c in config.consumers:
            item = entity_fields(c, skip=("credentials", "acls", "plugins"))
            for cred in c.credentials:
                item.setdefault(cred.kind, []).append(entity_fields(cred))
            if c.acls:
                item["acls"] = [{"group": g} for g in c.acls]
            if c.plugins:
                item["plugins"] = [dump_plugin(p) for p in c.plugins]
            consumers.append(item)
        out["consumers"] = consumers
    if config.upstreams:
        upstreams = []
        for u in config.upstreams:
            item = entity_fields(u, skip=("targets",))
            if u.targets:
                item["targets"] = [entity_fields(t) for t in u.targets]
            upstreams.append(item)
        out["upstreams"] = upstreams
    if config.plugins:
        out["plugins"] = [dump_plugin(p) for p in config.plugins]
    return out
