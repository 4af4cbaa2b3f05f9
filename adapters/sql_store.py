"""SqlStore: the gateway's durable state in SQLite (WAL, versioned migrations).

Reads use one connection per thread (the web server's, the relay's and the consumer's own).
Writes go through one writer connection, one piece at a time, in `BEGIN IMMEDIATE`
transactions shared by the writers that arrive together (group commit), so a decision and its
outbox rows commit together and concurrent writers share an fsync. The statements are
SqlStoreBase's (adapters/sql_base.py), shared with the PostgreSQL store.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, TypeVar
from urllib.parse import quote

from adapters.sql_base import OUTBOX_COLUMNS, Connection, SqlStoreBase
from gateway.errors import ConfigError, StoreError, UsageError
from gateway.ports import PENDING, OutboxItem, SubscriptionRecord

log = logging.getLogger(__name__)
T = TypeVar("T")

MIGRATIONS: tuple[str, ...] = (
    # 1: the first schema
    """
    CREATE TABLE subscriptions (
        usn TEXT PRIMARY KEY,
        sid INTEGER NOT NULL,
        snapshot BLOB NOT NULL,
        states TEXT NOT NULL,
        provision_request_id INTEGER,
        updated_at REAL NOT NULL
    );
    CREATE TABLE history (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        usn TEXT NOT NULL,
        at REAL NOT NULL,
        source TEXT NOT NULL,
        event_id TEXT,
        vocabulary TEXT,
        previous TEXT,
        state TEXT,
        detail TEXT NOT NULL
    );
    CREATE INDEX history_by_usn ON history (usn, id);
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        channel TEXT NOT NULL,
        message_id TEXT NOT NULL UNIQUE,
        usn TEXT NOT NULL,
        kind TEXT NOT NULL,
        headers TEXT NOT NULL,
        body BLOB NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        next_attempt_at REAL NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX outbox_ready ON outbox (channel, status, id);
    CREATE INDEX outbox_by_usn ON outbox (channel, usn, status, id);
    CREATE TABLE dedupe (
        key TEXT PRIMARY KEY,
        response TEXT NOT NULL,
        at REAL NOT NULL
    );
    CREATE TABLE dead_letters (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        source TEXT NOT NULL,
        reason TEXT NOT NULL,
        headers TEXT NOT NULL,
        body BLOB NOT NULL,
        at REAL NOT NULL
    );
    CREATE TABLE sequences (
        name TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    );
    """,
    # 2: the snapshot's FeatureIds beside it (a JSON array), so a diff needs no XML parse;
    # NULL for rows written before: read from the snapshot then.
    """
    ALTER TABLE subscriptions ADD COLUMN feature_ids TEXT;
    """,
    # 3: history ids without AUTOINCREMENT, which kept a counter row in sqlite_sequence up to
    # date on every insert (13 -> 5 us an insert). History rows are never deleted, so the
    # largest id plus one, SQLite's choice without it, never reuses an id.
    """
    CREATE TABLE history_new (
        id INTEGER PRIMARY KEY,
        usn TEXT NOT NULL,
        at REAL NOT NULL,
        source TEXT NOT NULL,
        event_id TEXT,
        vocabulary TEXT,
        previous TEXT,
        state TEXT,
        detail TEXT NOT NULL
    );
    INSERT INTO history_new (id, usn, at, source, event_id, vocabulary, previous, state, detail)
        SELECT id, usn, at, source, event_id, vocabulary, previous, state, detail FROM history;
    DROP TABLE history;
    ALTER TABLE history_new RENAME TO history;
    CREATE INDEX history_by_usn ON history (usn, id);
    DELETE FROM sqlite_sequence WHERE name = 'history';
    """,
    # 4: dedupe keys by age, for pruning them in batches (Store.prune)
    """
    CREATE INDEX dedupe_by_age ON dedupe (at);
    """,
    # 5: what each dedupe key's request was, to refuse the key's reuse for another one
    """
    ALTER TABLE dedupe ADD COLUMN fingerprint TEXT;
    """,
    # 6: when a dead letter was replayed and what came of it (`dead-letters replay`); the
    # letter itself is kept as it came
    """
    ALTER TABLE dead_letters ADD COLUMN replayed_at REAL;
    ALTER TABLE dead_letters ADD COLUMN replay_outcome TEXT;
    """,
)

# What /readyz asks to be free on the disk of a SQLite store: a commit appends a few pages
# to the WAL (and a checkpoint copies them back), so below this the next writes fail.
MIN_FREE_BYTES = 4 * 1024 * 1024


# Filesystems where SQLite's write-ahead log is not safe: its locks and the shared-memory
# index every connection maps (the -shm file) hold among the processes of one host on a
# local disk only (sqlite.org/wal.html).
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "lustre", "gpfs",
    "afs", "fuse.sshfs", "fuse.glusterfs", "fuse.s3fs", "fuse.rclone"})
MOUNT_TABLE = "/proc/self/mounts"


def filesystem_type(path: str, mounts: str) -> str | None:
    """The type of the filesystem holding `path`, from the text of a mount table: the entry
    whose mount point is the deepest above it (the later one of two at the same point)."""
    target = os.path.realpath(path)
    deepest, kind = -1, None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1])
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= deepest:
            deepest, kind = len(point), fields[2]
    return kind


def store_advisories(url: str, mount_table: str | None = None) -> list[str]:
    """What is at risk in where the SQLite store at `url` lies: a network filesystem (by
    `mount_table`, this process's own by default)."""
    path = sqlite_path(url)
    if path == ":memory:":
        return []
    try:
        with open(mount_table or MOUNT_TABLE, encoding="utf-8", errors="replace") as table:
            mounts = table.read()
    except OSError:  # no such table (not Linux): nothing to say
        return []
    folder = Path(path).resolve().parent
    while not folder.exists() and folder != folder.parent:  # not made yet: where it will be
        folder = folder.parent
    kind = filesystem_type(str(folder), mounts)
    if kind not in NETWORK_FILESYSTEMS:
        return []
    return [f"store.url {path} is on a network filesystem ({kind}): SQLite's write-ahead log, "
            "which the store uses, holds its locks and shared memory among the processes of "
            "one host on a local disk only, and on a network filesystem the store can be "
            "corrupted: put the store on a local disk, or share a PostgreSQL store"]


def sqlite_path(url: str) -> str:
    """`sqlite:///var/gateway.db` (relative to the working directory), `sqlite:////abs/path`,
    or `sqlite:///:memory:`."""
    if not url.startswith("sqlite:///"):
        raise ConfigError("store.url", f"not a SQLite URL: {url!r}", ("sqlite:///PATH",))
    return url[len("sqlite:///"):]


_MAX_BATCH = 64  # pieces in one group commit, so that a steady stream still commits

# CPython 3.11's sqlite3 lets go of the GIL around each small C call it makes: five times in
# an `execute`, and in a `fetchone` once per column plus twice. While the web server's other
# threads want the GIL, each release hands it to one of them and costs this thread a switch
# to get it back (measured: ten more releases per request, as time.sleep(0), took 13-20 %
# off the webhook's throughput). So transactions begin and end in one release each: BEGIN through
# `executescript`, COMMIT and ROLLBACK through the connection's own `commit` and `rollback`
# (which are no-ops outside a transaction); and the hot reads fetch few columns.


def _begin(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:  # executescript would commit it first
        raise sqlite3.OperationalError("cannot start a transaction within a transaction")
    conn.executescript("BEGIN IMMEDIATE")


class _Job:
    """One caller's piece of a group commit. Its caller waits on `waiter` until the piece is
    done, or until it is handed the lead (`lead`) and runs the waiting pieces itself."""

    __slots__ = ("done", "error", "fn", "lead", "result", "waiter")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any]) -> None:
        self.fn = fn
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = False
        self.lead = False
        self.waiter = threading.Lock()
        self.waiter.acquire()

    def finish(self, error: BaseException | None = None) -> None:
        if error is not None:
            self.result, self.error = None, error
        self.done = True
        self.waiter.release()

    def wait(self) -> None:
        if not self.done:
            self.waiter.acquire()


