"""Which store a gateway's rate-limiting plugins use: one per gateway and location."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._base import CounterStore
from ._memory import MemoryCounterStore
from ._redis import RedisConfig, RedisCounterStore

if TYPE_CHECKING:
    from .._gateway import Gateway

__all__ = ["close_counter_stores", "counter_store", "use_counter_store"]

# In `gateway.shared`, under (_KEY, None) the local store and (_KEY, RedisConfig) a Redis
# one. Kept across reconfigurations (counters survive a configuration change); the gateway
# closes them when it closes, and they reconnect on their next use.
_KEY = "pygateway.stores.counters"


def counter_store(gateway: Gateway, redis: RedisConfig | None = None) -> CounterStore:
    """The store `gateway`'s plugins count in: its in-process store, or with `redis` its
    store for that Redis. Made on first use, kept for the gateway's life (a restart
    reconnects)."""
    store: CounterStore | None = gateway.shared.get((_KEY, redis))
    if store is None:
        store = MemoryCounterStore() if redis is None else RedisCounterStore(redis)
        store.attach(gateway)
        gateway.shared[_KEY, redis] = store
    return store


def use_counter_store(gateway: Gateway, store: CounterStore) -> None:
    """Make `gateway` count in `store`: a `RedisCounterStore` replaces the store of its
    Redis configuration, any other store the local (in-process) one.

    For a key prefix of your own, or a fake clock in tests:
    `use_counter_store(gateway, MemoryCounterStore(clock=lambda: now))`.
    """
    key = store.config if isinstance(store, RedisCounterStore) else None
    store.attach(gateway)
    gateway.shared[_KEY, key] = store


async def close_counter_stores(gateway: Gateway) -> None:
    """Close `gateway`'s connections to stores (closing the gateway does). Local counters
    are kept: they are the process's, not a connection's."""
    for key, store in list(gateway.shared.items()):
        if isinstance(key, tuple) and key[:1] == (_KEY,):
            await store.aclose()
