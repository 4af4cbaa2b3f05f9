"""SqlStore on real SQLite files: migrations, and what a record keeps beside its snapshot."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from adapters.sql_store import MIGRATIONS, SqlStore
from gateway.errors import KeyReusedError, StoreError, TransitionError
from gateway.ports import (
    BROKER,
    FORWARD,
    SENT,
    Decide,
    Decision,
    Envelope,
    InMemoryRequestIds,
    NewOutboxItem,
    PublishOutcome,
    SubscriptionRecord,
)
from gateway.relay import BrokerRelay
from gateway.service import GatewayService
from gateway.translator import Translator
from tests.brokers import wait_until
from tests.conftest import SAMPLES

CHANGED = (SAMPLES / "SubscriptionFeaturesChanged.xml").read_bytes()
USN = "2142426763"


def service_on(store: SqlStore, settings, codec) -> GatewayService:
    return GatewayService(settings, codec, store,
                          Translator(settings.mapping, codec, InMemoryRequestIds()))


def version_one_store(path: Path) -> None:
    """A store as the first release wrote it, holding one subscription."""
    conn = sqlite3.connect(path)
    conn.executescript(MIGRATIONS[0])
    conn.execute("CREATE TABLE schema_version (version INTEGER)")
    conn.execute("INSERT INTO schema_version VALUES (1)")
    conn.execute("INSERT INTO subscriptions (usn, sid, snapshot, states, updated_at) "
                 "VALUES (?, 173, ?, '{}', 0)", (USN, CHANGED))
    conn.executemany("INSERT INTO history (usn, at, source, detail) VALUES (?, ?, 'smile', ?)",
                     [(USN, at, f'{{"n": {at}}}') for at in (1, 2)])
    conn.commit()
    conn.close()


def test_a_version_one_store_is_migrated_and_its_snapshots_still_diff(tmp_path, settings,
                                                                     codec) -> None:
    path = tmp_path / "old.db"
    version_one_store(path)
    store = SqlStore(f"sqlite:///{path}")
    record = store.subscription(USN)
    assert record is not None and record.feature_ids is None  # not recorded by version 1
    fewer = CHANGED.replace(b"<FeatureId>5003</FeatureId>", b"<FeatureId>5004</FeatureId>")
    result = service_on(store, settings, codec).accept_smile_document(fewer)
    assert (result["features_added"], result["features_removed"]) == ([5004], [5003])
    assert store.subscription(USN).feature_ids == frozenset({5001, 5004})
    version = sqlite3.connect(path).execute("SELECT version FROM schema_version").fetchone()
    assert version == (len(MIGRATIONS),)
    history = store.history(USN)  # version 1's rows kept, in order, the new ones after them
    assert [entry["detail"].get("n") for entry in history][:3] == [1, 2, None]
    assert history[-1]["detail"]["features_added"] == [5004]
    ids = [row[0] for row in sqlite3.connect(path).execute("SELECT id FROM history ORDER BY id")]
    assert ids == list(range(1, len(history) + 1))


def test_a_version_four_stores_dedupe_keys_still_answer_their_retries(tmp_path, settings,
                                                                        codec) -> None:
    # kept before fingerprints, a key answers any request under it, as it did then
    path = tmp_path / "v4.db"
    conn = sqlite3.connect(path)
    for script in MIGRATIONS[:4]:
        conn.executescript(script)
    conn.execute("CREATE TABLE schema_version (version INTEGER)")
    conn.execute("INSERT INTO schema_version VALUES (4)")
    conn.execute("INSERT INTO dedupe (key, response, at) VALUES ('webhook:old', '{\"n\": 1}', 0)")
    conn.commit()
    conn.close()
    service = service_on(SqlStore(f"sqlite:///{path}"), settings, codec)
    assert service.accept_smile_document(CHANGED, dedupe_key="webhook:old") == {"n": 1}
    service.accept_smile_document(CHANGED, dedupe_key="webhook:new")
    with pytest.raises(KeyReusedError):
        service.accept_smile_document(CHANGED + b" ", dedupe_key="webhook:new")


def test_feature_ids_are_kept_beside_each_snapshot(tmp_path, settings, codec) -> None:
    store = SqlStore(f"sqlite:///{tmp_path / 'g.db'}")
    service = service_on(store, settings, codec)
    service.accept_smile_document(CHANGED)
    assert store.subscription(USN).feature_ids == frozenset({5001, 5003})
    closed = ((SAMPLES / "SubscriptionClosed.xml").read_bytes()
              .replace(b"2142426768", USN.encode()).replace(b"<SID>178", b"<SID>173"))
    service.accept_smile_document(closed)  # a Subscription-only body keeps the features
    record = store.subscription(USN)
    assert b"Home broadband" in record.snapshot  # the closed subscription, merged
    assert record.feature_ids == frozenset({5001, 5003})
    assert codec.feature_ids(record.snapshot) == record.feature_ids


def test_a_store_newer_than_the_gateway_is_refused(tmp_path) -> None:
    path = tmp_path / "new.db"
    SqlStore(f"sqlite:///{path}").close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE schema_version SET version = ?", (len(MIGRATIONS) + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer than this gateway"):
        SqlStore(f"sqlite:///{path}")


def test_a_sqlite_without_json_functions_is_refused_at_start(tmp_path) -> None:
    class NoJson(SqlStore):
        def _connect(self) -> sqlite3.Connection:
            conn = super()._connect()  # a user function named so hides the built-in one
            conn.create_function("json_array", -1, lambda *args: 1 / 0)
            return conn

    with pytest.raises(StoreError, match="JSON functions"):
        NoJson(f"sqlite:///{tmp_path / 'g.db'}")


def test_a_record_reads_back_as_written(tmp_path) -> None:
    store = SqlStore(f"sqlite:///{tmp_path / 'g.db'}")
    written = SubscriptionRecord("u1", 7, b"<x/>", {"order": "Completed", "service": None}, 42,
                                 frozenset({5, 3}))
    store.record("u1", None, lambda record, ids: Decision(written, (), (), {}))
    store.record("u2", None, lambda record, ids: Decision(
        SubscriptionRecord("u2", 8, b"<y/>", {}), (), (), {}))
    assert store.subscription("u1") == written
    assert store.subscription("u2") == SubscriptionRecord("u2", 8, b"<y/>", {}, None, None)
    assert store.subscription("u3") is None


# -- group commit ------------------------------------------------------------------------------

def decision(usn: str, message_id: str | None = None) -> Decision:
    outbox = (() if message_id is None else
              (NewOutboxItem(BROKER, message_id, usn, "SubscriptionUpdated", {}, b"<x/>"),))
    return Decision(SubscriptionRecord(usn, 1, b"<x/>", {}), outbox, (), {"usn": usn})


def batch_behind_a_held_commit(store: SqlStore,
                               decides: dict[str, Decide]) -> dict[str, object]:
    """Runs `decides` concurrently while a first writer leads, so that they run in
    its open transaction; returns each one's response or exception, and the COMMITs seen."""
    gate, leading = threading.Event(), threading.Event()

    def held(record, ids) -> Decision:
        leading.set()  # its piece is off the queue: the others queue behind it
        gate.wait(10)
        return decision("first")

    outcomes: dict[str, object] = {}

    def write(usn: str, decide: Decide) -> None:
        try:
            outcomes[usn] = store.record(usn, None, decide)[0]
        except Exception as exc:  # handed back to the test
            outcomes[usn] = exc

    first = threading.Thread(target=write, args=("first", held))
    first.start()
    wait_until(leading.is_set, 5, 0.01, "the first writer to lead")
    assert store._writer is not None
    statements: list[str] = []
    store._writer.set_trace_callback(statements.append)
    others = [threading.Thread(target=write, args=item) for item in decides.items()]
    for thread in others:
        thread.start()
    wait_until(lambda: len(store._queue) == len(decides), 5, 0.01, "the others to wait")
    gate.set()
    for thread in [first, *others]:
        thread.join(10)
    assert outcomes.pop("first") == {"usn": "first"}
    outcomes["COMMIT"] = statements.count("COMMIT")
    return outcomes


