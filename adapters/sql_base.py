"""The Store port's SQL, shared by SQLite (adapters/sql_store.py) and PostgreSQL
(adapters/pg_store.py).

The statements are plain SQL with `?` placeholders; each store supplies its transactions
(`_transact`, `_read`), its migrations, and what only it needs (outbox claims, the lock that
serialises the writers of one subscription across processes).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar

from gateway.errors import KeyReusedError, clip
from gateway.jsontext import json_text
from gateway.ports import (
    BROKER,
    DEAD,
    DISCARD_NOTE,
    DISCARDED,
    FORWARD,
    PENDING,
    SENT,
    SUPPRESSED,
    Decide,
    Discarded,
    NewOutboxItem,
    OutboxItem,
    Replayed,
    SubscriptionRecord,
    SubscriptionSummary,
)

T = TypeVar("T")

_OUTBOX_INSERT = ("INSERT INTO outbox (channel, message_id, usn, kind, headers, body, status, "
                  "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
OUTBOX_COLUMNS = ("id, channel, message_id, usn, kind, headers, body, status, attempts, "
                  "last_error, created_at, updated_at")
_LETTER = "id, source, reason, headers, body, at, replayed_at, replay_outcome"
_DONE = (SENT, SUPPRESSED, DISCARDED)  # outbox statuses that retention may delete


_HISTORY_INSERT = ("INSERT INTO history (usn, at, source, event_id, vocabulary, previous, "
                   "state, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
_AUDITED = "id, usn, channel, kind, message_id"  # what an operator's entry says of an item


def _audit(conn: Connection, now: float, action: str, items: Sequence[Sequence[Any]],
           **more: str) -> None:
    """An operator's action on outbox items, in each one's subscription history (in the
    transaction of the action itself); an item of no subscription (usn "") has none."""
    conn.executemany(
        _HISTORY_INSERT,
        [(usn, now, "operator", None, None, None, None,
          json_text({"action": action, "outboxId": id_, "channel": channel, "kind": kind,
                      "messageId": message_id, **more}))
         for id_, usn, channel, kind, message_id in items if usn])


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """What the shared statements need of a DB-API connection (`?` placeholders)."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> Any: ...


def _write_one(conn: Connection, sql: str, parameters: Sequence[Any]) -> None:
    """One row written, through executemany: CPython 3.11's sqlite3 lets go of the GIL once
    less there than in execute (it skips lastrowid), and under load each release is a thread
    switch (adapters/sql_store.py, before _begin)."""
    conn.executemany(sql, (parameters,))


