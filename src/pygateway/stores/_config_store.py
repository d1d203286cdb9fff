"""`ConfigStore`: where a gateway's configuration lives when the Admin API edits it.

A store holds entities as Kong's flat declarative documents (JSON-able dicts with an `id`,
foreign keys as `{"id": ...}`), by kind (Kong's collection names: "services", "routes",
"consumers", "plugins", "upstreams", "targets", "keyauth_credentials", ...) and id, plus a
revision number that every write increments.

Writes are optimistic: `write(changes, expected=revision)` applies all the changes and
increments the revision in one transaction, or raises `RevisionConflict` (and changes
nothing) when someone else wrote since `expected`. A writer then reloads and tries again.
Readers (other workers, other nodes) notice a change by the revision (`revision()`), and
reload.

`MemoryConfigStore` is the default (one process, nothing kept); SQLite and PostgreSQL
stores persist and are shared by every process using the same database.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ._base import StoreError

__all__ = [
    "Change",
    "ConfigStore",
    "MemoryConfigStore",
    "RevisionConflict",
    "StoredConfig",
]

#: kind -> id -> document.
Entities = Mapping[str, Mapping[str, Mapping[str, Any]]]


class RevisionConflict(StoreError):
    """The store's revision is not the one the write expected: someone else wrote first."""

    def __init__(self, expected: int, actual: int) -> None:
        super().__init__(f"the configuration changed meanwhile (revision {actual}, not {expected})")
        self.expected = expected
        self.actual = actual


@attrs.frozen
class Change:
    """One entity to write: its new `document`, or None to delete it."""

    kind: str
    id: str
    document: Mapping[str, Any] | None


@attrs.frozen
class StoredConfig:
    """What a store holds at one revision (0: nothing was ever written)."""

    revision: int
    entities: Entities

    def documents(self, kind: str) -> list[Mapping[str, Any]]:
        """The documents of one kind, in id order (stable, for pagination)."""
        by_id = self.entities.get(kind, {})
        return [by_id[i] for i in sorted(by_id)]


class ConfigStore:
    """Base class of the configuration stores. All methods may raise `StoreError` when the
    store cannot be reached; `write` raises `RevisionConflict` as said above."""

    #: Where it is, for messages (never with a password).
    url: str = ""

    async def load(self) -> StoredConfig:
        """Every entity, and the revision they are at (one consistent read)."""
        raise NotImplementedError

    async def revision(self) -> int:
        """The current revision (cheap: workers poll it)."""
        raise NotImplementedError

    async def write(self, changes: Sequence[Change], *, expected: int) -> int:
        """Apply `changes` atomically if the revision is still `expected`; the new revision
        (`expected + 1`). A document is stored as JSON: one that is not JSON-able raises
        `TypeError` or `ValueError`, and nothing is written."""
        raise NotImplementedError

    async def replace(self, entities: Entities, *, expected: int) -> int:
        """Make the store hold exactly `entities` (a whole configuration), atomically."""
        current = await self.load()
        if current.revision != expected:
            raise RevisionConflict(expected, current.revision)
        changes = [
            Change(kind, id_, None)
            for kind, by_id in current.entities.items()
            for id_ in by_id
            if id_ not in entities.get(kind, {})
        ]
        changes += [
            Change(kind, id_, doc) for kind, by_id in entities.items() for id_, doc in by_id.items()
        ]
        return await self.write(changes, expected=expected)

    async def aclose(self) -> None:
        """Release connections; the store opens them again on its next use."""
        return None


class MemoryConfigStore(ConfigStore):
    """Entities in this process only: what the Admin API uses unless told otherwise."""

    url = "memory://"

    def __init__(self) -> None:
        self._revision = 0
        self._entities: dict[str, dict[str, dict[str, Any]]] = {}

    async def load(self) -> StoredConfig:
        return StoredConfig(self._revision, copy.deepcopy(self._entities))

    async def revision(self) -> int:
        return self._revision

    async def write(self, changes: Sequence[Change], *, expected: int) -> int:
        if self._revision != expected:
            raise RevisionConflict(expected, self._revision)
        # Serialized first (as the other stores do): a document that is not JSON-able
        # fails before anything changes, and what is kept is a copy.
        staged = [
            (
                c.kind,
                c.id,
                None
                if c.document is None
                else json.loads(json.dumps(c.document, allow_nan=False)),  # as SQL stores
            )
            for c in changes
        ]
        for kind, id_, document in staged:
            if document is None:
                self._entities.get(kind, {}).pop(id_, None)
            else:
                self._entities.setdefault(kind, {})[id_] = document
        self._revision += 1
        return self._revision
