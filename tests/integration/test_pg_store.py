"""PgStore shared by several gateways: claims, per-subscription writers, dedupe races."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import psycopg
import pytest

from adapters.pg_store import MIGRATIONS, PgStore
from gateway.errors import StoreError
from gateway.ports import BROKER, Decision, NewOutboxItem, SubscriptionRecord
from tests.brokers import wait_until
from tests.stores import pg_schema

pytestmark = pytest.mark.postgres
NOW = 1e12


@pytest.fixture
def url() -> Iterator[str]:
    with pg_schema() as schema_url:
        yield schema_url


@pytest.fixture
def gateways(url) -> Iterator[tuple[PgStore, PgStore]]:
    """Two gateways' stores on one database."""
    a, b = PgStore(url), PgStore(url)
    yield a, b
    a.close()
    b.close()


def enqueue(store: PgStore, *pairs: tuple[str, str]) -> None:
    store.enqueue([NewOutboxItem(BROKER, message_id, usn, "SubscriptionUpdated", {}, b"<x/>")
                   for message_id, usn in pairs])


def test_a_subscription_claimed_by_one_gateway_is_skipped_by_the_other(gateways) -> None:
    a, b = gateways
    enqueue(a, ("x1", "X"), ("y1", "Y"), ("x2", "X"))
    assert [i.message_id for i in a.claim(BROKER, 1, NOW)] == ["x1"]
    # X is a's until its claimed row is marked: b takes Y only, never x2 ahead of x1
    assert [i.message_id for i in b.claim(BROKER, 10, NOW)] == ["y1"]
    assert a.claim(BROKER, 10, NOW)[0].message_id == "x1"  # a may claim its own again
    first = a.claim(BROKER, 10, NOW)
    assert [i.message_id for i in first] == ["x1", "x2"]
    a.mark_sent([first[0].id])
    assert b.claim(BROKER, 10, NOW)[0].message_id == "y1"  # X: x2 still a's
    a.mark_failed(first[1].id, "refused", retry_at=NOW - 1, dead=False)
    assert [i.message_id for i in b.claim(BROKER, 10, NOW)] == ["y1", "x2"]


def test_a_gateway_that_goes_away_leaves_its_claims_to_the_others(gateways) -> None:
    a, b = gateways
    enqueue(a, ("x1", "X"), ("x2", "X"))
    assert len(a.claim(BROKER, 10, NOW)) == 2
    assert b.claim(BROKER, 10, NOW) == []
    a.close()  # its connection, and the session locks with it, are gone
    # once its server process has ended: that is not synchronous with the client's close
    claimed: list[str] = []

    def taken_over() -> bool:
        claimed[:] = [i.message_id for i in b.claim(BROKER, 10, NOW)]  # supersedes the last
        return bool(claimed)

    wait_until(taken_over, 10, what="the claims of the closed gateway to be freed")
    assert claimed == ["x1", "x2"]


def test_a_new_claim_gives_up_what_the_last_one_held_and_did_not_claim_again(gateways) -> None:
    a, b = gateways
    enqueue(a, ("x1", "X"), ("y1", "Y"))
    assert [i.message_id for i in a.claim(BROKER, 10, NOW)] == ["x1", "y1"]
    assert b.claim(BROKER, 10, NOW) == []
    # a's relay could not deliver and claims again, fewer: Y is no longer a's
    assert [i.message_id for i in a.claim(BROKER, 1, NOW)] == ["x1"]
    assert [i.message_id for i in b.claim(BROKER, 10, NOW)] == ["y1"]


def test_every_gateway_on_postgresql_may_relay_at_once(gateways) -> None:
    a, b = gateways  # its claims lock per subscription: no turn to wait for, as on SQLite
    assert a.take_relay(BROKER) is None and b.take_relay(BROKER) is None


