"""Where proxy-cache keeps responses: `MemoryCacheStore`, one per dictionary per gateway.

A store lives in `gateway.shared`, so entries outlive a request and a reconfiguration, as
Kong's shared dictionary does. It is bounded twice: by entries and by bytes (least recently
used go first), and an entry is dropped when its storage TTL ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import cachetools

if TYPE_CHECKING:
    from .._gateway import Gateway

__all__ = [
    "CachedResponse",
    "MemoryCacheStore",
    "cache_store",
    "purge",
    "purge_all",
    "use_cache_store",
]

Clock = Callable[[], float]

#: Kong's default `memory.dictionary_name`.
DEFAULT_DICTIONARY = "kong_db_cache"
_SHARED_KEY = "proxy-cache"
# What an entry costs beyond its body and headers (the objects around them), roughly.
_OVERHEAD = 256


@attrs.frozen
class CachedResponse:
    """One stored response, as the client will get it on a hit."""

    status_code: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    #: When it was stored (the store's clock), for `Age` and freshness.
    stored_at: float
    #: How long it is fresh (cache_ttl, or what the upstream's Cache-Control allows).
    ttl: float
    #: The request headers the upstream's `Vary` named, with the values they had.
    vary: tuple[tuple[str, str], ...] = ()

    @property
    def size(self) -> int:
        return len(self.body) + sum(len(k) + len(v) for k, v in self.headers) + _OVERHEAD


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


class MemoryCacheStore:
    """Responses in this process, shared by every request of a gateway.

    `max_entries` and `max_bytes` bound it (the least recently used entries go first); an
    entry larger than `max_bytes` is not stored. `clock` (seconds) is injectable for tests.
    Plain methods: nothing here does I/O.
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
        self.clock = clock
        self._cache = _Bounded(max_entries, max_bytes, clock)

    def get(self, key: str) -> CachedResponse | None:
        item = self._cache.get(key)
        return item[0] if item is not None else None

    def set(self, key: str, entry: CachedResponse, storage_ttl: float) -> bool:
        """Store `entry` for `storage_ttl` seconds; False if it does not fit at all."""
        try:
            self._cache[key] = (entry, self.clock() + storage_ttl)
        except ValueError:  # larger than the whole store
            self._cache.pop(key, None)
            return False
        return True

    def delete(self, key: str) -> bool:
        return self._cache.pop(key, None) is not None

    def clear(self) -> None:
        self._cache.clear()

    def __len__(self) -> int:
        self._cache.expire()
        return len(self._cache)

    @property
    def bytes(self) -> int:
        """What the live entries cost, as counted against `max_bytes`."""
        self._cache.expire()
        return int(self._cache.currsize)


def _stores(gateway: Gateway) -> dict[str, MemoryCacheStore]:
    stores: dict[str, MemoryCacheStore] = gateway.shared.setdefault(_SHARED_KEY, {})
    return stores


def cache_store(gateway: Gateway, dictionary_name: str = DEFAULT_DICTIONARY) -> MemoryCacheStore:
    """The store of `dictionary_name` for `gateway`, made on first use. Plugins naming the
    same dictionary share it (as Kong's shared dictionary)."""
    stores = _stores(gateway)
    store = stores.get(dictionary_name)
    if store is None:
        store = stores[dictionary_name] = MemoryCacheStore()
    return store


def use_cache_store(
    gateway: Gateway, store: MemoryCacheStore, dictionary_name: str = DEFAULT_DICTIONARY
) -> None:
    """Make `gateway` cache `dictionary_name` in `store` (other bounds, a fake clock)."""
    _stores(gateway)[dictionary_name] = store


def purge(gateway: Gateway, key: str) -> bool:
    """Drop the entry `key` (an `X-Cache-Key` value) from every store; True if one was there."""
    found = False
    for store in _stores(gateway).values():
        found = store.delete(key) or found
    return found


def purge_all(gateway: Gateway) -> None:
    """Drop every cached response of `gateway`."""
    for store in _stores(gateway).values():
        store.clear()
