"""The configuration stores: memory, SQLite (a file in tmp_path) and PostgreSQL (the
machine's, tables under a prefix of the test's own, see tests/pgutil.py).

The same behaviour is asked of each: revisions, transactional writes, conflicts between
writers; and of the SQL ones, that another store object — another worker, or the same
gateway after a restart — sees what was written.
"""

from __future__ import annotations

import json
import re
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import NamedTuple

import anyio
import pytest
from pgutil import PG_URL, pg_connect, pg_prefix

from pygateway.stores import StoreError
from pygateway.stores._config_store import (
    Change,
    ConfigStore,
    MemoryConfigStore,
    RevisionConflict,
)
from pygateway.stores._sql_config import (
    PostgresConfigStore,
    SQLiteConfigStore,
    open_config_store,
)

__all__ = ["pg_prefix"]  # the fixture, imported for the tests here

SERVICE = {
    "id": "5f1c4e1e-0000-4000-8000-000000000001",
    "name": "catalogue-ünïcode-サービス",
    "host": "catalog.internal",
    "tags": ["a", "b"],
    "client_certificate": None,
    "nested": {"deep": [1, 2.5, {"x": True, "y": "\u0000\n\"'"}]},
}
ROUTE = {"id": "r1", "paths": ["/catalog"], "service": {"id": SERVICE["id"]}}


class Place(NamedTuple):
    kind: str
    url: str
    prefix: str


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Place:
    """Where the stores of a test keep the configuration."""
    if request.param == "memory":
        return Place("memory", "memory://", "pygateway_")
    if request.param == "sqlite":
        return Place("sqlite", f"sqlite:///{tmp_path / 'config.db'}", "pygateway_")
    prefix = request.getfixturevalue("pg_prefix")
    return Place("postgres", PG_URL, prefix)


@pytest.fixture
async def open_store(place: Place) -> AsyncIterator[Callable[[], ConfigStore]]:
    """Opens a store on `place` (a new object each time, except for memory: one process
    has one memory store); all are closed after the test."""
    opened: list[ConfigStore] = []
    memory = MemoryConfigStore()

    def open_() -> ConfigStore:
        if place.kind == "memory":
            store: ConfigStore = memory
        else:
            store = open_config_store(place.url, prefix=place.prefix)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        await store.aclose()


persistent = pytest.mark.parametrize("place", ["sqlite", "postgres"], indirect=True)


async def test_an_empty_store_is_at_revision_zero(open_store: Callable[[], ConfigStore]) -> None:
    store = open_store()

    assert await store.revision() == 0
    loaded = await store.load()
    assert loaded.revision == 0
    assert loaded.entities == {}


async def test_written_documents_load_back_as_they_were_written(
    open_store: Callable[[], ConfigStore],
) -> None:
    store = open_store()

    revision = await store.write(
        [Change("services", SERVICE["id"], SERVICE), Change("routes", "r1", ROUTE)], expected=0
    )

    assert revision == 1
    loaded = await store.load()
    assert loaded.revision == 1
    assert loaded.entities == {"services": {SERVICE["id"]: SERVICE}, "routes": {"r1": ROUTE}}
    assert loaded.documents("routes") == [ROUTE]


async def test_every_write_increments_the_revision_and_overwrites_by_kind_and_id(
    open_store: Callable[[], ConfigStore],
) -> None:
    store = open_store()

    assert await store.write([Change("routes", "r1", ROUTE)], expected=0) == 1
    assert await store.write([Change("routes", "r1", {**ROUTE, "paths": ["/v2"]})], expected=1) == 2
    assert await store.write([], expected=2) == 3

    assert await store.revision() == 3
    assert (await store.load()).entities == {"routes": {"r1": {**ROUTE, "paths": ["/v2"]}}}


