"""Which store a gateway's rate-limiting plugins use: one per gateway and location."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._base import CounterStore
from ._memory import MemoryCounterStore
from ._redis import RedisConfig, RedisCounterStore

if TYPE_CHECKING:
    from .._gateway import Gateway

__all__ = ["close_counter_stores", "counter_store", "use_counter_store"]

# In `gateway.shared`: {None: the local store, RedisConfig: its Redis store}. Kept across
# reconfigurations, so counters survive a configuration change.
_KEY = "pygateway.stores.counters"


def _stores(gateway: Gateway) -> dict[RedisConfig | None, CounterStore]:
    stores: dict[RedisConfig | None, CounterStore] = gateway.shared.setdefault(_KEY, {})
    return stores


def counter_store(gateway: Gateway, redis: RedisConfig | None = None) -> CounterStore:
    """The store `gateway`'s plugins count in: its in-process store, or with `redis` its
    store for that Redis. Made on first use, kept for the gateway's life (a restart
    reconnects)."""
    stores = _stores(gateway)
    store = stores.get(redis)
    if store is None:
        store = MemoryCounterStore() if redis is None else RedisCounterStore(redis)
        store.attach(gateway)
        stores[redis] = store
    return store


def use_counter_store(gateway: Gateway, store: CounterStore) -> None:
    """Make `gateway` count in `store`: a `RedisCounterStore` replaces the store of its
    Redis configuration, any other store the local (in-process) one.

    For a key prefix of your own, or a fake clock in tests:
    `use_counter_store(gateway, MemoryCounterStore(clock=lambda: now))`.
    """
    key = store.config if isinstance(store, RedisCounterStore) else None
    store.attach(gateway)
    _stores(gateway)[key] = store


async def close_counter_stores(gateway: Gateway) -> None:
    """Close `gateway`'s connections to stores (the plugins' `shutdown` does). Local
    counters are kept: they are the process's, not a connection's."""
    stores: dict[Any, CounterStore] = gateway.shared.get(_KEY, {})
    for key, store in list(stores.items()):
        if key is not None:
            await store.aclose()
