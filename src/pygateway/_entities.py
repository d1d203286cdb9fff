"""The configuration entities: Service, Route, Consumer, credentials, Upstream, Target,
the certificates services present and trust upstream, and the SNIs (server names) the
gateway presents certificates for to its clients.

Immutable attrs classes with Kong's field names, defaults and units (timeouts in ms). Each is
checked when it is constructed, from Python or from a declarative file alike, and a problem
raises `ConfigurationError` naming the field: `paths[0]: non-normalized path, consider use
'/a' instead`. Derive changed copies with `attrs.evolve`.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
import secrets
import ssl
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import attrs

from . import _schema
from ._exceptions import ConfigurationError, PathPart
from ._schema import field
from .balancers._health import Healthchecks
from .engines._base import load_cert_chain
from .plugins._base import Plugin, Scoped
from .routing._paths import check_regex, normalize_path, translate_regex

__all__ = [
    "CACertificate",
    "Certificate",
    "Consumer",
    "Credential",
    "KeyAuthCredential",
    "Route",
    "SNI",
    "Service",
    "Target",
    "Upstream",
]

# Deterministic ids for named entities, so a declarative file reloads with the same ids.
_NAMESPACE = uuid.UUID("6f1c7a52-8c0e-4d5e-9a51-2f7c3b1e4a90")
_TAG = re.compile(r"^[\x21-\x2b\x2d\x2e\x30-\x7e]+$")  # printable ASCII minus ',' and '/'
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_-]{1,63})*\.?$"
)
_METHOD = re.compile(r"^[A-Z]+$")
_MAX_TIMEOUT = 2**31 - 2

PluginEntry = Plugin | Scoped


def entity_id(kind: str, key: str) -> str:
    """The id Kong-style declarative loading gives an entity named `key`."""
    return str(uuid.uuid5(_NAMESPACE, f"{kind}:{key}"))


def _check_tags(tags: Sequence[str]) -> str | None:
    for tag in tags:
        if not _TAG.fullmatch(tag):
            return (
                f"invalid tag '{tag}': expected printable ascii (except `,` and `/`) "
                "or valid utf-8 sequences"
            )
    return None


def _check_uuid(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        uuid.UUID(value)
    except ValueError:
        return "expected a valid UUID"
    return None


def _check_host(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        ipaddress.ip_address(value.strip("[]"))
        return None
    except ValueError:
        pass
    if not _HOSTNAME.fullmatch(value):
        return f"invalid hostname: {value}"
    return None


def _check_path(value: str | None) -> str | None:
    if value is None:
        return None
    if not value.startswith("/"):
        return "should start with: /"
    normalized = normalize_path(value.encode("utf-8").decode("latin-1"))
    if normalized != value:
        return f"non-normalized path, consider use '{normalized}' instead"
    return None


def _check_plugins(plugins: Sequence[Any]) -> str | None:
    for p in plugins:
        if not isinstance(p, Plugin | Scoped):
            return f"expected a Plugin (got {type(p).__name__})"
    return None


def _reference(value: Any) -> Any:
    """What a reference compares by: a certificate given inline equals its id."""
    return value if isinstance(value, str) else getattr(value, "id", value)


def _references(values: Sequence[Any] | None) -> Any:
    return None if values is None else tuple(_reference(v) for v in values)


def _check_reference(value: Any) -> str | None:
    return _check_uuid(value) if isinstance(value, str) else None


#: The metadata of a field referring to an entity (given inline, or by its id).
_REFERENCE = {"checks": [_check_reference]}


@attrs.frozen(kw_only=True)
class Route:
    """Which requests go to a Service: Kong's route, with Kong's defaults.

    At least one of `methods`, `hosts`, `headers` or `paths` must be set. Plain paths are
    prefixes; a path starting with `~` is a regular expression anchored at the start, whose
    named groups become `ctx.uri_captures`.
    """

    name: str | None = field(None, check=_schema.check_name)
    protocols: Sequence[Literal["http", "https", "ws", "wss"]] = ("http", "https")
    methods: Sequence[str] | None = None
    hosts: Sequence[str] | None = None
    paths: Sequence[str] | None = None
    headers: Mapping[str, Sequence[str]] | None = None
    strip_path: bool = True
    preserve_host: bool = False
    regex_priority: int = 0
    path_handling: Literal["v0", "v1"] = "v0"
    https_redirect_status_code: Literal[426, 301, 302, 307, 308] = 426
    request_buffering: bool = True
    response_buffering: bool = True
    tags: Sequence[str] = field((), check=_check_tags)
    plugins: Sequence[PluginEntry] = field((), check=_check_plugins)
    service: str | None = None
    id: str | None = field(None, eq=False, check=_check_uuid)

    def __attrs_post_init__(self) -> None:
        _schema.validate(self)
        errors: list[tuple[tuple[PathPart, ...], str]] = []
        if not (self.methods or self.hosts or self.headers or self.paths):
            errors.append(
                (
                    (),
                    "must set one of 'methods', 'hosts', 'headers', 'paths' "
                    "when 'protocols' is 'http' or 'https'",
                )
            )
        if not self.protocols:
            errors.append((("protocols",), "length must be at least 1"))
        for i, method in enumerate(self.methods or ()):
            if not _METHOD.fullmatch(method):
                errors.append((("methods", i), f"invalid value: {method}"))
        for i, host in enumerate(self.hosts or ()):
            reason = _check_route_host(host)
            if reason:
                errors.append((("hosts", i), reason))
        for i, path in enumerate(self.paths or ()):
            reason = _check_route_path(path)
            if reason:
                errors.append((("paths", i), reason))
        for name, values in (self.headers or {}).items():
            if name.lower() == "host":
                errors.append(
                    (
                        ("headers",),
                        "cannot contain 'host' header, which must be "
                        "specified in the 'hosts' attribute",
                    )
                )
            if not values:
                errors.append((("headers", name), "length must be at least 1"))
            for i, value in enumerate(values):
                if value.startswith("~*"):
                    reason = check_regex(translate_regex(value[2:]), value[2:])
                    if reason:
                        errors.append((("headers", name, i), reason))
        if errors:
            raise ConfigurationError(errors=errors)
        if self.id is None and self.name:
            object.__setattr__(self, "id", entity_id("routes", self.name))


def _check_route_host(host: str) -> str | None:
    name, _, port = host.rpartition(":") if host.count(":") == 1 else (host, "", "")
    if not name:
        name, port = host, ""
    if port and (not port.isdigit() or not 0 < int(port) < 65536):
        return f"invalid port number: {port}"
    if name.count("*") > 1:
        return "invalid wildcard: must have at most one wildcard"
    if "*" in name:
        if not (name.startswith("*.") or name.endswith(".*")):
            return "invalid wildcard: must be placed at leftmost or rightmost label"
        return _check_host(name.replace("*", "wildcard"))
    return _check_host(name)


def _check_route_path(path: str) -> str | None:
    if path.startswith("~"):
        return check_regex(translate_regex(path[1:]), path[1:])
    if not path.startswith("/"):
        return "should start with: / (fixed path) or ~/ (regex path)"
    normalized = normalize_path(path.encode("utf-8").decode("latin-1"))
    if normalized != path:
        return f"non-normalized path, consider use '{normalized}' instead"
    return None


@attrs.frozen(kw_only=True)
class Service:
    """An upstream API: where matched requests are proxied.

    Give either `url` ("http://users.internal:8080/v1") or `protocol`/`host`/`port`/`path`.
    `host` may name an `Upstream`, whose targets are then balanced. Timeouts are in ms.
    For https: `tls_verify`, `ca_certificates` (CACertificates or their ids: the only CAs
    trusted) and `client_certificate` (a Certificate or its id, for mTLS).
    """

    name: str | None = field(None, check=_schema.check_name)
    url: str | None = field(None, eq=False)
    protocol: Literal["http", "https"] = "http"
    host: str | None = field(None, check=_check_host)
    port: int | None = field(None, between=(0, 65535))
    path: str | None = field(None, check=_check_path)
    retries: int = field(5, between=(0, 32767))
    connect_timeout: int = field(60_000, between=(1, _MAX_TIMEOUT))
    write_timeout: int = field(60_000, between=(1, _MAX_TIMEOUT))
    read_timeout: int = field(60_000, between=(1, _MAX_TIMEOUT))
    tls_verify: bool | None = None
    tls_verify_depth: int | None = field(None, between=(0, 64))
    ca_certificates: Sequence[CACertificate | str] | None = attrs.field(
        default=None, eq=_references
    )
    client_certificate: Certificate | str | None = attrs.field(
        default=None, eq=_reference, metadata=_REFERENCE
    )
    enabled: bool = True
    tags: Sequence[str] = field((), check=_check_tags)
    routes: Sequence[Route] = ()
    plugins: Sequence[PluginEntry] = field((), check=_check_plugins)
    id: str | None = field(None, eq=False, check=_check_uuid)

    def __attrs_post_init__(self) -> None:
        if self.url is not None:
            if not isinstance(self.url, str):
                raise ConfigurationError("expected a string", path=("url",))
            parts = urlsplit(self.url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigurationError(f"invalid url: {self.url}", path=("url",))
            try:
                port = parts.port
            except ValueError:
                raise ConfigurationError(f"invalid url: {self.url}", path=("url",)) from None
            object.__setattr__(self, "protocol", parts.scheme)
            object.__setattr__(self, "host", parts.hostname)
            object.__setattr__(self, "port", port)
            object.__setattr__(self, "path", parts.path or None)
            object.__setattr__(self, "url", None)
        _schema.validate(self)
        if self.host is None:
            raise ConfigurationError("required field missing", path=("host",))
        if self.port is None:
            object.__setattr__(self, "port", 443 if self.protocol == "https" else 80)
        tls_only = {
            "tls_verify": self.tls_verify,
            "tls_verify_depth": self.tls_verify_depth,
            "ca_certificates": self.ca_certificates,
            "client_certificate": self.client_certificate,
        }
        errors: list[tuple[tuple[PathPart, ...], str]] = []
        for key, value in tls_only.items():
            if value is not None and self.protocol != "https":
                errors.append(((key,), "value must be null when 'protocol' is not 'https'"))
            elif value is not None and key == "tls_verify_depth":
                # Python's ssl module cannot limit the chain depth: accepting it and
                # verifying without the limit would be a silent downgrade.
                errors.append(((key,), "not supported by pygateway yet"))
        for i, ref in enumerate(self.ca_certificates or ()):
            reason = _check_reference(ref)
            if reason:
                errors.append((("ca_certificates", i), reason))
        if errors:
            raise ConfigurationError(errors=errors)
        if self.id is None and self.name:
            object.__setattr__(self, "id", entity_id("services", self.name))
        for i, route in enumerate(self.routes):
            if route.service is not None and route.service not in (self.name, self.id):
                raise ConfigurationError(
                    f"route is nested under service '{self.name}' but names service "
                    f"'{route.service}'",
                    path=("routes", i, "service"),
                )


@attrs.frozen(kw_only=True)
class Credential:
    """Base class of consumer credentials (key-auth keys, basic-auth passwords, ...).

    `kind` is the declarative key the credential is listed under in a consumer
    (`keyauth_credentials`); `plugin` is the plugin that reads it.
    """

    kind: ClassVar[str] = ""
    plugin: ClassVar[str] = ""
    #: Fields whose values no two credentials of this kind may share (checked per gateway).
    unique: ClassVar[tuple[str, ...]] = ()
    registry: ClassVar[dict[str, type[Credential]]] = {}

    id: str | None = field(None, eq=False, check=_check_uuid)
    tags: Sequence[str] = field((), check=_check_tags)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("kind"):
            Credential.registry[cls.kind] = cls

    def __attrs_post_init__(self) -> None:
        _schema.validate(self)
        if self.id is None:
            # Random, not derived from the secret: it is sent upstream, and must reveal
            # nothing about the credential.
            object.__setattr__(self, "id", str(uuid.uuid4()))

    @property
    def identifier(self) -> str:
        """What `X-Credential-Identifier` carries for this credential."""
        return self.id or ""


@attrs.frozen(kw_only=True)
class KeyAuthCredential(Credential):
    """An API key for the key-auth plugin. A random key is generated when none is given.

    Keys are unique across all consumers. The id (sent upstream as `X-Credential-Identifier`)
    is random unless given: it reveals nothing about the key.
    """

    kind: ClassVar[str] = "keyauth_credentials"
    plugin: ClassVar[str] = "key-auth"
    unique: ClassVar[tuple[str, ...]] = ("key",)

    key: str = attrs.field(factory=lambda: secrets.token_urlsafe(24), repr=False)
    ttl: int | None = field(None, between=(0, 100_000_000))

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if not self.key:
            raise ConfigurationError("length must be at least 1", path=("key",))


@attrs.frozen(kw_only=True)
class Consumer:
    """Someone who calls your APIs; auth plugins map a credential to a Consumer."""

    username: str | None = None
    custom_id: str | None = None
    credentials: Sequence[Credential] = ()
    acls: Sequence[str] = ()
    tags: Sequence[str] = field((), check=_check_tags)
    plugins: Sequence[PluginEntry] = field((), check=_check_plugins)
    id: str | None = field(None, eq=False, check=_check_uuid)

    def __attrs_post_init__(self) -> None:
        _schema.validate(self)
        if not self.username and not self.custom_id:
            raise ConfigurationError(
                "at least one of these fields must be non-empty: 'custom_id', 'username'"
            )
        if self.id is None:
            key = f"u:{self.username}" if self.username else f"c:{self.custom_id}"
            object.__setattr__(self, "id", entity_id("consumers", key))


def split_target(target: str) -> tuple[str, int]:
    """`"10.0.0.5:8080"` -> `("10.0.0.5", 8080)`; the port defaults to 8000 (Kong)."""
    if target.startswith("["):
        host, _, rest = target[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif target.count(":") == 1:
        host, _, port = target.partition(":")
    else:
        host, port = target, ""
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise ConfigurationError(f"invalid port number: {port}", path=("target",))
    if not host or _check_host(host):
        raise ConfigurationError(
            "Invalid target; not a valid hostname or ip address", path=("target",)
        )
    return host, int(port) if port else 8000


@attrs.frozen
class Target:
    """One address of an Upstream: `Target("10.0.0.5:8080", weight=100)`; weight 0 disables it."""

    target: str
    weight: int = field(100, between=(0, 65535), kw_only=True)
    tags: Sequence[str] = field((), check=_check_tags, kw_only=True)
    id: str | None = field(None, eq=False, check=_check_uuid, kw_only=True)

    def __attrs_post_init__(self) -> None:
        _schema.validate(self)
        host, port = split_target(self.target)
        shown = f"[{host}]" if ":" in host else host
        object.__setattr__(self, "target", f"{shown}:{port}")

    @property
    def host(self) -> str:
        return split_target(self.target)[0]

    @property
    def port(self) -> int:
        return split_target(self.target)[1]


_HASH_ON = Literal["none", "consumer", "ip", "header", "cookie", "path", "query_arg", "uri_capture"]


@attrs.frozen(kw_only=True)
class Upstream:
    """A virtual host name balanced over Targets; a Service uses it by naming it as `host`."""

    name: str
    algorithm: Literal["round-robin", "consistent-hashing", "least-connections", "latency"] = (
        "round-robin"
    )
    hash_on: _HASH_ON = "none"
    hash_fallback: _HASH_ON = "none"
    hash_on_header: str | None = None
    hash_fallback_header: str | None = None
    hash_on_cookie: str | None = None
    hash_on_cookie_path: str = "/"
    hash_on_query_arg: str | None = None
    hash_fallback_query_arg: str | None = None
    hash_on_uri_capture: str | None = None
    hash_fallback_uri_capture: str | None = None
    slots: int = field(10_000, between=(10, 65536))
    host_header: str | None = field(None, check=_check_host)
    client_certificate: Certificate | str | None = attrs.field(
        default=None, eq=_reference, metadata=_REFERENCE
    )
    use_srv_name: bool = False
    healthchecks: Healthchecks = attrs.field(factory=Healthchecks)
    tags: Sequence[str] = field((), check=_check_tags)
    targets: Sequence[Target] = ()
    id: str | None = field(None, eq=False, check=_check_uuid)

    def __attrs_post_init__(self) -> None:
        _schema.validate(self)
        try:
            ipaddress.ip_address(self.name.strip("[]"))
        except ValueError:
            pass
        else:
            raise ConfigurationError("Invalid name; no ip addresses allowed", path=("name",))
        if ":" in self.name or _check_host(self.name):
            raise ConfigurationError(
                f"Invalid name ('{self.name}'); must be a valid hostname", path=("name",)
            )
        errors = _hash_errors(self)
        if errors:
            raise ConfigurationError(errors=errors)
        if self.hash_on != "none" and self.algorithm == "round-robin":
            # Kong: hashing on something means consistent hashing.
            object.__setattr__(self, "algorithm", "consistent-hashing")
        seen: set[str] = set()
        for i, t in enumerate(self.targets):
            if t.target in seen:
                raise ConfigurationError(f"duplicate target '{t.target}'", path=("targets", i))
            seen.add(t.target)
        if self.id is None:
            object.__setattr__(self, "id", entity_id("upstreams", self.name))


_HASH_NAMES = {"header": "header", "query_arg": "query_arg", "uri_capture": "uri_capture"}


def _hash_errors(upstream: Upstream) -> list[tuple[tuple[PathPart, ...], str]]:
    """Kong's rules for the hash fields: what `hash_on`/`hash_fallback` need, and that the
    fallback differs from the primary."""
    errors: list[tuple[tuple[PathPart, ...], str]] = []
    on, fallback = upstream.hash_on, upstream.hash_fallback
    if fallback != "none" and on in ("none", "cookie"):
        errors.append(
            (("hash_fallback",), "failed conditional validation given value of field 'hash_on'")
        )
    if on == "cookie" and not upstream.hash_on_cookie:
        errors.append((("hash_on_cookie",), "required field missing"))
    for prefix, kind in (("hash_on", on), ("hash_fallback", fallback)):
        if kind in _HASH_NAMES and not getattr(upstream, f"{prefix}_{kind}"):
            errors.append(((f"{prefix}_{kind}",), "required field missing"))
    if on == fallback and on in _HASH_NAMES:
        if getattr(upstream, f"hash_on_{on}") == getattr(upstream, f"hash_fallback_{on}"):
            errors.append(((f"hash_fallback_{on}",), f"must be different from 'hash_on_{on}'"))
    elif on == fallback and on != "none":
        errors.append((("hash_fallback",), "must be different from 'hash_on'"))
    return errors


# -- certificates for TLS to upstreams ------------------------------------------------------

_PEM_CERTIFICATE = re.compile(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.S)
_SSL_LOCATION = re.compile(r"\s*\(_ssl\.c:\d+\)$")


def _ssl_reason(exc: Exception) -> str:
    """OpenSSL's message without the `(_ssl.c:1234)` location."""
    text = exc.args[1] if isinstance(exc, ssl.SSLError) and len(exc.args) > 1 else str(exc)
    return _SSL_LOCATION.sub("", str(text))