async def test_a_write_expecting_a_stale_revision_conflicts_and_writes_nothing(
    open_store: Callable[[], ConfigStore],
) -> None:
    store = open_store()
    await store.write([Change("routes", "r1", ROUTE)], expected=0)

    with pytest.raises(RevisionConflict) as caught:
        await store.write(
            [Change("routes", "r1", None), Change("services", "s", SERVICE)], expected=0
        )

    assert (caught.value.expected, caught.value.actual) == (0, 1)
    assert isinstance(caught.value, StoreError)
    loaded = await store.load()
    assert loaded.revision == 1
    assert loaded.entities == {"routes": {"r1": ROUTE}}


async def test_a_document_that_is_not_json_fails_the_whole_write(
    open_store: Callable[[], ConfigStore],
) -> None:
    store = open_store()
    await store.write([Change("routes", "r1", ROUTE)], expected=0)

    with pytest.raises(TypeError):
        await store.write(
            [
                Change("routes", "r1", None),
                Change("services", "bad", {"id": "bad", "host": object()}),
                Change("routes", "r2", ROUTE),
            ],
            expected=1,
        )

    loaded = await store.load()
    assert loaded.revision == 1
    assert loaded.entities == {"routes": {"r1": ROUTE}}
    # The store still works.
    assert await store.write([Change("routes", "r2", ROUTE)], expected=1) == 2


async def test_a_change_without_a_document_deletes_the_entity(
    open_store: Callable[[], ConfigStore],
) -> None:
    store = open_store()
    await store.write([Change("routes", "r1", ROUTE), Change("routes", "r2", ROUTE)], expected=0)

    # Deleting what does not exist is no error: the result is the same.
    await store.write([Change("routes", "r1", None), Change("routes", "gone", None)], expected=1)

    loaded = await store.load()
    assert loaded.revision == 2
    assert loaded.entities == {"routes": {"r2": ROUTE}}


async def test_replace_makes_the_store_hold_exactly_the_given_entities(
    open_store: Callable[[], ConfigStore],
) -> None:
    store = open_store()
    await store.write(
        [Change("routes", "r1", ROUTE), Change("services", SERVICE["id"], SERVICE)], expected=0
    )

    revision = await store.replace(
        {"routes": {"r2": ROUTE}, "consumers": {"c": {"id": "c", "username": "ann"}}}, expected=1
    )

    assert revision == 2
    loaded = await store.load()
    assert loaded.revision == 2
    assert {k: v for k, v in loaded.entities.items() if v} == {
        "routes": {"r2": ROUTE},
        "consumers": {"c": {"id": "c", "username": "ann"}},
    }
    with pytest.raises(RevisionConflict):
        await store.replace({}, expected=1)
    assert (await store.load()).revision == 2


async def test_of_two_writers_expecting_the_same_revision_exactly_one_wins(
    open_store: Callable[[], ConfigStore],
) -> None:
    first, second = open_store(), open_store()
    await first.revision()
    await second.revision()  # both connected, so the writes really race
    outcomes: dict[str, int | RevisionConflict] = {}

    async def write(name: str, store: ConfigStore) -> None:
        try:
            outcomes[name] = await store.write([Change("routes", name, ROUTE)], expected=0)
        except RevisionConflict as exc:
            outcomes[name] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(write, "first", first)
        tg.start_soon(write, "second", second)

    won = [name for name, outcome in outcomes.items() if outcome == 1]
    lost = [o for o in outcomes.values() if isinstance(o, RevisionConflict)]
    assert len(won) == 1
    assert len(lost) == 1
    assert lost[0].actual == 1
    assert (await first.load()).entities == {"routes": {won[0]: ROUTE}}


async def test_a_closed_store_reconnects_on_its_next_use(
    open_store: Callable[[], ConfigStore],
) -> None:
    store = open_store()
    await store.write([Change("routes", "r1", ROUTE)], expected=0)

    await store.aclose()
    await store.aclose()  # closing twice is fine

    assert (await store.load()).entities == {"routes": {"r1": ROUTE}}
    assert await store.write([], expected=1) == 2