class SqlStore(SqlStoreBase):
    """The Store port on SQLite."""

    def __init__(self, url: str, clock: Callable[[], float] = time.time,
                 busy_timeout_ms: int = 10_000, min_free_bytes: int = MIN_FREE_BYTES) -> None:
        self.url = url
        self.path = sqlite_path(url)
        self.clock = clock
        self.busy_timeout_ms = busy_timeout_ms
        self.min_free_bytes = min_free_bytes
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._queue_lock = threading.Lock()
        self._queue: list[_Job] = []  # pieces waiting for the leader
        self._leading = False  # a leader owns _writer and _open (under _queue_lock)
        self._open: list[_Job] = []  # run in the open transaction, not yet committed
        self._writer: sqlite3.Connection | None = None
        self._held: dict[str, TextIO] = {}  # the flocks held (serve, relays): their files
        self._identity: tuple[int, int] | None = None  # the file opened: (device, inode)
        if self.path != ":memory:":
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create the folder of {self.path}: {exc}") from exc
        self._migrate()
        if self.path != ":memory:":
            opened = os.stat(self.path)
            self._identity = (opened.st_dev, opened.st_ino)

    # -- plumbing ---------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self.path == ":memory:":  # a database per connection: all share the writer's
            return self._writer_conn()
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def _writer_conn(self) -> sqlite3.Connection:
        if self._writer is None:
            self._writer = self._connect()
        return self._writer

    def _connect(self) -> sqlite3.Connection:
        # once the store is open, a new connection opens that file and never makes one: an
        # empty one made where the store was removed would take the stale WAL beside it
        target, uri = self.path, False
        if self._identity is not None:
            target, uri = f"file:{quote(os.path.abspath(self.path))}?mode=rw", True
        try:
            conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False,
                                   timeout=self.busy_timeout_ms / 1000, uri=uri)
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            conn.execute("PRAGMA journal_mode = WAL")
            # FULL: a commit is on disk before the gateway answers 202 or acks a message,
            # so an accepted input survives a power loss too, not only a process crash.
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as exc:
            self._same_file()  # the plainer reason, when it is that
            raise StoreError(f"cannot open the store {self.url}: {exc}") from exc
        with self._lock:
            self._all.append(conn)
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        try:
            _begin(conn)
        except sqlite3.Error as exc:
            raise StoreError(f"store unavailable: {exc}") from exc
        try:
            yield conn
            self._same_file()
        except BaseException:
            conn.rollback()
            raise
        try:
            conn.commit()
        except sqlite3.Error as exc:
            conn.rollback()
            raise StoreError(f"commit failed: {exc}") from exc

    def _transact(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` in a write transaction, committed before this returns.

        Group commit by a leader: a writer queues its piece; if no writer is leading it leads,
        else it sleeps until its piece is committed or it is handed the lead. The leader runs
        the queued pieces one after another in one transaction on the writer connection,
        takes in those that arrive meanwhile, commits them all (one fsync with
        synchronous=FULL), wakes their writers, and hands the lead to the first of those who
        queued during the commit. A writer sleeps at most once and wakes only to return or to
        lead: no thread waits in SQLite's busy handler, none wakes to find its work done.
        """
        job = _Job(fn)
        with self._queue_lock:
            self._queue.append(job)
            job.lead = not self._leading
            self._leading = True
        if not job.lead:
            job.wait()  # done, or handed the lead
        if not job.done:
            self._lead()
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[no-any-return]

    def _lead(self) -> None:
        """Run and commit the queued pieces, up to _MAX_BATCH in one transaction, then hand
        the lead on (or give it up when nobody is waiting)."""
        try:
            while True:
                with self._queue_lock:
                    room = _MAX_BATCH - len(self._open)
                    taken, self._queue[:room] = self._queue[:room], []
                if not taken:
                    break
                for index, job in enumerate(taken):
                    try:
                        self._run_open(job)
                    except BaseException:  # e.g. KeyboardInterrupt: no piece is left waiting
                        for rest in taken[index + 1:]:
                            rest.finish(StoreError("commit interrupted"))
                        raise
                if len(self._open) >= _MAX_BATCH:
                    break
            if self._open:
                self._commit_open()
        finally:
            with self._queue_lock:
                if self._queue:
                    following = self._queue[0]
                    following.lead = True
                    following.waiter.release()  # it leads from here
                else:
                    self._leading = False

    def _run_open(self, job: _Job) -> None:
        """The leader's: run `job` in the open transaction, beginning one if none is."""
        conn = self._writer_conn()
        if not self._open:
            try:
                _begin(conn)
            except sqlite3.Error as exc:
                job.finish(StoreError(f"store unavailable: {exc}"))
                return
        changes = conn.total_changes
        try:
            job.result = job.fn(conn)
        except Exception as exc:
            error = StoreError(f"store write failed: {exc}") if isinstance(
                exc, sqlite3.Error) else exc
            if conn.total_changes == changes:  # nothing written: leave it out
                job.finish(error)
                if not self._open:
                    with suppress(sqlite3.Error):
                        conn.rollback()
                return
            # it wrote before failing, and a transaction cannot be undone in part: roll back
            # and run the pieces before it again, each in a savepoint (the rare path, so the
            # common one pays for no savepoints)
            with suppress(sqlite3.Error):
                conn.rollback()
            batch, self._open = self._open, []
            if batch:
                self._rerun(conn, batch)
            job.finish(error)
            return
        except BaseException:
            with suppress(sqlite3.Error):
                conn.rollback()
            for piece in [*self._open, job]:  # finished here: their callers wait for them
                piece.finish(StoreError("commit interrupted"))
            self._open = []
            raise
        self._open.append(job)

    def _same_file(self) -> None:
        """The file at the store's path is still the one opened. SQLite goes on writing to
        the file it has open: after an `rm`, or a `mv` of another file onto the path (a
        restore by hand while serving), a commit would go where nobody reads again."""
        if self._identity is None:
            return
        try:
            found = os.stat(self.path)
        except FileNotFoundError:
            how = "removed"
        except OSError as exc:
            raise StoreError(f"store unavailable: {exc.strerror or exc}") from exc
        else:
            if (found.st_dev, found.st_ino) == self._identity:
                return
            how = "replaced"
        raise StoreError(f"the store file {self.path} was {how} while in use: nothing more "
                         "is committed to it; stop the gateway, put the store back "
                         "(`smile-gateway restore`), and start it again")

    def _commit_open(self) -> None:
        assert self._writer is not None
        conn = self._writer
        batch, self._open = self._open, []
        error: BaseException | None = StoreError("commit interrupted")
        try:
            self._same_file()
            conn.commit()
            error = None
        except (sqlite3.Error, StoreError) as exc:
            with suppress(sqlite3.Error):
                conn.rollback()
            error = exc if isinstance(exc, StoreError) else StoreError(f"commit failed: {exc}")
        finally:  # whatever happened, the waiting callers are told
            for piece in batch:
                piece.finish(error)

    def _rerun(self, conn: sqlite3.Connection, batch: list[_Job]) -> None:
        """Run `batch` again in a new transaction, a savepoint around each piece, commit,
        and finish every piece."""
        try:
            _begin(conn)
            for job in batch:
                job.result, job.error = None, None
                conn.execute("SAVEPOINT job")
                try:
                    job.result = job.fn(conn)
                except Exception as exc:
                    job.error = (StoreError(f"store write failed: {exc}")
                                 if isinstance(exc, sqlite3.Error) else exc)
                    conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
            self._same_file()
            conn.commit()
        except (sqlite3.Error, StoreError) as exc:
            with suppress(sqlite3.Error):
                conn.rollback()
            refused = exc if isinstance(exc, StoreError) else StoreError(f"commit failed: {exc}")
            for job in batch:
                job.result, job.error = None, refused
        except BaseException:
            with suppress(sqlite3.Error):
                conn.rollback()
            for job in batch:  # finished here: their callers wait for them
                job.finish(StoreError("commit interrupted"))
            raise
        for job in batch:
            job.finish(job.error)

    def _current(self, conn: Connection, usn: str) -> SubscriptionRecord | None:
        # two columns, not five (see _begin): the snapshot, and the rest as one JSON array
        row = conn.execute(
            "SELECT snapshot, json_array(sid, json(states), provision_request_id, "
            "json(feature_ids)) FROM subscriptions WHERE usn = ?", (usn,)).fetchone()
        if row is None:
            return None
        sid, states, request, feature_ids = json.loads(row[1])
        return SubscriptionRecord(usn, sid, bytes(row[0]), states, request,
                                  None if feature_ids is None else frozenset(feature_ids))

    def _state_in(self, vocabulary: str) -> tuple[str, str]:
        return "json_extract(states, ?)", f'$."{vocabulary}"'  # a mapping's vocabulary name

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return fn(self._conn())
        except sqlite3.Error as exc:
            raise StoreError(f"store unavailable: {exc}") from exc

    def _migrate(self) -> None:
        try:
            self._conn().execute("SELECT json_array(1)")
        except sqlite3.Error as exc:
            raise StoreError(f"the store needs SQLite with its JSON functions (3.38 or later, "
                             f"or built with JSON1); this one is {sqlite3.sqlite_version}: "
                             f"{exc}") from exc
        try:
            with self._write() as conn:
                conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER)")
                row = conn.execute("SELECT version FROM schema_version").fetchone()
                version = row[0] if row else 0
                if version > len(MIGRATIONS):
                    raise StoreError(f"the store {self.url} has schema version {version}, "
                                     f"newer than this gateway's {len(MIGRATIONS)}")
                for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                    for statement in filter(str.strip, script.split(";")):
                        conn.execute(statement)
                    log.info("store migrated to version=%d url=%s", number, self.url)
                if row is None:
                    conn.execute("INSERT INTO schema_version VALUES (?)", (len(MIGRATIONS),))
                else:
                    conn.execute("UPDATE schema_version SET version = ?", (len(MIGRATIONS),))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot prepare the store {self.url}: {exc}") from exc

    def ping(self) -> None:
        """Reads work on a full disk while every commit fails: readiness also asks the
        disk for room (what is free to this process, as a write would find it)."""
        super().ping()
        self._same_file()
        free = self.disk_free()
        if free is not None and free < self.min_free_bytes:
            raise StoreError(f"{free // 1024} KiB free on the store's disk ({self.path}), "
                             f"under the {self.min_free_bytes // 1024} KiB readiness asks for: "
                             "commits fail once it is full")

    def disk_free(self) -> int | None:
        if self.path == ":memory:":
            return None
        try:
            disk = os.statvfs(Path(self.path).resolve().parent)
        except OSError as exc:
            raise StoreError(f"store unavailable: {exc}") from exc
        return disk.f_bavail * disk.f_frsize

    def lock_for_serving(self) -> None:
        # Two processes relaying from one SQLite file would both claim a subscription's rows
        # and could send them out of order: its claims are not locked across processes, as
        # PostgreSQL's are. An flock on a file beside the database, held while this store is
        # open, lets one `serve` at a time have it (the kernel frees it if the process dies).
        if self.path == ":memory:" or "serve" in self._held:
            return
        holder = self._flock("serve", f"{self.path}.serve-lock")
        if holder is not None:
            raise StoreError(
                f"the store {self.url} is already served by {holder}: one `smile-gateway "
                "serve` serves a SQLite store (several share a PostgreSQL one)")

    def take_relay(self, channel: str) -> str | None:
        # The same reason as the serve lock, for `publish` beside `serve`: one process at a
        # time relays a channel's rows from this file; the others wait for it.
        name = f"{channel}-relay"
        if self.path == ":memory:" or name in self._held:
            return None
        return self._flock(name, f"{self.path}.{name}-lock")

    def _flock(self, name: str, lock_path: str) -> str | None:
        """Hold an exclusive flock on `lock_path` until close, as `name`: None once held,
        else who holds it ("pid N", written into the file by its holder)."""
        handle, holder = _take_flock(lock_path)
        if handle is not None:
            self._held[name] = handle
        return holder

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()
        self._writer = None
        for handle in self._held.values():
            handle.close()  # and with it the lock
        self._held.clear()

    def claim(self, channel: str, limit: int, now: float) -> list[OutboxItem]:
        # Oldest first; an item waits while an older pending item of its subscription is
        # backing off, so that per-subscription order holds across retries.
        rows = self._read(lambda c: c.execute(
            f"SELECT {OUTBOX_COLUMNS} FROM outbox o WHERE channel = ? AND status = ? "
            "AND next_attempt_at <= ? AND NOT EXISTS (SELECT 1 FROM outbox p "
            "WHERE p.channel = o.channel AND p.usn = o.usn AND p.status = ? AND p.id < o.id "
            "AND p.next_attempt_at > ?) ORDER BY id LIMIT ?",
            (channel, PENDING, now, PENDING, now, limit)).fetchall())
        return [self._item(r) for r in rows]