def _trusting(pem: str, field: str = "cert") -> ssl.SSLContext:
    """A context whose store holds the certificates in `pem`: OpenSSL parses each of them.

    Raises ConfigurationError (on `field`) when the text holds no certificate or a bad one.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cadata=pem)
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigurationError(
            f"invalid certificate: {_ssl_reason(exc)}", path=(field,)
        ) from None
    return context


def _der(pem: str) -> bytes:
    """The DER bytes of every certificate in `pem`, one after the other."""
    return b"".join(base64.b64decode("".join(m.split())) for m in _PEM_CERTIFICATE.findall(pem))


@attrs.frozen(kw_only=True)
class Certificate:
    """A certificate and its private key, both PEM: the client certificate a Service (or
    an Upstream, for its targets) presents to upstreams that ask for one (mTLS).

    Certificates are also what the gateway presents to its own clients, for the names of
    the `SNI`s that refer to them. There, `cert_alt`/`key_alt` may give an alternate pair of
    the other key type (ECDSA beside RSA, or RSA beside ECDSA), for clients that support
    only one of them; mTLS to upstreams presents the main pair only.

    `cert` may hold the whole chain, leaf first. The key must match the certificate
    (`certificate does not match key`) and must not be encrypted. Without an `id`, the id
    is derived from the certificate, so a reloaded file keeps it:

        client = Certificate(cert=Path("a.crt").read_text(), key=Path("a.key").read_text())
        Service(url="https://billing.internal", client_certificate=client)
    """

    cert: str
    key: str = attrs.field(repr=False)
    cert_alt: str | None = None
    key_alt: str | None = attrs.field(default=None, repr=False)
    tags: Sequence[str] = field((), check=_check_tags)
    id: str | None = field(None, eq=False, check=_check_uuid)

    def __attrs_post_init__(self) -> None:
        _schema.validate(self)
        _check_pair(self.cert, self.key, "")
        if (self.cert_alt is None) != (self.key_alt is None):
            raise ConfigurationError(
                "all or none of these fields must be set: 'cert_alt', 'key_alt'"
            )
        if self.cert_alt is not None and self.key_alt is not None:
            _check_pair(self.cert_alt, self.key_alt, "_alt")
            if _key_type(self.cert) == _key_type(self.cert_alt):
                raise ConfigurationError(
                    "certificate and alternative certificate need to have different type "
                    "(e.g. RSA and ECDSA), the provided certificates were both of the same type"
                )
        if self.id is None:
            digest = hashlib.sha256(_der(self.cert)).hexdigest()
            object.__setattr__(self, "id", entity_id("certificates", digest))


def _check_pair(cert: str, key: str, suffix: str) -> None:
    """The certificate parses and the key is its own (`suffix`: "" or "_alt")."""
    _trusting(cert, f"cert{suffix}")
    try:
        load_cert_chain(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), cert, key)
    except ssl.SSLError as exc:
        # A key of another type than the certificate's: NO_CERTIFICATE_ASSIGNED.
        if exc.reason in ("KEY_VALUES_MISMATCH", "NO_CERTIFICATE_ASSIGNED"):
            which = "alternative certificate" if suffix else "certificate"
            raise ConfigurationError(f"{which} does not match key") from None
        path = (f"key{suffix}",)
        raise ConfigurationError(f"invalid key: {_ssl_reason(exc)}", path=path) from None
    except ValueError as exc:
        raise ConfigurationError(f"invalid key: {exc}", path=(f"key{suffix}",)) from None


def _key_type(pem: str) -> bytes | None:
    """The type of the key of the first certificate in `pem`: the algorithm OID of its
    SubjectPublicKeyInfo (DER), as Kong compares them (its key type NIDs): RSA, EC,
    Ed25519 and Ed448 are four types. None if the certificate cannot be walked."""
    found = _PEM_CERTIFICATE.search(pem)
    if found is None:
        return None
    der = base64.b64decode("".join(found.group(1).split()))
    try:
        _, start, end = _der_item(der, 0)  # Certificate ::= SEQUENCE
        _, start, end = _der_item(der, start)  # tbsCertificate ::= SEQUENCE
        tag, _, after = _der_item(der, start)
        if tag == 0xA0:  # [0] version, when not v1
            start = after
        # serialNumber, signature, issuer, validity, subject; then subjectPublicKeyInfo.
        for _ in range(5):
            start = _der_item(der, start)[2]
        _, start, _ = _der_item(der, start)  # SubjectPublicKeyInfo ::= SEQUENCE
        _, start, _ = _der_item(der, start)  # algorithm AlgorithmIdentifier ::= SEQUENCE
        tag, start, end = _der_item(der, start)  # its OBJECT IDENTIFIER
    except IndexError:
        return None
    return der[start:end] if tag == 0x06 else None


def _der_item(der: bytes, at: int) -> tuple[int, int, int]:
    """The DER item at `at`: (its tag, where its content starts, where it ends). Raises
    IndexError when the bytes end before it does."""
    tag, length = der[at], der[at + 1]
    start = at + 2
    if length & 0x80:  # the long form: the length in the next (length & 0x7F) bytes
        count = length & 0x7F
        length = int.from_bytes(der[start : start + count], "big")
        start += count
    if start + length > len(der):
        raise IndexError("truncated DER")
    return tag, start, start + length


@attrs.frozen(kw_only=True)
class CACertificate:
    """One trusted CA certificate (PEM): a Service that lists it in `ca_certificates`
    verifies its upstream against these CAs only, instead of the system's store.

    Kong's rules apply: a single certificate, with the "CA" basic constraint, not expired.
    `cert_digest` (the SHA-256 of its DER form, hex) is computed, unique per gateway, and
    the default `id` is derived from it.
    """

    cert: str
    cert_digest: str = attrs.field(default="", init=False)
    tags: Sequence[str] = field((), check=_check_tags)
    id: str | None = field(None, eq=False, check=_check_uuid)

    def __attrs_post_init__(self) -> None:
        _schema.validate(self)
        if len(_PEM_CERTIFICATE.findall(self.cert)) > 1:
            raise ConfigurationError("please submit only one certificate at a time", path=("cert",))
        authorities = _trusting(self.cert).get_ca_certs()
        if not authorities:
            raise ConfigurationError(
                'certificate does not appear to be a CA because it is missing the "CA" '
                "basic constraint",
                path=("cert",),
            )
        not_after = authorities[0].get("notAfter")
        if isinstance(not_after, str) and ssl.cert_time_to_seconds(not_after) < time.time():
            raise ConfigurationError(
                'certificate expired, "Not After" time is in the past', path=("cert",)
            )
        digest = hashlib.sha256(_der(self.cert)).hexdigest()
        object.__setattr__(self, "cert_digest", digest)
        if self.id is None:
            object.__setattr__(self, "id", entity_id("ca_certificates", digest))


def check_sni_name(name: str) -> str | None:
    """Kong's rules for an SNI name (its `wildcard_host` type, and its messages): a host
    name, no port, no IP, at most one wildcard, first or last. Stricter than Kong where a
    name could never match a TLS client's: the wildcard stands for a whole label
    (`*.example.com`, `example.*`; not `*example.com`), and no trailing dot (clients send
    none). `*` alone is the catch-all: the certificate for names no other SNI matches."""
    if name == "*":
        return None
    if "*" in name:
        if name.index("*") not in (0, len(name) - 1):
            return "wildcard must be leftmost or rightmost character"
        if name.count("*") > 1:
            return "only one wildcard must be specified"
        if not (name.startswith("*.") or name.endswith(".*")) or name in ("*.", ".*"):
            return "wildcard must stand for a whole label: *.example.com or example.*"
    host = name.replace("*", "wildcard")
    if host.startswith("[") or host.count(":") > 1:
        host = host.strip("[]")  # an IPv6 address, maybe with a port: [::1]:443
        host = host.rpartition("]:")[0] or host
    try:
        ipaddress.ip_address(host.rpartition(":")[0] if host.count(":") == 1 else host)
    except ValueError:
        pass
    else:
        return "must not be an IP"  # TLS clients never send one as SNI (RFC 6066)
    _, colon, port = host.rpartition(":")
    if colon and port.isdigit():
        return "must not have a port"
    if host.endswith("."):
        return f"invalid value: {name} (a server name has no trailing dot)"
    if _check_host(host) is not None:
        return f"invalid value: {name}"
    return None


@attrs.frozen
class SNI:
    """A server name the gateway answers TLS handshakes for with `certificate` (the
    Certificate or its id): `SNI("api.example.com", certificate=cert)`.

    Names are unique per gateway (whatever their case) and may hold one wildcard, for the
    leftmost label (`*.example.com`: one label, `a.example.com` but not `a.b.example.com`)
    or the rightmost one (`example.*`); `*` alone is the catch-all. At a handshake the
    exact name wins, then the `*.` form, then the `.*` form, then `*`, then the server's
    default certificate (Kong's order). Names compare in lower case, as hostnames do; the
    id is derived from the name.
    """

    name: str
    certificate: Certificate | str = attrs.field(kw_only=True, eq=_reference, metadata=_REFERENCE)
    tags: Sequence[str] = field((), check=_check_tags, kw_only=True)
    id: str | None = field(None, eq=False, check=_check_uuid, kw_only=True)

    def __attrs_post_init__(self) -> None:
        _schema.validate(self)
        reason = check_sni_name(self.name)
        if reason:
            raise ConfigurationError(reason, path=("name",))
        if self.id is None:
            object.__setattr__(self, "id", entity_id("snis", self.name))
