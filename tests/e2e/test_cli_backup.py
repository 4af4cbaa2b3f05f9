"""`smile-gateway backup DEST`: a consistent copy of a SQLite store, also while it is served."""

from __future__ import annotations

import json
import sqlite3
import stat
import subprocess
import sys
import threading
from pathlib import Path

from adapters.sql_store import SqlStore
from gateway.ports import BROKER, SUPPRESSED, NewOutboxItem
from tests.conftest import run_cli


def _store_env(path: Path) -> dict[str, str]:
    return {"GATEWAY_STORE__URL": f"sqlite:///{path}"}


def _item(message_id: str) -> NewOutboxItem:
    return NewOutboxItem(BROKER, message_id, "u1", "SubscriptionEnabled", {}, b"<x/>",
                         SUPPRESSED)


def _message_ids(db: Path) -> list[str]:
    listed = run_cli(["outbox", "list", "--format", "json"], env=_store_env(db))
    assert listed.returncode == 0, listed.stderr
    return sorted(item["messageId"] for item in json.loads(listed.stdout))


def test_backup_writes_one_checked_file_that_serves_as_the_store(tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    store = SqlStore(f"sqlite:///{db}")
    store.enqueue([_item("m1"), _item("m2")])
    letter = store.add_dead_letter("broker", "invalid", {"message-id": "x"}, b"<y/>")
    store.close()
    before = db.read_bytes()
    dest = tmp_path / "backups" / "g-copy.db"
    dest.parent.mkdir()
    done = run_cli(["backup", str(dest)], env=_store_env(db))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"backed up {db} to {dest}: ")
    assert done.stdout.endswith(" KiB, store schema version 6, integrity ok\n")
    assert db.read_bytes() == before  # the store itself is only read
    # one file, no WAL beside it, readable by its owner only (it holds customers' documents)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["g-copy.db"]
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert _message_ids(dest) == ["m1", "m2"]
    shown = run_cli(["dead-letters", "show", str(letter)], env=_store_env(dest))
    assert shown.returncode == 0 and shown.stdout == "<y/>"
    again = run_cli(["backup", str(dest)], env=_store_env(db))  # a nightly job: replaced
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in dest.parent.iterdir()) == ["g-copy.db"]


def test_backup_while_the_store_is_written_holds_whole_transactions(tmp_path: Path) -> None:
    """A copy taken page by page while another process commits could hold half of a
    transaction, or pages of two states of the file: each copy is one snapshot."""
    db = tmp_path / "g.db"
    store = SqlStore(f"sqlite:///{db}")
    stop = threading.Event()
    written = [0]

    def write() -> None:
        while not stop.is_set():  # two items a transaction: a copy holds an even number
            n = written[0]
            store.enqueue([_item(f"a{n}"), _item(f"b{n}")])
            written[0] = n + 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        counts = []
        for n in range(3):
            dest = tmp_path / f"copy{n}.db"
            done = run_cli(["backup", str(dest)], env=_store_env(db))
            assert done.returncode == 0, done.stderr
            with sqlite3.connect(dest) as copy:
                assert copy.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
                counts.append(copy.execute("SELECT count(*) FROM outbox").fetchone()[0])
    finally:
        stop.set()
        writer.join()
        store.close()
    assert all(count % 2 == 0 for count in counts), counts
    assert counts == sorted(counts) and counts[-1] > 0, counts
    assert written[0] * 2 >= counts[-1]


