"""PgStore: the gateway's durable state in PostgreSQL, shared by several gateways.

The statements are SqlStoreBase's (adapters/sql_base.py); this module supplies what sharing
a database between processes needs:

- every write is one transaction on the calling thread's own connection, retried (a bounded
  number of times) when PostgreSQL reports a serialisation failure, a deadlock or a unique
  key taken by a concurrent writer (two gateways given the same webhook-id: the second then
  sees the first one's dedupe key and answers as it did);
- the writers of one subscription are serialised by a transaction-scoped advisory lock on
  its usn, taken before anything of it is read, so a decision is never made on a stale
  snapshot;
- outbox claims hold a session advisory lock on each (channel, usn) they return until the
  last claimed row of it is marked sent or failed: another gateway skips that subscription
  meanwhile, so per-subscription order holds across gateways, and a gateway that dies
  releases its claims with its connection instead of after a timeout. (Row locks taken with
  FOR UPDATE SKIP LOCKED would last only as long as the claiming transaction, unless it were
  held open across the network delivery; and they would let another gateway send a later
  row of the same subscription first.)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, LiteralString, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from adapters.sql_base import OUTBOX_COLUMNS, Connection, Cursor, SqlStoreBase
from gateway.config import redact_url
from gateway.errors import StoreError
from gateway.ports import PENDING, OutboxItem

log = logging.getLogger(__name__)
T = TypeVar("T")

ATTEMPTS = 3  # a write's tries when it loses a race with another writer
_RETRYABLE = (pg_errors.SerializationFailure, pg_errors.DeadlockDetected,
              pg_errors.UniqueViolation)
_MIGRATION_LOCK = 0x5_3D1E_6A7E  # advisory lock key: one gateway migrates at a time
# TCP keepalives, unless the URL sets its own: a server gone from the network (a partition, a
# host that died) is noticed in about 25 s, not after the kernel's 15 minutes of resends.
_KEEPALIVES = {"keepalives": "1", "keepalives_idle": "10", "keepalives_interval": "5",
               "keepalives_count": "3", "tcp_user_timeout": "25000"}

MIGRATIONS: tuple[str, ...] = (
    # 1: the schema of SQLite's version 2, in PostgreSQL's types
    """
    CREATE TABLE subscriptions (
        usn TEXT PRIMARY KEY,
        sid BIGINT NOT NULL,
        snapshot BYTEA NOT NULL,
        states TEXT NOT NULL,
        provision_request_id BIGINT,
        updated_at DOUBLE PRECISION NOT NULL,
        feature_ids TEXT
    );
    CREATE TABLE history (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        usn TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        source TEXT NOT NULL,
        event_id TEXT,
        vocabulary TEXT,
        previous TEXT,
        state TEXT,
        detail TEXT NOT NULL
    );
    CREATE INDEX history_by_usn ON history (usn, id);
    CREATE TABLE outbox (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        channel TEXT NOT NULL,
        message_id TEXT NOT NULL UNIQUE,
        usn TEXT NOT NULL,
        kind TEXT NOT NULL,
        headers TEXT NOT NULL,
        body BYTEA NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        next_attempt_at DOUBLE PRECISION NOT NULL DEFAULT 0,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX outbox_ready ON outbox (channel, status, id);
    CREATE INDEX outbox_by_usn ON outbox (channel, usn, status, id);
    CREATE TABLE dedupe (
        key TEXT PRIMARY KEY,
        response TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE dead_letters (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        source TEXT NOT NULL,
        reason TEXT NOT NULL,
        headers TEXT NOT NULL,
        body BYTEA NOT NULL,
        at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE sequences (
        name TEXT PRIMARY KEY,
        value BIGINT NOT NULL
    );
    """,
    # 2: dedupe keys by age, for pruning them in batches (Store.prune)
    """
    CREATE INDEX dedupe_by_age ON dedupe (at);
    """,
    # 3: what each dedupe key's request was, to refuse the key's reuse for another one
    """
    ALTER TABLE dedupe ADD COLUMN fingerprint TEXT;
    """,
    # 4: when a dead letter was replayed and what came of it (`dead-letters replay`)
    """
    ALTER TABLE dead_letters ADD COLUMN replayed_at DOUBLE PRECISION;
    ALTER TABLE dead_letters ADD COLUMN replay_outcome TEXT;
    """,
)


@lru_cache(maxsize=512)
def _placeholders(sql: str) -> LiteralString:
    """`?` -> `%s`: the shared statements hold no other `?` and no `%`."""
    if "%" in sql:
        raise ValueError(f"a statement for PgStore holds a %: {sql!r}")
    return sql.replace("?", "%s")


class _Adapted:
    """A psycopg connection seen through the Connection protocol of the shared statements."""

    __slots__ = ("raw",)

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw

    def execute(self, sql: str, parameters: Any = (), /) -> Cursor:
        return self.raw.execute(_placeholders(sql), parameters)

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> None:
        with self.raw.cursor() as cur:
            cur.executemany(_placeholders(sql), parameters)


class _Claims:
    """One connection's claimed outbox rows and the advisory locks (keys) that hold them.

    A claim on a channel supersedes the connection's earlier claim on it: rows claimed before
    and not marked since are either claimed again or given up (the relays claim again what
    they could not deliver), so no lock outlives the rows it holds.
    """

    def __init__(self) -> None:
        self.rows: dict[int, int] = {}  # outbox id -> key
        self.open: dict[int, int] = {}  # key -> claimed rows not yet marked
        self.channel: dict[int, str] = {}  # key -> its channel


def _cannot_open(url: str, exc: psycopg.Error) -> StoreError:
    return StoreError(f"cannot open the store {redact_url(url)}: {str(exc).strip()}")


@dataclass(frozen=True, slots=True)
class _SessionSettings:
    conninfo: str  # the URL's, with the keepalives it does not set
    timeouts: dict[str, str]  # set on each new session


def _session_settings(url: str, lock_timeout_s: float,
                      statement_timeout_s: float) -> _SessionSettings:
    """What each of the gateway's sessions is given beyond the URL, where the URL does not
    say otherwise (its parameters, or `options=-c...`): the keepalives, and bounds on how long
    a statement may wait for a lock and run. A lock held by another session (an operator's
    open transaction, a stuck gateway) then fails the request with a 503 after
    lock_timeout_s, as SQLite's busy timeout does, instead of holding its server thread (and
    in the end every one of them) for as long as the holder likes."""
    try:
        given = conninfo_to_dict(url)
    except psycopg.Error as exc:
        raise _cannot_open(url, exc) from exc
    options = str(given.get("options") or "")
    timeouts = {"lock_timeout": f"{round(lock_timeout_s * 1000)}ms",
                "statement_timeout": f"{round(statement_timeout_s * 1000)}ms"}
    return _SessionSettings(
        make_conninfo(url, **{key: value for key, value in _KEEPALIVES.items()
                              if key not in given}),
        {name: value for name, value in timeouts.items() if name not in options})


class PgStore(SqlStoreBase):
    """The Store port on PostgreSQL (psycopg 3), for one or several gateways."""

    def __init__(self, url: str, clock: Callable[[], float] = time.time,
                 connect_timeout_s: int = 10, lock_timeout_s: float = 10.0,
                 statement_timeout_s: float = 30.0) -> None:
        self.url = url
        self.clock = clock
        self.connect_timeout_s = connect_timeout_s
        self._session = _session_settings(url, lock_timeout_s, statement_timeout_s)
        self._local = threading.local()
        self._all: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()
        self._migrate()

    # -- plumbing ---------------------------------------------------------------------------

    def _conn(self) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            try:
                conn = psycopg.connect(self._session.conninfo, autocommit=True,
                                       connect_timeout=self.connect_timeout_s,
                                       application_name="smile-gateway")
                for name, value in self._session.timeouts.items():
                    conn.execute("SELECT set_config(%s, %s, false)", (name, value))
            except psycopg.Error as exc:
                raise _cannot_open(self.url, exc) from exc
            self._local.conn = conn
            self._local.claims = _Claims()  # a new session holds no locks
            with self._lock:
                self._all.append(conn)
        return conn

    def _transact(self, fn: Callable[[Connection], T]) -> T:
        conn = self._conn()
        for attempt in range(1, ATTEMPTS + 1):
            try:
                with conn.transaction():
                    return fn(_Adapted(conn))
            except _RETRYABLE as exc:
                if attempt == ATTEMPTS:
                    raise StoreError(f"store write failed after {attempt} attempts: "
                                     f"{str(exc).strip()}") from exc
                log.info("store write lost a race, attempt=%d: %s", attempt, exc)
            except psycopg.OperationalError as exc:
                raise StoreError(f"store unavailable: {str(exc).strip()}") from exc
            except psycopg.Error as exc:
                raise StoreError(f"store write failed: {str(exc).strip()}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _read(self, fn: Callable[[Connection], T]) -> T:
        try:
            return fn(_Adapted(self._conn()))
        except psycopg.Error as exc:
            raise StoreError(f"store unavailable: {str(exc).strip()}") from exc

    def _state_in(self, vocabulary: str) -> tuple[str, str]:
        return "(states::jsonb ->> ?)", vocabulary

    def _lock_usn(self, conn: Connection, usn: str) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", ("usn:" + usn,))

    def _migrate(self) -> None:
        def work(conn: Connection) -> None:
            # a migration of a large store may take long, and so may waiting for another
            # gateway's: neither is bounded by the session's timeouts
            conn.execute("SET LOCAL lock_timeout = 0")
            conn.execute("SET LOCAL statement_timeout = 0")
            conn.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM schema_version").fetchone()
            version = row[0] if row else 0
            if version > len(MIGRATIONS):
                raise StoreError(f"the store {redact_url(self.url)} has schema version {version}, "
                                 f"newer than this gateway's {len(MIGRATIONS)}")
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in filter(str.strip, script.split(";")):
                    conn.execute(statement)
                log.info("store migrated to version=%d url=%s", number, redact_url(self.url))
            if row is None:
                conn.execute("INSERT INTO schema_version VALUES (?)", (len(MIGRATIONS),))
            else:
                conn.execute("UPDATE schema_version SET version = ?", (len(MIGRATIONS),))

        self._transact(work)

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()  # its session's advisory locks go with it
            self._all.clear()
        self._local = threading.local()

    # -- outbox claims ----------------------------------------------------------------------

    def _claims(self) -> _Claims:
        self._conn()
        claims: _Claims = self._local.claims
        return claims

    def claim(self, channel: str, limit: int, now: float) -> list[OutboxItem]:
        """Oldest first, none behind a waiting row of its usn, and no usn another gateway
        holds: the (channel, usn) lock is kept until its last claimed row is marked."""
        claims = self._claims()
        mine = {key for key, of in claims.channel.items() if of == channel}
        ready = ("FROM outbox o WHERE channel = ? AND status = ? AND next_attempt_at <= ? "
                 "AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.channel = o.channel "
                 "AND p.usn = o.usn AND p.status = ? AND p.id < o.id "
                 "AND p.next_attempt_at > ?)")
        args = (channel, PENDING, now, PENDING, now)
        keys = self._read(lambda c: c.execute(
            "SELECT hashtextextended(channel || ':' || usn, 0) AS key, min(id) "
            f"{ready} GROUP BY key ORDER BY min(id) LIMIT ?", (*args, limit)).fetchall())
        held = [key for key, _ in keys if key in mine or self._try_lock(key)]
        rows = []
        if held:  # read again under the locks: a row sent meanwhile is not pending any more
            rows = self._read(lambda c: c.execute(
                f"SELECT {OUTBOX_COLUMNS}, hashtextextended(channel || ':' || usn, 0) {ready} "
                "AND hashtextextended(channel || ':' || usn, 0) = ANY(?) ORDER BY id LIMIT ?",
                (*args, held, limit)).fetchall())
        for row_id in [r for r, key in claims.rows.items() if key in mine]:
            del claims.rows[row_id]
        counts: dict[int, int] = {}
        items = []
        for row in rows:
            *columns, key = row
            claims.rows[row[0]] = key
            counts[key] = counts.get(key, 0) + 1
            items.append(self._item(tuple(columns)))
        for key in mine | set(held):
            if counts.get(key):
                claims.open[key], claims.channel[key] = counts[key], channel
            else:  # nothing of it claimed now
                self._release(claims, key)
        return items

    def _try_lock(self, key: int) -> bool:
        return bool(self._read(lambda c: c.execute(
            "SELECT pg_try_advisory_lock(?)", (key,)).fetchone()[0]))

    def _release(self, claims: _Claims, key: int) -> None:
        claims.open.pop(key, None)
        claims.channel.pop(key, None)
        self._read(lambda c: c.execute("SELECT pg_advisory_unlock(?)", (key,)))

    def _settled(self, ids: Iterable[int]) -> None:
        """Rows marked sent or failed: unlock each subscription with none left claimed."""
        claims = self._claims()
        for item_id in ids:
            key = claims.rows.pop(item_id, None)
            if key is None:
                continue
            claims.open[key] -= 1
            if not claims.open[key]:
                self._release(claims, key)

    def mark_sent(self, ids: Sequence[int]) -> None:
        super().mark_sent(ids)
        self._settled(ids)

    def mark_failed(self, item_id: int, error: str, retry_at: float, dead: bool) -> None:
        super().mark_failed(item_id, error, retry_at, dead)
        self._settled([item_id])
