"""`smile-gateway subscription show|snapshot USN`: what the store holds of a subscription,
without the webhook (serve stopped, or GET /subscriptions behind webhook.read_token)."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.bootstrap import bootstrap
from gateway.config import load_settings
from gateway.service import StateChange
from tests.conftest import SAMPLES, run_cli

USN = "2142426762"
RTP = (SAMPLES / "SubscriptionReadyToProvision.xml").read_bytes()


def seeded(tmp_path: Path) -> tuple[dict[str, str], dict]:
    env = {"GATEWAY_STORE__URL": f"sqlite:///{tmp_path / 'g.db'}"}
    runtime = bootstrap(load_settings(None, env))
    try:
        runtime.service.accept_smile_document(
            RTP, "SubscriptionReadyToProvision", {"provisionRequestId": "31"}, "webhook:w-1",
            "webhook")
        runtime.service.apply_state_change(StateChange("ev-1", USN, "order", "inProgress"))
        view = runtime.service.subscription_view(USN)
    finally:
        runtime.close()
    return env, view


def test_show_gives_what_get_subscriptions_gives(tmp_path: Path) -> None:
    env, view = seeded(tmp_path)
    done = run_cli(["subscription", "show", USN, "--format", "json"], env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == view


def test_show_as_text_reads_as_the_subscription_and_its_history(tmp_path: Path) -> None:
    env, view = seeded(tmp_path)
    done = run_cli(["subscription", "show", USN], env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:5] == [
        f"subscription {USN} (sid 170)",
        "  statuses: provision ReadyToProvision, suspend Active, activate Activated, "
        "enable NotEnabled",
        "  states: order_state inProgress, subscription_status provisioning_in_progress",
        "  provisionRequestId: 31 (open)",
        "  features: (none)",
    ]
    assert lines[5] == "history (oldest first, the newest 100 at most):"
    entries = lines[6:]
    assert len(entries) == len(view["history"]) == 3
    assert "  webhook  webhook:w-1  order (none) -> acknowledged  " in entries[0]
    assert entries[0].endswith('{"smileMessageType": "SubscriptionReadyToProvision", '
                               '"statuses": {"provision": "ReadyToProvision", "suspend": '
                               '"Active", "activate": "Activated", "enable": "NotEnabled"}}')
    assert "  order-system  ev-1  order acknowledged -> inProgress  " in entries[2]
    assert '"smileMessageType": "SubscriptionProvisionResponse", "status": "suppressed"' \
        in entries[2]


def test_snapshot_writes_the_document_as_it_came_for_translate(tmp_path: Path) -> None:
    env, _ = seeded(tmp_path)
    done = run_cli(["subscription", "snapshot", USN], env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == RTP.decode("utf-8")
    (tmp_path / "snap.xml").write_text(done.stdout, "utf-8")
    rendered = run_cli(["translate", "to-smile", "--vocabulary", "order", "--state",
                        "completed", "--from", "inProgress", "--snapshot",
                        str(tmp_path / "snap.xml"), "--format", "json"], env=env)
    assert rendered.returncode == 0, rendered.stderr
    assert [m["smileMessageType"] for m in json.loads(rendered.stdout)] == [
        "SubscriptionProvisioned", "SubscriptionProvisionResponse"]


def test_an_unknown_subscription_is_named(tmp_path: Path) -> None:
    env, _ = seeded(tmp_path)
    for action in ("show", "snapshot"):
        done = run_cli(["subscription", action, "999"], env=env)
        assert done.returncode == 1, done.stderr
        assert done.stderr == ("smile-gateway: no subscription with usn 999 in the store "
                               f"(sqlite:///{tmp_path / 'g.db'})\n")
        assert done.stdout == ""


def test_list_finds_orders_stuck_in_a_state_oldest_change_first(tmp_path: Path) -> None:
    import sqlite3
    import time

    env, _ = seeded(tmp_path)  # USN: order inProgress
    runtime = bootstrap(load_settings(None, env))
    try:
        for usn, states in (("N-2", ["inProgress"]), ("N-3", ["inProgress", "completed"])):
            runtime.service.accept_smile_document(
                RTP.replace(USN.encode(), usn.encode()), "SubscriptionReadyToProvision",
                {"provisionRequestId": "40"}, None, "webhook")
            for n, state in enumerate(states):
                runtime.service.apply_state_change(StateChange(f"ev-{usn}-{n}", usn, "order",
                                                               state))
    finally:
        runtime.close()
    now = time.time()
    with sqlite3.connect(tmp_path / "g.db") as conn:  # USN unchanged for 3 days, N-2 for 2 h
        for usn, age in ((USN, 3 * 86_400), ("N-2", 7_200), ("N-3", 60)):
            conn.execute("UPDATE subscriptions SET updated_at = ? WHERE usn = ?",
                         (now - age, usn))
    conn.close()
    stuck = run_cli(["subscription", "list", "--state", "order=inProgress", "--unchanged-for",
                     "86400", "--format", "json"], env=env)
    assert stuck.returncode == 0, stuck.stderr
    [only] = json.loads(stuck.stdout)
    assert (only["usn"], only["states"]["order_state"], only["provisionRequestId"]) == (
        USN, "inProgress", 31)
    assert 3 * 86_400 - 60 < only["unchangedSeconds"] < 3 * 86_400 + 60
    table = run_cli(["subscription", "list", "--state", "order=inProgress"], env=env)
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["usn", "sid", "order_state", "subscription_status", "request",
                                "changed", "unchanged", "for"]
    assert [line.split()[0] for line in lines[1:-1]] == [USN, "N-2"]  # the oldest first
    assert lines[1].split()[-1] == "72h", lines[1]
    assert lines[-1] == "2 subscription(s)"
    cut = run_cli(["subscription", "list", "--limit", "1"], env=env)
    assert cut.stdout.splitlines()[-1] == ("1 subscription(s), the least recently changed "
                                           "(--limit 1: there are more)")
    for bad, why in ((["--state", "order"], "give --state as VOCABULARY=STATE"),
                     (["--state", "shipping=x"], "unknown vocabulary 'shipping'"),
                     (["--state", "order=bogus"], "unknown order state 'bogus'")):
        refused = run_cli(["subscription", "list", *bad], env=env)
        assert refused.returncode == 2 and why in refused.stderr, refused.stderr
