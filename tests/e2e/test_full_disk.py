"""A store whose disk fills up, for real: a small tmpfs under the served SQLite file, mounted
in a mount namespace of the gateway's own (`unshare`, which needs no root where the kernel lets
users have namespaces, as Debian's does)."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import requests

from tests.brokers import receive, require_broker, send, unique_queue, wait_until
from tests.conftest import ROOT, SAMPLES
from tests.e2e.servers import GatewayProcess

RTP = (SAMPLES / "SubscriptionReadyToProvision.xml").read_bytes()
XML = {"Content-Type": "application/xml"}
DISK_KIB = 1024
FILLER_KIB = 512  # what is freed once the disk is full: room for some 15 documents
FIRST_USN = 3_000_000_000


def _unshare() -> tuple[str, ...]:
    found = shutil.which("unshare")
    probe = [found, "--map-root-user", "--mount", "true"] if found else []
    if not probe or subprocess.run(probe, capture_output=True, timeout=30).returncode != 0:
        pytest.fail("`unshare --map-root-user --mount` is refused here: the test mounts a "
                    "small tmpfs in a mount namespace of its own (util-linux, and a kernel "
                    "that lets users have namespaces: kernel.unprivileged_userns_clone=1)")
    return (found, "--map-root-user", "--mount")  # type: ignore[return-value]


def document(n: int) -> bytes:
    return RTP.replace(b"<USN>2142426762</USN>", b"<USN>%d</USN>" % (FIRST_USN + n))


class SmallDisk:
    """`serve` with its store on a tmpfs of DISK_KIB, a filler file of FILLER_KIB on it."""

    def __init__(self, tmp_path: Path, env: dict[str, str] | None = None) -> None:
        disk = tmp_path / "disk"
        disk.mkdir()
        # in the gateway's namespace: the tmpfs over disk/, the filler, then serve (exec'd)
        script = (f'mount -t tmpfs -o size={DISK_KIB}k tmpfs "$0" && '
                  f'dd if=/dev/zero of="$0/filler" bs=1k count={FILLER_KIB} status=none && '
                  'exec "$@"')
        self.gateway = GatewayProcess(
            tmp_path, {"GATEWAY_STORE__URL": f"sqlite:///{disk / 'g.db'}", **(env or {})},
            wrap=(*_unshare(), "sh", "-c", script, str(disk))).start()
        assert self.gateway.proc is not None
        # the tmpfs as the gateway sees it, from outside its namespace
        self.inside = Path(f"/proc/{self.gateway.proc.pid}/root") / str(disk).lstrip("/")

    def post(self, n: int) -> requests.Response:
        return requests.post(f"{self.gateway.url}/smile/messages", data=document(n),
                             headers=XML, timeout=30)

    def fill(self) -> dict[int, int]:
        """Post documents until the disk is full: each one's status, the last a 503."""
        answered: dict[int, int] = {}
        for n in range(5000):
            r = self.post(n)
            answered[n] = r.status_code
            if r.status_code == 503:
                assert r.headers["Content-Type"] == "application/problem+json"
                assert r.headers["Retry-After"] == "5"  # nothing was recorded: resend
                return answered
            assert r.status_code == 202, r.text
        pytest.fail(f"5000 documents fitted on a disk of {DISK_KIB} KiB")

    def free(self) -> None:
        (self.inside / "filler").unlink()

    def copy_store(self, to: Path) -> Path:
        """The store as it is (nothing being written): the disk goes with the gateway's
        namespace, and SQLite, following /proc/PID/root, would look outside it."""
        to.mkdir()
        for name in ("g.db", "g.db-wal"):
            shutil.copyfile(self.inside / name, to / name)
        return to / "g.db"


