"""`publish` and `outbox list|replay` through the command line, against the real broker."""

from __future__ import annotations

import json
from pathlib import Path

from tests.brokers import receive, require_broker, unique_queue
from tests.conftest import INVALID, SAMPLES, run_cli
from tests.e2e.servers import GatewayProcess


def env_for(tmp_path: Path, queue: str) -> dict[str, str]:
    return {"GATEWAY_STORE__URL": f"sqlite:///{tmp_path / 'g.db'}",
            "GATEWAY_EMISSION__DESTINATION": queue,
            "GATEWAY_BROKER__RECEIPT_TIMEOUT_S": "5"}


def test_publish_waits_for_the_broker_and_the_outbox_shows_it(tmp_path: Path) -> None:
    require_broker()
    queue = unique_queue("cli-publish")
    env = env_for(tmp_path, queue)
    files = [str(SAMPLES / "SubscriptionReadyToProvision.xml"),
             str(SAMPLES / "SubscriptionReadyToProvision.xml")]
    done = run_cli(["publish", "--message-type", "SubscriptionReadyToProvision", *files],
                   env=env)
    assert done.returncode == 0, done.stderr
    assert "2 of 2 confirmed by the broker" in done.stdout
    frames = receive(queue, 2, timeout=20)
    assert [f.headers["provisionRequestId"] for f in frames] == ["1", "2"]  # allocated, unique
    listed = run_cli(["outbox", "list", "--format", "json"], env=env)
    items = json.loads(listed.stdout)
    assert [(i["status"], i["kind"]) for i in items] == [
        ("sent", "SubscriptionReadyToProvision")] * 2


def test_publish_sends_a_document_in_another_encoding_as_utf8_text(tmp_path: Path) -> None:
    """The bus carries text without a content-length: a UTF-16 document, sent as it is, ended
    at its first NUL byte, and what followed it broke the next frame."""
    require_broker()
    queue = unique_queue("cli-publish-encoding")
    text = (SAMPLES / "SubscriptionActivated.xml").read_text("utf-8").replace(
        "Home broadband", "Café broadband")
    files = []
    for name, encoding, codec in (("u16.xml", "UTF-16", "utf-16"),
                                  ("latin.xml", "ISO-8859-1", "latin-1")):
        (tmp_path / name).write_bytes(
            text.replace('encoding="UTF-8"', f'encoding="{encoding}"').encode(codec))
        files.append(str(tmp_path / name))
    done = run_cli(["publish", "--message-type", "SubscriptionActivated", *files],
                   env=env_for(tmp_path, queue))
    assert done.returncode == 0, done.stderr
    assert "2 of 2 confirmed by the broker" in done.stdout
    frames = receive(queue, 2, timeout=20)
    assert [f.body for f in frames] == [text.encode("utf-8")] * 2


def test_publish_beside_a_running_serve_leaves_the_sending_to_it(tmp_path: Path) -> None:
    """One SQLite file, two relays would send the same rows: `publish` waits for serve's."""
    require_broker()
    queue = unique_queue("cli-publish-serve")
    env = env_for(tmp_path, queue)
    gateway = GatewayProcess(tmp_path, {**env, "GATEWAY_EMISSION__ENABLED": "true"}).start()
    try:
        files = [str(SAMPLES / "SubscriptionEnabled.xml")] * 2
        done = run_cli(["publish", "--message-type", "SubscriptionEnabled", *files], env=env)
        assert done.returncode == 0, done.stderr
        assert "2 of 2 confirmed by the broker" in done.stdout
        assert (f"note: pid {gateway.proc.pid} relays from this store (a `serve`, or another "
                "`publish`): the messages were left to it") in done.stderr
        frames = receive(queue, 3, timeout=10, idle=3)
        ids = [f.headers["gateway-message-id"] for f in frames]
        assert len(ids) == 2 and len(set(ids)) == 2, ids  # each once
    finally:
        assert gateway.stop() == 0, gateway.log.read_text()
    alone = run_cli(["publish", "--message-type", "SubscriptionEnabled", files[0]], env=env)
    assert alone.returncode == 0 and "relays from this store" not in alone.stderr  # it sent


