"""`RedisCounterStore`: counters in one Redis shared by every worker and node (the plugins'
`redis` policy), on coredis >= 6 (the `pygateway[redis]` extra, imported on first use).

Every operation is one round trip: a Lua script checks and increments all the windows of a
request atomically, so N gateways sharing a Redis let exactly `limit` requests through.

coredis 6 runs on anyio (asyncio and trio), but its connection pool lives in a task group
that one task must enter and leave. That task is:

- one spawned into the gateway's own task group, when the gateway was started by its owner
  (`async with gateway:` or the ASGI lifespan); it ends when the gateway stops;
- otherwise (a gateway started lazily by its first request, which has no task to lend), an
  event loop in a thread of its own, which operations reach through a worker thread — as
  the gateway does for its health checks in the same situation.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import anyio.from_thread
import anyio.to_thread
import attrs

from .._schema import Record, field
from ._base import Clock, Counter, CounterStore, Hit, StoreError

if TYPE_CHECKING:
    from .._gateway import Gateway

__all__ = ["RedisClient", "RedisConfig", "RedisConnection", "RedisCounterStore"]

_MAX_TIMEOUT = 2**31 - 2


def _check_host(value: str | None) -> str | None:
    if value is not None and not value.strip():
        return "length must be at least 1"
    return None


@attrs.frozen(kw_only=True)
class RedisConfig(Record):
    """How to reach Redis: Kong's `redis` record (shared by its plugins), same defaults.

    `timeout` is in milliseconds (connect and each command). `username` needs Redis 6+;
    `password` alone sends `AUTH password`. With `ssl`, the connection uses TLS; the server
    certificate is checked only with `ssl_verify`, against `server_name` (else `host`),
    which is also the SNI sent. The password never shows in a repr or a log line.
    """

    host: str | None = field(None, check=_check_host)
    port: int = field(6379, between=(0, 65535))
    timeout: int = field(2000, between=(0, _MAX_TIMEOUT))
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    database: int = 0
    ssl: bool = False
    ssl_verify: bool = False
    server_name: str | None = None

    @property
    def address(self) -> str:
        """`host:port/database`, for messages (no credentials)."""
        return f"{self.host}:{self.port}/{self.database}"


# KEYS: the counters. ARGV: n limits, then n TTLs (ms). Returns {allowed, count_1..count_n}:
# counts after the hit when allowed, as they were when refused (a refused hit counts nowhere).
_HIT = """
local n = #KEYS
local counts = {}
local allowed = 1
for i = 1, n do
  counts[i] = tonumber(redis.call('GET', KEYS[i]) or '0')
  if counts[i] >= tonumber(ARGV[i]) then allowed = 0 end
end
if allowed == 1 then
  for i = 1, n do
    counts[i] = redis.call('INCR', KEYS[i])
    if counts[i] == 1 then redis.call('PEXPIRE', KEYS[i], ARGV[n + i]) end
  end
end
table.insert(counts, 1, allowed)
return counts
"""

# KEYS: the counters. ARGV: the amount, then n TTLs (ms). A counter made by this call (its
# value is the amount) gets its TTL.
_INCREMENT = """
local amount = tonumber(ARGV[1])
for i = 1, #KEYS do
  if redis.call('INCRBY', KEYS[i], amount) == amount then
    redis.call('PEXPIRE', KEYS[i], ARGV[i + 1])
  end
