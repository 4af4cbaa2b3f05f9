"""`translate`, `mapping` and `check-config` through the command line, for every documented row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lxml import etree

from gateway.cli import main
from tests.conftest import INVALID, SAMPLES, run_cli
from tests.spec_tables import FLAGS, graphs, outbound_rows

SNAPSHOT = str(SAMPLES / "SubscriptionFeaturesChanged.xml")
NS = {"s": "http://xml.inomial.com/smile/2.xsd"}
ROWS = [("order", r) for r in outbound_rows()["order"]] + \
       [("subscription", r) for r in outbound_rows()["subscription"]]


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(("vocabulary", "row"), ROWS, ids=lambda x: getattr(x, "state", x))
def test_to_smile_emits_each_documented_row(capsys, vocabulary, row) -> None:
    code, out, err = cli(capsys, "translate", "to-smile", "--vocabulary", vocabulary,
                         "--state", row.state, "--snapshot", SNAPSHOT,
                         "--provision-request-id", "7", "--format", "json")
    assert code == 0, err
    messages = json.loads(out)
    types = [m["smileMessageType"] for m in messages]
    assert types == [t for t in (row.message, row.response and "SubscriptionProvisionResponse")
                     if t]
    for m in messages:
        assert set(m) == {"smileMessageType", "headers", "body"}
        if m["smileMessageType"] != "SubscriptionProvisionResponse":
            root = etree.fromstring(m["body"].encode())
            for flag, value in row.flags.items():
                if value is not None:
                    assert root.findtext(f".//s:{flag.capitalize()}Status", namespaces=NS) == value


def test_to_smile_xml_prints_the_documents(capsys) -> None:
    code, out, _ = cli(capsys, "translate", "to-smile", "--vocabulary", "subscription",
                       "--state", "Provisioning in Progress", "--snapshot", SNAPSHOT)
    assert code == 0
    assert out.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<SubscriptionFeaturesUpdate')
    assert "<ProvisionStatus>ReadyToProvision</ProvisionStatus>" in out


def test_a_state_that_emits_nothing_gives_an_empty_list(capsys) -> None:
    code, out, _ = cli(capsys, "translate", "to-smile", "--vocabulary", "order", "--state",
                       "acknowledged", "--snapshot", SNAPSHOT, "--format", "json")
    assert code == 0 and json.loads(out) == []


@pytest.mark.parametrize("vocabulary", ["order", "subscription"])
def test_refused_transitions_exit_1_naming_both_states(capsys, vocabulary) -> None:
    graph, _ = graphs()[vocabulary]
    for current in sorted(graph):
        for wanted in sorted(set(graph) - graph[current] - {current}):
            code, out, err = cli(capsys, "translate", "to-smile", "--vocabulary", vocabulary,
                                 "--state", wanted, "--from", current, "--snapshot", SNAPSHOT)
            assert code == 1, (current, wanted)
            assert f"{current} -> {wanted}" in err and out == ""
        for wanted in sorted(graph[current]):
            code, _, err = cli(capsys, "translate", "to-smile", "--vocabulary", vocabulary,
                               "--state", wanted, "--from", current, "--snapshot", SNAPSHOT)
            assert code == 0, (current, wanted, err)


def test_an_unknown_state_exits_2_listing_the_allowed_ones() -> None:
    done = run_cli(["translate", "to-smile", "--vocabulary", "order", "--state", "shipped",
                    "--snapshot", SNAPSHOT])
    assert done.returncode == 2
    assert "unknown order state 'shipped'" in done.stderr and "inProgress" in done.stderr
    unknown_from = run_cli(["translate", "to-smile", "--vocabulary", "order", "--state",
                            "held", "--from", "Held", "--snapshot", SNAPSHOT])
    assert unknown_from.returncode == 2
    vocab = run_cli(["translate", "to-smile", "--vocabulary", "orders", "--state", "held",
                     "--snapshot", SNAPSHOT])
    assert vocab.returncode == 2 and "unknown vocabulary 'orders'" in vocab.stderr


def test_an_invalid_snapshot_exits_1_with_located_errors() -> None:
    done = run_cli(["translate", "to-smile", "--vocabulary", "order", "--state", "accepted",
                    "--snapshot", str(INVALID / "sid-not-integer.xml")])
    assert done.returncode == 1 and "sid-not-integer.xml:5:5:" in done.stderr
    assert "Traceback" not in done.stderr


def test_document_errors_are_one_line_each_as_validate_prints_them() -> None:
    several = str(INVALID / "several-violations.xml")
    done = run_cli(["translate", "from-smile", several])
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        line for line in run_cli(["validate", several]).stdout.splitlines()
        if line.startswith(several)]  # each violation once, located; no summary repeating it
    assert len(done.stderr.splitlines()) == 3
    response = str(SAMPLES / "SubscriptionProvisionResponse.xml")
    done = run_cli(["translate", "to-smile", "--vocabulary", "order", "--state", "accepted",
                    "--snapshot", response])
    assert done.returncode == 1
    assert done.stderr == (f"{response}: a snapshot must be a SubscriptionFeaturesUpdate "
                           f"document, found SubscriptionProvisionResponse\n")


def test_from_smile_prints_the_documented_json() -> None:
    done = run_cli(["translate", "from-smile", str(SAMPLES / "SubscriptionActivated.xml"),
                    "--message-type", "SubscriptionActivated", "--snapshot",
                    str(SAMPLES / "SubscriptionEnabled.xml")])
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "smileMessageType": "SubscriptionActivated", "usn": "2142426765", "sid": 175,
        "statuses": {"provision": "Provisioned", "suspend": "Active", "activate": "Activated",
                     "enable": "Enabled"},
        "order_state": "completed", "subscription_status": "active",
        "features_added": [7001], "features_removed": []}


def test_from_smile_text_format_and_no_change(capsys) -> None:
    code, out, _ = cli(capsys, "translate", "from-smile", str(SAMPLES / "SubscriptionSuspended.xml"),
                       "--format", "text")
    assert code == 0
    assert "order_state: (no change)" in out and "usn: 2142426766" in out


def test_from_smile_refuses_an_invalid_document_or_a_mismatched_type() -> None:
    bad = run_cli(["translate", "from-smile", str(INVALID / "unknown-provision-status.xml")])
    assert bad.returncode == 1 and "ProvisionStatus" in bad.stderr
    wrong = run_cli(["translate", "from-smile", str(SAMPLES / "SubscriptionEnabled.xml"),
                     "--message-type", "SubscriptionClosed"])
    assert wrong.returncode == 1 and "carries SubscriptionUpdated" in wrong.stderr
    unknown = run_cli(["translate", "from-smile", str(SAMPLES / "SubscriptionEnabled.xml"),
                       "--message-type", "SubscriptionExploded"])
    assert unknown.returncode == 2


@pytest.mark.parametrize("args", [
    ["translate", "from-smile", "/dev/zero"],
    ["translate", "from-smile", "-"],
    ["translate", "to-smile", "--vocabulary", "order", "--state", "completed",
     "--snapshot", "/dev/zero"],
    ["publish", "--message-type", "SubscriptionEnabled", "/dev/zero"],
])
def test_an_endless_input_is_read_only_to_the_size_limit(args: list[str], tmp_path: Path) -> None:
    stdin = b"\0" * (2 << 20) if "-" in args else None  # 2 MiB, over the 1 MiB limit
    done = run_cli(args, stdin=stdin, env={"GATEWAY_STORE__URL": f"sqlite:///{tmp_path / 'g.db'}"},
                   timeout=30)
    assert done.returncode == 1
    err = done.stderr if isinstance(done.stderr, str) else done.stderr.decode()
    assert "document is over the limit of 1048576 bytes" in err


@pytest.mark.parametrize("fmt", ["table", "json", "dot"])
def test_mapping_prints_the_tables_in_force(capsys, fmt) -> None:
    code, out, _ = cli(capsys, "mapping", "--format", fmt)
    assert code == 0
    if fmt == "json":
        data = json.loads(out)
        graph, _ = graphs()["order"]
        assert {k: set(v) for k, v in data["vocabularies"]["order"]["transitions"].items()} == graph
        assert data["vocabularies"]["subscription"]["states"][6] == {
            "id": "provisioning_in_progress", "name": "Provisioning in Progress"}
    elif fmt == "dot":
        assert out.count("digraph") == 2
        assert '"inProgress" -> "completed";' in out
    else:
        assert "SubscriptionReadyToProvision" in out and "Smile -> internal" in out


def test_mapping_for_one_vocabulary(capsys) -> None:
    code, out, _ = cli(capsys, "mapping", "--vocabulary", "subscription", "--format", "dot")
    assert code == 0 and out.count("digraph") == 1 and "decommissioning" in out


def test_check_config_accepts_the_shipped_file_and_names_a_bad_key(tmp_path: Path) -> None:
    ok = run_cli(["check-config"])
    assert ok.returncode == 0 and "configuration OK" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("mapping:\n  inbound:\n    - when: {provision: Gone}\n")
    done = run_cli(["check-config", "--config", str(bad)])
    assert done.returncode == 2
    assert "mapping.inbound[0].when.provision: unknown status 'Gone'" in done.stderr
    assert "ReadyToProvision" in done.stderr
    env = run_cli(["check-config"], env={"GATEWAY_BROKER__PORT": "high"})
    assert env.returncode == 2 and "broker.port" in env.stderr
    risky = run_cli(["check-config"], env={"GATEWAY_STORE__RETENTION_DAYS": "0.5"})
    assert risky.returncode == 0 and "configuration OK" in risky.stdout  # it works
    assert risky.stderr.startswith("warning: store.retention_days 0.5 deletes")
    shown = run_cli(["check-config", "--show"], env={"GATEWAY_STORE__RETENTION_DAYS": "0.5"})
    assert shown.returncode == 0 and "retention_days: 0.5" in shown.stdout
    assert shown.stderr == risky.stderr  # the YAML on stdout stays clean


def test_every_flag_is_named_in_the_table_output(capsys) -> None:
    _, out, _ = cli(capsys, "mapping", "--vocabulary", "order")
    header = out.splitlines()[1]
    assert all(flag.capitalize() in header for flag in FLAGS)


@pytest.mark.parametrize("where", ["before", "after", "nested"])
def test_config_is_read_wherever_it_is_given(tmp_path: Path, where: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("forward:\n  attempts: 3\n  attempts: 0\n")
    args = {"before": ["--config", str(bad), "check-config"],
            "after": ["check-config", "--config", str(bad)],
            "nested": ["--config", str(bad), "outbox", "list"]}[where]
    done = run_cli(args)
    assert done.returncode == 2
    assert "line 3, column 3: 'attempts' is given twice" in done.stderr


def test_check_config_shows_the_values_in_force_without_the_secrets(tmp_path: Path) -> None:
    """Which value won, the file's or an environment override? `check-config --show` prints
    every key as the gateway will use it, as YAML a config file can hold; secrets are said to
    be set, never shown."""
    import yaml

    cfg = tmp_path / "site.yaml"
    cfg.write_text("broker:\n  host: broker.site\nwebhook:\n  port: 9090\n")
    env = {"GATEWAY_WEBHOOK__PORT": "9191", "GATEWAY_WEBHOOK__SECRET": "whsec_c2VjcmV0",
           "GATEWAY_BROKER__FAILOVER": '["standby:61613"]',
           "GATEWAY_STORE__URL": "postgresql://gw:hunter2@db:5432/gw"}
    done = run_cli(["--config", str(cfg), "check-config", "--show"], env=env)
    assert done.returncode == 0, done.stderr
    assert "whsec_c2VjcmV0" not in done.stdout and "hunter2" not in done.stdout
    assert "# webhook.secret: set (from the environment)" in done.stdout
    assert "# broker.password: not set" in done.stdout
    shown = yaml.safe_load(done.stdout)
    assert shown["webhook"]["port"] == 9191  # the override won over the file
    assert shown["broker"]["host"] == "broker.site"
    assert shown["broker"]["failover"] == ["standby:61613"]
    assert shown["store"]["url"] == "postgresql://gw:***@db:5432/gw"
    assert "secret" not in shown["webhook"] and "mapping" not in shown
    assert shown["schema"]["path"].endswith("xsd/smile-2.xsd")
    # what it shows, without the secrets, is a configuration the gateway takes back as it was
    again = tmp_path / "shown.yaml"
    again.write_text(done.stdout.replace("postgresql://gw:***@db", "postgresql://gw@db"))
    back = run_cli(["--config", str(again), "check-config", "--show"], env={})
    assert back.returncode == 0, back.stderr
    assert yaml.safe_load(back.stdout) == {**shown, "store": {
        **shown["store"], "url": "postgresql://gw@db:5432/gw"}}


def test_check_config_names_the_file_a_secret_was_read_from(tmp_path: Path) -> None:
    secret = tmp_path / "webhook-secret"
    secret.write_text("whsec_c2VjcmV0\n")
    done = run_cli(["check-config", "--show"], env={"GATEWAY_WEBHOOK__SECRET_FILE": str(secret)})
    assert done.returncode == 0, done.stderr
    assert "whsec_c2VjcmV0" not in done.stdout
    assert (f"# webhook.secret: set (from {secret}, named by GATEWAY_WEBHOOK__SECRET_FILE)"
            in done.stdout)
    secret.unlink()
    done = run_cli(["check-config"], env={"GATEWAY_WEBHOOK__SECRET_FILE": str(secret)})
    assert done.returncode == 2
    assert f"GATEWAY_WEBHOOK__SECRET_FILE: cannot read {secret}: No such file" in done.stderr
    assert "Traceback" not in done.stderr


def test_check_config_advises_against_a_store_on_a_network_filesystem(
        tmp_path: Path, monkeypatch, capsys) -> None:
    import adapters.sql_store

    table = tmp_path / "mounts"
    table.write_text(f"/dev/sda1 / ext4 rw 0 0\nfiler:/gw {tmp_path} nfs4 rw 0 0\n")
    monkeypatch.setattr(adapters.sql_store, "MOUNT_TABLE", str(table))
    monkeypatch.setenv("GATEWAY_STORE__URL", f"sqlite:///{tmp_path / 'gateway.db'}")
    assert main(["check-config"]) == 0  # a warning, not a refusal
    err = capsys.readouterr().err
    assert err.startswith(f"warning: store.url {tmp_path / 'gateway.db'} is on a network "
                          "filesystem (nfs4)"), err


def test_translate_reports_escape_what_a_document_carries(tmp_path: Path) -> None:
    text = (SAMPLES / "SubscriptionActivated.xml").read_text("utf-8")
    evil = tmp_path / "evil.xml"
    evil.write_text(text.replace("<ProvisionStatus>", "<ProvisionStatus>X\u009b2J", 1), "utf-8")
    done = run_cli(["translate", "from-smile", str(evil), "--format", "text"])
    assert done.returncode == 1
    assert "\u009b" not in done.stderr and "'X\\x9b2J" in done.stderr