def _take_flock(lock_path: str) -> tuple[TextIO | None, str | None]:
    """An exclusive flock on `lock_path`: (its file, held until closed, None), or (None, who
    holds it: "pid N", written into the file by its holder)."""
    try:
        handle = open(lock_path, "a+")  # noqa: SIM115 (held until close)
    except OSError as exc:
        raise StoreError(f"cannot open {lock_path}: {exc.strerror or exc}") from exc
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        return None, holder
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()
    return handle, None


@dataclass(frozen=True)
class Backup:
    """A copy `backup` wrote: where, how large, and the store schema version it holds."""

    source: str
    dest: str
    size: int
    schema_version: int


def backup(url: str, dest: str, busy_timeout_ms: int = 10_000) -> Backup:
    """Copy the SQLite store at `url` to the file `dest`, consistent while it is served.

    SQLite's online backup in one step reads one snapshot of the store in one read
    transaction: in WAL mode the writers go on meanwhile, and the copy holds whole
    transactions only (copying the file, or the backup page by page while others commit,
    does not). The source is opened read-only, so an older store is copied as it is, not
    migrated. The copy is written beside `dest`, made a rollback-journal database (one
    file, no WAL beside it), checked with `PRAGMA integrity_check`, synced, and renamed onto
    `dest`: a copy that exists is whole, and one there before is replaced at once.
    """
    source = sqlite_path(url)
    if not Path(source).is_file():
        raise UsageError(f"no store at {source} (store.url {url}): nothing to back up")
    target = Path(dest)
    if target.is_dir():
        raise UsageError(f"{dest} is a folder: name the file to write")
    if not target.parent.is_dir():
        raise UsageError(f"no folder {target.parent} to write {target.name} in")
    if target.exists() and target.samefile(source):
        raise UsageError(f"{dest} is the store itself: name another file")
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        raise StoreError(f"cannot write {partial}: {exc.strerror or exc}") from exc
    try:
        version = _copy(source, str(partial), busy_timeout_ms)
        with open(partial, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, target)
        _sync_folder(target.parent)
    except BaseException as exc:
        with suppress(OSError):
            os.unlink(partial)
        if isinstance(exc, sqlite3.Error | OSError):
            raise StoreError(f"cannot back up {source} to {dest}: "
                             f"{getattr(exc, 'strerror', None) or exc}") from exc
        raise
    return Backup(source, dest, target.stat().st_size, version)