end
return 0
"""

# A key lives this long after its window ends: gateways whose clocks are a little behind
# still find it.
_GRACE_MS = 1000


class RedisCounterStore(CounterStore):
    """Counters in Redis. `prefix` starts every key (to share a Redis with other data, or
    to keep tests apart); `max_connections` bounds the pool of each process.

    Made for you by the plugins (one per gateway and Redis configuration, see
    `counter_store`); make one yourself to choose the prefix, and install it with
    `use_counter_store(gateway, store)`.
    """

    def __init__(
        self,
        config: RedisConfig,
        *,
        prefix: str = "pygateway:",
        clock: Clock = time.time,
        max_connections: int = 64,
    ) -> None:
        super().__init__(clock=clock)
        self.connection = RedisConnection(config, max_connections=max_connections)
        self.config = config
        self.prefix = prefix

    def attach(self, gateway: Gateway) -> None:
        self.connection.attach(gateway)

    def _ttls(self, counters: Sequence[Counter]) -> list[int]:
        now = self.clock()
        return [max(1, int((c.expires_at - now) * 1000)) + _GRACE_MS for c in counters]

    async def hit(self, counters: Sequence[Counter]) -> Hit:
        keys = [self.prefix + c.key for c in counters]
        args = [_number(c.limit) for c in counters] + self._ttls(counters)
        reply = await self.connection.call(_run_script, _HIT, keys, args)
        return Hit(bool(reply[0]), tuple(int(v) for v in reply[1:]))

    async def increment(self, counters: Sequence[Counter], amount: int) -> None:
        keys = [self.prefix + c.key for c in counters]
        await self.connection.call(_run_script, _INCREMENT, keys, [amount, *self._ttls(counters)])

    async def counts(self, keys: Sequence[str]) -> list[int]:
        values = await self.connection.call(_mget, [self.prefix + k for k in keys])
        return [int(v) if v is not None else 0 for v in values]

    async def aclose(self) -> None:
        await self.connection.aclose()

    def __repr__(self) -> str:
        return f"<RedisCounterStore {self.config.address} prefix={self.prefix!r}>"


class RedisConnection:
    """A coredis client to one Redis, opened on first use and owned by a task (see the
    module's docstring), for the stores that talk to Redis.

    `await connection.call(op, *args)` runs `await op(client, *args)` with the
    `RedisClient`; whatever goes wrong (Redis down, a timeout, an error reply) is raised
    as `StoreError`. `attach(gateway)` lends it the gateway's task group; without one it
    runs on a thread's event loop. After `aclose()`, the next call reconnects.
    """

    def __init__(self, config: RedisConfig, *, max_connections: int = 64) -> None:
        if not config.host:
            raise ValueError("RedisConfig.host is required to connect to Redis")
        self.config = config
        self.max_connections = max_connections
        self._gateway: Gateway | None = None
        self._host: _Host | None = None

    def attach(self, gateway: Gateway) -> None:
        self._gateway = gateway

    async def call(self, op: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        host = await self._open()
        try:
            return await host.call(op, *args)
        except StoreError:
            raise
        except Exception as exc:
            # coredis' errors, OSError, TimeoutError, a broken stream...: all mean "Redis
            # did not answer", which the plugins handle (fault_tolerant).
            raise StoreError(f"Redis at {self.config.address}: {_describe(exc)}") from exc

    async def _open(self) -> _Host:
        host = self._host
        if host is None or host.ended:
            # Set before waiting: the calls that come meanwhile wait for this host.
            host = self._host = self._new_host()
            await host.open()
        await host.ready.wait()
        if isinstance(host.error, StoreError):
            raise host.error
        if host.error is not None:
            raise StoreError(f"Redis at {self.config.address}: {_describe(host.error)}")
        return host

    def _new_host(self) -> _Host:
        """A host for the client: in a task of the gateway's when it lends one (the task
        is spawned now and opens the client), else in a thread (`open` starts it)."""
        if self._gateway is not None:
            task_host = _TaskHost(self)
            if self._gateway.spawn(task_host.own, same_loop=True):
                return task_host
        return _ThreadHost(self)

    def make_client(self) -> RedisClient:
        """A new client for this connection's Redis (its host opens and closes it)."""
        return RedisClient(self.config, self.max_connections)

    async def aclose(self) -> None:
        host, self._host = self._host, None
        if host is not None:
            await host.aclose()

    def __repr__(self) -> str:
        return f"<RedisConnection {self.config.address}>"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def _run_script(client: RedisClient, source: str, keys: list[str], args: list[Any]) -> Any:
    return await client.script(source)(keys, args)


async def _mget(client: RedisClient, keys: list[str]) -> Any:
    return await client.redis.mget(keys)


class RedisClient:
    """A coredis client (`redis`) and the Lua scripts registered on it (`script`)."""

    def __init__(self, config: RedisConfig, max_connections: int) -> None:
        coredis = _import_coredis()
        from coredis.connection import TCPLocation
        from coredis.retry import NoRetryPolicy

        seconds = config.timeout / 1000 if config.timeout else None
        ssl_context = _ssl_context(config) if config.ssl else None
        server_name = config.server_name if ssl_context is not None else None
        pool = coredis.ConnectionPool(
            connection_class=_connection_class(server_name),
            location=TCPLocation(config.host or "", config.port),
            max_connections=max_connections,
            timeout=seconds,
            db=config.database,
            username=config.username or None,
            password=config.password or None,
            ssl_context=ssl_context,
            connect_timeout=seconds,
            stream_timeout=seconds,
        )
        # No retries: a script that timed out may have run, and running it again would
        # count a request twice.
        self.redis: Any = coredis.Redis(connection_pool=pool, retry_policy=NoRetryPolicy())
        self._scripts: dict[str, Any] = {}

    def script(self, source: str) -> Any:
        """The script `source`, registered on first use (called with `(keys, args)`)."""
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self.redis.register_script(source)
        return script


