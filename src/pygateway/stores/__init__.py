"""Stores for state shared beyond one request: rate-limit counters, for now.

    store = counter_store(gateway)                      # in-process (policy "local")
    store = counter_store(gateway, RedisConfig(host="redis.internal"))  # policy "redis"
    hit = await store.hit([Counter("minute:...", limit=100, expires_at=...)])

`MemoryCounterStore` keeps counters in the process; `RedisCounterStore` in a Redis every
worker and node shares (coredis >= 6, the `pygateway[redis]` extra, imported on first use).
"""

from __future__ import annotations

from ._base import Counter, CounterStore, Hit, StoreError
from ._memory import MemoryCounterStore
from ._redis import RedisConfig, RedisCounterStore
from ._registry import close_counter_stores, counter_store, use_counter_store

__all__ = [
    "Counter",
    "CounterStore",
    "Hit",
    "MemoryCounterStore",
    "RedisConfig",
    "RedisCounterStore",
    "StoreError",
    "close_counter_stores",
    "counter_store",
    "use_counter_store",
]