def test_concurrent_writers_share_one_commit(tmp_path) -> None:
    store = SqlStore(f"sqlite:///{tmp_path / 'g.db'}")
    usns = [f"u{n}" for n in range(6)]
    outcomes = batch_behind_a_held_commit(
        store, {u: (lambda record, ids, u=u: decision(u, f"m-{u}")) for u in usns})
    assert outcomes.pop("COMMIT") == 1  # one fsync for the seven
    assert outcomes == {u: {"usn": u} for u in usns}
    assert all(store.subscription(u) is not None for u in usns)
    assert store.counts() == {(BROKER, "pending"): len(usns)}


def test_a_piece_refused_before_writing_leaves_the_batch_alone(tmp_path) -> None:
    store = SqlStore(f"sqlite:///{tmp_path / 'g.db'}")

    def refused(record, ids) -> Decision:
        raise TransitionError("order", "Completed", "Pending")

    outcomes = batch_behind_a_held_commit(store, {
        "a": lambda record, ids: decision("a"), "b": refused,
        "c": lambda record, ids: decision("c")})
    assert isinstance(outcomes.pop("b"), TransitionError)
    assert outcomes.pop("COMMIT") == 1
    assert outcomes == {"a": {"usn": "a"}, "c": {"usn": "c"}}
    assert store.subscription("b") is None and store.subscription("c") is not None