def test_publish_refuses_an_invalid_file_and_sends_nothing(tmp_path: Path) -> None:
    queue = unique_queue("cli-invalid")
    env = env_for(tmp_path, queue)
    done = run_cli(["publish", "--message-type", "SubscriptionEnabled",
                    str(SAMPLES / "SubscriptionEnabled.xml"),
                    str(INVALID / "sid-not-integer.xml")], env=env)
    assert done.returncode == 1
    assert "nothing published" in done.stderr and "SID" in done.stderr
    listed = run_cli(["outbox", "list"], env=env)
    assert "0 item(s)" in listed.stdout


def test_publish_to_an_unreachable_broker_exits_1_and_keeps_the_message(tmp_path: Path) -> None:
    env = {**env_for(tmp_path, "/queue/nowhere"), "GATEWAY_BROKER__PORT": "9",
           "GATEWAY_BROKER__RECEIPT_TIMEOUT_S": "0.5", "GATEWAY_EMISSION__MAX_ATTEMPTS": "2",
           "GATEWAY_BROKER__RECONNECT_MAX_S": "0.2"}
    done = run_cli(["publish", "--message-type", "SubscriptionEnabled",
                    str(SAMPLES / "SubscriptionEnabled.xml")], env=env, timeout=60)
    assert done.returncode == 1
    assert ("NOT confirmed (pending, attempts 0): cannot connect to 127.0.0.1:9: "
            "Connection refused; outbox id 1") in done.stderr  # why, not just that
    pending = run_cli(["outbox", "list", "--status", "pending"], env=env)
    assert "SubscriptionEnabled" in pending.stdout  # kept for the relay to send later


def test_replay_requeues_dead_items(tmp_path: Path) -> None:
    from adapters.sql_store import SqlStore
    from gateway.ports import BROKER, DEAD, NewOutboxItem

    env = env_for(tmp_path, "/queue/x")
    store = SqlStore(env["GATEWAY_STORE__URL"])
    [item_id] = store.enqueue([NewOutboxItem(BROKER, "m-1", "u", "SubscriptionEnabled", {},
                                             b"<x/>", DEAD)])
    store.close()
    assert "1 item(s)" in run_cli(["outbox", "list", "--status", "dead"], env=env).stdout
    assert run_cli(["outbox", "replay"], env=env).returncode == 2
    both = run_cli(["outbox", "replay", "--dead", "99999"], env=env)
    assert both.returncode == 2 and "give outbox ids or --dead, not both" in both.stderr
    done = run_cli(["outbox", "replay", "--dead"], env=env)
    assert done.returncode == 0 and "1 item(s) re-queued" in done.stdout
    assert f"{item_id:>6}  broker   pending" in run_cli(["outbox", "list"], env=env).stdout
    again = run_cli(["outbox", "replay", str(item_id)], env=env)
    assert again.returncode == 0 and "0 item(s) re-queued" in again.stdout
    assert f"note: outbox id {item_id} is pending already" in again.stderr
    typo = run_cli(["outbox", "replay", str(item_id), "99999", "99998"], env=env)
    assert typo.returncode == 1 and "0 item(s) re-queued" in typo.stdout
    assert ("smile-gateway: outbox replay: no outbox item with id 99999, 99998 (`outbox list` "
            "shows the ids)") in typo.stderr