def usns(db_path: Path) -> set[int]:
    """The subscriptions a store holds (by document number), after SQLite finds it whole."""
    db = sqlite3.connect(db_path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return {int(usn) - FIRST_USN for (usn,) in db.execute("SELECT usn FROM subscriptions")}
    finally:
        db.close()


def test_a_full_disk_is_503_with_one_log_line_and_nothing_answered_202_is_lost(
        tmp_path: Path) -> None:
    disk = SmallDisk(tmp_path)
    try:
        answered = disk.fill()
        for n in range(len(answered), len(answered) + 20):  # it stays full: 503 each time
            r = disk.post(n)
            assert r.status_code == 503, r.text
        ready = requests.get(f"{disk.gateway.url}/readyz", timeout=30)
        assert ready.status_code == 503 and "free on the store's disk" in ready.text
        disk.free()  # room again: the next document is taken
        again = len(answered) + 20
        r = disk.post(again)
        assert r.status_code == 202, r.text
        copy = disk.copy_store(tmp_path / "copy")
    finally:
        assert disk.gateway.stop() == 0, disk.gateway.log.read_text()
    accepted = {n for n, status in answered.items() if status == 202} | {again}
    assert len(accepted) > 10, Counter(answered.values())
    assert usns(copy) == accepted  # every document answered 202, none answered 503
    log = disk.gateway.log.read_text()
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert len(errors) == 1, errors  # 21 requests met the full disk: one line says so
    assert "store unavailable: commit failed: database or disk is full" in errors[0], errors
    assert "store available again: 21 requests were answered 503" in log, log


def test_messages_consumed_while_the_disk_is_full_stay_on_the_broker_until_there_is_room(
        tmp_path: Path) -> None:
    """Nothing is acknowledged that is not committed: what the consumer takes from the
    broker while the disk is full is left there (and taken again with backoff, not as fast as
    the broker redelivers), then recorded once there is room; none becomes a dead letter."""
    require_broker()
    queue = unique_queue("full-disk")
    disk = SmallDisk(tmp_path, {"GATEWAY_INBOUND__ENABLED": "true",
                                "GATEWAY_INBOUND__DESTINATION": queue,
                                "GATEWAY_BROKER__RECONNECT_INITIAL_S": "0.2",
                                "GATEWAY_BROKER__RECONNECT_MAX_S": "1"})
    on_broker = range(9000, 9010)
    try:
        answered = disk.fill()
        for n in on_broker:
            send(queue, document(n), {"smileMessageType": "SubscriptionReadyToProvision",
                                      "provisionRequestId": str(n),
                                      "gateway-message-id": f"smile-{n}"})
        wait_until(lambda: "leaving message-id=" in disk.gateway.log.read_text(), 30,
                   what="the consumer to meet the full disk")
        disk.free()
        counted = 'smile_gateway_broker_messages_total{outcome="accepted"} 10.0'
        wait_until(lambda: counted in requests.get(f"{disk.gateway.url}/metrics",
                                                   timeout=10).text,
                   60, what="the ten messages recorded once there is room")
        metrics = requests.get(f"{disk.gateway.url}/metrics", timeout=10).text
        assert 'smile_gateway_broker_messages_total{outcome="dead-letter"} 0.0' in metrics
        copy = disk.copy_store(tmp_path / "copy")
    finally:
        assert disk.gateway.stop() == 0, disk.gateway.log.read_text()
    accepted = {n for n, status in answered.items() if status == 202}
    assert usns(copy) == accepted | set(on_broker)
    assert receive(queue, 1, timeout=3) == []  # all acknowledged, once committed
    log = disk.gateway.log.read_text()
    waits = log.count("taking messages again in")
    assert 1 <= waits <= 40, log  # backoff, not a loop as fast as the broker redelivers


def test_status_says_when_the_stores_disk_has_no_room_to_commit(tmp_path: Path) -> None:
    """`status`, a cron job's check, asks what /readyz asks: a disk under the room a commit
    needs is attention (exit 1), before it is full and every request a 503."""
    disk = tmp_path / "disk"
    disk.mkdir()
    env = {"GATEWAY_STORE__URL": f"sqlite:///{disk / 'g.db'}", "PATH": "/usr/bin:/bin"}

    def status(*options: str) -> subprocess.CompletedProcess[str]:
        """`status` with the store on a tmpfs of 2 MiB (readiness asks for 4)."""
        script = 'mount -t tmpfs -o size=2m tmpfs "$0" && exec "$@"'
        return subprocess.run([*_unshare(), "sh", "-c", script, str(disk), sys.executable,
                               "-m", "gateway", "status", *options], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)

    done = status()
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"store sqlite:///{disk / 'g.db'}: failing"
    assert lines[-2:-1] == ["needs attention:"]
    assert lines[-1].startswith("  the store: ")
    assert "KiB free on the store's disk" in lines[-1] and "under the 4096 KiB" in lines[-1]
    shown = json.loads(status("--format", "json").stdout)
    assert shown["storeCheck"].startswith("failing: ")
    assert shown["attention"] == [f"the store: {shown['storeCheck'][len('failing: '):]}"]