def test_a_piece_failing_after_writing_is_undone_alone(tmp_path) -> None:
    store = SqlStore(f"sqlite:///{tmp_path / 'g.db'}")
    store.enqueue([NewOutboxItem(BROKER, "taken", "x", "SubscriptionUpdated", {}, b"<x/>")])
    calls: list[str] = []

    def counted(usn: str, message_id: str) -> Decide:
        def decide(record, ids) -> Decision:
            calls.append(usn)
            return decision(usn, message_id)
        return decide

    # "b" writes its subscription, then its outbox row collides with a taken message id
    outcomes = batch_behind_a_held_commit(store, {
        "a": counted("a", "m-a"), "b": counted("b", "taken"), "c": counted("c", "m-c")})
    assert isinstance(outcomes.pop("b"), StoreError)
    outcomes.pop("COMMIT")  # those before "b" commit when it is undone; the rest after it
    assert outcomes == {"a": {"usn": "a"}, "c": {"usn": "c"}}
    assert store.subscription("b") is None  # its first write was undone with it
    assert store.subscription("a") is not None and store.subscription("c") is not None
    assert store.counts() == {(BROKER, "pending"): 3}  # taken, m-a, m-c
    assert calls.count("b") == 1 and calls.count("a") in (1, 2)  # "a" again if before "b"