def test_concurrent_claims_never_share_a_row(gateways) -> None:
    a, b = gateways
    enqueue(a, *((f"m{n}", f"usn{n % 7}") for n in range(60)))
    taken: dict[str, list[str]] = {"a": [], "b": []}

    def drain(name: str, store: PgStore) -> None:
        for _ in range(200):
            items = store.claim(BROKER, 5, NOW)
            taken[name] += [i.message_id for i in items]
            store.mark_sent([i.id for i in items])
            if not items and store.counts().get((BROKER, "pending"), 0) == 0:
                return

    threads = [threading.Thread(target=drain, args=pair) for pair in (("a", a), ("b", b))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    sent = taken["a"] + taken["b"]
    assert sorted(sent) == sorted(f"m{n}" for n in range(60))  # each exactly once
    for name in taken:  # and each gateway sent a subscription's rows in their order
        for usn in range(7):
            mine = [int(m[1:]) for m in taken[name] if int(m[1:]) % 7 == usn]
            assert mine == sorted(mine)


def test_writers_of_one_subscription_on_two_gateways_are_serialised(gateways) -> None:
    a, b = gateways

    def bump(record: SubscriptionRecord | None, ids) -> Decision:
        count = int(record.states["count"]) if record else 0
        return Decision(SubscriptionRecord("u1", 1, b"<x/>", {"count": str(count + 1)}))

    def writer(store: PgStore) -> None:
        for _ in range(25):
            store.record("u1", None, bump)

    threads = [threading.Thread(target=writer, args=(s,)) for s in (a, b, a, b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert a.subscription("u1").states == {"count": "100"}  # no update lost


def test_one_dedupe_key_on_two_gateways_is_recorded_once(gateways) -> None:
    a, b = gateways
    barrier = threading.Barrier(2)
    calls: list[str] = []
    outcomes: list[tuple[dict, bool]] = []

    def decide_for(usn: str):  # different usns: only the dedupe key is shared
        def decide(record, ids) -> Decision:
            calls.append(usn)
            return Decision(SubscriptionRecord(usn, 1, b"<x/>", {}), response={"by": usn})
        return decide

    def deliver(store: PgStore, usn: str) -> None:
        barrier.wait(10)
        outcomes.append(store.record(usn, "webhook:same", decide_for(usn)))

    threads = [threading.Thread(target=deliver, args=pair) for pair in ((a, "u1"), (b, "u2"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(duplicate for _, duplicate in outcomes) == [False, True]
    assert outcomes[0][0] == outcomes[1][0]  # the second answered as the first did
    recorded = [u for u in ("u1", "u2") if a.subscription(u) is not None]
    assert len(recorded) == 1


def test_a_store_newer_than_the_gateway_is_refused(url) -> None:
    PgStore(url).close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE schema_version SET version = %s", (len(MIGRATIONS) + 1,))
    with pytest.raises(StoreError, match="newer than this gateway"):
        PgStore(url)


def test_two_gateways_starting_together_migrate_once(url) -> None:
    stores: list[PgStore] = []
    threads = [threading.Thread(target=lambda: stores.append(PgStore(url))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(stores) == 4
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [
            (len(MIGRATIONS),)]
    for store in stores:
        store.close()


def test_an_unreachable_server_is_a_store_error_without_the_password() -> None:
    with pytest.raises(StoreError, match="cannot open the store") as info:
        PgStore("postgresql://someone:s3cret@127.0.0.1:1/nothing", connect_timeout_s=2)
    assert "s3cret" not in str(info.value)


def test_a_lost_connection_fails_one_call_then_the_store_reconnects(url) -> None:
    store = PgStore(url)
    store.record("u1", None, lambda r, ids: Decision(SubscriptionRecord("u1", 1, b"<x/>", {})))
    with psycopg.connect(url, autocommit=True) as admin:  # the server restarts, say
        for conn in store._all:
            admin.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
    with pytest.raises(StoreError, match="unavailable"):
        store.subscription("u1")
    assert store.subscription("u1") is not None  # a new connection, the same data
    store.close()


def test_a_subscription_locked_by_another_session_fails_the_write_after_lock_timeout_s(
        url) -> None:
    """An operator's open transaction (or a stuck gateway) holding a subscription's lock: the
    write is a StoreError (a 503) after lock_timeout_s, not a thread held as long as it lasts."""
    store = PgStore(url, lock_timeout_s=0.5)
    decide = lambda r, ids: Decision(SubscriptionRecord("u1", 1, b"<x/>", {}))  # noqa: E731
    failures: list[BaseException] = []

    def write() -> None:
        try:
            store.record("u1", None, decide)
        except StoreError as exc:
            failures.append(exc)

    with psycopg.connect(url) as holder:  # a transaction, left open
        holder.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", ("usn:u1",))
        thread = threading.Thread(target=write, daemon=True)
        thread.start()
        thread.join(timeout=20)
        assert not thread.is_alive(), "the write waited for the lock beyond lock_timeout_s"
    assert len(failures) == 1 and "lock timeout" in str(failures[0])
    store.record("u1", None, decide)  # the lock gone, the same store writes again
    assert store.subscription("u1") is not None
    store.close()


def test_the_url_may_set_its_own_timeouts_and_keepalives(url) -> None:
    own = PgStore(url.replace("options=", "keepalives_idle=42&options=-clock_timeout%3D1234%20"))
    default = PgStore(url)
    for store, lock, idle in ((own, "1234ms", "42"), (default, "10s", "10")):
        conn = store._conn()
        assert conn.execute("SHOW lock_timeout").fetchone() == (lock,)
        assert conn.execute("SHOW statement_timeout").fetchone() == ("30s",)
        assert conn.info.get_parameters()["keepalives_idle"] == idle
        store.close()