class _TransactionIds:
    """provisionRequestIds from the sequences table, inside the caller's transaction."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def next_provision_request_id(self) -> int:
        row = self.conn.execute(
            "INSERT INTO sequences (name, value) VALUES ('provisionRequestId', 1) "
            "ON CONFLICT (name) DO UPDATE SET value = sequences.value + 1 "
            "RETURNING value").fetchone()
        return int(row[0])


class SqlStoreBase:
    """The Store port over a SQL database; subclasses supply the transactions."""

    clock: Callable[[], float]

    def _transact(self, fn: Callable[[Connection], T]) -> T:
        """Run `fn` in a write transaction, committed before this returns."""
        raise NotImplementedError

    def _read(self, fn: Callable[[Connection], T]) -> T:
        raise NotImplementedError

    def _lock_usn(self, conn: Connection, usn: str) -> None:
        """Serialise the writers of one subscription (a no-op where writers are serial)."""

    def _state_in(self, vocabulary: str) -> tuple[str, str]:
        """SQL for a subscription's state in `vocabulary` (from its `states` JSON text), and
        its parameter."""
        raise NotImplementedError

    def claim(self, channel: str, limit: int, now: float) -> list[OutboxItem]:
        raise NotImplementedError

    def lock_for_serving(self) -> None:
        """Claim the store for one serving process where only one may relay from it (SQLite);
        a StoreError naming the holder if another has it. Several may share PostgreSQL."""

    def take_relay(self, channel: str) -> str | None:
        return None  # claims locked across processes (PostgreSQL): any number may relay

    def close(self) -> None:
        raise NotImplementedError

    def counts(self) -> dict[tuple[str, str], int]:
        rows = self._read(lambda c: c.execute(
            "SELECT channel, status, COUNT(*) FROM outbox GROUP BY channel, status").fetchall())
        return {(channel, status): n for channel, status, n in rows}

    def oldest_pending(self) -> dict[str, float]:
        # per channel, the first pending row by the (channel, status, id) index: ids grow
        # with time, so it is the oldest, found without a scan
        def read(c: Connection) -> dict[str, float]:
            found = {}
            for channel in (BROKER, FORWARD):
                row = c.execute("SELECT created_at FROM outbox WHERE channel = ? AND status = ? "
                                "ORDER BY id LIMIT 1", (channel, PENDING)).fetchone()
                if row is not None:
                    found[channel] = float(row[0])
            return found

        return self._read(read)

    def ping(self) -> None:
        self._read(lambda c: c.execute("SELECT 1").fetchone())

    def disk_free(self) -> int | None:
        return None  # a server's store: its disk is the server's to watch

    # -- subscriptions ----------------------------------------------------------------------

    def _current(self, conn: Connection, usn: str) -> SubscriptionRecord | None:
        """The subscription's row as a record, None if there is none."""
        row = conn.execute(
            "SELECT sid, snapshot, states, provision_request_id, feature_ids "
            "FROM subscriptions WHERE usn = ?", (usn,)).fetchone()
        if row is None:
            return None
        sid, snapshot, states, request, feature_ids = row
        return SubscriptionRecord(
            usn, sid, bytes(snapshot), json.loads(states), request,
            None if feature_ids is None else frozenset(json.loads(feature_ids)))

    def record(self, usn: str, dedupe_key: str | None, decide: Decide,
               fingerprint: str | None = None) -> tuple[dict[str, Any], bool]:
        def work(conn: Connection) -> tuple[dict[str, Any], bool]:
            self._lock_usn(conn, usn)  # before the dedupe key: a twin waits, then sees it
            if dedupe_key is not None:
                seen = conn.execute("SELECT response, fingerprint FROM dedupe WHERE key = ?",
                                    (dedupe_key,)).fetchone()
                if seen is not None:
                    if None not in (fingerprint, seen[1]) and seen[1] != fingerprint:
                        raise KeyReusedError(dedupe_key)
                    return json.loads(seen[0]), True
            current = self._current(conn, usn)
            decision = decide(current, _TransactionIds(conn))
            now = self.clock()
            new = decision.record
            if new is not None:
                _write_one(
                    conn,
                    "INSERT INTO subscriptions (usn, sid, snapshot, states, "
                    "provision_request_id, feature_ids, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (usn) DO UPDATE SET sid = excluded.sid, "
                    "snapshot = excluded.snapshot, states = excluded.states, "
                    "provision_request_id = excluded.provision_request_id, "
                    "feature_ids = excluded.feature_ids, updated_at = excluded.updated_at",
                    (new.usn, new.sid, new.snapshot, json_text(new.states),
                     new.provision_request_id,
                     None if new.feature_ids is None else json_text(sorted(new.feature_ids)),
                     now))
            if decision.history:
                conn.executemany(
                    _HISTORY_INSERT,
                    [(usn, now, entry.source, entry.event_id, entry.vocabulary, entry.previous,
                      entry.state, json_text(entry.detail)) for entry in decision.history])
            if decision.outbox:  # their ids are not needed here: no RETURNING, no fetch
                conn.executemany(_OUTBOX_INSERT,
                                 [self._outbox_row(item, now) for item in decision.outbox])
            if dedupe_key is not None:
                _write_one(conn, "INSERT INTO dedupe (key, response, at, fingerprint) "
                           "VALUES (?, ?, ?, ?)",
                           (dedupe_key, json_text(decision.response), now, fingerprint))
            return decision.response, False

        return self._transact(work)

    def subscription(self, usn: str) -> SubscriptionRecord | None:
        return self._read(lambda c: self._current(c, usn))

    def history(self, usn: str, limit: int = 100) -> list[dict[str, Any]]:
        rows = self._read(lambda c: c.execute(
            "SELECT at, source, event_id, vocabulary, previous, state, detail FROM history "
            "WHERE usn = ? ORDER BY id DESC LIMIT ?", (usn, limit)).fetchall())
        return [{"at": at, "source": source, "eventId": event_id, "vocabulary": vocabulary,
                 "from": previous, "to": state, "detail": json.loads(detail)}
                for at, source, event_id, vocabulary, previous, state, detail in reversed(rows)]

    # -- outbox -----------------------------------------------------------------------------

    def subscriptions(self, state: tuple[str, str] | None = None,
                      changed_before: float | None = None,
                      limit: int = 1000) -> list[SubscriptionSummary]:
        where: list[str] = []
        params: list[Any] = []
        if state is not None:
            sql, param = self._state_in(state[0])
            where.append(f"{sql} = ?")
            params += [param, state[1]]
        if changed_before is not None:
            where.append("updated_at < ?")
            params.append(changed_before)
        rows = self._read(lambda c: c.execute(
            "SELECT usn, sid, states, provision_request_id, updated_at FROM subscriptions"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY updated_at, usn LIMIT ?", (*params, limit)).fetchall())
        return [SubscriptionSummary(usn, int(sid), json.loads(states), request, float(at))
                for usn, sid, states, request, at in rows]

    @staticmethod
    def _outbox_row(item: NewOutboxItem, now: float) -> tuple[Any, ...]:
        return (item.channel, item.message_id, item.usn, item.kind, json_text(item.headers),
                item.body, item.status, now, now)

    def enqueue(self, items: Sequence[NewOutboxItem]) -> list[int]:
        def work(conn: Connection) -> list[int]:
            now = self.clock()
            return [int(conn.execute(_OUTBOX_INSERT + " RETURNING id",
                                     self._outbox_row(item, now)).fetchone()[0])
                    for item in items]

        return self._transact(work)

    @staticmethod
    def _item(row: tuple[Any, ...]) -> OutboxItem:
        (id_, channel, message_id, usn, kind, headers, body, status, attempts, last_error,
         created_at, updated_at) = row
        return OutboxItem(id_, channel, message_id, usn, kind, json.loads(headers), bytes(body),
                          status, attempts, last_error, created_at, updated_at)

    def mark_sent(self, ids: Sequence[int]) -> None:
        if not ids:
            return
        def work(conn: Connection) -> None:
            conn.executemany(
                "UPDATE outbox SET status = ?, attempts = attempts + 1, last_error = NULL, "
                "updated_at = ? WHERE id = ? AND status = ?",
                [(SENT, self.clock(), i, PENDING) for i in ids])

        return self._transact(work)

    def mark_failed(self, item_id: int, error: str, retry_at: float, dead: bool) -> None:
        def work(conn: Connection) -> None:
            conn.execute(
                "UPDATE outbox SET status = ?, attempts = attempts + 1, last_error = ?, "
                "next_attempt_at = ?, updated_at = ? WHERE id = ? AND status = ?",
                (DEAD if dead else PENDING, clip(error, 500), retry_at, self.clock(),
                 item_id, PENDING))

        return self._transact(work)

    def outbox(self, status: str | None = None, limit: int = 1000, usn: str | None = None,
               channel: str | None = None) -> list[OutboxItem]:
        where: list[str] = []
        params: list[Any] = []
        if usn is not None:  # by the (channel, usn, status, id) index, a channel or both
            channels = (channel,) if channel is not None else (BROKER, FORWARD)
            where.append(f"channel IN ({', '.join('?' * len(channels))}) AND usn = ?")
            params += [*channels, usn]
        elif channel is not None:
            where.append("channel = ?")
            params.append(channel)
        if status is not None:
            where.append("status = ?")
            params.append(status)
        sql = (f"SELECT {OUTBOX_COLUMNS} FROM outbox "
               + (f"WHERE {' AND '.join(where)} " if where else "") + "ORDER BY id DESC LIMIT ?")
        rows = self._read(lambda c: c.execute(sql, (*params, limit)).fetchall())
        return [self._item(r) for r in reversed(rows)]

    def outbox_item(self, item_id: int) -> OutboxItem | None:
        row = self._read(lambda c: c.execute(
            f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE id = ?", (item_id,)).fetchone())
        return None if row is None else self._item(row)

    def outbox_by_message_ids(self, message_ids: Sequence[str]) -> list[OutboxItem]:
        out: list[OutboxItem] = []
        for start in range(0, len(message_ids), 500):
            part = list(message_ids[start:start + 500])
            query = (f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE message_id IN "
                     f"({','.join('?' * len(part))})")

            def fetch(c: Connection, q: str = query,
                      p: list[str] = part) -> list[tuple[Any, ...]]:
                return c.execute(q, p).fetchall()

            out += [self._item(r) for r in self._read(fetch)]
        return out

    def replay(self, ids: Sequence[int] | None = None) -> Replayed:
        def work(conn: Connection) -> Replayed:
            now = self.clock()
            if ids is None:
                done = conn.execute(
                    "UPDATE outbox SET status = ?, attempts = 0, next_attempt_at = 0, "
                    f"updated_at = ? WHERE status = ? RETURNING {_AUDITED}",
                    (PENDING, now, DEAD)).fetchall()
                _audit(conn, now, "outbox replay", done)
                return Replayed(len(done))
            count, pending, unknown = 0, [], []
            for item_id in dict.fromkeys(ids):  # each once, in the order given
                done = conn.execute(
                    "UPDATE outbox SET status = ?, attempts = 0, next_attempt_at = 0, "
                    f"updated_at = ? WHERE id = ? AND status != ? RETURNING {_AUDITED}",
                    (PENDING, now, item_id, PENDING)).fetchall()
                if done:
                    count += 1
                    _audit(conn, now, "outbox replay", done)
                elif conn.execute("SELECT 1 FROM outbox WHERE id = ?", (item_id,)).fetchone():
                    pending.append(item_id)
                else:
                    unknown.append(item_id)
            return Replayed(count, tuple(pending), tuple(unknown))

        return self._transact(work)

    def discard(self, ids: Sequence[int], reason: str) -> Discarded:
        def work(conn: Connection) -> Discarded:
            now = self.clock()
            count, not_dead, unknown = 0, [], []
            for item_id in dict.fromkeys(ids):  # each once, in the order given
                done = conn.execute(  # the reason first, then the error that made it dead
                    "UPDATE outbox SET status = ?, updated_at = ?, last_error = "
                    "SUBSTR(? || COALESCE('; ' || last_error, ''), 1, 1000) "
                    f"WHERE id = ? AND status = ? RETURNING {_AUDITED}",
                    (DISCARDED, now, DISCARD_NOTE + reason, item_id, DEAD)).fetchall()
                if done:
                    count += 1
                    _audit(conn, now, "outbox discard", done, reason=reason)
                    continue
                row = conn.execute("SELECT status FROM outbox WHERE id = ?",
                                   (item_id,)).fetchone()
                if row is None:
                    unknown.append(item_id)
                else:
                    not_dead.append((item_id, str(row[0])))
            return Discarded(count, tuple(not_dead), tuple(unknown))

        return self._transact(work)

    def prune(self, before: float, batch: int = 1000) -> dict[str, int]:
        # The outbox is walked by id, oldest first, a batch per transaction; the walk ends at
        # the first item created after `before`, as none later can have been done before it.
        # So a run reads what it deletes and the few old items still pending or dead.
        outbox = 0
        after = 0
        while True:
            def sweep(conn: Connection, after: int = after) -> tuple[list[Any], int]:
                rows = conn.execute(
                    "SELECT id, status, updated_at, created_at FROM outbox WHERE id > ? "
                    "ORDER BY id LIMIT ?", (after, batch)).fetchall()
                done = [(id_, *_DONE, before) for id_, status, updated, _ in rows
                        if status in _DONE and updated < before]
                if done:  # the status again: a replay may have re-queued one meanwhile
                    conn.executemany("DELETE FROM outbox WHERE id = ? AND status IN (?, ?, ?) "
                                     "AND updated_at < ?", done)
                return rows, len(done)

            rows, deleted = self._transact(sweep)
            outbox += deleted
            if len(rows) < batch or rows[-1][3] >= before:
                break
            after = int(rows[-1][0])
        dedupe = self._delete_in_batches(
            "DELETE FROM dedupe WHERE key IN (SELECT key FROM dedupe WHERE at < ? "
            "ORDER BY at LIMIT ?)", before, batch)
        letters = self._delete_in_batches(  # settled ones: an outstanding one waits for replay
            "DELETE FROM dead_letters WHERE id IN (SELECT id FROM dead_letters "
            "WHERE replayed_at < ? ORDER BY id LIMIT ?)", before, batch)
        return {"outbox": outbox, "dedupe": dedupe, "dead_letters": letters}

    def _delete_in_batches(self, sql: str, before: float, batch: int) -> int:
        """Run a DELETE of at most `batch` rows older than `before`, a transaction each time,
        until one deletes fewer; how many it deleted in all."""
        total = 0
        while True:
            deleted = int(self._transact(
                lambda conn: conn.execute(sql, (before, batch)).rowcount))
            total += deleted
            if deleted < batch:
                return total

    # -- dead letters (inbound documents that cannot be accepted) ---------------------------

    def add_dead_letter(self, source: str, reason: str, headers: dict[str, str],
                        body: bytes) -> int:
        def work(conn: Connection) -> int:
            row = conn.execute(
                "INSERT INTO dead_letters (source, reason, headers, body, at) "
                "VALUES (?, ?, ?, ?, ?) RETURNING id",
                (source, clip(reason, 2000), json_text(headers), body, self.clock())).fetchone()
            return int(row[0])

        return self._transact(work)

    def dead_letters(self, limit: int = 100, outstanding: bool = False) -> list[dict[str, Any]]:
        which = "WHERE replayed_at IS NULL " if outstanding else ""
        rows = self._read(lambda c: c.execute(
            f"SELECT {_LETTER} FROM dead_letters {which}ORDER BY id DESC LIMIT ?",
            (limit,)).fetchall())
        return [self._letter(row) for row in reversed(rows)]

    def dead_letter(self, letter_id: int) -> dict[str, Any] | None:
        row = self._read(lambda c: c.execute(
            f"SELECT {_LETTER} FROM dead_letters WHERE id = ?", (letter_id,)).fetchone())
        return None if row is None else self._letter(row)

    def outstanding_dead_letters(self) -> list[int]:
        rows = self._read(lambda c: c.execute(
            "SELECT id FROM dead_letters WHERE replayed_at IS NULL ORDER BY id").fetchall())
        return [int(row[0]) for row in rows]

    def mark_dead_letter_replayed(self, letter_id: int, outcome: str) -> None:
        self._transact(lambda conn: conn.execute(
            "UPDATE dead_letters SET replayed_at = ?, replay_outcome = ? WHERE id = ?",
            (self.clock(), outcome, letter_id)))

    def discard_dead_letter(self, letter_id: int, reason: str) -> bool:
        return bool(self._transact(lambda conn: conn.execute(
            "UPDATE dead_letters SET replayed_at = ?, replay_outcome = ? "
            "WHERE id = ? AND replayed_at IS NULL",
            (self.clock(), clip(DISCARD_NOTE + reason, 2000), letter_id)).rowcount))

    def dead_letter_counts(self) -> dict[str, tuple[int, int]]:
        rows = self._read(lambda c: c.execute(
            "SELECT source, COUNT(*), COUNT(*) - COUNT(replayed_at) FROM dead_letters "
            "GROUP BY source").fetchall())
        return {source: (int(kept), int(outstanding)) for source, kept, outstanding in rows}

    @staticmethod
    def _letter(row: tuple[Any, ...]) -> dict[str, Any]:
        id_, source, reason, headers, body, at, replayed_at, outcome = row
        return {"id": id_, "source": source, "reason": reason, "headers": json.loads(headers),
                "body": bytes(body), "at": at,
                "replayed": None if replayed_at is None else {"at": replayed_at,
                                                              "outcome": outcome}}