def _import_coredis() -> Any:
    try:
        import coredis
    except ImportError as exc:
        raise StoreError(
            "the redis policy needs coredis >= 6: install pygateway[redis] "
            "(pip install 'pygateway[redis]')"
        ) from exc
    return coredis


def _ssl_context(config: RedisConfig) -> Any:
    import ssl

    context = ssl.create_default_context()
    if not config.ssl_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _connection_class(server_name: str | None) -> Any:
    """coredis' TCP connection, with two changes:

    - a connection that could not connect releases its buffers (coredis leaves them to the
      garbage collector, which warns about each: one per refused request while Redis is
      down);
    - with `server_name`, the TLS handshake names it (SNI, and the name the certificate is
      checked against) instead of the host it connects to.
    """
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
    from coredis.connection import TCPConnection

    class Connection(TCPConnection):
        async def _connect(self) -> Any:
            try:
                if server_name is None:
                    return await super()._connect()
                with anyio.fail_after(self._connect_timeout):
                    return await anyio.connect_tcp(
                        self.location.host,
                        self.location.port,
                        ssl_context=self._ssl_context,
                        tls_hostname=server_name,
                        tls_standard_compatible=False,
                    )
            except BaseException:
                for value in vars(self).values():
                    if isinstance(value, MemoryObjectSendStream | MemoryObjectReceiveStream):
                        value.close()
                raise

    return Connection


class _Host:
    """Owns a client: opens it in some task, runs operations with it, closes it."""

    def __init__(self, connection: RedisConnection) -> None:
        self.connection = connection
        self.ready = anyio.Event()
        #: Why the client could not be opened (the operations report it).
        self.error: BaseException | None = None
        #: The owning task ended: the next operation needs a new host.
        self.ended = False

    async def open(self) -> None:
        """Start opening the client (`ready` is set when it is open, or failed)."""
        return None

    async def call(self, op: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError


class _TaskHost(_Host):
    """The client lives in a task of the gateway's task group, on this event loop."""

    def __init__(self, connection: RedisConnection) -> None:
        super().__init__(connection)
        self.client: RedisClient | None = None
        self.stop = anyio.Event()
        self.done = anyio.Event()

    async def own(self) -> None:
        """The owning task: opens the client, holds it until `aclose`."""
        try:
            self.client = self.connection.make_client()
            async with self.client.redis:
                self.ready.set()
                await self.stop.wait()
        except Exception as exc:
            self.error = exc
        finally:
            self.ended = True
            self.ready.set()
            self.done.set()

    async def call(self, op: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        assert self.client is not None
        return await op(self.client, *args)

    async def aclose(self) -> None:
        self.stop.set()
        with anyio.move_on_after(10):
            await self.done.wait()


class _ThreadHost(_Host):
    """The client lives on an event loop in a thread of its own; operations get there
    through a worker thread (at most `max_connections` at a time)."""

    def __init__(self, connection: RedisConnection) -> None:
        super().__init__(connection)
        self.stack = contextlib.ExitStack()
        self.portal: anyio.from_thread.BlockingPortal | None = None
        self.client: RedisClient | None = None
        self.limiter = anyio.CapacityLimiter(connection.max_connections)

    async def open(self) -> None:
        try:
            await anyio.to_thread.run_sync(self._start)
        except Exception as exc:
            self.error = exc
            self.ended = True
        finally:
            self.ready.set()

    def _start(self) -> None:
        portal = self.stack.enter_context(
            anyio.from_thread.start_blocking_portal(name="pygateway-redis")
        )
        try:
            self.client = portal.call(self.connection.make_client)
            self.stack.enter_context(portal.wrap_async_context_manager(self.client.redis))
        except BaseException:
            self.stack.close()
            raise
        self.portal = portal

    async def call(self, op: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        portal, client = self.portal, self.client
        assert portal is not None
        assert client is not None
        # Abandoned on cancellation (a caller's timeout): the operation finishes in the
        # thread's loop, and its worker thread returns then.
        return await anyio.to_thread.run_sync(
            lambda: portal.call(op, client, *args), limiter=self.limiter, abandon_on_cancel=True
        )

    async def aclose(self) -> None:
        self.ended = True
        await anyio.to_thread.run_sync(self.stack.close)
