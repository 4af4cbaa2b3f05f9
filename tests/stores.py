"""Stores for tests: a SQLite file, or a PostgreSQL schema of its own on the local server.

Each PostgreSQL store lives in a fresh schema (the URL's `options=-csearch_path=...`), dropped
afterwards, so tests never see each other's rows. The server is the one `scripts/postgres.sh`
starts (PostgreSQL on 127.0.0.1:5432, role and database smile_test); GATEWAY_TEST_PG_URL
points elsewhere.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from adapters.pg_store import PgStore
from adapters.sql_base import SqlStoreBase
from adapters.sql_store import SqlStore

PG_URL = os.environ.get("GATEWAY_TEST_PG_URL",
                        "postgresql://smile_test:smile_test@127.0.0.1:5432/smile_test")
KINDS = ("sqlite", "postgres")


def _pg_connect():  # type: ignore[no-untyped-def]
    import psycopg

    return psycopg.connect(PG_URL, autocommit=True, connect_timeout=3)


def require_postgres() -> None:
    """A missing PostgreSQL fails the run under CI=true; elsewhere it skips with the fix."""
    try:
        _pg_connect().close()
    except Exception as exc:  # any reason: the message says which
        message = (f"no PostgreSQL at {PG_URL}: {str(exc).strip()}; run `scripts/postgres.sh "
                   "start` (or `make test`, which starts it)")
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@contextmanager
def pg_schema() -> Iterator[str]:
    """A store URL whose tables go to a schema of their own, dropped on exit."""
    require_postgres()
    schema = f"gw_test_{uuid.uuid4().hex[:12]}"
    with _pg_connect() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with _pg_connect() as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@contextmanager
def store_url(kind: str, tmp_path: Path) -> Iterator[str]:
    if kind == "postgres":
        with pg_schema() as url:
            yield url
    else:
        yield f"sqlite:///{tmp_path / 'gateway.db'}"


def open_store(url: str) -> SqlStoreBase:
    return PgStore(url) if url.startswith("postgresql://") else SqlStore(url)