def test_an_interrupted_leader_leaves_no_writer_waiting(tmp_path) -> None:
    store = SqlStore(f"sqlite:///{tmp_path / 'g.db'}")
    gate, leading = threading.Event(), threading.Event()
    outcomes: dict[str, object] = {}

    def held(record, ids) -> Decision:
        leading.set()  # its piece is off the queue: the others queue behind it
        gate.wait(10)
        return decision("first")

    def interrupted(record, ids) -> Decision:
        raise KeyboardInterrupt

    def write(usn: str, decide: Decide) -> None:
        try:
            outcomes[usn] = store.record(usn, None, decide)[0]
        except BaseException as exc:  # handed back to the test, KeyboardInterrupt too
            outcomes[usn] = exc

    threads = [threading.Thread(target=write, args=("first", held))]
    threads[0].start()
    wait_until(leading.is_set, 5, 0.01, "the first writer to lead")
    for queued, (usn, decide) in enumerate([("a", lambda r, i: decision("a")),
                                            ("b", interrupted),
                                            ("c", lambda r, i: decision("c"))], start=1):
        threads.append(threading.Thread(target=write, args=(usn, decide)))
        threads[-1].start()  # queued in this order
        wait_until(lambda q=queued: len(store._queue) == q, 5, 0.01, "it to queue")
    gate.set()
    for thread in threads:
        thread.join(10)
    assert not any(thread.is_alive() for thread in threads)  # nobody left waiting
    assert isinstance(outcomes.pop("first"), KeyboardInterrupt)  # raised in the leader
    assert all(isinstance(o, StoreError) and "interrupted" in str(o) for o in outcomes.values())
    assert sorted(outcomes) == ["a", "b", "c"]
    assert all(store.subscription(u) is None for u in ("first", "a", "b", "c"))
    store.record("d", None, lambda record, ids: decision("d"))  # and the store works on
    assert store.subscription("d") is not None


def test_a_lone_piece_failing_after_writing_leaves_nothing(tmp_path) -> None:
    store = SqlStore(f"sqlite:///{tmp_path / 'g.db'}")
    store.enqueue([NewOutboxItem(BROKER, "taken", "x", "SubscriptionUpdated", {}, b"<x/>")])
    with pytest.raises(StoreError, match="UNIQUE"):
        store.record("b", None, lambda record, ids: decision("b", "taken"))
    assert store.subscription("b") is None
    store.record("b", None, lambda record, ids: decision("b", "free"))  # and the store works on
    assert store.subscription("b") is not None


def test_an_in_memory_store_is_one_database_for_every_thread() -> None:
    store = SqlStore("sqlite:///:memory:")
    done = threading.Thread(target=lambda: store.record("m", None, lambda r, i: decision("m")))
    done.start()
    done.join(10)
    assert store.subscription("m") is not None  # written by another thread, read here
    store.enqueue([NewOutboxItem(BROKER, "x", "m", "SubscriptionUpdated", {}, b"<x/>")])
    assert [i.message_id for i in store.claim(BROKER, 10, 1e12)] == ["x"]


def test_one_store_object_at_a_time_holds_the_serve_lock(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'g.db'}"
    first, second = SqlStore(url), SqlStore(url)
    first.lock_for_serving()
    first.lock_for_serving()  # held already: nothing to do
    with pytest.raises(StoreError, match=f"already served by pid {os.getpid()}"):
        second.lock_for_serving()
    first.close()  # frees it
    second.lock_for_serving()
    second.close()
    SqlStore("sqlite:///:memory:").lock_for_serving()  # nothing to share: no lock


def test_one_store_object_at_a_time_relays_a_channel_from_a_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'g.db'}"
    first, second = SqlStore(url), SqlStore(url)
    assert first.take_relay(BROKER) is None
    assert first.take_relay(BROKER) is None  # held already
    assert second.take_relay(BROKER) == f"pid {os.getpid()}"
    assert second.take_relay(FORWARD) is None  # a channel of its own
    first.lock_for_serving()  # and the serve lock is another
    first.close()  # frees it
    assert second.take_relay(BROKER) is None
    second.close()
    assert SqlStore("sqlite:///:memory:").take_relay(BROKER) is None


