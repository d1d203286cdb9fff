"""The machine's PostgreSQL (127.0.0.1:5432, user postgres, database test, trust
authentication) for the tests that need one.

    def test_x(pg_prefix: str) -> None:   # a fixture: import it into the test module
        ...tables named pg_prefix + "..." are dropped after the test

`pg_prefix` skips the test, with the reason shown, when PostgreSQL (or psycopg) is missing
in a local run, and fails it when `CI=true` (set by .ci/run), where both must be there.

Uses psycopg's synchronous API, so the checks and the cleanup do not depend on the event
loop under test.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

__all__ = ["PG_URL", "pg_connect", "pg_prefix", "pg_tables", "require_postgres"]

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def pg_connect() -> Any:
    """A new autocommit psycopg connection to the test database (close it yourself)."""
    import psycopg

    return psycopg.connect(PG_URL, autocommit=True, connect_timeout=2)


def pg_tables(prefix: str) -> list[str]:
    """The tables of the current schema whose name starts with `prefix`, sorted."""
    with pg_connect() as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = current_schema() AND starts_with(table_name, %s)",
            (prefix,),
        ).fetchall()
    return sorted(row[0] for row in rows)


def require_postgres() -> None:
    """Skip the running test if PostgreSQL does not answer — or fail it when `CI=true`."""
    try:
        with pg_connect() as conn:
            conn.execute("SELECT 1")
        problem = None
    except ImportError:
        problem = "cannot be used: psycopg is not installed (pip install 'psycopg[binary]')"
    except Exception as exc:
        problem = f"is not reachable: {' '.join(str(exc).split())}"
    if problem is None:
        return
    message = f"PostgreSQL at {PG_URL} {problem}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: PostgreSQL is required)")
    pytest.skip(message)


@pytest.fixture
def pg_prefix() -> Iterator[str]:
    """A table prefix of this test's own; its tables are dropped afterwards."""
    require_postgres()
    prefix = f"pgw_test_{uuid.uuid4().hex[:16]}_"
    yield prefix
    tables = pg_tables(prefix)
    if tables:
        with pg_connect() as conn:
            conn.execute("DROP TABLE IF EXISTS " + ", ".join(tables))