def test_backup_refuses_what_it_cannot_copy_and_says_why(tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    SqlStore(f"sqlite:///{db}").close()
    env = _store_env(db)

    def refused(args: list[str], env: dict[str, str], why: str) -> None:
        done = run_cli(["backup", *args], env=env)
        assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
        assert why in done.stderr, done.stderr
        assert "Traceback" not in done.stderr

    refused([str(db)], env, f"{db} is the store itself")
    (tmp_path / "link.db").symlink_to(db)
    refused([str(tmp_path / "link.db")], env, "is the store itself")
    refused([str(tmp_path / "none" / "x.db")], env, f"no folder {tmp_path / 'none'}")
    refused([str(tmp_path)], env, f"{tmp_path} is a folder: name the file to write")
    missing = tmp_path / "missing.db"
    refused([str(tmp_path / "x.db")], _store_env(missing), f"no store at {missing}")
    assert not missing.exists()  # not created empty on the way
    refused([str(tmp_path / "x.db")], {"GATEWAY_STORE__URL": "postgresql://u@127.0.0.1/db"},
            "pg_dump")
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    done = run_cli(["backup", str(tmp_path / "x.db")], env=_store_env(other))
    assert done.returncode == 1 and "no gateway store" in done.stderr, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.db", "link.db", "other.db"]


def test_backup_copies_an_older_store_as_it_is_unmigrated(tmp_path: Path) -> None:
    """Before an upgrade the backup is the way back: the new version's command must not
    migrate the store it copies (an older gateway refuses a migrated one)."""
    db = tmp_path / "g.db"
    SqlStore(f"sqlite:///{db}").close()
    with sqlite3.connect(db) as conn:  # as a store from before the latest migration reads
        conn.execute("UPDATE schema_version SET version = 5")
    conn.close()
    dest = tmp_path / "copy.db"
    done = run_cli(["backup", str(dest)], env=_store_env(db))
    assert done.returncode == 0, done.stderr
    assert "store schema version 5, integrity ok" in done.stdout
    for path in (db, dest):
        with sqlite3.connect(path) as conn:
            assert conn.execute("SELECT version FROM schema_version").fetchone() == (5,)
        conn.close()


def test_restore_puts_a_backup_in_place_and_keeps_the_store_it_replaces(
        tmp_path: Path) -> None:
    """The way back, without the hand steps that go wrong: a WAL left beside the store by a
    crash belongs to the file being replaced (SQLite would replay it into the backup), and the
    store replaced is kept beside it, not lost."""
    db = tmp_path / "var" / "g.db"
    db.parent.mkdir()
    store = SqlStore(f"sqlite:///{db}")
    store.enqueue([_item("m1")])
    store.close()
    copy = tmp_path / "copy.db"
    assert run_cli(["backup", str(copy)], env=_store_env(db)).returncode == 0
    # after the backup, more is committed, and a crash leaves the latest of it in the WAL
    crash = ("import os, sqlite3, sys\n"
             "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
             "c.execute('PRAGMA journal_mode = WAL')\n"
             "c.execute('PRAGMA wal_autocheckpoint = 0')\n"
             "c.execute(\"UPDATE outbox SET message_id = 'm2'\")\n"
             "os._exit(0)  # no close: the commit stays in the WAL\n")
    subprocess.run([sys.executable, "-c", crash, str(db)], check=True, timeout=60)
    assert (db.parent / "g.db-wal").stat().st_size > 0
    done = run_cli(["restore", str(copy)], env=_store_env(db))
    assert done.returncode == 0, done.stderr
    [kept] = [p for p in db.parent.iterdir() if p.name.startswith("g.db.before-restore-")
              and not p.name.endswith(("-wal", "-shm"))]
    assert done.stdout == (f"restored {copy} to {db}: store schema version 6, integrity ok; "
                           f"the store it replaced is kept as {kept}\n")
    assert _message_ids(db) == ["m1"]  # the backup's, with no WAL frames of the old file
    assert _message_ids(kept) == ["m2"]  # the replaced one, its WAL with it
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert copy.exists()  # the backup itself stays as it was


def test_restore_onto_a_new_machine_makes_the_store_and_its_folder(tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    store = SqlStore(f"sqlite:///{db}")
    store.enqueue([_item("m1")])
    store.close()
    copy = tmp_path / "copy.db"
    assert run_cli(["backup", str(copy)], env=_store_env(db)).returncode == 0
    fresh = tmp_path / "new-machine" / "var" / "gateway.db"  # nothing there yet
    done = run_cli(["restore", str(copy)], env=_store_env(fresh))
    assert done.returncode == 0, done.stderr
    assert done.stdout == (f"restored {copy} to {fresh}: store schema version 6, integrity "
                           "ok; there was no store before it\n")
    assert _message_ids(fresh) == ["m1"]


def test_restore_keeps_the_owner_of_the_store_it_replaces(tmp_path: Path) -> None:
    """Run as root (`sudo smile-gateway restore`), the copy would be root's, mode 0600, and the
    gateway's own user (the unit's dynamic user) could not open it: the restored store gets
    the owner and group of the one it replaces, or of its folder on a new machine."""
    import os

    db = tmp_path / "var" / "g.db"
    db.parent.mkdir()
    SqlStore(f"sqlite:///{db}").close()
    copy = tmp_path / "copy.db"
    assert run_cli(["backup", str(copy)], env=_store_env(db)).returncode == 0
    owner = (65534, 65534) if os.geteuid() == 0 else (os.getuid(), os.getgid())  # nobody
    os.chown(db, *owner)
    os.chown(db.parent, *owner)
    done = run_cli(["restore", str(copy)], env=_store_env(db))
    assert done.returncode == 0, done.stderr
    assert (db.stat().st_uid, db.stat().st_gid) == owner
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    fresh = tmp_path / "new" / "g.db"
    fresh.parent.mkdir()
    os.chown(fresh.parent, *owner)
    assert run_cli(["restore", str(copy)], env=_store_env(fresh)).returncode == 0
    assert (fresh.stat().st_uid, fresh.stat().st_gid) == owner


def test_restore_refuses_while_the_store_is_served_or_what_is_no_whole_store(
        tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    store = SqlStore(f"sqlite:///{db}")
    store.enqueue([_item("m1")])
    env = _store_env(db)
    copy = tmp_path / "copy.db"
    assert run_cli(["backup", str(copy)], env=env).returncode == 0
    store.lock_for_serving()  # as `serve` holds it
    done = run_cli(["restore", str(copy)], env=env)
    assert done.returncode == 1, done.stderr
    assert f"the store {db} is served by pid " in done.stderr and "stop it" in done.stderr
    store.close()
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    torn = tmp_path / "torn.db"
    torn.write_bytes(copy.read_bytes()[:4096 * 2])
    newer = tmp_path / "newer.db"
    newer.write_bytes(copy.read_bytes())
    with sqlite3.connect(newer) as conn:
        conn.execute("UPDATE schema_version SET version = 99")
    conn.close()
    for path, code, why in [
            (other, 1, "no gateway store"), (torn, 1, "cannot restore"),
            (newer, 1, "store schema version 99, newer than this gateway's 6"),
            (tmp_path / "nothing.db", 2, "no file"), (tmp_path, 2, "no file"),
            (db, 2, "is the store itself")]:
        before = db.read_bytes()
        done = run_cli(["restore", str(path)], env=env)
        assert done.returncode == code, (path, done.stdout, done.stderr)
        assert why in done.stderr, (path, done.stderr)
        assert "Traceback" not in done.stderr
        assert db.read_bytes() == before  # the store is left as it was
    assert not [p for p in tmp_path.iterdir() if "before-restore" in p.name or
                p.name.endswith(".partial")]
    done = run_cli(["restore", str(copy)], env={"GATEWAY_STORE__URL": "postgresql://u@h/db"})
    assert done.returncode == 2 and "pg_restore" in done.stderr, done.stderr
