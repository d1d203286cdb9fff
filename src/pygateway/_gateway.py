"""`Gateway`: the ASGI application, its settings, lifecycle and configuration swaps."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sized
from typing import Any

import anyio
import attrs

from ._entities import Consumer, Route, Service, Upstream
from ._exceptions import ConfigurationError
from ._proxy import TrustedIPs
from ._runloop import handle_http
from ._snapshot import Configuration, Snapshot
from ._types import ASGIApp, Message, Receive, Scope, Send
from ._version import __version__
from .engines import Engine, HttpxEngine
from .plugins._base import Plugin, Scoped

__all__ = ["Gateway", "GatewayMiddleware", "Settings"]

logger = logging.getLogger("pygateway")

_HEADER_TOKENS = frozenset({"server_tokens", "latency_tokens", "request_id", "off"})


@attrs.frozen(kw_only=True)
class Settings:
    """Gateway-wide settings (Kong's kong.conf equivalents), read by the runloop."""

    trusted_ips: TrustedIPs
    real_ip_header: bytes = b"x-real-ip"
    real_ip_recursive: bool = False
    server_tokens: bool = True
    latency_tokens: bool = True
    request_id_header: bool = True
    request_id_upstream: bool = True
    tls_verify: bool = True
    server_token: str = f"pygateway/{__version__}"


def _tokens(value: Iterable[str], field: str) -> frozenset[str]:
    if isinstance(value, str):
        raise ConfigurationError("expected an array", path=(field,))
    tokens = frozenset(v.lower() for v in value)
    unknown = sorted(tokens - _HEADER_TOKENS)
    if unknown:
        raise ConfigurationError(
            f"invalid value: {unknown[0]} (expected one of: latency_tokens, off, request_id, "
            "server_tokens)",
            path=(field,),
        )
    return frozenset() if "off" in tokens else tokens


class Gateway:
    """An API gateway as an ASGI application.

    Args:
        services, routes, consumers, upstreams, plugins: the configuration entities. Routes
            are usually nested in their Service; top-level `routes` name theirs with `service=`.
            `plugins` here are global, or placed with `Scoped(...)`.
        engine: sends upstream requests (default `HttpxEngine()`).
        engines: engines for particular upstream hosts, by Service host / Upstream name, e.g.
            `{"users.internal": ASGIEngine(users_app)}`.
        trusted_ips: peers (IPs or CIDRs) whose X-Forwarded-* and real-IP headers are believed.
        real_ip_header, real_ip_recursive: how a trusted peer names the client (as nginx's
            realip module; default `X-Real-IP`, not recursive).
        headers: which headers the gateway adds to responses: "server_tokens" (Via, Server),
            "latency_tokens" (X-Pygateway-*-Latency), "request_id" (X-Pygateway-Request-Id),
            or "off".
        headers_upstream: "request_id" (default) or "off".
        tls_verify: verify upstream certificates unless a Service says otherwise.
        config: a whole `Configuration` (another gateway's `.config`, say) instead of the
            entity arguments; it is used as is, not rebuilt.

    Raises:
        ConfigurationError: when the configuration is invalid, naming each field path.

    Serve it with any ASGI server (`uvicorn app:gateway`), mount it, or wrap an app with
    `GatewayMiddleware`. Resources start lazily on the first request, or explicitly with the
    ASGI lifespan or `async with gateway:`.
    """

    def __init__(
        self,
        *,
        services: Iterable[Service] = (),
        routes: Iterable[Route] = (),
        consumers: Iterable[Consumer] = (),
        upstreams: Iterable[Upstream] = (),
        plugins: Iterable[Plugin | Scoped] = (),
        engine: Engine | None = None,
        engines: Mapping[str, Engine] | None = None,
        trusted_ips: Iterable[str] = (),
        real_ip_header: str = "X-Real-IP",
        real_ip_recursive: bool = False,
        headers: Iterable[str] = ("server_tokens", "latency_tokens", "request_id"),
        headers_upstream: Iterable[str] = ("request_id",),
        tls_verify: bool = True,
        config: Configuration | None = None,
    ) -> None:
        entities = {
            "services": services,
            "routes": routes,
            "consumers": consumers,
            "upstreams": upstreams,
            "plugins": plugins,
        }
        if config is None:
            config = _configuration(**entities)
        elif not isinstance(config, Configuration):
            raise TypeError(f"config must be a Configuration (got {type(config).__name__})")
        elif given := [
            name
            for name, value in entities.items()
            if not (isinstance(value, Sized) and len(value) == 0)
        ]:
            raise TypeError(f"pass the entities in config or as arguments, not both: {given}")
        if isinstance(trusted_ips, str):
            trusted_ips = [ip for ip in trusted_ips.split(",") if ip.strip()]
        enabled = _tokens(headers, "headers")
        self.settings = Settings(
            trusted_ips=TrustedIPs(trusted_ips),
            real_ip_header=real_ip_header.lower().encode("latin-1"),
            real_ip_recursive=real_ip_recursive,
            server_tokens="server_tokens" in enabled,
            latency_tokens="latency_tokens" in enabled,
            request_id_header="request_id" in enabled,
            request_id_upstream="request_id" in _tokens(headers_upstream, "headers_upstream"),
            tls_verify=tls_verify,
        )
        self._settings_args = {
            "trusted_ips": list(trusted_ips),
            "real_ip_header": real_ip_header,
            "real_ip_recursive": real_ip_recursive,
            "headers": sorted(enabled) or ["off"],
            "headers_upstream": ["request_id"] if self.settings.request_id_upstream else ["off"],
            "tls_verify": tls_verify,
        }
        self.engine: Engine = engine if engine is not None else HttpxEngine()
        self.engines: dict[str, Engine] = dict(engines or {})
        self.snapshot = Snapshot(config)
        self._started = False
        self._starting: anyio.Lock | None = None
        self._started_plugins: list[Plugin] = []

    # -- configuration --------------------------------------------------------------------

    @property
    def config(self) -> Configuration:
        """The configuration in force."""
        return self.snapshot.config

    def configure(self, config: Configuration) -> None:
        """Swap to a new configuration atomically; in-flight requests finish on the old one.

        Raises ConfigurationError (and changes nothing) if the new configuration is invalid.
        """
        self.snapshot = Snapshot(config)

    @classmethod
    def from_config(
        cls, source: str | os.PathLike[str] | Mapping[str, Any], **settings: Any
    ) -> Gateway:
        """Build a gateway from a Kong declarative config: a path (YAML or JSON) or a mapping.

        Keyword arguments are passed to `Gateway(...)` (engine, trusted_ips, ...).
        """
        from ._config import load

        return cls(config=load(source), **settings)

    def to_config(self) -> dict[str, Any]:
        """The configuration in Kong's declarative format (`_format_version: "3.0"`)."""
        from ._config import dump

        return dump(self.config)

    def engine_for(self, service: Service) -> Engine:
        return self.engines.get(service.host or "", self.engine)

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start plugins' resources (`startup` phases). Idempotent; called lazily otherwise."""
        if self._started:
            return
        if self._starting is None:
            self._starting = anyio.Lock()
        async with self._starting:
            if self._started:
                return
            for plugin in self.snapshot.plugins:
                if type(plugin).implements("startup"):
                    await plugin.startup(self)
                    self._started_plugins.append(plugin)
            self._started = True

    async def aclose(self) -> None:
        """Stop plugins and close upstream connections."""
        plugins, self._started_plugins = self._started_plugins, []
        for plugin in reversed(plugins):
            try:
                await plugin.shutdown(self)
            except Exception:
                logger.exception("plugin %r failed in shutdown", plugin.name)
        for engine in {id(e): e for e in (self.engine, *self.engines.values())}.values():
            await engine.aclose()
        self._started = False
        self._starting = None  # the lock belongs to this event loop; a restart may use another

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- ASGI -----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if not self._started:
                await self.start()
            await handle_http(self, self.snapshot, scope, receive, send)
        elif kind == "lifespan":
            await _lifespan(self, receive, send)
        elif kind == "websocket":
            await receive()
            await send(
                {
                    "type": "websocket.close",
                    "code": 1003,
                    "reason": "WebSocket routes are not supported yet",
                }
            )
        else:
            raise RuntimeError(f"pygateway cannot serve ASGI scope type {kind!r}")

    def __repr__(self) -> str:
        c = self.config
        return (
            f"<Gateway services={len(c.services)} routes={len(self.snapshot.router.rules)} "
            f"consumers={len(c.consumers)} plugins={len(self.snapshot.plugins)}>"
        )


def _configuration(**entities: Iterable[Any]) -> Configuration:
    errors: list[tuple[tuple[str | int, ...], str]] = []
    values: dict[str, tuple[Any, ...]] = {}
    for name, items in entities.items():
        if isinstance(items, str | bytes | Mapping):
            errors.append(((name,), "expected an array"))
            continue
        values[name] = tuple(items)
    if errors:
        raise ConfigurationError(errors=errors)
    return Configuration(**values)  # which validates the entity lists


async def _lifespan(
    gateway: Gateway, receive: Receive, send: Send, *, startup_received: bool = False
) -> None:
    if startup_received:  # a wrapped app took the startup message, then failed
        await send({"type": "lifespan.startup.complete"})
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                await gateway.start()
            except Exception as exc:
                logger.exception("gateway startup failed")
                await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await gateway.aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return


class GatewayMiddleware:
    """Put a gateway in front of an existing ASGI app: requests that match a route are
    handled by the gateway, everything else falls through to `app` untouched.

    The lifespan is chained: the gateway starts when the app starts and stops after it.
    """

    def __init__(self, app: ASGIApp, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            gateway = self.gateway
            if not gateway._started:
                await gateway.start()
            await handle_http(gateway, gateway.snapshot, scope, receive, send, fallback=self.app)
        elif kind == "lifespan":
            await self._lifespan(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        gateway = self.gateway
        startup_failed: list[str] = []
        seen: list[str] = []

        async def wrapped_receive() -> Message:
            message = await receive()
            seen.append(message["type"])
            if message["type"] == "lifespan.startup":
                try:
                    await gateway.start()
                except Exception as exc:
                    startup_failed.append(repr(exc))
            return message

        async def wrapped_send(message: Message) -> None:
            seen.append(message["type"])
            if message["type"] == "lifespan.startup.complete" and startup_failed:
                message = {"type": "lifespan.startup.failed", "message": startup_failed[0]}
            elif message["type"] == "lifespan.shutdown.complete":
                await gateway.aclose()
            await send(message)

        try:
            await self.app(scope, wrapped_receive, wrapped_send)
        except Exception:
            if any(t.startswith("lifespan.") and t != "lifespan.startup" for t in seen):
                raise  # the app speaks lifespan and failed in it: the server reports that
            # The wrapped app does not speak lifespan: run the gateway's own.
            await _lifespan(gateway, receive, send, startup_received="lifespan.startup" in seen)