@dataclass(frozen=True)
class Restored:
    """A backup `restore` put in place: from where, to where, the store schema version it
    holds, and where the store it replaced is kept (None: there was none)."""

    source: str
    store: str
    schema_version: int
    kept: str | None


_SIDE_FILES = ("-wal", "-shm")  # SQLite's, named after the database file


def restore(url: str, source: str, busy_timeout_ms: int = 10_000) -> Restored:
    """Put the backup `source` in place as the SQLite store at `url`, while no `serve` or
    `publish` holds the store (their locks are held meanwhile).

    The backup is copied with SQLite's online backup beside the store and checked as
    `backup` checks a copy (integrity, a gateway store, a schema this gateway knows), then
    synced. The store it replaces is renamed aside with its WAL and shared-memory files
    (`<store>.before-restore-<UTC time>`, `-wal`, `-shm`): a WAL left by a crash belongs to
    that file, and SQLite would replay it into the backup if it stayed under the store's
    name. Then the copy is renamed onto the store's name.
    """
    store = sqlite_path(url)
    given = Path(source)
    if not given.is_file():
        raise UsageError(f"no file {source} to restore from")
    if Path(store).exists() and given.samefile(store):
        raise UsageError(f"{source} is the store itself: name a backup")
    try:  # a new machine's: the store's folder made as serve would make it
        Path(store).parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create the folder of {store}: {exc}") from exc
    held: list[TextIO] = []
    partial = Path(store).with_name(f".{Path(store).name}.{os.getpid()}.partial")
    try:
        for name in ("serve", "broker-relay", "forward-relay"):
            handle, holder = _take_flock(f"{store}.{name}-lock")
            if handle is None:
                what = "served" if name == "serve" else f"used by a {name}"
                raise StoreError(f"the store {store} is {what} by {holder}: stop it first")
            held.append(handle)
        try:
            os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            version = _copy(source, str(partial), busy_timeout_ms)
            if version > len(MIGRATIONS):
                raise StoreError(f"{source} has store schema version {version}, newer than "
                                 f"this gateway's {len(MIGRATIONS)}: restore it with the "
                                 "gateway that wrote it")
            _own_as(partial, store)
            with open(partial, "rb") as written:
                os.fsync(written.fileno())
            kept = None
            if Path(store).exists():
                stamp = time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime())
                kept = f"{store}.before-restore-{stamp}"
                n = 1
                while any(Path(kept + suffix).exists() for suffix in ("", *_SIDE_FILES)):
                    n += 1  # a second restore within the second keeps the first's too
                    kept = f"{store}.before-restore-{stamp}-{n}"
                for suffix in _SIDE_FILES:  # the side files first: never a store without
                    if Path(store + suffix).exists():  # them under the store's name
                        os.replace(store + suffix, kept + suffix)
                os.replace(store, kept)
            os.replace(partial, store)
            _sync_folder(Path(store).parent)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot restore {source} to {store}: "
                             f"{getattr(exc, 'strerror', None) or exc}") from exc
    finally:
        with suppress(OSError):
            partial.unlink()
        for handle in held:
            handle.close()
    return Restored(source, store, version, kept)