def test_replay_refuses_an_id_no_store_can_hold_as_a_usage_error(tmp_path: Path) -> None:
    env = env_for(tmp_path, "/queue/x")
    done = run_cli(["outbox", "replay", str(2**63)], env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert (f"argument ID: expected a whole number from -9223372036854775808 to "
            f"9223372036854775807, found {2**63}") in done.stderr


def test_prune_deletes_old_done_items_and_keeps_the_rest(tmp_path: Path) -> None:
    import time

    from adapters.sql_store import SqlStore
    from gateway.ports import BROKER, SUPPRESSED, NewOutboxItem

    env = env_for(tmp_path, "/queue/x")
    long_ago = time.time() - 40 * 86_400
    store = SqlStore(env["GATEWAY_STORE__URL"], clock=lambda: long_ago)
    store.enqueue([NewOutboxItem(BROKER, "old", "u", "SubscriptionEnabled", {}, b"<x/>",
                                 SUPPRESSED),
                   NewOutboxItem(BROKER, "waiting", "u2", "SubscriptionEnabled", {}, b"<x/>")])
    settled = store.add_dead_letter("broker", "invalid", {}, b"<x/>")
    store.discard_dead_letter(settled, "junk")
    outstanding = store.add_dead_letter("broker", "invalid", {}, b"<y/>")
    store.clock = time.time
    store.enqueue([NewOutboxItem(BROKER, "new", "u3", "SubscriptionEnabled", {}, b"<x/>",
                                 SUPPRESSED)])
    store.close()
    done = run_cli(["outbox", "prune"], env=env)  # store.retention_days: 30
    assert done.returncode == 0, done.stderr
    assert done.stdout == ("1 outbox item(s) (sent, suppressed or discarded), 0 dedupe key(s) "
                           "and 1 settled dead letter(s) older than 30 days deleted\n")
    letters = json.loads(run_cli(["dead-letters", "list", "--format", "json"], env=env).stdout)
    assert [d["id"] for d in letters] == [outstanding]  # waits for its replay, however old
    listed = run_cli(["outbox", "list", "--format", "json"], env=env)
    assert sorted(i["messageId"] for i in json.loads(listed.stdout)) == ["new", "waiting"]
    off = run_cli(["outbox", "prune"], env={**env, "GATEWAY_STORE__RETENTION_DAYS": "0"})
    assert off.returncode == 2 and "retention is off" in off.stderr
    assert "0 outbox item(s)" in run_cli(["outbox", "prune", "--older-than-days", "0.5"],
                                         env=env).stdout


def test_dead_letters_are_listed_and_one_is_shown_as_it_came(tmp_path: Path) -> None:
    from adapters.sql_store import SqlStore

    env = env_for(tmp_path, "/queue/x")
    store = SqlStore(env["GATEWAY_STORE__URL"])
    body = b"<?xml version='1.0'?>\n<Broken>\xff</Broken>"
    first = store.add_dead_letter("broker", "not well-formed:\n  bad byte", {"usn": "u1"}, body)
    store.add_dead_letter("webhook", "unknown smileMessageType 'Nope'", {}, b"<x/>")
    store.close()
    listed = run_cli(["dead-letters", "list"], env=env)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[1].split()[0] == str(first) and lines[1].endswith(
        f"broker             {len(body):>7}  not well-formed: bad byte")
    assert lines[-1] == "2 dead letter(s)"
    as_json = json.loads(run_cli(["dead-letters", "list", "--format", "json"], env=env).stdout)
    assert [(d["source"], d["bytes"], d["headers"]) for d in as_json] == [
        ("broker", len(body), {"usn": "u1"}), ("webhook", 4, {})]
    shown = run_cli(["dead-letters", "show", str(first)], env=env, stdin=b"")
    assert shown.returncode == 0 and shown.stdout == body  # the bytes as they came
    assert b"# usn: u1" in shown.stderr and b"not well-formed" in shown.stderr
    cut = run_cli(["dead-letters", "list", "--limit", "1"], env=env).stdout.splitlines()
    assert cut[-1] == "1 dead letter(s), the newest (--limit 1: there may be more)"
    assert cut[1].split()[2] == "webhook"
    missing = run_cli(["dead-letters", "show", "999"], env=env)
    assert missing.returncode == 1 and "no dead letter 999" in missing.stderr


def _letter(env: dict[str, str], body: bytes, headers: dict[str, str],
            reason: str = "handler failed: RuntimeError('a bug')") -> int:
    from adapters.sql_store import SqlStore

    store = SqlStore(env["GATEWAY_STORE__URL"])
    try:
        return store.add_dead_letter("broker", reason, headers, body)
    finally:
        store.close()


def _replay(env: dict[str, str], *args: str):
    return run_cli(["dead-letters", "replay", *args], env=env)


def test_a_dead_letter_is_replayed_once_its_cause_is_fixed(tmp_path: Path) -> None:
    """A document dead-lettered by a fault since fixed (a handler bug, a status value the
    schema has since been taught) is taken from the store as the broker first delivered it:
    recorded, marked replayed, and not taken twice."""
    from adapters.sql_store import SqlStore

    env = env_for(tmp_path, "/queue/x")
    body = (SAMPLES / "SubscriptionActivated.xml").read_bytes()
    letter = _letter(env, body, {"message-id": "ID:m-1",
                                 "smileMessageType": "SubscriptionActivated"})
    done = _replay(env, str(letter))
    assert done.returncode == 0, done.stderr
    assert f"dead letter {letter}: accepted (usn 2142426765" in done.stdout
    assert "1 of 1 dead letter(s) replayed" in done.stdout
    store = SqlStore(env["GATEWAY_STORE__URL"])
    try:
        assert store.subscription("2142426765") is not None
        assert store.history("2142426765")[-1]["eventId"] == "broker:ID:m-1"
        assert store.outstanding_dead_letters() == []
        assert store.dead_letter_counts() == {"broker": (1, 0)}  # kept, never a second one
    finally:
        store.close()
    again = _replay(env, str(letter))
    assert again.returncode == 0 and "replayed before" in again.stderr
    assert "0 of 1 dead letter(s) replayed" in again.stdout
    listed = json.loads(run_cli(["dead-letters", "list", "--format", "json"], env=env).stdout)
    assert listed[0]["replayed"]["outcome"] == "accepted"
    outstanding = run_cli(["dead-letters", "list", "--outstanding"], env=env)
    assert outstanding.stdout.splitlines()[-1] == "0 dead letter(s) not settled"
    table = run_cli(["dead-letters", "list"], env=env).stdout.splitlines()
    assert "accepted" in table[1]
    shown = run_cli(["dead-letters", "show", str(letter)], env=env)
    assert shown.stdout == body.decode() and "# replayed " in shown.stderr


def test_a_dead_letter_still_refused_stays_outstanding_and_says_why(tmp_path: Path) -> None:
    env = env_for(tmp_path, "/queue/x")
    invalid = _letter(env, (INVALID / "unknown-provision-status.xml").read_bytes(),
                      {"message-id": "ID:m-2"}, reason="invalid")
    unknown = 999
    done = _replay(env, str(invalid), str(unknown))
    assert done.returncode == 1
    assert f"dead letter {invalid}: still refused:" in done.stderr
    assert "ProvisionStatus" in done.stderr  # the violation, with its place
    assert f"no dead letter {unknown}" in done.stderr
    assert "0 of 2 dead letter(s) replayed" in done.stdout
    listed = json.loads(run_cli(["dead-letters", "list", "--format", "json"], env=env).stdout)
    assert [(d["id"], d["replayed"], d["reason"]) for d in listed] == [
        (invalid, None, "invalid")]  # not marked, no new letter for the refusal


def test_replaying_every_dead_letter_goes_oldest_first_and_keeps_a_newer_snapshot(
        tmp_path: Path) -> None:
    """--all takes the outstanding letters in the order they came; a letter older than the
    subscription's last change would set its snapshot back, so it waits for --force."""
    from adapters.sql_store import SqlStore
    from gateway.ports import Decision, HistoryEntry

    env = env_for(tmp_path, "/queue/x")
    activated = (SAMPLES / "SubscriptionActivated.xml").read_bytes()
    stale = _letter(env, activated, {"message-id": "ID:old"})
    store = SqlStore(env["GATEWAY_STORE__URL"])
    store.record("2142426765", None, lambda record, ids: Decision(None, history=(
        HistoryEntry("smile", "broker:ID:newer", None, None, None, {}),)))
    store.close()
    enabled = _letter(env, (SAMPLES / "SubscriptionEnabled.xml").read_bytes(),
                      {"message-id": "ID:other"})
    done = _replay(env, "--all")
    assert done.returncode == 1
    assert f"dead letter {stale}: not replayed: subscription 2142426765 changed at" in done.stderr
    assert "--force" in done.stderr
    assert f"dead letter {enabled}: accepted (usn 2142426764" in done.stdout
    assert "1 of 2 dead letter(s) replayed" in done.stdout
    forced = _replay(env, "--all", "--force")
    assert forced.returncode == 0, forced.stderr
    assert f"dead letter {stale}: accepted" in forced.stdout
    assert "1 of 1 dead letter(s) replayed" in forced.stdout
    assert _replay(env, "--all").stdout.strip().endswith("no outstanding dead letters")


def test_a_dead_letter_already_recorded_counts_as_replayed(tmp_path: Path) -> None:
    env = env_for(tmp_path, "/queue/x")
    body = (SAMPLES / "SubscriptionActivated.xml").read_bytes()
    first = _letter(env, body, {"message-id": "ID:twice"})
    second = _letter(env, body, {"message-id": "ID:twice"})  # the broker redelivered it
    done = _replay(env, str(first), str(second))
    assert done.returncode == 0, done.stderr
    assert (f"dead letter {second}: already recorded (a repeated delivery of usn 2142426765)"
            in done.stdout)
    assert "2 of 2 dead letter(s) replayed" in done.stdout


def test_dead_letters_replay_asks_for_ids_or_all(tmp_path: Path) -> None:
    env = env_for(tmp_path, "/queue/x")
    for args in ((), ("1", "--all")):
        done = _replay(env, *args)
        assert done.returncode == 2 and "give dead letter ids or --all" in done.stderr


def test_a_dead_letter_that_will_never_be_taken_is_discarded_with_a_reason(
        tmp_path: Path) -> None:
    """A letter no fix will make acceptable (a lab's test message, a document for another
    system) would keep the outstanding gauge above 0 for good: discarding settles it, says why,
    and keeps its document until retention."""
    env = env_for(tmp_path, "/queue/x")
    junk = _letter(env, b"<not-smile/>", {"message-id": "ID:junk"}, reason="invalid")
    kept = _letter(env, (SAMPLES / "SubscriptionActivated.xml").read_bytes(),
                   {"message-id": "ID:good"})
    done = run_cli(["dead-letters", "discard", str(junk), "999", "--reason",
                    "a test message from the lab"], env=env)
    assert done.returncode == 1
    assert f"dead letter {junk}: discarded" in done.stdout
    assert "no dead letter 999" in done.stderr
    assert "1 of 2 dead letter(s) discarded" in done.stdout
    listed = json.loads(run_cli(["dead-letters", "list", "--format", "json"], env=env).stdout)
    assert [(d["id"], d["replayed"] and d["replayed"]["outcome"]) for d in listed] == [
        (junk, "discarded: a test message from the lab"), (kept, None)]
    table = run_cli(["dead-letters", "list"], env=env).stdout.splitlines()
    assert "discarded" in table[1]
    shown = run_cli(["dead-letters", "show", str(junk)], env=env)
    assert "# discarded " in shown.stderr and "a test message from the lab" in shown.stderr
    # settled: --all passes it by, and naming it says how it was settled
    replayed = _replay(env, "--all")
    assert replayed.returncode == 0, replayed.stderr
    assert "1 of 1 dead letter(s) replayed" in replayed.stdout
    again = _replay(env, str(junk))
    assert again.returncode == 0
    assert (f"note: dead letter {junk} was discarded before, at " in again.stderr
            and "(a test message from the lab): left as it is" in again.stderr)
    twice = run_cli(["dead-letters", "discard", str(junk), str(kept), "--reason", "x"], env=env)
    assert twice.returncode == 0, twice.stderr
    assert f"note: dead letter {junk} was discarded before" in twice.stderr
    assert f"note: dead letter {kept} was replayed before" in twice.stderr
    assert "0 of 2 dead letter(s) discarded" in twice.stdout


def test_dead_letters_discard_asks_for_ids_and_a_reason(tmp_path: Path) -> None:
    env = env_for(tmp_path, "/queue/x")
    for args, expected in ((("--reason", "x"), "give dead letter ids"),
                           (("1",), "the following arguments are required: --reason"),
                           (("1", "--reason", "  "), "--reason: say why")):
        done = run_cli(["dead-letters", "discard", *args], env=env)
        assert done.returncode == 2 and expected in done.stderr, done.stderr


def test_a_dead_item_that_must_never_be_sent_is_discarded_with_a_reason(
        tmp_path: Path) -> None:
    """An event the order system will refuse for good (an order cancelled by hand there) is
    dead, and the dead gauge stays above 0 until it is discarded: set aside, the reason kept
    with its last error, pruned like a sent one, sent after all only when replayed by id."""
    from adapters.sql_store import SqlStore
    from gateway.ports import FORWARD, NewOutboxItem

    env = env_for(tmp_path, "/queue/x")
    store = SqlStore(env["GATEWAY_STORE__URL"])
    store.enqueue([NewOutboxItem(FORWARD, "ev-1", "u1", "subscription.updated", {}, b"{}"),
                   NewOutboxItem(FORWARD, "ev-2", "u2", "subscription.updated", {}, b"{}")])
    dead, waiting = (i.id for i in store.claim(FORWARD, 10, now=1e12))
    store.mark_failed(dead, "HTTP 422 from the order system", retry_at=0.0, dead=True)
    store.mark_failed(waiting, "HTTP 503", retry_at=0.0, dead=False)
    store.close()
    done = run_cli(["outbox", "discard", str(dead), str(waiting), "999", "--reason",
                    "order cancelled by hand in the order system"], env=env)
    assert done.returncode == 1
    assert done.stdout == "1 item(s) discarded\n"
    assert (f"note: outbox id {waiting} is pending, not dead: left as it is (`outbox list` "
            "shows why)") in done.stderr
    assert "no outbox item with id 999" in done.stderr
    listed = {i["messageId"]: i for i in json.loads(
        run_cli(["outbox", "list", "--format", "json"], env=env).stdout)}
    assert listed["ev-1"]["status"] == "discarded"
    assert listed["ev-1"]["lastError"] == ("discarded: order cancelled by hand in the order "
                                           "system; HTTP 422 from the order system")
    only = run_cli(["outbox", "list", "--status", "discarded"], env=env)
    assert only.returncode == 0 and only.stdout.splitlines()[-1] == "1 item(s)"
    assert run_cli(["outbox", "replay", "--dead"], env=env).stdout == "0 item(s) re-queued\n"
    for args, expected in ((("--reason", "x"), "give outbox ids"),
                           ((str(dead),), "the following arguments are required: --reason")):
        usage = run_cli(["outbox", "discard", *args], env=env)
        assert usage.returncode == 2 and expected in usage.stderr, usage.stderr


def test_the_outbox_is_listed_for_one_subscription_and_says_when_the_limit_cut_it(
        tmp_path: Path) -> None:
    from adapters.sql_store import SqlStore
    from gateway.ports import BROKER, FORWARD, SUPPRESSED, NewOutboxItem

    env = env_for(tmp_path, "/queue/x")
    store = SqlStore(env["GATEWAY_STORE__URL"])
    store.enqueue([NewOutboxItem(channel, f"{channel}-{usn}-{n}", usn, "SubscriptionEnabled", {},
                                 b"<x/>", SUPPRESSED)
                   for n in range(3) for usn in ("u1", "u2") for channel in (BROKER, FORWARD)])
    store.close()
    listed = json.loads(run_cli(["outbox", "list", "--usn", "u1", "--channel", "forward",
                                 "--format", "json"], env=env).stdout)
    assert [i["messageId"] for i in listed] == ["forward-u1-0", "forward-u1-1", "forward-u1-2"]
    cut = run_cli(["outbox", "list", "--usn", "u2", "--limit", "2"], env=env)
    assert cut.returncode == 0, cut.stderr
    assert cut.stdout.splitlines()[-1] == ("2 item(s), the newest (--limit 2: there may be "
                                           "more)")
    assert run_cli(["outbox", "list", "--usn", "u2"], env=env).stdout.splitlines()[-1] == (
        "6 item(s)")
    bad = run_cli(["outbox", "list", "--channel", "smtp"], env=env)
    assert bad.returncode == 2 and "invalid choice: 'smtp'" in bad.stderr


def test_one_outbox_item_is_shown_as_it_is_sent_by_its_id_or_its_message_id(
        tmp_path: Path) -> None:
    """What the broker or the order system was given (or refused): the document or event on
    stdout, byte for byte; its status, last error and headers on stderr."""
    from adapters.sql_store import SqlStore
    from gateway.ports import BROKER, NewOutboxItem

    env = env_for(tmp_path, "/queue/x")
    body = (SAMPLES / "SubscriptionActivated.xml").read_bytes()
    store = SqlStore(env["GATEWAY_STORE__URL"])
    store.enqueue([NewOutboxItem(BROKER, "6f1c-msg", "2142426765", "SubscriptionActivated",
                                 {"smileMessageType": "SubscriptionActivated",
                                  "usn": "2142426765"}, body)])
    [row] = store.claim(BROKER, 1, now=1e12)
    store.mark_failed(row.id, "ERROR from the broker: not authorised", retry_at=0.0, dead=True)
    store.close()
    for key in (str(row.id), "6f1c-msg"):
        shown = run_cli(["outbox", "show", key], env=env, stdin=b"")
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout == body
        err = shown.stderr.decode()
        assert err.startswith(f"# outbox {row.id}, broker, dead after 1 attempt(s), ")
        assert "ERROR from the broker: not authorised" in err
        assert "# gateway-message-id: 6f1c-msg\n" in err
        assert "# smileMessageType: SubscriptionActivated\n" in err
    for key in ("999", "no-such-message"):
        missing = run_cli(["outbox", "show", key], env=env)
        assert missing.returncode == 1
        assert f"no outbox item {key} (`outbox list` shows them)" in missing.stderr


def test_status_sums_up_the_store_and_exits_1_when_something_needs_attention(
        tmp_path: Path) -> None:
    """One command for a cron job or a monitoring check, with or without a running serve:
    what the outbox and the dead letters hold, and whether anything waits for an operator."""
    import time

    from adapters.sql_store import SqlStore
    from gateway.ports import BROKER, FORWARD, SUPPRESSED, NewOutboxItem

    env = env_for(tmp_path, "/queue/x")
    calm = run_cli(["status"], env=env)
    assert calm.returncode == 0, calm.stderr
    assert calm.stdout.splitlines()[-1] == "nothing needs attention"
    store = SqlStore(env["GATEWAY_STORE__URL"], clock=lambda: time.time() - 600)
    store.enqueue([NewOutboxItem(FORWARD, "ev-1", "u1", "SubscriptionActivated", {}, b"{}"),
                   NewOutboxItem(FORWARD, "ev-2", "u2", "SubscriptionActivated", {}, b"{}"),
                   NewOutboxItem(BROKER, "m-1", "u1", "SubscriptionEnabled", {}, b"<x/>",
                                 SUPPRESSED)])
    dead = next(i.id for i in store.claim(FORWARD, 10, now=1e12) if i.message_id == "ev-2")
    store.mark_failed(dead, "HTTP 422", retry_at=0.0, dead=True)
    store.add_dead_letter("broker", "invalid", {}, b"<x/>")
    store.close()
    done = run_cli(["status"], env=env)
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert "outbox broker: suppressed 1" in lines
    assert any(line.startswith("outbox forward: pending 1 (oldest 10m") and
               line.endswith(", dead 1") for line in lines), lines
    assert "dead letters broker: 1 kept, 1 outstanding" in lines
    assert lines[-4:-1] == [
        "needs attention:",
        "  1 dead outbox item(s): `smile-gateway outbox list --status dead`",
        "  1 outstanding dead letter(s): `smile-gateway dead-letters list --outstanding`"]
    assert lines[-1].startswith("  forward: the oldest pending item has waited 10m")
    assert lines[-1].endswith("(over 5m): `smile-gateway outbox list --status pending "
                              "--channel forward`")
    as_json = json.loads(run_cli(["status", "--format", "json", "--stuck-after", "60"],
                                 env=env).stdout)
    assert as_json["outbox"]["forward"]["pending"] == 1
    assert as_json["outbox"]["forward"]["oldestPendingSeconds"] >= 600
    assert as_json["deadLetters"] == {"broker": {"kept": 1, "outstanding": 1}}
    assert len(as_json["attention"]) == 3  # dead, outstanding, and pending past 60 s


def test_what_a_sender_or_broker_wrote_cannot_drive_the_operators_terminal(
        tmp_path: Path) -> None:
    """Headers, reasons and last errors come from outside (a broker's message, an ERROR
    frame, an order system's answer): the tables and the notes on stderr show their control
    characters escaped, so a terminal escape in them is text, not a command. A document on
    stdout stays as it came."""
    from adapters.sql_store import SqlStore
    from gateway.ports import FORWARD, NewOutboxItem

    env = env_for(tmp_path, "/queue/x")
    store = SqlStore(env["GATEWAY_STORE__URL"])
    body = b"<doc>\x1b[31m</doc>"
    letter = store.add_dead_letter("broker", "invalid\x1b[2J\nforged line",
                                   {"x-evil": "\x1b]0;owned\x07"}, body)
    store.enqueue([NewOutboxItem(FORWARD, "ev-1", "u1", "SubscriptionActivated",
                                 {"Idempotency-Key": "ev-1"}, b"{}")])
    [row] = store.claim(FORWARD, 1, now=1e12)
    store.mark_failed(row.id, "HTTP 422: \x1b[2Jgone\x9b", retry_at=0.0, dead=True)
    store.close()
    outputs = []
    for args in (["dead-letters", "list"], ["outbox", "list"], ["outbox", "show", str(row.id)]):
        done = run_cli(args, env=env)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout + done.stderr)
    shown = run_cli(["dead-letters", "show", str(letter)], env=env, stdin=b"")
    assert shown.stdout == body  # the document, byte for byte
    outputs.append(shown.stderr.decode())
    for text in outputs:
        assert "\x1b" not in text and "\x07" not in text and "\x9b" not in text, text
    assert "invalid\\x1b[2J\\nforged line" in outputs[3]
    assert "# x-evil: \\x1b]0;owned\\x07" in outputs[3]
    assert "HTTP 422: \\x1b[2Jgone\\x9b" in outputs[1] and "\\x1b[2Jgone" in outputs[2]
