"""Compile a configuration into the immutable snapshot the hot path reads.

Done once per configuration: references resolved, cross-entity rules checked (unique names,
plugin scopes), the router built, and per route a *plugin plan*: for each plugin name that
could apply, the instance chosen by Kong's 8-level scope precedence. Only consumer-scoped
instances need a lookup per request; everything else is decided here.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

import attrs

from . import _schema
from ._entities import (
    SNI,
    CACertificate,
    Certificate,
    Consumer,
    Credential,
    Route,
    Service,
    Upstream,
)
from ._exceptions import ConfigurationError, PathPart
from .balancers._pool import UpstreamPool
from .plugins._base import Plugin, Scoped, check_declaration
from .routing import Router

__all__ = ["Configuration", "PlanEntry", "Snapshot", "UpstreamTLS"]

Path = tuple[PathPart, ...]
#: The clock `Snapshot.loaded_at` reads (monotonic; tests may replace it).
clock = time.monotonic
E = TypeVar("E", Certificate, CACertificate)


@attrs.frozen(kw_only=True)
class Configuration:
    """Everything a gateway is configured with (entities only; settings live on Gateway)."""

    services: Sequence[Service] = ()
    routes: Sequence[Route] = ()
    consumers: Sequence[Consumer] = ()
    upstreams: Sequence[Upstream] = ()
    plugins: Sequence[Plugin | Scoped] = ()
    certificates: Sequence[Certificate] = ()
    ca_certificates: Sequence[CACertificate] = ()
    #: In the caller's order; two configurations with the same SNIs in another order are
    #: equal (a dump nests them under their certificates, so loads them back reordered).
    snis: Sequence[SNI] = attrs.field(default=(), eq=lambda snis: _by_name(snis))

    def __attrs_post_init__(self) -> None:
        _schema.validate(self)  # lists become tuples, like the entities'
        # Certificates given inline (`Service(client_certificate=Certificate(...))`) are
        # listed too, as Kong lists every entity at the top: references then resolve by id
        # alone, and `dump` writes them where `load` expects them.
        given = [s.client_certificate for s in self.services]
        given += [u.client_certificate for u in self.upstreams]
        given += [sni.certificate for sni in self.snis]
        certificates = _listing(self.certificates, Certificate, given)
        authorities = _listing(
            self.ca_certificates,
            CACertificate,
            (ca for s in self.services for ca in s.ca_certificates or ()),
        )
        object.__setattr__(self, "certificates", certificates)
        object.__setattr__(self, "ca_certificates", authorities)

    @property
    def sni_paths(self) -> tuple[Path, ...]:
        """Where each SNI came from, for errors: `("snis", k)`, or `("certificates", 0,
        "snis", 1)` for one a declarative file nests under its certificate."""
        paths = _SNI_PATHS.get(id(self))
        return paths or tuple(("snis", k) for k in range(len(self.snis)))

    def with_sni_paths(self, paths: Sequence[Path]) -> Configuration:
        """This configuration, its errors about SNIs reported at `paths` (one per SNI).
        Not a field: where a configuration came from is not part of its value (nor of
        `attrs.asdict`, which gives Gateway's arguments)."""
        if len(paths) == len(self.snis) and id(self) not in _SNI_PATHS:
            _SNI_PATHS[id(self)] = tuple(paths)
            weakref.finalize(self, _SNI_PATHS.pop, id(self), None)
        return self


#: id(configuration) -> its SNIs' paths, while it lives (see `with_sni_paths`).
_SNI_PATHS: dict[int, tuple[Path, ...]] = {}


def _by_name(snis: Sequence[SNI]) -> tuple[SNI, ...]:
    return tuple(sorted(snis, key=lambda s: (s.name.lower(), s.name)))


def _reference_id(value: Certificate | str) -> str | None:
    return value if isinstance(value, str) else value.id


def _listing(listed: Sequence[E], cls: type[E], given: Iterable[object]) -> tuple[E, ...]:
    """`listed` plus the entities of type `cls` among `given` that it does not hold yet."""
    out = list(listed)
    for entity in given:
        if isinstance(entity, cls) and not any(
            e is entity or (e == entity and e.id == entity.id) for e in out
        ):
            out.append(entity)
    return tuple(out)


@attrs.frozen
class UpstreamTLS:
    """What an https Service's upstream connections trust and present, as PEM texts."""

    #: The only CAs its upstream certificates are verified against (none: the system's).
    ca_certificates: tuple[str, ...] = ()
    #: (certificate chain, private key): the Service's, or else its Upstream's.
    client_certificate: tuple[str, str] | None = None


@attrs.frozen(eq=False)
class PlanEntry:
    """One plugin name on one route, with the instances each scope level provides."""

    name: str
    priority: int
    route_service: Plugin | None  # level 4
    fallback: Plugin | None  # first of levels 6, 7, 8 (route, service, global)
    #: consumer id -> (first of levels 1-3, level 5), only if consumer-scoped instances exist
    by_consumer: dict[str, tuple[Plugin | None, Plugin | None]] | None

    def resolve(self, consumer_id: str | None) -> Plugin | None:
        if self.by_consumer is not None and consumer_id is not None:
            high, low = self.by_consumer.get(consumer_id, (None, None))
            return high or self.route_service or low or self.fallback
        return self.route_service or self.fallback


@attrs.frozen(eq=False)
class _Placed:
    plugin: Plugin
    route: Route | None
    service: Service | None
    consumer: Consumer | None
    path: Path
    #: The request schemes it applies to (`Scoped.protocols`).
    schemes: frozenset[str]


_SCHEMES = ("http", "https")


class Snapshot:
    """The compiled, read-only form of a Configuration."""

    def __init__(self, config: Configuration) -> None:
        self.config = config
        errors: list[tuple[Path, str]] = []
        services: list[tuple[Service, Path]] = []
        routes: list[tuple[Route, Service | None, Path]] = []
        self.services_by_key: dict[str, Service] = {}
        for i, service in enumerate(config.services):
            path: Path = ("services", i)
            services.append((service, path))
            _index(
                self.services_by_key, service, (service.name, service.id), (*path, "name"), errors
            )
            for j, route in enumerate(service.routes):
                routes.append((route, service, (*path, "routes", j)))
        for i, route in enumerate(config.routes):
            path = ("routes", i)
            owner: Service | None = None
            if route.service is not None:
                owner = self.services_by_key.get(route.service)
                if owner is None:
                    errors.append(
                        (
                            (*path, "service"),
                            f"the foreign key '{route.service}' does not reference an "
                            "existing 'services' entity",
                        )
                    )
            routes.append((route, owner, path))
        self.routes_by_key: dict[str, Route] = {}
        for route, _, path in routes:
            _index(self.routes_by_key, route, (route.name, route.id), (*path, "name"), errors)
        self.consumers_by_key = self._index_consumers(config.consumers, errors)
        self.credentials: dict[str, list[tuple[Credential, Consumer]]] = {}
        taken: dict[tuple[str, str, Any], Path] = {}
        for i, consumer in enumerate(config.consumers):
            positions: dict[str, int] = {}
            for credential in consumer.credentials:
                j = positions[credential.kind] = positions.get(credential.kind, -1) + 1
                cpath: Path = ("consumers", i, credential.kind, j)
                for name in ("id", *type(credential).unique):
                    # The value is not echoed: for most credentials it is a secret.
                    key = (credential.kind, name, getattr(credential, name))
                    if key[2] is None:
                        continue
                    if key in taken:
                        errors.append(
                            (
                                (*cpath, name),
                                f"UNIQUE violation detected on '{name}' "
                                f"(already used at {_fmt(taken[key])})",
                            )
                        )
                    else:
                        taken[key] = cpath
                self.credentials.setdefault(credential.kind, []).append((credential, consumer))
        self.upstreams: dict[str, Upstream] = {}
        for i, upstream in enumerate(config.upstreams):
            if upstream.name in self.upstreams:
                errors.append(
                    (("upstreams", i, "name"), f"UNIQUE violation detected on '{upstream.name}'")
                )
            self.upstreams[upstream.name] = upstream
        #: The gateway's pool for each Upstream, set when the snapshot goes live (pools
        #: outlive snapshots: a new configuration updates them in place).
        self.pools: dict[str, UpstreamPool] = {}
        #: When this configuration was built (monotonic clock): key-auth's `ttl` counts
        #: from here.
        self.loaded_at = clock()
        #: What plugins derive from this configuration and keep for its life (indexes of
        #: credentials, compiled rules), built on first use: `derived.get(key)`.
        self.derived: dict[Any, Any] = {}

        placed = self._place_plugins(config, services, routes, errors)
        #: By `id(service)`, for https services with CA or client certificates; and each
        #: Upstream's own client certificate (for its https health probes), by name.
        self.upstream_tls, self.upstream_certificates = _upstream_tls(config, services, errors)
        _check_snis(config, errors)
        self._tls_kwargs = {
            key: {
                "ca_certificates": tls.ca_certificates,
                "client_certificate": tls.client_certificate,
            }
            for key, tls in self.upstream_tls.items()
        }
        self._send_options: dict[tuple[int, bool], tuple[Service, dict[str, Any]]] = {}
        if errors:
            raise ConfigurationError(errors=errors)

        active = [
            (route, service) for route, service, _ in routes if service is None or service.enabled
        ]
        self.router = Router(active)
        self.plugins: Sequence[Plugin] = tuple({id(p.plugin): p.plugin for p in placed}.values())
        #: Global plugins by request scheme: they alone run `rewrite`, and they alone run
        #: when no route matched.
        self.global_plugins: dict[str, tuple[Plugin, ...]] = {}
        self.rewrite_plugins: dict[str, tuple[Plugin, ...]] = {}
        #: Per (route, request scheme): the plugin plan, in priority order.
        self.plans: dict[tuple[int, str], tuple[PlanEntry, ...]] = {}
        for scheme in _SCHEMES:
            applicable = [p for p in placed if scheme in p.schemes]
            globals_ = tuple(
                sorted(
                    (
                        p.plugin
                        for p in applicable
                        if p.route is None and p.service is None and p.consumer is None
                    ),
                    key=lambda p: (-p.priority, p.name),
                )
            )
            self.global_plugins[scheme] = globals_
            self.rewrite_plugins[scheme] = tuple(p for p in globals_ if p.implements("rewrite"))
            for route, owner, _ in routes:
                self.plans[id(route), scheme] = _plan(route, owner, applicable)

    def upstream_tls_kwargs(self, service: Service) -> dict[str, Any]:
        """The `UpstreamRequest` arguments for `service`'s TLS material (none: `{}`)."""
        return self._tls_kwargs.get(id(service), _NO_TLS)

    def send_options(self, service: Service, tls_verify: bool) -> dict[str, Any]:
        """The `UpstreamRequest` arguments that come from `service` alone (scheme, timeouts
        in seconds, TLS), built on its first request; `tls_verify` is the gateway's
        default, for a Service that does not say."""
        key = (id(service), tls_verify)
        cached = self._send_options.get(key)
        if cached is not None and cached[0] is service:
            return cached[1]
        if len(self._send_options) >= SEND_OPTIONS_MAX:
            self._send_options.clear()  # services made per request (by a plugin): start over
        options = {
            "scheme": service.protocol,
            "connect_timeout": service.connect_timeout / 1000,
            "write_timeout": service.write_timeout / 1000,
            "read_timeout": service.read_timeout / 1000,
            "tls_verify": tls_verify if service.tls_verify is None else service.tls_verify,
            **self.upstream_tls_kwargs(service),
        }
        # The service is kept with its options: no other object can take its id meanwhile.
        self._send_options[key] = (service, options)
        return options

    @staticmethod
    def _index_consumers(
        consumers: Sequence[Consumer], errors: list[tuple[Path, str]]
    ) -> dict[str, Consumer]:
        """Consumers by id, username and custom_id. Each is unique among its own kind only
        (as Kong's); where a reference could mean two consumers, an id beats a username,
        which beats a custom_id."""
        by_field: dict[str, dict[str, Consumer]] = {"custom_id": {}, "username": {}, "id": {}}
        for i, consumer in enumerate(consumers):
            values = {
                "username": consumer.username,
                "custom_id": consumer.custom_id,
                "id": consumer.id,
            }
            for name, value in values.items():
                if value is not None and value in by_field[name]:
                    errors.append(
                        (("consumers", i, name), f"UNIQUE violation detected on '{value}'")
                    )
                    break  # one error per consumer (a duplicate name implies its id)
            else:
                for name, value in values.items():
                    if value is not None:
                        by_field[name][value] = consumer
        table: dict[str, Consumer] = {}
        for kind in ("custom_id", "username", "id"):  # later kinds win
            table.update(by_field[kind])
        return table

    def _place_plugins(
        self,
        config: Configuration,
        services: Sequence[tuple[Service, Path]],
        routes: Sequence[tuple[Route, Service | None, Path]],
        errors: list[tuple[Path, str]],
    ) -> list[_Placed]:
        placed: list[_Placed] = []
        checked: set[type] = set()

        def place(
            entry: Plugin | Scoped,
            path: Path,
            route: Route | None,
            service: Service | None,
            consumer: Consumer | None,
        ) -> None:
            plugin = entry.plugin if isinstance(entry, Scoped) else entry
            if isinstance(entry, Scoped):
                if not entry.enabled:
                    return
                refs: list[tuple[str, str | None, dict[str, Any]]] = [
                    ("route", entry.route, self.routes_by_key),
                    ("service", entry.service, self.services_by_key),
                    ("consumer", entry.consumer, self.consumers_by_key),
                ]
                found: dict[str, Any] = {}
                for field, ref, table in refs:
                    if ref is None:
                        continue
                    target = table.get(ref)
                    if target is None:
                        errors.append(
                            (
                                (*path, field),
                                f"the foreign key '{ref}' does not "
                                f"reference an existing '{field}s' entity",
                            )
                        )
                        return
                    found[field] = target
                route = found.get("route", route)
                service = found.get("service", service)
                consumer = found.get("consumer", consumer)
            cls = type(plugin)
            if cls not in checked:
                try:
                    check_declaration(cls)
                except ConfigurationError as exc:
                    errors.extend(exc.prefixed(*path).errors)
                    return
                checked.add(cls)
            for scope, entity in (("route", route), ("service", service), ("consumer", consumer)):
                if entity is not None and scope not in cls.scopes:
                    errors.append(
                        ((*path, scope), f"plugin '{cls.name}' cannot be applied to a {scope}")
                    )
                    return
            if (
                route is None
                and service is None
                and consumer is None
                and ("global" not in cls.scopes)
            ):
                errors.append((path, f"plugin '{cls.name}' cannot be applied globally"))
                return
            schemes = frozenset(entry.protocols if isinstance(entry, Scoped) else _SCHEMES)
            placed.append(_Placed(plugin, route, service, consumer, path, schemes))

        for i, entry in enumerate(config.plugins):
            place(entry, ("plugins", i), None, None, None)
        for service, path in services:
            for i, entry in enumerate(service.plugins):
                place(entry, (*path, "plugins", i), None, service, None)
        for route, _, path in routes:
            for i, entry in enumerate(route.plugins):
                place(entry, (*path, "plugins", i), route, None, None)
        for i, consumer in enumerate(config.consumers):
            for j, entry in enumerate(consumer.plugins):
                place(entry, ("consumers", i, "plugins", j), None, None, consumer)

        seen: dict[tuple[str, int, int, int], Path] = {}
        for p in placed:
            key = (p.plugin.name, id(p.route), id(p.service), id(p.consumer))
            if key in seen:
                errors.append(
                    (
                        p.path,
                        f"UNIQUE violation detected on plugin '{p.plugin.name}' "
                        f"(already configured at {_fmt(seen[key])} for the same "
                        "route, service and consumer)",
                    )
                )
            seen[key] = p.path
        return placed


def _index(
    table: dict[str, Any],
    entity: Any,
    keys: Sequence[str | None],
    path: Path,
    errors: list[tuple[Path, str]],
) -> None:
    """Index an entity by its names and id; one error if any of them is taken already."""
    present = [k for k in keys if k is not None]
    for key in present:
        other = table.get(key)
        if other is not None and other is not entity:
            errors.append((path, f"UNIQUE violation detected on '{key}'"))
            return
    for key in present:
        table[key] = entity


_NO_TLS: dict[str, Any] = {}
#: Services whose send options a snapshot keeps (see `Snapshot.send_options`).
SEND_OPTIONS_MAX = 1024


def _upstream_tls(
    config: Configuration,
    services: Sequence[tuple[Service, Path]],
    errors: list[tuple[Path, str]],
) -> tuple[dict[int, UpstreamTLS], dict[str, tuple[str, str]]]:
    """Resolve certificate references (by id) and gather each https service's material."""
    certificates: dict[str, Certificate] = {}
    for i, certificate in enumerate(config.certificates):
        _index(certificates, certificate, (certificate.id,), ("certificates", i, "id"), errors)
    authorities: dict[str, CACertificate] = {}
    digests: dict[str, CACertificate] = {}
    for i, ca in enumerate(config.ca_certificates):
        _index(authorities, ca, (ca.id,), ("ca_certificates", i, "id"), errors)
        _index(digests, ca, (ca.cert_digest,), ("ca_certificates", i, "cert_digest"), errors)

    def find(table: dict[str, E], ref: E | str, path: Path, kind: str) -> E | None:
        key = ref if isinstance(ref, str) else str(ref.id)
        found = table.get(key)
        if found is None:
            errors.append(
                (path, f"the foreign key '{key}' does not reference an existing '{kind}' entity")
            )
        return found

    by_upstream: dict[str, Certificate] = {}
    for i, upstream in enumerate(config.upstreams):
        if upstream.client_certificate is not None:
            path: Path = ("upstreams", i, "client_certificate")
            found = find(certificates, upstream.client_certificate, path, "certificates")
            if found is not None:
                by_upstream[upstream.name] = found
    out: dict[int, UpstreamTLS] = {}
    for service, path in services:
        client: Certificate | None = None
        if service.client_certificate is not None:
            client = find(
                certificates,
                service.client_certificate,
                (*path, "client_certificate"),
                "certificates",
            )
        elif service.host is not None:
            # Kong: an upstream's certificate is used for its targets when the service
            # has none of its own.
            client = by_upstream.get(service.host)
        trusted: list[str] = []
        for j, authority in enumerate(service.ca_certificates or ()):
            found_ca = find(
                authorities, authority, (*path, "ca_certificates", j), "ca_certificates"
            )
            if found_ca is not None:
                trusted.append(found_ca.cert)
        if service.protocol == "https" and (client is not None or trusted):
            out[id(service)] = UpstreamTLS(
                ca_certificates=tuple(trusted),
                client_certificate=None if client is None else (client.cert, client.key),
            )
    return out, {name: (c.cert, c.key) for name, c in by_upstream.items()}


def _check_snis(config: Configuration, errors: list[tuple[Path, str]]) -> None:
    """SNI names and ids are unique, and each names a listed certificate."""
    certificates = {c.id for c in config.certificates}
    taken: dict[str, SNI] = {}
    for sni, path in zip(config.snis, config.sni_paths, strict=True):
        _index(taken, sni, (sni.name.lower(), sni.id), (*path, "name"), errors)
        key = _reference_id(sni.certificate)
        if key not in certificates:
            errors.append(
                (
                    (*path, "certificate"),
                    f"the foreign key '{key}' does not reference an existing 'certificates' entity",
                )
            )


def _fmt(path: Path) -> str:
    from ._exceptions import format_path

    return format_path(path)


def _plan(
    route: Route, service: Service | None, placed: Sequence[_Placed]
) -> tuple[PlanEntry, ...]:
    by_name: dict[str, dict[Any, Any]] = {}
    for p in placed:
        if p.route is not None and p.route is not route:
            continue
        if p.service is not None and p.service is not service:
            continue
        levels: dict[Any, Any] = by_name.setdefault(
            p.plugin.name, {"priority": p.plugin.priority, "consumers": {}}
        )
        r, s = p.route is not None, p.service is not None
        if p.consumer is not None:
            level = 1 if r and s else 2 if r else 3 if s else 5
            levels["consumers"].setdefault(p.consumer.id, {})[level] = p.plugin
        else:
            level = 4 if r and s else 6 if r else 7 if s else 8
            levels[level] = p.plugin
    entries = []
    for name, levels in by_name.items():
        by_consumer = None
        if levels["consumers"]:
            by_consumer = {
                cid: (lv.get(1) or lv.get(2) or lv.get(3), lv.get(5))
                for cid, lv in levels["consumers"].items()
            }
        entries.append(
            PlanEntry(
                name=name,
                priority=levels["priority"],
                route_service=levels.get(4),
                fallback=levels.get(6) or levels.get(7) or levels.get(8),
                by_consumer=by_consumer,
            )
        )
    entries.sort(key=lambda e: (-e.priority, e.name))
    return tuple(entries)