def _own_as(path: Path, store: str) -> None:
    """Give `path` the owner and group of the store it will replace, or of the store's folder
    when there is none: restored as root, the gateway's own user must still open it. As
    another user, whose files are its own, there is nothing to change."""
    model = os.stat(store if Path(store).exists() else Path(store).parent)
    mine = os.stat(path)
    if (mine.st_uid, mine.st_gid) != (model.st_uid, model.st_gid) and os.geteuid() == 0:
        os.chown(path, model.st_uid, model.st_gid)


def _sync_folder(folder: Path) -> None:
    """A rename into `folder` made durable (the folder's entry, not only the file)."""
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _copy(source: str, dest: str, busy_timeout_ms: int) -> int:
    """The online backup of `source` into the empty file `dest`; its schema version."""
    uri = f"file:{quote(os.path.abspath(source))}?mode=ro"
    src = sqlite3.connect(uri, uri=True, timeout=busy_timeout_ms / 1000)
    try:
        dst = sqlite3.connect(dest, isolation_level=None)
        try:
            src.backup(dst)  # pages=-1: the whole store in one step, one snapshot
            dst.execute("PRAGMA journal_mode = DELETE")
            problems = [row[0] for row in dst.execute("PRAGMA integrity_check")]
            if problems != ["ok"]:
                raise StoreError(f"the copy of {source} fails SQLite's integrity check, so "
                                 f"the store does too: {'; '.join(problems[:5])}")
            if dst.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                           "AND name = 'schema_version'").fetchone() is None:
                raise StoreError(f"{source} is a SQLite file but no gateway store (it has "
                                 "no schema_version table)")
            row = dst.execute("SELECT version FROM schema_version").fetchone()
        finally:
            dst.close()
    finally:
        src.close()
    return int(row[0]) if row else 0
