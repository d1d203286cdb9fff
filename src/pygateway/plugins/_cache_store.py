"""Where proxy-cache keeps responses: the `CacheStore` interface and its two strategies.

- `MemoryCacheStore`: in this process, one per dictionary per gateway, bounded by entries
  and by bytes (least recently used go first); Kong's `memory` strategy.
- `RedisCacheStore`: in a Redis shared by every worker and node, one key per entry that
  Redis expires with the entry's storage TTL; Kong Enterprise's `redis` strategy.

A gateway's stores live in `gateway.shared`, so entries outlive a request and a
reconfiguration, and the gateway closes the Redis connections when it closes (they reopen
on their next use). `purge` and `purge_all` drop entries from every store of a gateway.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import attrs
import cachetools

from ..stores import RedisConfig, StoreError
from ..stores._base import _FailureLog
from ..stores._redis import RedisClient, RedisConnection

if TYPE_CHECKING:
    import logging

    from .._gateway import Gateway

__all__ = [
    "CacheStore",
    "CachedResponse",
    "MemoryCacheStore",
    "RedisCacheStore",
    "cache_store",
    "decode_entry",
    "encode_entry",
    "purge",
    "purge_all",
    "redis_cache_store",
    "use_cache_store",
]

Clock = Callable[[], float]

#: Kong's default `memory.dictionary_name`.
DEFAULT_DICTIONARY = "kong_db_cache"
_SHARED_KEY = "pygateway.plugins.proxy_cache.stores"
# What an entry costs beyond its body and headers (the objects around them), roughly.
_OVERHEAD = 256


@attrs.frozen
class CachedResponse:
    """One stored response, as the client will get it on a hit."""

    status_code: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    #: When it was stored (the store's clock: wall-clock seconds), for `Age` and freshness.
    stored_at: float
    #: How long it is fresh (cache_ttl, or what the upstream's Cache-Control allows).
    ttl: float
    #: The request headers the upstream's `Vary` named, with the values they had.
    vary: tuple[tuple[str, str], ...] = ()

    @property
    def size(self) -> int:
        return len(self.body) + sum(len(k) + len(v) for k, v in self.headers) + _OVERHEAD


class CacheStore:
    """Where proxy-cache keeps responses. Subclasses implement the four operations.

    `get` returns the entry under a key (None when there is none); `set` keeps one for
    `storage_ttl` seconds (False when the store will not take it); `delete` drops one key
    and `clear` every entry of this store. `clock()` is the wall-clock time entries are
    stamped with (`stored_at`, hence `Age`); tests give a store a fake one. Operations
    that cannot reach the store raise `StoreError`.
    """

    def __init__(self, *, clock: Clock = time.time) -> None:
        self.clock = clock
        self._failures = _FailureLog()

    async def get(self, key: str) -> CachedResponse | None:
        """The entry stored under `key`, or None."""
        raise NotImplementedError(f"{type(self).__name__} must implement `async def get()`")

    async def set(self, key: str, entry: CachedResponse, storage_ttl: float) -> bool:
        """Store `entry` under `key` for `storage_ttl` seconds; False if it was not kept."""
        raise NotImplementedError(f"{type(self).__name__} must implement `async def set()`")

    async def delete(self, key: str) -> bool:
        """Drop the entry under `key`; True if there was one."""
        raise NotImplementedError(f"{type(self).__name__} must implement `async def delete()`")

    async def clear(self) -> None:
        """Drop every entry of this store (and nothing else)."""
        raise NotImplementedError(f"{type(self).__name__} must implement `async def clear()`")

    def attach(self, gateway: Gateway) -> None:
        """Called when a gateway starts using this store (for stores that need its tasks)."""
        return None

    async def aclose(self) -> None:
        """Release connections; the store reopens them on its next use."""
        return None

    def report_failure(self, logger: logging.Logger, what: str, exc: BaseException) -> None:
        """Log a failed operation at most once per 30 s per store (with how many more
        failed meanwhile): a store that is down must not log a line per request."""
        self._failures.report(logger, what, exc)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


# -- memory -------------------------------------------------------------------------------


class _Bounded(cachetools.TLRUCache[str, tuple[CachedResponse, float]]):
    """A TLRU cache sized in bytes that also keeps at most `max_entries` items."""

    def __init__(self, max_entries: int, max_bytes: int, clock: Clock) -> None:
        super().__init__(
            maxsize=max_bytes,
            ttu=lambda _key, value, _now: value[1],
            timer=clock,
            getsizeof=lambda value: value[0].size,
        )
        self.max_entries = max_entries

    def __setitem__(self, key: str, value: tuple[CachedResponse, float], *args: Any) -> None:
        super().__setitem__(key, value, *args)
        while len(self) > self.max_entries:
            self.popitem()


class MemoryCacheStore(CacheStore):
    """Responses in this process, shared by every request of a gateway.

    `max_entries` and `max_bytes` bound it (the least recently used entries go first); an
    entry larger than `max_bytes` is not stored. `clock` (seconds) is injectable for tests.
    Nothing here does I/O: the operations are coroutines only to share `CacheStore`'s
    interface, and never fail.
    """

    def __init__(
        self,
        *,
        max_entries: int = 10_000,
        max_bytes: int = 64 * 1024 * 1024,
        clock: Clock = time.time,
    ) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError(
                f"max_entries and max_bytes must be positive (got {max_entries}, {max_bytes})"
            )
        super().__init__(clock=clock)
        self._cache = _Bounded(max_entries, max_bytes, clock)

    async def get(self, key: str) -> CachedResponse | None:
        item = self._cache.get(key)
        return item[0] if item is not None else None

    async def set(self, key: str, entry: CachedResponse, storage_ttl: float) -> bool:
        try:
            self._cache[key] = (entry, self.clock() + storage_ttl)
        except ValueError:  # larger than the whole store
            self._cache.pop(key, None)
            return False
        return True

    async def delete(self, key: str) -> bool:
        return self._cache.pop(key, None) is not None

    async def clear(self) -> None:
        self._cache.clear()

    def __len__(self) -> int:
        self._cache.expire()
        return len(self._cache)

    @property
    def bytes(self) -> int:
        """What the live entries cost, as counted against `max_bytes`."""
        self._cache.expire()
        return int(self._cache.currsize)


# -- redis --------------------------------------------------------------------------------

# An entry in Redis: this head, the headers and the vary pairs (each item a 4-byte length
# and its bytes), then the body as is, to the end of the value.
_HEAD = struct.Struct("!BHddII")  # format version, status, stored_at, ttl, #headers, #vary
_LENGTH = struct.Struct("!I")
_FORMAT_VERSION = 1


def encode_entry(entry: CachedResponse) -> bytes:
    """`entry` as one compact binary value (the body is not re-encoded)."""
    parts = [
        _HEAD.pack(
            _FORMAT_VERSION,
            entry.status_code,
            entry.stored_at,
            entry.ttl,
            len(entry.headers),
            len(entry.vary),
        )
    ]
    items = [*entry.headers, *((_text(n), _text(v)) for n, v in entry.vary)]
    for name, value in items:
        parts += (_LENGTH.pack(len(name)), name, _LENGTH.pack(len(value)), value)
    parts.append(entry.body)
    return b"".join(parts)


def decode_entry(data: bytes) -> CachedResponse:
    """The entry `encode_entry` made; ValueError for anything else (another format)."""
    try:
        version, status, stored_at, ttl, n_headers, n_vary = _HEAD.unpack_from(data)
        view = memoryview(data)
        offset = _HEAD.size
        items: list[bytes] = []
        for _ in range(2 * (n_headers + n_vary) if version == _FORMAT_VERSION else 0):
            (size,) = _LENGTH.unpack_from(data, offset)
            offset += _LENGTH.size
            items.append(bytes(view[offset : offset + size]))
            offset += size
    except struct.error as exc:
        raise ValueError(f"not a cache entry ({exc})") from exc
    if version != _FORMAT_VERSION:
        raise ValueError(f"not a cache entry (format version {version})")
    if offset > len(data):
        raise ValueError("not a cache entry (truncated)")
    pairs = list(zip(items[::2], items[1::2], strict=True))
    return CachedResponse(
        status_code=status,
        headers=tuple(pairs[:n_headers]),
        body=bytes(view[offset:]),
        stored_at=stored_at,
        ttl=ttl,
        vary=tuple((_str(n), _str(v)) for n, v in pairs[n_headers:]),
    )


def _text(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


def _str(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


class RedisCacheStore(CacheStore):
    """Responses in one Redis shared by every worker and node (coredis >= 6, the
    `pygateway[redis]` extra).

    An entry is one key, `prefix` + the cache key, holding `encode_entry`'s value, which
    Redis drops when the storage TTL ends (`PX`). `clear` drops only keys under `prefix`
    (SCAN and UNLINK in batches), never the rest of the database. A lookup waits at most
    `config.timeout` milliseconds. `clock` stamps entries: the wall clock by default, so a
    gateway on another node computes the same `Age`.

    Made for you by the plugin (one per gateway and Redis configuration); make one to choose
    the prefix, and install it with `use_cache_store(gateway, store)`.
    """

    def __init__(
        self,
        config: RedisConfig,
        *,
        prefix: str = "pygateway:cache:",
        clock: Clock = time.time,
        max_connections: int = 64,
    ) -> None:
        super().__init__(clock=clock)
        self.connection = RedisConnection(config, max_connections=max_connections)
        self.config = config
        self.prefix = prefix
        self._timeout = config.timeout / 1000 if config.timeout else None

    def attach(self, gateway: Gateway) -> None:
        self.connection.attach(gateway)

    async def get(self, key: str) -> CachedResponse | None:
        try:
            with anyio.fail_after(self._timeout):
                data = await self.connection.call(_get, self.prefix + key)
        except TimeoutError as exc:
            raise StoreError(
                f"Redis at {self.config.address}: no answer within {self.config.timeout} ms"
            ) from exc
        if data is None:
            return None
        try:
            return decode_entry(data)
        except ValueError:
            return None  # written by another version: a miss, replaced by the next store

    async def set(self, key: str, entry: CachedResponse, storage_ttl: float) -> bool:
        milliseconds = max(1, int(storage_ttl * 1000))
        await self.connection.call(_set, self.prefix + key, encode_entry(entry), milliseconds)
        return True

    async def delete(self, key: str) -> bool:
        return bool(await self.connection.call(_unlink, [self.prefix + key]))

    async def clear(self) -> None:
        await self.connection.call(_unlink_matching, _glob_escape(self.prefix) + "*")

    async def aclose(self) -> None:
        await self.connection.aclose()

    def __repr__(self) -> str:
        return f"<RedisCacheStore {self.config.address} prefix={self.prefix!r}>"


#: Keys SCAN returns (about) and UNLINK drops per round trip in `clear`.
CLEAR_BATCH = 1000


async def _get(client: RedisClient, key: str) -> Any:
    return await client.redis.get(key)


async def _set(client: RedisClient, key: str, value: bytes, milliseconds: int) -> Any:
    return await client.redis.set(key, value, px=milliseconds)


async def _unlink(client: RedisClient, keys: list[str]) -> Any:
    return await client.redis.unlink(keys)


async def _unlink_matching(client: RedisClient, pattern: str) -> None:
    cursor = 0
    while True:
        cursor, keys = await client.redis.scan(cursor, match=pattern, count=CLEAR_BATCH)
        if keys:
            await client.redis.unlink(keys)
        if not cursor:
            return


def _glob_escape(text: str) -> str:
    """`text` matched literally by a Redis glob pattern (SCAN's MATCH)."""
    return "".join("\\" + c if c in "\\*?[]" else c for c in text)


# -- a gateway's stores ---------------------------------------------------------------------


class _Stores:
    """A gateway's cache stores (in `gateway.shared`): memory ones by dictionary name,
    Redis ones by configuration. The gateway closes it (the Redis connections) on close;
    the entries stay."""

    def __init__(self) -> None:
        self.memory: dict[str, MemoryCacheStore] = {}
        self.redis: dict[RedisConfig, RedisCacheStore] = {}

    async def aclose(self) -> None:
        for store in list(self.redis.values()):
            await store.aclose()


def _stores(gateway: Gateway) -> _Stores:
    stores: _Stores | None = gateway.shared.get(_SHARED_KEY)
    if stores is None:
        stores = gateway.shared[_SHARED_KEY] = _Stores()
    return stores


def cache_store(gateway: Gateway, dictionary_name: str = DEFAULT_DICTIONARY) -> MemoryCacheStore:
    """The memory store of `dictionary_name` for `gateway`, made on first use. Plugins
    naming the same dictionary share it (as Kong's shared dictionary)."""
    stores = _stores(gateway).memory
    store = stores.get(dictionary_name)
    if store is None:
        store = stores[dictionary_name] = MemoryCacheStore()
    return store


def redis_cache_store(gateway: Gateway, config: RedisConfig) -> RedisCacheStore:
    """The store of `gateway` in the Redis `config` names, made on first use."""
    stores = _stores(gateway).redis
    store = stores.get(config)
    if store is None:
        store = stores[config] = RedisCacheStore(config)
        store.attach(gateway)
    return store


def use_cache_store(
    gateway: Gateway, store: CacheStore, dictionary_name: str = DEFAULT_DICTIONARY
) -> None:
    """Make `gateway` cache in `store`: a `RedisCacheStore` replaces the store of its Redis
    configuration (another prefix), a `MemoryCacheStore` the one of `dictionary_name`
    (other bounds, a fake clock)."""
    stores = _stores(gateway)
    if isinstance(store, RedisCacheStore):
        store.attach(gateway)
        stores.redis[store.config] = store
    elif isinstance(store, MemoryCacheStore):
        stores.memory[dictionary_name] = store
    else:
        raise TypeError(f"expected a MemoryCacheStore or a RedisCacheStore (got {store!r})")


def _every_store(gateway: Gateway) -> list[CacheStore]:
    """The gateway's stores, and the Redis ones its proxy-cache plugins name even before
    their first request (a purge must reach entries other gateways stored there)."""
    from ._proxy_cache import ProxyCache  # which imports this module

    stores = _stores(gateway)
    for plugin in gateway.snapshot.plugins:
        if isinstance(plugin, ProxyCache) and plugin.strategy == "redis":
            redis_cache_store(gateway, plugin.redis)
    return [*stores.memory.values(), *stores.redis.values()]


async def purge(gateway: Gateway, key: str) -> bool:
    """Drop the entry `key` (an `X-Cache-Key` value) from every store of `gateway`, Redis
    ones included (so from every gateway sharing them); True if one was there.

    Raises `StoreError` if a Redis store could not be reached (the others are purged).
    """
    found = False
    failure: StoreError | None = None
    for store in _every_store(gateway):
        try:
            found = await store.delete(key) or found
        except StoreError as exc:
            failure = failure or exc
    if failure is not None:
        raise failure
    return found


async def purge_all(gateway: Gateway) -> None:
    """Drop every cached response of `gateway`: its memory stores, and the keys of its
    Redis stores (only theirs: by prefix).

    Raises `StoreError` if a Redis store could not be reached (the others are purged).
    """
    failure: StoreError | None = None
    for store in _every_store(gateway):
        try:
            await store.clear()
        except StoreError as exc:
            failure = failure or exc
    if failure is not None:
        raise failure