class Confirming:
    """A Publisher whose broker confirms everything, recording what it was given."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def publish(self, envelopes: Sequence[Envelope]) -> PublishOutcome:
        self.sent += [e.headers["gateway-message-id"] for e in envelopes]
        return PublishOutcome(tuple(e.item_id for e in envelopes), {})

    def close(self) -> None:
        pass


def test_a_relay_waits_while_another_process_relays_and_then_takes_over(tmp_path: Path,
                                                                        settings) -> None:
    """`publish` beside `serve` on one SQLite file: one relay sends, the other waits."""
    url = f"sqlite:///{tmp_path / 'g.db'}"
    serving, publishing = SqlStore(url), SqlStore(url)
    serve_side, publish_side = Confirming(), Confirming()
    relays = [BrokerRelay(store, publisher, settings.emission, settings.broker)
              for store, publisher in ((serving, serve_side), (publishing, publish_side))]
    assert serving.take_relay(BROKER) is None  # serve's relay has its turn first
    stop = threading.Event()
    thread = threading.Thread(target=relays[0].run, args=(stop,), kwargs={"idle_s": 0.05})
    thread.start()
    try:
        publishing.enqueue([NewOutboxItem(BROKER, f"m{n}", "u", "SubscriptionUpdated",
                                          {"gateway-message-id": f"m{n}"}, b"<x/>")
                            for n in range(3)])
        assert relays[1].drain(time.time() + 5) == 0  # not its turn: sends nothing
        items = relays[1].deliver(["m0", "m1", "m2"], time.time() + 10, poll_s=0.02)
        assert [i.status for i in items] == [SENT] * 3
        assert relays[1].waiting_for == f"pid {os.getpid()}"
        assert serve_side.sent == ["m0", "m1", "m2"] and publish_side.sent == []
    finally:
        stop.set()
        thread.join(10)
    serving.close()  # the serving relay is gone: the other takes over
    publishing.enqueue([NewOutboxItem(BROKER, "m3", "u", "SubscriptionUpdated",
                                      {"gateway-message-id": "m3"}, b"<x/>")])
    [item] = relays[1].deliver(["m3"], time.time() + 10)
    assert item.status == SENT and publish_side.sent == ["m3"]
    assert relays[1].waiting_for is None
    publishing.close()


def test_a_serving_relay_waits_for_a_publish_that_is_sending(tmp_path: Path, settings) -> None:
    url = f"sqlite:///{tmp_path / 'g.db'}"
    publishing, serving = SqlStore(url), SqlStore(url)
    assert publishing.take_relay(BROKER) is None  # `publish` started first
    serve_side = Confirming()
    relay = BrokerRelay(serving, serve_side, settings.emission, settings.broker)
    asked: list[str] = []
    take_relay = serving.take_relay

    def counted(channel: str) -> str | None:
        asked.append(channel)
        return take_relay(channel)

    serving.take_relay = counted  # type: ignore[method-assign]
    stop = threading.Event()
    thread = threading.Thread(target=relay.run, args=(stop,), kwargs={"idle_s": 0.02})
    thread.start()
    try:
        wait_until(lambda: relay.waiting_for == f"pid {os.getpid()}", 10,
                   what="the serving relay to see the publish relaying")
        serving.enqueue([NewOutboxItem(BROKER, "m0", "u", "SubscriptionUpdated",
                                       {"gateway-message-id": "m0"}, b"<x/>")])
        seen = len(asked)
        wait_until(lambda: len(asked) >= seen + 2, 10, what="the relay to look again")
        assert relay.waiting_for is not None  # still waiting: it sent nothing
        assert serve_side.sent == [] and serving.counts() == {(BROKER, "pending"): 1}
        publishing.close()  # the publish is done: the serving relay takes over
        wait_until(lambda: serve_side.sent == ["m0"], 10, what="the serving relay to send")
        assert relay.waiting_for is None
    finally:
        stop.set()
        thread.join(10)
        serving.close()


def test_readiness_fails_while_the_stores_disk_has_no_room_to_commit(tmp_path: Path) -> None:
    """A full disk fails every write with 503 while reads still work: the readiness check
    (ping) says so, by the disk's real free space against what a commit needs."""
    roomy = SqlStore(f"sqlite:///{tmp_path / 'g.db'}")
    roomy.ping()
    roomy.close()
    # more room asked for than any disk has: this disk is "full" for it
    full = SqlStore(f"sqlite:///{tmp_path / 'g.db'}", min_free_bytes=2 ** 62)
    with pytest.raises(StoreError, match=r"free on the store's disk \(.*g\.db\), under the"):
        full.ping()
    full.close()
    SqlStore("sqlite:///:memory:", min_free_bytes=2 ** 62).ping()  # no disk to fill


