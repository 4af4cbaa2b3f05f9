"""The Store port's contract, on SQLite and on PostgreSQL: the same tests, the same answers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from adapters.sql_base import SqlStoreBase
from gateway.errors import KeyReusedError, StoreError, TransitionError
from gateway.ports import (
    BROKER,
    DEAD,
    DISCARDED,
    FORWARD,
    PENDING,
    SENT,
    SUPPRESSED,
    Decision,
    Discarded,
    HistoryEntry,
    NewOutboxItem,
    Replayed,
    RequestIds,
    SubscriptionRecord,
    SubscriptionSummary,
)
from tests.stores import KINDS, open_store, store_url

pytestmark = pytest.mark.postgres


@pytest.fixture(params=KINDS)
def store(request, tmp_path) -> Iterator[SqlStoreBase]:
    with store_url(request.param, tmp_path) as url:
        opened = open_store(url)
        yield opened
        opened.close()


def item(message_id: str, usn: str = "u1", channel: str = BROKER) -> NewOutboxItem:
    return NewOutboxItem(channel, message_id, usn, "SubscriptionUpdated",
                         {"smileMessageType": "SubscriptionUpdated"}, b"<x>\x00\xff</x>")


def subscription(usn: str, states: dict[str, str | None] | None = None,
                 request: int | None = None) -> SubscriptionRecord:
    return SubscriptionRecord(usn, 173, b"<SubscriptionFeaturesUpdate/>", states or {}, request,
                              frozenset({5001, 5003}))


def test_a_decision_is_recorded_whole_and_a_repeated_key_answers_as_the_first(store) -> None:
    seen: list[SubscriptionRecord | None] = []

    def decide(record: SubscriptionRecord | None, ids: RequestIds) -> Decision:
        seen.append(record)
        history = (HistoryEntry("webhook", "k1", "order", None, "Pending", {"why": "first"}),)
        return Decision(subscription("u1", {"order": "Pending"}), (item("m1"),), history,
                        {"answer": 1})

    assert store.record("u1", "webhook:k1", decide) == ({"answer": 1}, False)
    assert store.record("u1", "webhook:k1", decide) == ({"answer": 1}, True)
    assert seen == [None]  # the repeat decided nothing
    record = store.subscription("u1")
    assert record == subscription("u1", {"order": "Pending"})
    assert [(h["vocabulary"], h["from"], h["to"], h["detail"]) for h in store.history("u1")] \
        == [("order", None, "Pending", {"why": "first"})]
    assert store.counts() == {(BROKER, PENDING): 1}


def test_a_key_reused_for_another_request_is_refused_and_changes_nothing(store) -> None:
    calls: list[int] = []

    def decide(record: SubscriptionRecord | None, ids: RequestIds) -> Decision:
        calls.append(1)
        return Decision(subscription("u1"), (item(f"m{len(calls)}"),), (), {"answer": 1})

    assert store.record("u1", "webhook:k1", decide, "aaa") == ({"answer": 1}, False)
    assert store.record("u1", "webhook:k1", decide, "aaa") == ({"answer": 1}, True)  # a retry
    with pytest.raises(KeyReusedError, match="webhook-id 'k1' was used before for a "
                                             "different request: this one is not recorded"):
        store.record("u1", "webhook:k1", decide, "bbb")
    store.record("u1", "event:e1", decide, "aaa")
    with pytest.raises(KeyReusedError, match="eventId 'e1' was used before"):
        store.record("u2", "event:e1", decide, "ccc")  # another subscription, the same key
    # a key kept without a fingerprint (a store from before them) answers any request
    assert store.record("u1", "event:e2", decide) == ({"answer": 1}, False)
    assert store.record("u1", "event:e2", decide, "ddd") == ({"answer": 1}, True)
    assert len(calls) == 3 and store.counts() == {(BROKER, PENDING): 3}


def test_a_refused_decision_leaves_nothing(store) -> None:
    def refuse(record: SubscriptionRecord | None, ids: RequestIds) -> Decision:
        ids.next_provision_request_id()  # written, then undone with the rest
        raise TransitionError("order", "Completed", "Pending")

    with pytest.raises(TransitionError):
        store.record("u1", "k", refuse)
    assert store.subscription("u1") is None
    assert store.history("u1") == []
    assert store.record("u1", "k", lambda r, ids: Decision(subscription("u1"), response={
        "id": ids.next_provision_request_id()})) == ({"id": 1}, False)


def test_provision_request_ids_count_up_across_decisions(store) -> None:
    answers = [store.record(f"u{n}", None, lambda r, ids: Decision(
        None, response={"id": ids.next_provision_request_id()}))[0]["id"] for n in range(3)]
    assert answers == [1, 2, 3]


def test_the_next_decision_sees_the_record_the_last_one_wrote(store) -> None:
    store.record("u1", None, lambda r, ids: Decision(subscription("u1", {"order": "A"}, 7)))
    seen = []
    store.record("u1", None, lambda r, ids: (seen.append(r), Decision(None))[1])
    assert seen == [subscription("u1", {"order": "A"}, 7)]


def test_a_colliding_message_id_fails_the_write_and_keeps_the_store_usable(store) -> None:
    store.enqueue([item("taken")])
    with pytest.raises(StoreError):
        store.record("u2", None, lambda r, ids: Decision(subscription("u2"), (item("taken"),)))
    assert store.subscription("u2") is None
    store.record("u2", None, lambda r, ids: Decision(subscription("u2"), (item("free"),)))
    assert store.counts() == {(BROKER, PENDING): 2}


def test_claims_come_oldest_first_by_channel_and_sent_rows_leave(store) -> None:
    ids = store.enqueue([item("a"), item("b", "u2"), item("f", channel=FORWARD), item("c")])
    assert ids == sorted(ids)
    claimed = store.claim(BROKER, 10, now=1e12)
    assert [i.message_id for i in claimed] == ["a", "b", "c"]
    assert claimed[0].body == b"<x>\x00\xff</x>" and claimed[0].headers == {
        "smileMessageType": "SubscriptionUpdated"}
    store.mark_sent([claimed[0].id, claimed[1].id])
    assert [i.message_id for i in store.claim(BROKER, 10, now=1e12)] == ["c"]
    assert store.counts() == {(BROKER, SENT): 2, (BROKER, PENDING): 1, (FORWARD, PENDING): 1}
    assert [i.message_id for i in store.claim(BROKER, 1, now=1e12)] == ["c"]


def test_a_row_backing_off_holds_back_the_later_rows_of_its_subscription(store) -> None:
    store.enqueue([item("a"), item("b"), item("other", "u2")])
    first = store.claim(BROKER, 1, now=100.0)[0]
    store.mark_failed(first.id, "broker said no", retry_at=200.0, dead=False)
    assert [i.message_id for i in store.claim(BROKER, 10, now=150.0)] == ["other"]
    later = store.claim(BROKER, 10, now=250.0)
    assert [i.message_id for i in later] == ["a", "b", "other"]
    assert later[0].attempts == 1 and later[0].last_error == "broker said no"


def test_dead_rows_are_replayed_by_id_or_all(store) -> None:
    store.enqueue([item("a"), item("b", "u2")])
    for row in store.claim(BROKER, 10, now=1e12):
        store.mark_failed(row.id, "refused", retry_at=0.0, dead=True)
    dead = store.outbox(DEAD)
    assert [i.message_id for i in dead] == ["a", "b"]
    assert store.replay([dead[0].id]) == Replayed(1)
    missing = dead[1].id + 1000
    assert store.replay([dead[0].id, missing, missing]) == Replayed(0, (dead[0].id,), (missing,))
    assert store.replay() == Replayed(1)
    replayed = store.claim(BROKER, 10, now=1.0)
    assert [(i.message_id, i.attempts) for i in replayed] == [("a", 0), ("b", 0)]  # afresh
    assert [i.message_id for i in store.outbox_by_message_ids(["b", "nope"])] == ["b"]


def test_the_outbox_is_listed_newest_last_by_status_channel_and_subscription(store) -> None:
    store.enqueue([item("b1", "u1"), item("f1", "u1", FORWARD), item("b2", "u2"),
                   item("f2", "u2", FORWARD), item("b3", "u1")])
    store.mark_sent([i.id for i in store.claim(BROKER, 10, now=1e12) if i.message_id == "b1"])

    def names(**kw: object) -> list[str]:
        return [i.message_id for i in store.outbox(**kw)]

    assert names() == ["b1", "f1", "b2", "f2", "b3"]
    assert names(usn="u1") == ["b1", "f1", "b3"]
    assert names(usn="u1", channel=BROKER) == ["b1", "b3"]
    assert names(channel=FORWARD) == ["f1", "f2"]
    assert names(status=PENDING, usn="u1") == ["f1", "b3"]
    assert names(status=SENT, usn="u2") == []
    assert names(usn="u1", limit=2) == ["f1", "b3"]  # the newest
    assert names(usn="nobody") == []


def test_the_oldest_pending_item_of_each_channel_is_found(store) -> None:
    now = [100.0]
    store.clock = lambda: now[0]
    assert store.oldest_pending() == {}
    store.enqueue([item("b1"), item("f1", channel=FORWARD)])
    now[0] = 200.0
    store.enqueue([item("b2", "u2"), item("f2", "u2", FORWARD)])
    assert store.oldest_pending() == {BROKER: 100.0, FORWARD: 100.0}
    claimed = {i.message_id: i.id for i in store.claim(BROKER, 10, now=1e12)}
    store.mark_sent([claimed["b1"]])
    store.mark_failed(claimed["b2"], "refused", retry_at=0.0, dead=True)
    assert store.oldest_pending() == {FORWARD: 100.0}  # a dead item waits for no one


def test_an_operators_replay_and_discard_are_in_the_subscriptions_history(store) -> None:
    """GET /subscriptions/<usn> shows who did what to its messages: an item re-queued or set
    aside by hand is a history entry of source "operator", in the same transaction."""
    store.enqueue([item("m1", "u1"), item("m2", "u1", FORWARD), item("m3", "")])
    by_id = {i.message_id: i.id for i in [*store.claim(BROKER, 10, now=1e12),
                                          *store.claim(FORWARD, 10, now=1e12)]}
    for name in by_id:
        store.mark_failed(by_id[name], "refused", retry_at=0.0, dead=True)
    store.discard([by_id["m2"]], "order cancelled by hand")
    store.replay([by_id["m1"]])
    store.replay()  # --dead: m3, whose usn is empty (a document published by hand): no entry
    entries = [h for h in store.history("u1") if h["source"] == "operator"]
    assert [h["detail"] for h in entries] == [
        {"action": "outbox discard", "outboxId": by_id["m2"], "channel": FORWARD,
         "kind": "SubscriptionUpdated", "messageId": "m2", "reason": "order cancelled by hand"},
        {"action": "outbox replay", "outboxId": by_id["m1"], "channel": BROKER,
         "kind": "SubscriptionUpdated", "messageId": "m1"}]
    assert store.history("") == []


def test_one_outbox_item_is_read_by_its_id(store) -> None:
    store.enqueue([item("a"), item("b", "u2")])
    a, b = store.outbox()
    assert store.outbox_item(b.id) == b
    assert store.outbox_item(a.id).body == b"<x>\x00\xff</x>"  # the bytes as queued
    assert store.outbox_item(b.id + 1000) is None


def test_only_a_dead_item_is_discarded_and_it_keeps_its_last_error(store) -> None:
    store.enqueue([item("dead-1"), item("dead-2", "u2"), item("waiting", "u3")])
    by_id = {i.message_id: i.id for i in store.claim(BROKER, 10, now=1e12)}
    for name in ("dead-1", "dead-2"):
        store.mark_failed(by_id[name], "order system answered 422", retry_at=0.0, dead=True)
    store.mark_failed(by_id["waiting"], "timed out", retry_at=0.0, dead=False)
    missing = max(by_id.values()) + 1000
    assert store.discard([by_id["dead-1"], by_id["waiting"], missing, by_id["dead-1"]],
                         "the order was cancelled by hand") == Discarded(
        1, ((by_id["waiting"], PENDING),), (missing,))
    discarded = store.outbox(DISCARDED)
    assert [i.message_id for i in discarded] == ["dead-1"]
    assert discarded[0].last_error == ("discarded: the order was cancelled by hand; "
                                       "order system answered 422")
    assert store.counts()[(BROKER, DISCARDED)] == 1 and store.counts()[(BROKER, DEAD)] == 1
    assert store.discard([by_id["dead-1"]], "again") == Discarded(
        0, ((by_id["dead-1"], DISCARDED),))
    assert store.replay() == Replayed(1)  # --dead: the dead one only, not the discarded
    assert store.replay([by_id["dead-1"]]) == Replayed(1)  # by id: sent again, as a sent one
    assert {i.message_id: i.status for i in store.outbox()} == {
        "dead-1": PENDING, "dead-2": PENDING, "waiting": PENDING}


def test_prune_deletes_only_done_items_and_dedupe_keys_older_than_the_cut(store) -> None:
    now = [100.0]
    store.clock = lambda: now[0]

    def decide(record: SubscriptionRecord | None, ids: RequestIds) -> Decision:
        return Decision(subscription("u9"), (), (), {"at": now[0]})

    store.enqueue([item("sent-old"), item("pending-old", "u2"), item("dead-old", "u3"),
                   item("replayed", "u4"), item("discarded-old", "u7")])
    store.enqueue([NewOutboxItem(BROKER, "suppressed-old", "u5", "SubscriptionUpdated", {},
                                 b"<x/>", SUPPRESSED)])
    by_id = {i.message_id: i.id for i in store.claim(BROKER, 10, now=1e12)}
    store.mark_sent([by_id["sent-old"], by_id["replayed"]])
    store.mark_failed(by_id["dead-old"], "refused", retry_at=0.0, dead=True)
    store.mark_failed(by_id["discarded-old"], "refused", retry_at=0.0, dead=True)
    store.discard([by_id["discarded-old"]], "never to be sent")
    store.record("u9", "webhook:old", decide)
    now[0] = 300.0
    store.enqueue([item("sent-new", "u6")])
    store.mark_sent([i.id for i in store.claim(BROKER, 10, now=1e12) if i.message_id == "sent-new"])
    store.replay([by_id["replayed"]])  # sent long ago, re-queued since: kept
    store.record("u9", "webhook:new", decide)

    assert store.prune(before=200.0, batch=2) == {"outbox": 3, "dedupe": 1, "dead_letters": 0}
    assert sorted(i.message_id for i in store.outbox()) == [
        "dead-old", "pending-old", "replayed", "sent-new"]
    assert store.prune(before=200.0) == {"outbox": 0, "dedupe": 0, "dead_letters": 0}
    # a delivery whose key was pruned is taken as new; a kept key still answers as the first
    assert store.record("u9", "webhook:old", decide) == ({"at": 300.0}, False)
    assert store.record("u9", "webhook:new", decide) == ({"at": 300.0}, True)
    assert store.subscription("u9") is not None  # snapshots are never pruned


def test_prune_walks_a_long_outbox_in_batches(store) -> None:
    now = [100.0]
    store.clock = lambda: now[0]
    store.enqueue([NewOutboxItem(BROKER, f"old-{n}", f"u{n}", "SubscriptionUpdated", {}, b"<x/>",
                                 SUPPRESSED) for n in range(25)])
    store.enqueue([item("kept-old", "u-kept")])  # pending: never pruned, walked past
    store.enqueue([NewOutboxItem(BROKER, f"more-{n}", f"v{n}", "SubscriptionUpdated", {},
                                 b"<x/>", SUPPRESSED) for n in range(5)])
    now[0] = 300.0
    store.enqueue([NewOutboxItem(BROKER, "new", "w", "SubscriptionUpdated", {}, b"<x/>",
                                 SUPPRESSED)])
    assert store.prune(before=200.0, batch=4) == {"outbox": 30, "dedupe": 0, "dead_letters": 0}
    assert sorted(i.message_id for i in store.outbox()) == ["kept-old", "new"]


def test_dead_letters_keep_their_bytes(store) -> None:
    first = store.add_dead_letter("broker", "not well-formed", {"usn": "u1"}, b"<\x00")
    second = store.add_dead_letter("webhook", "x" * 5000, {}, b"")
    assert second > first
    letters = store.dead_letters()
    assert [(d["source"], d["body"], d["headers"]) for d in letters] == [
        ("broker", b"<\x00", {"usn": "u1"}), ("webhook", b"", {})]
    assert len(letters[1]["reason"]) <= 2000
    assert store.dead_letter(first) == letters[0]
    assert store.dead_letter(second + 1) is None
    assert store.dead_letter_counts() == {"broker": (1, 1), "webhook": (1, 1)}


def test_history_comes_oldest_first_and_limited_to_the_newest(store) -> None:
    for n in range(5):
        store.record("u1", None, lambda r, ids, n=n: Decision(None, history=(
            HistoryEntry("test", None, None, None, None, {"n": n}),)))
    assert [h["detail"]["n"] for h in store.history("u1", limit=3)] == [2, 3, 4]


def test_ping_answers_and_a_closed_store_reopens_its_connections(store) -> None:
    store.ping()
    store.close()
    store.ping()


def test_a_replayed_dead_letter_is_kept_marked_and_no_longer_outstanding(store) -> None:
    first = store.add_dead_letter("broker", "invalid", {"message-id": "m1"}, b"<a/>")
    second = store.add_dead_letter("broker", "invalid", {"message-id": "m2"}, b"<b/>")
    third = store.add_dead_letter("broker", "invalid", {"message-id": "m3"}, b"<c/>")
    assert store.outstanding_dead_letters() == [first, second, third]  # oldest first
    assert store.dead_letter(first)["replayed"] is None
    store.mark_dead_letter_replayed(second, "accepted")
    assert store.outstanding_dead_letters() == [first, third]
    marked = store.dead_letter(second)
    assert marked["replayed"]["outcome"] == "accepted" and marked["replayed"]["at"] > 0
    assert marked["body"] == b"<b/>" and marked["reason"] == "invalid"  # kept as it came
    assert [d["id"] for d in store.dead_letters()] == [first, second, third]
    assert store.dead_letter_counts() == {"broker": (3, 2)}
    assert [d["id"] for d in store.dead_letters(outstanding=True)] == [first, third]
    assert [d["id"] for d in store.dead_letters(1, outstanding=True)] == [third]  # the newest


def test_a_discarded_dead_letter_is_settled_once_and_kept_with_why(store) -> None:
    first = store.add_dead_letter("broker", "invalid", {"message-id": "m1"}, b"<a/>")
    second = store.add_dead_letter("webhook", "invalid", {}, b"<b/>")
    assert store.discard_dead_letter(first, "a test message from the lab") is True
    assert store.dead_letter(first)["replayed"]["outcome"] == (
        "discarded: a test message from the lab")
    assert store.outstanding_dead_letters() == [second]
    assert store.dead_letter_counts() == {"broker": (1, 0), "webhook": (1, 1)}
    # settled already, or no such letter: nothing changes
    assert store.discard_dead_letter(first, "again") is False
    assert store.dead_letter(first)["replayed"]["outcome"].endswith("from the lab")
    store.mark_dead_letter_replayed(second, "accepted")
    assert store.discard_dead_letter(second, "late") is False
    assert store.dead_letter(second)["replayed"]["outcome"] == "accepted"
    assert store.discard_dead_letter(second + 1000, "none") is False


def test_prune_deletes_settled_dead_letters_past_the_cut_and_keeps_outstanding_ones(
        store) -> None:
    now = [100.0]
    store.clock = lambda: now[0]
    waiting = store.add_dead_letter("broker", "invalid", {}, b"<a/>")
    replayed = store.add_dead_letter("broker", "invalid", {}, b"<b/>")
    discarded = store.add_dead_letter("webhook", "invalid", {}, b"<c/>")
    settled_late = store.add_dead_letter("broker", "invalid", {}, b"<d/>")
    store.mark_dead_letter_replayed(replayed, "accepted")
    store.discard_dead_letter(discarded, "junk")
    now[0] = 300.0  # settled after the cut, though it came before it
    store.discard_dead_letter(settled_late, "junk")
    assert store.prune(before=200.0, batch=1) == {"outbox": 0, "dedupe": 0, "dead_letters": 2}
    assert [d["id"] for d in store.dead_letters()] == [waiting, settled_late]
    assert store.prune(before=200.0) == {"outbox": 0, "dedupe": 0, "dead_letters": 0}


def test_subscriptions_are_listed_least_recently_changed_first_by_state(store) -> None:
    """`subscription list`: which orders sit in a state, and since when (stuck ones first)."""
    now = [1000.0]
    store.clock = lambda: now[0]
    for usn, states, at in (("u-new", {"order": "inProgress", "subscription": "active"}, 3000.0),
                            ("u-old", {"order": "inProgress", "subscription": None}, 1000.0),
                            ("u-done", {"order": "completed"}, 2000.0)):
        now[0] = at
        store.record(usn, None, lambda r, ids, usn=usn, states=states: Decision(
            subscription(usn, states, 7 if usn == "u-old" else None)))
    listed = store.subscriptions()
    assert [(s.usn, s.updated_at) for s in listed] == [
        ("u-old", 1000.0), ("u-done", 2000.0), ("u-new", 3000.0)]
    assert listed[0] == SubscriptionSummary("u-old", 173, {"order": "inProgress",
                                                          "subscription": None}, 7, 1000.0)
    assert [s.usn for s in store.subscriptions(state=("order", "inProgress"))] == [
        "u-old", "u-new"]
    assert [s.usn for s in store.subscriptions(state=("order", "inProgress"),
                                               changed_before=2500.0)] == ["u-old"]
    assert [s.usn for s in store.subscriptions(state=("subscription", "active"))] == ["u-new"]
    assert store.subscriptions(state=("order", "closed")) == []
    assert [s.usn for s in store.subscriptions(limit=2)] == ["u-old", "u-done"]


def test_a_store_says_the_room_on_its_disk_when_it_is_a_local_file(store, tmp_path) -> None:
    """What /metrics and readiness watch: a SQLite file's disk, as statvfs gives it to this
    process; a PostgreSQL server's disk is the server's (None)."""
    import os

    from adapters.sql_store import SqlStore

    free = store.disk_free()
    if isinstance(store, SqlStore):
        disk = os.statvfs(tmp_path)
        assert free is not None and abs(free - disk.f_bavail * disk.f_frsize) < 64 << 20
    else:
        assert free is None
