"""`Gateway`: the ASGI application, its settings, lifecycle and configuration swaps."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sized
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import attrs

from ._entities import (
    SNI,
    CACertificate,
    Certificate,
    Consumer,
    Route,
    Service,
    Target,
    Upstream,
)
from ._exceptions import ConfigurationError
from ._proxy import TrustedIPs
from ._responses import error_response
from ._runloop import handle_http
from ._snapshot import Configuration, Snapshot
from ._types import ASGIApp, Message, Receive, Scope, Send
from ._version import __version__
from ._websocket import WebSocketRefusal
from .balancers._dns import Resolver
from .balancers._pool import UpstreamPool
from .engines import Engine, NativeEngine
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
        services, routes, consumers, upstreams, plugins, certificates, ca_certificates,
            snis: the configuration entities. Routes are usually nested in their Service; top-level
            `routes` name theirs with `service=`. `plugins` here are global, or placed with
            `Scoped(...)`. Certificates may also be given inline where services use them.
        engine: sends upstream requests (default `NativeEngine()`).
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
        dns_servers: name servers for Upstream targets given as host names, as "host:port"
            (Consul's DNS interface: `["127.0.0.1:8600"]`). By default the system's.
        config: a whole `Configuration` (another gateway's `.config`, say) instead of the
            entity arguments; it is used as is, not rebuilt.

    Raises:
        ConfigurationError: when the configuration is invalid, naming each field path.

    Serve it with any ASGI server (`uvicorn app:gateway`), mount it, or wrap an app with
    `GatewayMiddleware`. Resources start with the ASGI lifespan or `async with gateway:`,
    or else lazily on the first request (then active health checks run in a thread of
    their own).
    """

    def __init__(
        self,
        *,
        services: Iterable[Service] = (),
        routes: Iterable[Route] = (),
        consumers: Iterable[Consumer] = (),
        upstreams: Iterable[Upstream] = (),
        plugins: Iterable[Plugin | Scoped] = (),
        certificates: Iterable[Certificate] = (),
        ca_certificates: Iterable[CACertificate] = (),
        snis: Iterable[SNI] = (),
        engine: Engine | None = None,
        engines: Mapping[str, Engine] | None = None,
        trusted_ips: Iterable[str] = (),
        real_ip_header: str = "X-Real-IP",
        real_ip_recursive: bool = False,
        headers: Iterable[str] = ("server_tokens", "latency_tokens", "request_id"),
        headers_upstream: Iterable[str] = ("request_id",),
        tls_verify: bool = True,
        dns_servers: Iterable[str] | None = None,
        config: Configuration | None = None,
    ) -> None:
        entities = {
            "services": services,
            "routes": routes,
            "consumers": consumers,
            "upstreams": upstreams,
            "plugins": plugins,
            "certificates": certificates,
            "ca_certificates": ca_certificates,
            "snis": snis,
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
        if isinstance(dns_servers, str):
            raise ConfigurationError("expected an array", path=("dns_servers",))
        self.resolver = Resolver(list(dns_servers) if dns_servers is not None else None)
        #: Identifies this gateway (node) in health reports and, later, in a cluster.
        self.node_id = str(uuid.uuid4())
        self.engine: Engine = engine if engine is not None else NativeEngine()
        self.engines: dict[str, Engine] = dict(engines or {})
        #: One pool per Upstream name, for the gateway's life (see `configure`).
        self.pools: dict[str, UpstreamPool] = {}
        #: State plugins keep across requests and configurations (local rate-limit
        #: counters, OAuth2 tokens, log queues, store connections), by a key of the
        #: plugin's choosing, e.g. `("rate-limiting", ...)`. Per process. Values with an
        #: `async aclose()` method are closed when the gateway closes, and kept: they must
        #: reopen on their next use (after a restart), or be replaced by their owner.
        self.shared: dict[Any, Any] = {}
        self._background: _Background | None = None
        self._started = False
        #: Bumped by each `configure`. A request is served once `_synced` (the generation
        #: whose plugins are started; -1 while the gateway is not) equals it.
        self._generation = 0
        self._synced = -1
        #: Held to start, sync plugins and close; made for the event loop using it.
        self._lock: anyio.Lock | None = None
        self._lock_loop: object = None
        self._started_plugins: list[Plugin] = []
        self.snapshot = self._go_live(Snapshot(config))

    # -- configuration --------------------------------------------------------------------

    @property
    def config(self) -> Configuration:
        """The configuration in force."""
        return self.snapshot.config

    def configure(self, config: Configuration) -> None:
        """Swap to a new configuration atomically; in-flight requests finish on the old one.

        Upstreams keep their state across the swap: targets that stay keep their health and
        in-flight counts, removed ones finish the requests they have, added ones join.

        Plugins new to the configuration are started (`startup`), and those no longer in
        it shut down, before the next request is served (requests still running on the old
        configuration may call them meanwhile).

        Raises ConfigurationError (and changes nothing) if the new configuration is invalid.
        """
        self.snapshot = self._go_live(Snapshot(config))
        self._generation += 1

    def _go_live(self, snapshot: Snapshot) -> Snapshot:
        """Give a validated snapshot the gateway's upstream pools, updated to it."""
        pools: dict[str, UpstreamPool] = {}
        for name, upstream in snapshot.upstreams.items():
            pool = self.pools.get(name)
            if pool is None:
                pool = UpstreamPool(upstream, self.resolver)
            else:
                pool.update(upstream)
            pool.client_certificate = snapshot.upstream_certificates.get(name)
            pools[name] = pool
        for name, pool in self.pools.items():
            if name not in pools:
                pool.close()
        self.pools = snapshot.pools = pools
        self._start_checks()
        return snapshot

    # -- upstream health ------------------------------------------------------------------

    def _pool(self, upstream: str) -> UpstreamPool:
        pool = self.pools.get(upstream)
        if pool is None:
            raise LookupError(f"no upstream named {upstream!r}")
        return pool

    def upstream_health(self, upstream: str, *, balancer: bool = False) -> dict[str, Any]:
        """The health of an Upstream's targets and their addresses, in the shape of Kong's
        `GET /upstreams/{name}/health` (HEALTHY, UNHEALTHY, DNS_ERROR or HEALTHCHECKS_OFF);
        with `balancer=True`, the upstream's own health (`?balancer_health=1`)."""
        pool = self._pool(upstream)
        if balancer:
            return {"data": pool.balancer_health(), "node_id": self.node_id}
        return {**pool.health_report(), "node_id": self.node_id}

    def set_target_health(
        self, upstream: str, target: str, healthy: bool, *, address: str | None = None
    ) -> None:
        """Mark a target (or one of its addresses, "ip" or "ip:port") healthy or unhealthy
        by hand, as Kong's `POST /upstreams/{u}/targets/{t}/healthy|unhealthy`. Health
        checks that are on may change it again; counters restart."""
        self._pool(upstream).set_health(Target(target).target, healthy, address)

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
        """Start plugins' resources (`startup` phases), resolve upstream targets' names and
        start active health checks, which run in a task group of the calling task until
        `aclose()`: call both from the same task (`async with gateway:` and the ASGI
        lifespan do). Idempotent."""
        async with self._lock_here():
            if not self._started:
                await self._start_locked(lazily=False)

    def _lock_here(self) -> anyio.Lock:
        """The lifecycle lock, for the running event loop (one gateway may serve several
        loops in turn, as tests on asyncio and then trio do)."""
        loop = anyio.lowlevel.current_token()
        if self._lock is None or self._lock_loop != loop:
            self._lock, self._lock_loop = anyio.Lock(), loop
        return self._lock

    async def _start_locked(self, *, lazily: bool) -> None:
        generation = self._generation
        await self._sync_plugins()
        await self._resolve_targets()
        if not lazily:
            self._background = await _TaskGroupBackground.open()
        self._started = True
        self._synced = generation
        self._start_checks()

    async def _ready_up(self) -> None:
        """Make the gateway ready for a request: started, and the plugins of the
        configuration in force started. Requests wait here while that happens; a failure
        is raised to them all (and tried again by the next request)."""
        async with self._lock_here():
            if not self._started:
                await self._start_locked(lazily=True)
            while self._synced != self._generation:  # swapped during a start or a sync
                generation = self._generation
                await self._sync_plugins()
                self._synced = generation

    async def _sync_plugins(self) -> None:
        """Start the plugins of the configuration in force not started yet; shut down the
        started ones it no longer has. Plugins are compared by equality: one kept by a
        configuration change (equal, if not the same object) is not restarted."""
        wanted = [
            p
            for p in self.snapshot.plugins
            if type(p).implements("startup") or type(p).implements("shutdown")
        ]
        gone = [p for p in self._started_plugins if p not in wanted]
        if gone:
            self._started_plugins = [p for p in self._started_plugins if p in wanted]
            await self._shutdown_plugins(gone)
        for plugin in wanted:
            if plugin not in self._started_plugins:
                if type(plugin).implements("startup"):
                    await plugin.startup(self)
                self._started_plugins.append(plugin)

    async def _shutdown_plugins(self, plugins: list[Plugin]) -> None:
        for plugin in reversed(plugins):
            try:
                await plugin.shutdown(self)
            except Exception:
                logger.exception("plugin %r failed in shutdown", plugin.name)

    def spawn(self, fn: Callable[[], Awaitable[None]], *, same_loop: bool = False) -> bool:
        """Run `fn()` in the background until it returns or the gateway closes (which
        cancels it). Its failures are logged, never raised. True when it was spawned.

        Tasks run in the task group of the task that started the gateway (`async with
        gateway:` or the ASGI lifespan), on the requests' event loop. A gateway started
        by its first request has no such task: its tasks run on an event loop in a thread
        of the gateway's own, unless `same_loop` is true (the task must share the
        requests' event loop, e.g. to own a connection they use): then nothing is spawned
        and False is returned. Nothing is spawned either (False) before the gateway
        started or once it is closing.
        """
        if not self._started:
            return False
        background = self._background
        if same_loop and not isinstance(background, _TaskGroupBackground):
            return False
        if background is None:
            background = self._background = _ThreadBackground.open()
        try:
            background.spawn(fn)
        except RuntimeError:  # the task group or the thread's loop is closing
            return False
        return True

    async def refresh_names(self, pool: UpstreamPool) -> None:
        """Re-resolve a pool's names that are due, from a request.

        A pool with no address yet must wait. Otherwise the request goes on with the
        addresses it has: the refresh runs in the background task group when the gateway
        has one, or else in this request for at most `STALE_REFRESH_WAIT` seconds.
        """
        if pool.refreshing:
            return
        if not pool.peers:
            await pool.refresh()
            return
        pool.refreshing = True  # claimed now: the task starts later
        if not self.spawn(functools.partial(_refresh_claimed, pool), same_loop=True):
            pool.refreshing = False
            with anyio.move_on_after(STALE_REFRESH_WAIT):
                await pool.refresh()

    async def _resolve_targets(self) -> None:
        now = time.monotonic()
        async with anyio.create_task_group() as tg:
            for pool in self.pools.values():
                if pool.due <= now:
                    tg.start_soon(pool.refresh)

    def _start_checks(self) -> None:
        """Run active checks for the pools that want them and have none running."""
        if not self._started:
            return
        for pool in self.pools.values():
            if pool.wants_checks and not pool.checking:
                # Claimed before the task runs: not started twice.
                pool.checking = self.spawn(pool.run_checks)

    async def aclose(self) -> None:
        """Stop health checks and plugins, and close upstream connections.

        A request that arrives meanwhile waits for the gateway to be closed, then starts it
        again (as a first request does).
        """
        async with self._lock_here():
            await self._close()

    async def _close(self) -> None:
        # Not started from now on: a request arriving meanwhile goes to `_ready_up`,
        # which waits for the lock this close holds, then starts the gateway again.
        self._started = False
        self._synced = -1
        background, self._background = self._background, None
        if background is not None:
            await background.aclose()
            for pool in self.pools.values():
                # Tasks it never got to run gave up their claims.
                pool.checking = pool.refreshing = False
        plugins, self._started_plugins = self._started_plugins, []
        await self._shutdown_plugins(plugins)
        for value in list(self.shared.values()):
            if callable(getattr(value, "aclose", None)):
                try:
                    await value.aclose()
                except Exception:
                    logger.exception("closing %r failed", value)
        for engine in {id(e): e for e in (self.engine, *self.engines.values())}.values():
            await engine.aclose()

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- ASGI -----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http" or kind == "websocket":
            if self._synced != self._generation and not await _ready(
                self, send if kind == "http" else WebSocketRefusal(scope, send)
            ):
                return
            await handle_http(self, self.snapshot, scope, receive, send)
        elif kind == "lifespan":
            await _lifespan(self, receive, send)
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
        if kind == "http" or kind == "websocket":
            gateway = self.gateway
            if gateway._synced != gateway._generation and not await _ready(
                gateway, send if kind == "http" else WebSocketRefusal(scope, send)
            ):
                return
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
                    # The host app's lifespan owns this task: whether it keeps start and
                    # aclose nested is not ours to know, so checks get a thread.
                    await gateway._ready_up()
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


async def _ready(gateway: Gateway, send: Send) -> bool:
    """Get the gateway ready for a request; if it cannot be (a plugin's `startup` failed),
    answer 500 as for any failure in the gateway, and say False."""
    try:
        await gateway._ready_up()
    except Exception:
        request_id = secrets.token_hex(16)
        logger.exception("the gateway could not start (request %s)", request_id)
        answer = error_response(500, "An unexpected error occurred", request_id)
        headers = [*answer.headers.raw, (b"content-length", b"%d" % len(answer.body))]
        await send({"type": "http.response.start", "status": 500, "headers": headers})
        await send({"type": "http.response.body", "body": answer.body})
        return False
    return True


#: Seconds a request waits for names with known addresses to be re-resolved, when the
#: gateway has no background task group to do it (it was started by a request).
STALE_REFRESH_WAIT = 0.5


async def _refresh_claimed(pool: UpstreamPool) -> None:
    pool.refreshing = False
    await pool.refresh()


class _Background:
    """Where the gateway's own background tasks (active health checks) run."""

    def spawn(self, fn: Callable[[], Awaitable[None]]) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError


async def _guarded(fn: Callable[[], Awaitable[None]]) -> None:
    """A background task never takes its host down: failures are logged."""
    try:
        await fn()
    except Exception:
        logger.exception("background task %r failed", fn)


class _TaskGroupBackground(_Background):
    """A task group held open by the task that started the gateway, until `aclose`."""

    def __init__(self, group: anyio.abc.TaskGroup) -> None:
        self.group = group

    @classmethod
    async def open(cls) -> _TaskGroupBackground:
        group = anyio.create_task_group()
        await group.__aenter__()
        return cls(group)

    def spawn(self, fn: Callable[[], Awaitable[None]]) -> None:
        self.group.start_soon(_guarded, fn)

    async def aclose(self) -> None:
        self.group.cancel_scope.cancel()
        await self.group.__aexit__(None, None, None)


class _ThreadBackground(_Background):
    """An event loop in a daemon thread (asyncio), for a gateway started by a request."""

    def __init__(self, stack: contextlib.ExitStack, portal: anyio.from_thread.BlockingPortal):
        self.stack = stack
        self.portal = portal

    @classmethod
    def open(cls) -> _ThreadBackground:
        stack = contextlib.ExitStack()
        portal = stack.enter_context(
            anyio.from_thread.start_blocking_portal(name="pygateway-health")
        )
        return cls(stack, portal)

    def spawn(self, fn: Callable[[], Awaitable[None]]) -> None:
        self.portal.start_task_soon(_guarded, fn)

    async def aclose(self) -> None:
        def stop() -> None:
            with contextlib.suppress(RuntimeError):
                self.portal.call(self.portal.stop, True)
            self.stack.close()

        await anyio.to_thread.run_sync(stop)