@persistent
async def test_another_store_on_the_same_database_sees_the_writes(
    open_store: Callable[[], ConfigStore],
) -> None:
    # Stands for a restarted gateway, and for the other workers polling the revision.
    writer, reader = open_store(), open_store()
    assert await reader.revision() == 0
    await writer.write([Change("services", SERVICE["id"], SERVICE)], expected=0)
    await writer.aclose()

    assert await reader.revision() == 1
    assert (await reader.load()).entities == {"services": {SERVICE["id"]: SERVICE}}
    assert (await open_store().load()).revision == 1


_OTHER_PROCESS = """
import json, sys
import anyio
from pygateway.stores._config_store import Change
from pygateway.stores._sql_config import open_config_store

async def main():
    store = open_config_store(sys.argv[1], prefix=sys.argv[2])
    try:
        loaded = await store.load()
        await store.write([Change("routes", "from-child", {"id": "from-child"})],
                          expected=loaded.revision)
        print(json.dumps(loaded.entities))
    finally:
        await store.aclose()

anyio.run(main)
"""


@persistent
async def test_another_process_sees_and_makes_changes(
    open_store: Callable[[], ConfigStore], place: Place
) -> None:
    store = open_store()
    await store.write([Change("routes", "r1", ROUTE)], expected=0)

    result = await anyio.run_process(
        [sys.executable, "-c", _OTHER_PROCESS, place.url, place.prefix], check=False
    )

    assert result.returncode == 0, result.stderr.decode()
    assert json.loads(result.stdout) == {"routes": {"r1": ROUTE}}
    assert await store.revision() == 2
    assert (await store.load()).entities == {
        "routes": {"r1": ROUTE, "from-child": {"id": "from-child"}}
    }


@persistent
async def test_stores_with_different_prefixes_share_a_database_without_seeing_each_other(
    place: Place,
) -> None:
    one = open_config_store(place.url, prefix=place.prefix)
    other = open_config_store(place.url, prefix=place.prefix + "other_")
    try:
        await one.write([Change("routes", "r1", ROUTE)], expected=0)

        assert await other.revision() == 0
        assert (await other.load()).entities == {}
    finally:
        await one.aclose()
        await other.aclose()


@pytest.mark.parametrize("place", ["postgres"], indirect=True)
async def test_a_postgresql_user_allowed_only_to_use_the_tables_can_use_the_store(
    place: Place,
) -> None:
    pg_prefix = place.prefix
    owner = open_config_store(PG_URL, prefix=pg_prefix)
    await owner.write([Change("routes", "r1", ROUTE)], expected=0)
    await owner.aclose()
    role = pg_prefix + "user"
    with pg_connect() as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"REVOKE CREATE ON SCHEMA public FROM {role}")  # PostgreSQL < 15
    try:
        with pg_connect() as conn:
            conn.execute(
                f"GRANT SELECT, INSERT, UPDATE, DELETE ON {pg_prefix}entities, "
                f"{pg_prefix}revision TO {role}"
            )
        store = open_config_store(PG_URL.replace("postgres@", f"{role}@"), prefix=pg_prefix)
        try:
            assert await store.write([Change("routes", "r2", ROUTE)], expected=1) == 2
            assert set((await store.load()).entities["routes"]) == {"r1", "r2"}
        finally:
            await store.aclose()
    finally:
        with pg_connect() as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


