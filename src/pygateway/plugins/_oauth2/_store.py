"""Where the oauth2 plugin keeps what it issues: access tokens, refresh tokens and
authorization codes.

`TokenStore` is the interface (async `get` / `put` / `delete`, entries that expire) that a
shared store (PostgreSQL, Redis) implements for a cluster; `MemoryTokenStore` is the
default: per process, bounded, expiring. Keys are chosen by the plugin and never hold a
token: each is the SHA-256 of the token, code or refresh token it stands for, so a dump of
the store reveals no credential. Values are small JSON-able mappings.
"""

from __future__ import annotations

import heapq
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..._gateway import Gateway

__all__ = ["STORE_KEY", "MemoryTokenStore", "TokenStore", "token_store"]

#: Where a gateway keeps its token store, in `gateway.shared`.
STORE_KEY = ("oauth2", "tokens")


class TokenStore:
    """The storage the oauth2 plugin needs: a key-value map whose entries may expire.

    Subclasses implement `get`, `put` and `delete`. `delete` tells whether the entry was
    there, atomically: a code or refresh token is spent by whoever deletes it first, so
    two concurrent requests cannot both redeem it. `now()` is the store's clock, in
    seconds since the epoch: tokens are dated and expire by it.
    """

    async def get(self, key: str) -> dict[str, Any] | None:
        """The value stored under `key`, or None if there is none or it expired."""
        raise NotImplementedError(f"{type(self).__name__} must implement `async def get(key)`")

    async def put(self, key: str, value: Mapping[str, Any], *, ttl: float | None = None) -> None:
        """Store `value` under `key` (replacing any), for `ttl` seconds (None: no expiry)."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement `async def put(key, value, *, ttl=None)`"
        )

    async def delete(self, key: str) -> bool:
        """Remove `key`; True if it was there (and not expired)."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement `async def delete(key) -> bool`"
        )

    def now(self) -> float:
        """The store's clock (seconds since the epoch)."""
        return time.time()

    async def aclose(self) -> None:
        """Release the store's resources (connections). The gateway calls it when it
        closes; a gateway may start again, so the store must work again afterwards
        (reconnect on its next use)."""
        return None


class MemoryTokenStore(TokenStore):
    """An in-process `TokenStore`: fast, lost on restart, not shared between processes.

    Holds at most `max_entries`; past that the oldest entries are dropped first (their
    tokens stop working). Expired entries are removed as new ones arrive. `clock` replaces
    `time.time` (tests use it to make tokens expire).
    """

    def __init__(
        self, *, max_entries: int = 100_000, clock: Callable[[], float] = time.time
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1 (got {max_entries})")
        self.max_entries = max_entries
        self._clock = clock
        # key -> (expires_at or None, value), oldest first
        self._entries: OrderedDict[str, tuple[float | None, dict[str, Any]]] = OrderedDict()
        # (expires_at, key): may hold stale pairs for keys replaced since
        self._expiries: list[tuple[float, str]] = []

    def now(self) -> float:
        return self._clock()

    def __len__(self) -> int:
        return len(self._entries)

    def _live(self, key: str, now: float) -> dict[str, Any] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires_at, value = entry
        if expires_at is not None and expires_at <= now:
            del self._entries[key]
            return None
        return value

    def _purge(self, now: float) -> None:
        heap = self._expiries
        while heap and heap[0][0] <= now:
            expires_at, key = heapq.heappop(heap)
            entry = self._entries.get(key)
            if entry is not None and entry[0] == expires_at:
                del self._entries[key]
        if len(heap) > 2 * self.max_entries:
            # Replaced entries left their old expiry behind: rebuild from the live ones.
            self._expiries = [(e, k) for k, (e, _) in self._entries.items() if e is not None]
            heapq.heapify(self._expiries)

    async def get(self, key: str) -> dict[str, Any] | None:
        value = self._live(key, self.now())
        return None if value is None else dict(value)

    async def put(self, key: str, value: Mapping[str, Any], *, ttl: float | None = None) -> None:
        now = self.now()
        self._purge(now)
        expires_at = None if ttl is None else now + ttl
        self._entries.pop(key, None)
        self._entries[key] = (expires_at, dict(value))
        if expires_at is not None:
            heapq.heappush(self._expiries, (expires_at, key))
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    async def delete(self, key: str) -> bool:
        if self._live(key, self.now()) is None:
            return False
        del self._entries[key]
        return True


def token_store(gateway: Gateway) -> TokenStore:
    """The gateway's token store: `gateway.shared[STORE_KEY]`, a `MemoryTokenStore` unless
    one was put there before the first request."""
    store = gateway.shared.get(STORE_KEY)
    if store is None:
        store = gateway.shared[STORE_KEY] = MemoryTokenStore()
    if not isinstance(store, TokenStore):
        raise TypeError(
            f"gateway.shared[{STORE_KEY!r}] must be a TokenStore (got {type(store).__name__})"
        )
    return store
