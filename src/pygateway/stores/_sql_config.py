"""Configuration stores in SQL databases: `SQLiteConfigStore` (a file, the stdlib `sqlite3`)
and `PostgresConfigStore` (psycopg 3, the `pygateway[postgres]` extra, imported when the
store is made), and `open_config_store(url)` that picks one from a URL.

Both keep two tables, named after a prefix ("pygateway_" by default) so that a database
can hold other data too:

    {prefix}entities (kind, id, document)   -- primary key (kind, id); the document as JSON
    {prefix}revision (id = 1, revision)     -- one row: the revision every write increments

They are created when the store first connects. A write is one transaction that first
moves the revision from `expected` to `expected + 1` (`UPDATE ... WHERE revision =
expected`): when another writer got there first, no row matches, and the transaction is
rolled back with `RevisionConflict`. A load reads the revision and every entity in one
transaction, so it never mixes two revisions.

The drivers are synchronous: every call runs in a worker thread (`anyio.to_thread`), so
the stores work on asyncio and trio alike. Each store keeps one connection, used by one
thread at a time, opened on first use and again after a failure or `aclose()`. Whatever a
driver raises (a refused connection, a failed login, a full disk...) reaches the caller as
`StoreError`, naming the store but never its password.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import anyio.to_thread

from ._base import StoreError
from ._config_store import (
    Change,
    ConfigStore,
    Entities,
    MemoryConfigStore,
    RevisionConflict,
    StoredConfig,
)

__all__ = ["PostgresConfigStore", "SQLiteConfigStore", "open_config_store"]

T = TypeVar("T")

#: What `open_config_store` understands, for its error message.
SCHEMES = ("memory://", "sqlite:///", "postgresql://", "postgres://")

_PREFIX = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: PostgreSQL: how long a statement, or data sent and not acknowledged, may take (ms).
STALL_TIMEOUT_MS = 15_000

# One staged change: kind, id, and the document as JSON text (None: delete).
_Staged = tuple[str, str, str | None]


def open_config_store(url: str, *, prefix: str = "pygateway_") -> ConfigStore:
    """The configuration store `url` names:

    - `memory://`: this process only, nothing kept (`MemoryConfigStore`);
    - `sqlite:///relative/path.db`, `sqlite:////absolute/path.db` (three slashes then the
      path, as in SQLAlchemy): a SQLite file, made if missing. `sqlite:///:memory:` is
      refused: its data would vanish whenever the connection is reopened (use `memory://`);
    - `postgresql://user:password@host:port/database?sslmode=...` (or `postgres://`): a
      PostgreSQL database, the URL passed to psycopg as it is.

    `prefix` starts the tables' names (SQL stores). Raises `ValueError` for a URL it does
    not understand, `StoreError` when psycopg is missing. Nothing connects until first use.
    """
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        scheme = ""
    if scheme == "memory":
        if rest:
            raise ValueError(f"a memory store takes no path: use 'memory://' (got {url!r})")
        return MemoryConfigStore()
    if scheme == "sqlite":
        if not rest.startswith("/") or rest == "/":
            raise ValueError(
                f"a SQLite URL is sqlite:///relative/path or sqlite:////absolute/path (got {url!r})"
            )
        path = rest[1:]
        if path == ":memory:":
            raise ValueError(
                "sqlite:///:memory: would lose the configuration whenever the connection "
                "is reopened: use 'memory://' for a store that keeps nothing"
            )
        return SQLiteConfigStore(path, prefix=prefix)
    if scheme in ("postgresql", "postgres"):
        return PostgresConfigStore(url, prefix=prefix)
    # Only the scheme, or a URL without credentials, is shown: a mistyped URL may hold a
    # password ("postgresql:/user:pw@host").
    shown = (
        f"{scheme}://"
        if scheme
        else repr(url)
        if "@" not in url and "=" not in url  # a conninfo may hold "password=..."
        else "without a scheme"
    )
    raise ValueError(f"unknown configuration store {shown}: use one of {', '.join(SCHEMES)}")


class _SQLConfigStore(ConfigStore):
    """What both SQL stores share: the statements, the transactions, the worker thread.

    A subclass connects (`_connect`), says how its database begins transactions and
    which errors are its driver's, and may adjust the SQL (`_sql`).
    """

    _database = "SQL"
    _document_type = "TEXT"
    _begin_write = "BEGIN"
    _begin_read = "BEGIN"
    _driver_errors: tuple[type[BaseException], ...] = ()

    def __init__(self, *, prefix: str) -> None:
        if not _PREFIX.fullmatch(prefix):
            raise ValueError(
                "prefix must be letters, digits and underscores, not starting with a digit "
                f"(got {prefix!r})"
            )
        self.prefix = prefix
        self._lock = threading.Lock()
        self._connection: Any = None

    # -- the ConfigStore operations ---------------------------------------------------------

    async def load(self) -> StoredConfig:
        return await self._call(self._load)

    async def revision(self) -> int:
        return await self._call(self._revision)

    async def write(self, changes: Sequence[Change], *, expected: int) -> int:
        staged = [(c.kind, c.id, _dump(c.document)) for c in changes]
        return await self._call(lambda conn: self._write(conn, staged, expected, clear=False))

    async def replace(self, entities: Entities, *, expected: int) -> int:
        # One transaction: empty the table, write everything (no load needed first).
        staged = [
            (kind, id_, _dump(doc))
            for kind, by_id in entities.items()
            for id_, doc in by_id.items()
        ]
        return await self._call(lambda conn: self._write(conn, staged, expected, clear=True))

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self._close)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url} prefix={self.prefix!r}>"

    # -- in the worker thread -----------------------------------------------------------------

    async def _call(self, operation: Callable[[Any], T]) -> T:
        # Abandoned when the caller is cancelled (its timeout): the thread finishes the
        # operation (bounded by the driver's timeouts) while the caller goes on.
        return await anyio.to_thread.run_sync(self._run, operation, abandon_on_cancel=True)

    def _run(self, operation: Callable[[Any], T]) -> T:
        with self._lock:
            try:
                if self._connection is None:
                    self._connection = self._open()
                return operation(self._connection)
            except self._driver_errors as exc:
                # The connection may be broken, or in a state we cannot trust: the next
                # call starts again from a new one.
                self._close_connection()
                raise StoreError(f"{self._database} at {self.url}: {self._describe(exc)}") from exc

    def _open(self) -> Any:
        conn = self._connect()
        try:
            self._prepare(conn)
            self._transaction(conn, self._begin_write, lambda: self._create_schema(conn))
        except BaseException:
            conn.close()
            raise
        return conn

    def _close(self) -> None:
        with self._lock:
            self._close_connection()

    def _close_connection(self) -> None:
        conn, self._connection = self._connection, None
        if conn is not None:
            try:
                conn.close()
            except self._driver_errors:
                pass  # it was broken already: closing it is all we wanted

    def _transaction(self, conn: Any, begin: str, body: Callable[[], T]) -> T:
        conn.execute(begin)
        try:
            result = body()
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    def _create_schema(self, conn: Any) -> None:
        conn.execute(
            self._sql(
                "CREATE TABLE IF NOT EXISTS {p}entities ("
                " kind TEXT NOT NULL, id TEXT NOT NULL, document {doc} NOT NULL,"
                " PRIMARY KEY (kind, id))"
            )
        )
        conn.execute(
            self._sql(
                "CREATE TABLE IF NOT EXISTS {p}revision ("
                " id INTEGER PRIMARY KEY CHECK (id = 1), revision BIGINT NOT NULL)"
            )
        )
        conn.execute(
            self._sql("INSERT INTO {p}revision (id, revision) VALUES (1, 0) ON CONFLICT DO NOTHING")
        )

    def _revision(self, conn: Any) -> int:
        row = conn.execute(self._sql("SELECT revision FROM {p}revision")).fetchone()
        if row is None:
            raise StoreError(
                f"{self._database} at {self.url}: its {self.prefix}revision row is gone"
            )
        return int(row[0])

    def _load(self, conn: Any) -> StoredConfig:
        def read() -> StoredConfig:
            revision = self._revision(conn)
            rows = conn.execute(self._sql("SELECT kind, id, {text} FROM {p}entities")).fetchall()
            entities: dict[str, dict[str, Any]] = {}
            for kind, id_, document in rows:
                entities.setdefault(kind, {})[id_] = json.loads(document)
            return StoredConfig(revision, entities)

        return self._transaction(conn, self._begin_read, read)

    def _write(self, conn: Any, staged: Sequence[_Staged], expected: int, *, clear: bool) -> int:
        def write() -> int:
            moved = conn.execute(
                self._sql("UPDATE {p}revision SET revision = revision + 1 WHERE revision = ?"),
                (expected,),
            )
            if moved.rowcount != 1:
                raise RevisionConflict(expected, self._revision(conn))
            if clear:
                conn.execute(self._sql("DELETE FROM {p}entities"))
            for kind, id_, document in staged:
                if document is None:
                    conn.execute(
                        self._sql("DELETE FROM {p}entities WHERE kind = ? AND id = ?"),
                        (kind, id_),
                    )
                else:
                    conn.execute(
                        self._sql(
                            "INSERT INTO {p}entities (kind, id, document) VALUES (?, ?, ?)"
                            " ON CONFLICT (kind, id) DO UPDATE SET document = excluded.document"
                        ),
                        (kind, id_, document),
                    )
            return expected + 1

        return self._transaction(conn, self._begin_write, write)

    # -- what a database says for itself ------------------------------------------------------

    def _connect(self) -> Any:
        raise NotImplementedError

    def _prepare(self, conn: Any) -> None:
        """Settings of a new connection, before the schema is made."""

    def _sql(self, statement: str) -> str:
        return statement.format(p=self.prefix, doc=self._document_type, text="document")

    def _describe(self, exc: BaseException) -> str:
        text = " ".join(str(exc).split())
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class SQLiteConfigStore(_SQLConfigStore):
    """The configuration in a SQLite file (made, with its tables, if missing).

    Several processes may share the file (workers of one machine): it is put in WAL mode,
    so readers never wait for a writer, and a writer waits up to `timeout` seconds for
    another one to finish (SQLite's busy timeout) before failing with `StoreError`. Keep
    the file on a local disk: SQLite's locks are not reliable over network file systems.
    """

    _database = "SQLite"
    # IMMEDIATE: a write takes the file's write lock when it begins, so two writers queue
    # up (busy timeout) instead of one failing when it upgrades from reading to writing.
    _begin_write = "BEGIN IMMEDIATE"
    _driver_errors = (sqlite3.Error, OSError)

    def __init__(
        self, path: str | os.PathLike[str], *, prefix: str = "pygateway_", timeout: float = 5.0
    ) -> None:
        super().__init__(prefix=prefix)
        self.path = os.fspath(path)
        if not self.path or self.path == ":memory:":
            raise ValueError(f"SQLiteConfigStore needs a file (got {self.path!r})")
        self.timeout = timeout
        self.url = f"sqlite:///{self.path}"
        # Resolved now: a later chdir must not make a reconnect open another file.
        self._file = os.path.abspath(self.path)

    def _connect(self) -> Any:
        # isolation_level=None: no implicit transactions; ours are explicit. One thread
        # at a time uses it, though not always the same one.
        return sqlite3.connect(
            self._file, timeout=self.timeout, isolation_level=None, check_same_thread=False
        )

    def _prepare(self, conn: Any) -> None:
        conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        conn.execute("PRAGMA journal_mode = WAL")


class PostgresConfigStore(_SQLConfigStore):
    """The configuration in a PostgreSQL database, through psycopg 3 (`pygateway[postgres]`).

    `conninfo` is what psycopg takes: a URL (`postgresql://user:password@host/db`) or
    `key=value` pairs. The tables live in the connection's schema: choose one with
    `options=-c search_path=myschema` (URL: `?options=-c%20search_path%3Dmyschema`), or
    keep them apart with `prefix`. Connecting gives up after `connect_timeout` seconds
    unless `conninfo` says otherwise. Documents are kept in a `json` column, as written.
    """

    _database = "PostgreSQL"
    _document_type = "JSON"
    # REPEATABLE READ: every statement of a load sees the same snapshot.
    _begin_read = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"

    def __init__(
        self, conninfo: str, *, prefix: str = "pygateway_", connect_timeout: float = 10.0
    ) -> None:
        super().__init__(prefix=prefix)
        try:
            import psycopg
            from psycopg.conninfo import conninfo_to_dict
        except ImportError as exc:
            raise StoreError(
                "PostgreSQL stores need psycopg 3: install pygateway[postgres] "
                "(pip install 'pygateway[postgres]')"
            ) from exc
        self._driver_errors = (psycopg.Error, OSError)
        try:
            params = conninfo_to_dict(conninfo)
        except psycopg.Error as exc:
            # Not libpq's text: it may repeat the whole string, password included.
            raise ValueError("not a valid PostgreSQL connection string") from exc
        self._conninfo = conninfo
        self._password = str(params.get("password") or "")
        self._connect_timeout = None if "connect_timeout" in params else connect_timeout
        self.url = _safe_url(params)

    def _connect(self) -> Any:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        conninfo = self._conninfo
        if self._connect_timeout is not None:
            timeout = max(1, round(self._connect_timeout))
            conninfo = make_conninfo(conninfo, connect_timeout=timeout)
        # A server or network that stalls must not hold the store (and every caller
        # queued behind its one connection) for ever: statements and unacknowledged
        # sends time out, and dead peers are noticed by keepalives.
        given = conninfo_to_dict(conninfo)
        defaults = {
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            "tcp_user_timeout": STALL_TIMEOUT_MS,
        }
        extra: dict[str, Any] = {k: v for k, v in defaults.items() if k not in given}
        options = str(given.get("options") or "")
        if "statement_timeout" not in options:
            extra["options"] = f"{options} -c statement_timeout={STALL_TIMEOUT_MS}".strip()
        conninfo = make_conninfo(conninfo, **extra)
        # autocommit: psycopg begins nothing on its own; transactions are ours (BEGIN ...).
        return psycopg.connect(conninfo, autocommit=True)

    def _create_schema(self, conn: Any) -> None:
        # Tables that exist are left alone: even CREATE TABLE IF NOT EXISTS needs the right
        # to create in the schema, which a user given only access to the tables lacks.
        exists = conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL AND to_regclass(%s) IS NOT NULL",
            (f"{self.prefix}entities", f"{self.prefix}revision"),
        ).fetchone()[0]
        if exists:
            return
        # CREATE TABLE IF NOT EXISTS is not safe against a concurrent one: processes that
        # start together take turns on a lock named after the tables.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"pygateway:{self.prefix}",))
        super()._create_schema(conn)

    def _sql(self, statement: str) -> str:
        statement = statement.format(p=self.prefix, doc=self._document_type, text="document::text")
        return statement.replace("?", "%s")

    def _describe(self, exc: BaseException) -> str:
        text = super()._describe(exc)
        # libpq does not quote passwords in its messages; this makes sure of it.
        return text.replace(self._password, "***") if self._password else text


def _safe_url(params: Mapping[str, Any]) -> str:
    """`postgresql://user@host:port/dbname`, from what is known (no password)."""
    user = f"{params['user']}@" if params.get("user") else ""
    host = str(params.get("host") or params.get("hostaddr") or "")
    port = f":{params['port']}" if params.get("port") else ""
    dbname = f"/{params['dbname']}" if params.get("dbname") else ""
    return f"postgresql://{user}{host}{port}{dbname}"


def _dump(document: Mapping[str, Any] | None) -> str | None:
    # Before any transaction: a document that is not JSON raises TypeError or ValueError
    # here, and nothing is written. NaN and infinities are not JSON.
    if document is None:
        return None
    return json.dumps(document, ensure_ascii=False, allow_nan=False)
