"""The `Plugin` base class and `Scoped`, which places a plugin on a route/service/consumer.

A plugin is an attrs-frozen class whose fields are its configuration and whose async methods
are Kong's phases. Only the phases a class overrides are called. Per-request state lives on
the context (`ctx.plugin_state`, `ctx.shared`), never on the plugin, which is shared by every
request.
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import attrs

from .. import _schema
from .._exceptions import ConfigurationError, PluginDeclarationError
from .._schema import field

if TYPE_CHECKING:
    from .._context import Context
    from .._gateway import Gateway
    from .._responses import Response

__all__ = ["PHASES", "Plugin", "Scoped", "check_declaration"]

#: The phases a plugin may implement, in the order a request goes through them.
PHASES = ("rewrite", "access", "response", "header_filter", "body_filter", "log")
_LIFECYCLE = ("startup", "shutdown")
_SCOPES = frozenset({"global", "service", "route", "consumer"})
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


class Plugin:
    """Base class of every plugin. Subclass it with `@attrs.frozen`; fields are the config.

    Class variables: `name` (Kong-style, used in declarative config), `priority` (higher runs
    first; bundled plugins use Kong's values), `scopes` (where it may be applied: any of
    "global", "service", "route", "consumer").

    Phases (all optional, all `async`):

    - `rewrite(ctx)`: before routing; global plugins only.
    - `access(ctx)`: before proxying; return a `Response` to answer without proxying.
    - `response(ctx)`: with the whole upstream body in `ctx.response.body` (buffers it).
    - `header_filter(ctx)`: change `ctx.response.status_code` / `.headers` before they are sent.
    - `body_filter(ctx, chunk, last)`: return the chunk to send instead of `chunk`.
    - `log(ctx)`: after the last byte was sent.
    - `startup(gateway)` / `shutdown(gateway)`: once per gateway start and stop.
    """

    name: ClassVar[str] = ""
    priority: ClassVar[int] = 0
    scopes: ClassVar[frozenset[str]] = _SCOPES

    def __attrs_post_init__(self) -> None:
        _schema.validate(self)

    async def rewrite(self, ctx: Context) -> Response | None:
        return None

    async def access(self, ctx: Context) -> Response | None:
        return None

    async def response(self, ctx: Context) -> None:
        return None

    async def header_filter(self, ctx: Context) -> None:
        return None

    async def body_filter(self, ctx: Context, chunk: bytes, last: bool) -> bytes:
        return chunk

    async def log(self, ctx: Context) -> None:
        return None

    async def startup(self, gateway: Gateway) -> None:
        return None

    async def shutdown(self, gateway: Gateway) -> None:
        return None

    @classmethod
    def from_config(cls, config: dict[str, Any] | None) -> Plugin:
        """Build from a declarative `config` mapping (Kong's field names)."""
        config = dict(config or {})
        names = {a.alias or a.name for a in _config_fields(cls)}
        unknown = [k for k in config if k not in names]
        if unknown:
            raise ConfigurationError(errors=[((k,), "unknown field") for k in unknown])
        return cls(**config)

    def to_config(self) -> dict[str, Any]:
        """This plugin's config as plain JSON-able data, under Kong's field names (a field's
        attrs `alias`); fields with `init=False` (state a plugin derives from its config,
        such as compiled patterns) are not config."""
        return {
            a.alias or a.name: _schema.plain(getattr(self, a.name))
            for a in _config_fields(type(self))
        }

    @classmethod
    def implements(cls, phase: str) -> bool:
        """Does this class override `phase`? (Asked several times per request: the answer is
        worked out once per class.)"""
        phases = _IMPLEMENTED.get(cls)
        if phases is None:
            phases = _IMPLEMENTED[cls] = frozenset(
                p for p in (*PHASES, *_LIFECYCLE) if getattr(cls, p) is not getattr(Plugin, p)
            )
        return phase in phases


#: The phases each plugin class overrides (see `Plugin.implements`).
_IMPLEMENTED: dict[type[Plugin], frozenset[str]] = {}


def _config_fields(cls: type[Plugin]) -> list[attrs.Attribute[Any]]:
    return [a for a in attrs.fields(cls) if a.init]  # type: ignore[arg-type]


def check_declaration(cls: type[Plugin]) -> None:
    """Fail with a message naming the class and the fix if `cls` cannot work as a plugin."""
    problems: list[str] = []
    if isinstance(cls, Plugin):
        raise PluginDeclarationError(
            f"{cls!r} is a plugin instance, not a subclass of pygateway.Plugin: "
            f"register the class ({type(cls).__qualname__})"
        )
    if not (isinstance(cls, type) and issubclass(cls, Plugin)):
        raise PluginDeclarationError(f"{cls!r} is not a subclass of pygateway.Plugin")
    label = cls.__qualname__
    if not attrs.has(cls):
        problems.append(f"{label} must be an attrs class: decorate it with @attrs.frozen")
    if not isinstance(cls.name, str) or not _NAME.fullmatch(cls.name or ""):
        problems.append(
            f"{label}.name must be a lower-case plugin name like 'my-plugin' (got {cls.name!r})"
        )
    if not isinstance(cls.priority, int) or isinstance(cls.priority, bool):
        problems.append(f"{label}.priority must be an integer (got {cls.priority!r})")
    if not cls.scopes or not set(cls.scopes) <= _SCOPES:
        problems.append(f"{label}.scopes must be a subset of {sorted(_SCOPES)}")
    for phase in (*PHASES, *_LIFECYCLE):
        method = getattr(cls, phase)
        if method is not getattr(Plugin, phase) and not inspect.iscoroutinefunction(method):
            problems.append(f"{label}.{phase} must be a coroutine: declare it `async def {phase}`")
    known = set(PHASES) | set(_LIFECYCLE) | set(dir(Plugin))
    for klass in cls.__mro__:
        if klass is Plugin or klass is object:
            break
        for attr, value in vars(klass).items():
            if attr.startswith("_") or attr in known or not callable(value):
                continue
            close = difflib.get_close_matches(attr, [*PHASES, *_LIFECYCLE], n=1, cutoff=0.8)
            if close:
                problems.append(
                    f"{label}.{attr} looks like a misspelled phase: did you mean '{close[0]}'?"
                )
    if problems:
        raise PluginDeclarationError(errors=[((), p) for p in problems])


#: Kong's protocol names, for `Scoped.protocols`.
PROTOCOLS = ("grpc", "grpcs", "http", "https", "tcp", "tls", "tls_passthrough", "udp", "ws", "wss")


def _check_protocols(value: Sequence[str]) -> str | None:
    if not value:
        return "length must be at least 1"
    for protocol in value:
        if protocol not in PROTOCOLS:
            return f"expected one of: {', '.join(PROTOCOLS)} (got '{protocol}')"
    return None


@attrs.frozen
class Scoped:
    """A plugin with Kong's plugin-entity metadata: where it applies and whether it is on.

    `Scoped(gw.plugins.RateLimiting(minute=5), route="users-api", consumer="my-app")` applies
    the plugin only to that consumer on that route. `service`/`route`/`consumer` are names or
    ids; inside a Route/Service/Consumer's `plugins`, the enclosing entity is implied.

    `protocols` (Kong's protocol names) limits the request schemes it runs for: with
    `protocols=["https"]` it does not run on plain-http requests.
    """

    plugin: Plugin = attrs.field()  # positional: `Scoped(plugin, route="r")`
    service: str | None = attrs.field(default=None, kw_only=True)
    route: str | None = attrs.field(default=None, kw_only=True)
    consumer: str | None = attrs.field(default=None, kw_only=True)
    enabled: bool = attrs.field(default=True, kw_only=True)
    instance_name: str | None = field(None, check=_schema.check_name, kw_only=True)
    protocols: Sequence[str] = field(
        ("grpc", "grpcs", "http", "https"), check=_check_protocols, kw_only=True
    )
    tags: Sequence[str] = attrs.field(default=(), kw_only=True)
    id: str | None = field(None, eq=False, kw_only=True)

    def __attrs_post_init__(self) -> None:
        _schema.validate(self)
