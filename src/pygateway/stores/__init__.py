"""Stores for state shared beyond one request: the configuration (`ConfigStore`: memory,
SQLite, PostgreSQL; see docs/stores.md), rate-limit counters, and the Redis connection
other Redis-backed stores (proxy-cache's) build on.

    store = counter_store(gateway)                      # in-process (policy "local")
    store = counter_store(gateway, RedisConfig(host="redis.internal"))  # policy "redis"
    hit = await store.hit([Counter("minute:...", limit=100, expires_at=...)])

`MemoryCounterStore` keeps counters in the process; `RedisCounterStore` in a Redis every
worker and node shares (coredis >= 6, the `pygateway[redis]` extra, imported on first use).
`RedisConnection` owns a coredis client for a store of yours: `await conn.call(op, *args)`
runs `await op(client, *args)` with a `RedisClient` (`client.redis`, `client.script(src)`).
"""

from __future__ import annotations

from ._base import Counter, CounterStore, Hit, StoreError
from ._config_store import (
    Change,
    ConfigStore,
    MemoryConfigStore,
    RevisionConflict,
    StoredConfig,
)
from ._memory import MemoryCounterStore
from ._redis import RedisClient, RedisConfig, RedisConnection, RedisCounterStore
from ._registry import close_counter_stores, counter_store, use_counter_store
from ._sql_config import PostgresConfigStore, SQLiteConfigStore, open_config_store

__all__ = [
    "Change",
    "ConfigStore",
    "Counter",
    "CounterStore",
    "Hit",
    "MemoryConfigStore",
    "MemoryCounterStore",
    "PostgresConfigStore",
    "RedisClient",
    "RedisConfig",
    "RedisConnection",
    "RedisCounterStore",
    "RevisionConflict",
    "SQLiteConfigStore",
    "StoreError",
    "StoredConfig",
    "close_counter_stores",
    "counter_store",
    "open_config_store",
    "use_counter_store",
]