async def test_a_sqlite_store_uses_wal_so_readers_never_wait_for_a_writer(
    tmp_path: Path,
) -> None:
    store = SQLiteConfigStore(tmp_path / "config.db")
    try:
        await store.revision()
    finally:
        await store.aclose()

    conn = sqlite3.connect(tmp_path / "config.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


async def test_a_sqlite_file_that_cannot_be_opened_is_a_store_error_naming_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "missing-directory" / "config.db"
    store = SQLiteConfigStore(path)

    with pytest.raises(StoreError, match="missing-directory") as caught:
        await store.load()

    assert not isinstance(caught.value, RevisionConflict)
    await store.aclose()


@persistent
async def test_a_store_reconnects_after_its_connection_failed(
    open_store: Callable[[], ConfigStore], place: Place
) -> None:
    store = open_store()
    await store.write([Change("routes", "r1", ROUTE)], expected=0)
    assert await store.revision() == 1
    if place.kind == "postgres":
        # The server ends the store's session (its last query named the tables).
        with pg_connect() as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE pid <> pg_backend_pid() AND position(%s in query) > 0",
                (place.prefix,),
            )
        with pytest.raises(
            StoreError, match=re.escape("PostgreSQL at postgresql://postgres@127.0.0.1")
        ):
            await store.revision()
    else:
        # The tables vanish under the store: the failing call reconnects, which makes
        # them again.
        path = place.url.removeprefix("sqlite:///")
        conn = sqlite3.connect(path)
        try:
            conn.execute(f"DROP TABLE {place.prefix}revision")
            conn.commit()
        finally:
            conn.close()
        with pytest.raises(StoreError, match="SQLite at sqlite:///"):
            await store.revision()

    # Reconnected (SQLite made its revision table again, at 0).
    assert (await store.load()).revision == (1 if place.kind == "postgres" else 0)


async def test_an_unreachable_postgresql_is_a_store_error_without_the_password(
    closed_port: int,
) -> None:
    pytest.importorskip("psycopg")
    store = open_config_store(f"postgresql://gateway:s3cr3t-pw@127.0.0.1:{closed_port}/config")

    with pytest.raises(StoreError) as caught:
        await store.revision()

    message = str(caught.value)
    assert f"PostgreSQL at postgresql://gateway@127.0.0.1:{closed_port}/config" in message
    assert "s3cr3t-pw" not in message
    assert "s3cr3t-pw" not in repr(store)
    with pytest.raises(StoreError):  # and again: it tries to connect on every use
        await store.load()
    await store.aclose()


def test_open_config_store_understands_memory_sqlite_and_postgresql_urls() -> None:
    assert isinstance(open_config_store("memory://"), MemoryConfigStore)

    relative = open_config_store("sqlite:///data/config.db")
    assert isinstance(relative, SQLiteConfigStore)
    assert (relative.path, relative.url) == ("data/config.db", "sqlite:///data/config.db")
    absolute = open_config_store("sqlite:////var/lib/pygateway/config.db", prefix="gw_")
    assert isinstance(absolute, SQLiteConfigStore)
    assert (absolute.path, absolute.prefix) == ("/var/lib/pygateway/config.db", "gw_")


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_open_config_store_passes_postgresql_urls_to_psycopg(scheme: str) -> None:
    pytest.importorskip("psycopg")
    store = open_config_store(f"{scheme}://gw:pw-123@db.internal:5433/gateway?sslmode=require")

    assert isinstance(store, PostgresConfigStore)
    assert store.url == "postgresql://gw@db.internal:5433/gateway"
    assert "pw-123" not in repr(store)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://db/gw", "unknown configuration store mysql://: use one of memory://, sqlite"),
        ("config.db", "unknown configuration store 'config.db'"),
        ("postgresql:/gw:pw-123@db/gw", "unknown configuration store without a scheme: use"),
        ("sqlite:///:memory:", "use 'memory://'"),
        ("sqlite://config.db", "sqlite:///relative/path or sqlite:////absolute/path"),
        ("sqlite:///", "sqlite:///relative/path"),
        ("memory://somewhere", "takes no path"),
    ],
)
def test_open_config_store_refuses_urls_it_does_not_understand(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        open_config_store(url)

    assert "pw-123" not in str(caught.value)


@pytest.mark.parametrize("prefix", ["", "bad-prefix", "1st_", "x; DROP TABLE y"])
def test_a_table_prefix_must_be_a_plain_identifier(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix must be letters, digits and underscores"):
        open_config_store("sqlite:///config.db", prefix=prefix)


def test_a_postgresql_store_without_psycopg_asks_for_the_postgres_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg -> ImportError

    with pytest.raises(StoreError, match=r"install pygateway\[postgres\]"):
        open_config_store("postgresql://127.0.0.1/gw")