MOUNTS = """\
/dev/sda1 / ext4 rw,relatime 0 0
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
filer:/export/gw /srv/gateway nfs4 rw,relatime,vers=4.2 0 0
//nas/share /srv/with\\040space cifs rw,relatime 0 0
tmpfs /srv/gateway/cache tmpfs rw 0 0
"""


@pytest.mark.parametrize(("path", "kind"), [
    ("/var/lib/smile-gateway/gateway.db", "ext4"),
    ("/srv/gateway/var/gateway.db", "nfs4"),
    ("/srv/gateway", "nfs4"),
    ("/srv/gatewayx/gateway.db", "ext4"),  # a mount point's name is no prefix of another's
    ("/srv/with space/g.db", "cifs"),  # /proc/self/mounts writes a space as \040
    ("/srv/gateway/cache/g.db", "tmpfs"),  # the deepest mount point holds it
])
def test_the_filesystem_holding_a_path_is_read_from_the_mount_table(path: str,
                                                                    kind: str) -> None:
    from adapters.sql_store import filesystem_type

    assert filesystem_type(path, MOUNTS) == kind


def test_a_store_on_a_network_filesystem_is_advised_against(tmp_path: Path) -> None:
    """SQLite's WAL (sqlite.org/wal.html) holds its locks and shared-memory index among the
    processes of one host on a local disk: on NFS or SMB a store can be corrupted."""
    from adapters.sql_store import store_advisories

    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/sda1 / ext4 rw 0 0\nfiler:/gw {tmp_path} nfs4 rw 0 0\n")
    url = f"sqlite:///{tmp_path / 'var' / 'gateway.db'}"  # its folder not made yet
    [advice] = store_advisories(url, str(mounts))
    assert advice.startswith(f"store.url {tmp_path / 'var' / 'gateway.db'} is on a network "
                             "filesystem (nfs4): SQLite's write-ahead log")
    assert "put the store on a local disk, or share a PostgreSQL store" in advice
    mounts.write_text("/dev/sda1 / ext4 rw 0 0\n")
    assert store_advisories(url, str(mounts)) == []
    assert store_advisories(url, str(tmp_path / "no-such-table")) == []  # no /proc: no advice
    assert store_advisories(url) == []  # this machine's own table: tmp_path is local


@pytest.mark.parametrize("how", ["removed", "replaced"])
def test_a_store_file_removed_or_replaced_while_in_use_takes_no_more_commits(
        tmp_path: Path, how: str) -> None:
    """SQLite keeps writing to the file it opened: after an `rm`, or a `mv` of another file
    (a restore by hand while serve runs), every commit would go where nobody reads again and
    be lost at the next start. The store notices before each commit and refuses it (a 503, a
    message left on the broker), and readiness says so."""
    from gateway.ports import BROKER, SUPPRESSED, NewOutboxItem

    db = tmp_path / "g.db"
    store = SqlStore(f"sqlite:///{db}")
    item = NewOutboxItem(BROKER, "m1", "u1", "SubscriptionEnabled", {}, b"<x/>", SUPPRESSED)
    store.enqueue([item])
    if how == "removed":
        db.unlink()
    else:
        other = tmp_path / "other.db"
        SqlStore(f"sqlite:///{other}").close()
        os.replace(other, db)
    with pytest.raises(StoreError, match=f"the store file {db} was {how} while in use"):
        store.enqueue([NewOutboxItem(BROKER, "m2", "u1", "SubscriptionEnabled", {}, b"<x/>",
                                     SUPPRESSED)])
    with pytest.raises(StoreError, match=f"was {how} while in use"):
        store.ping()
    store.close()
