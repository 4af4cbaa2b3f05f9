"""A store whose disk fills up, for real: a small tmpfs under the served SQLite file, mounted
in a mount namespace of the gateway's own (`unshare`, which needs no root where the kernel lets
users have namespaces, as Debian's does)."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import requests

from tests.conftest import SAMPLES
from tests.e2e.servers import GatewayProcess

RTP = (SAMPLES / "SubscriptionReadyToProvision.xml").read_bytes()
XML = {"Content-Type": "application/xml"}
DISK_KIB = 640
FILLER_KIB = 128  # what is freed once the disk is full


def _unshare() -> tuple[str, ...]:
    found = shutil.which("unshare")
    probe = [found, "--map-root-user", "--mount", "true"] if found else []
    if not probe or subprocess.run(probe, capture_output=True, timeout=30).returncode != 0:
        pytest.fail("`unshare --map-root-user --mount` is refused here: the test mounts a "
                    "small tmpfs in a mount namespace of its own (util-linux, and a kernel "
                    "that lets users have namespaces: kernel.unprivileged_userns_clone=1)")
    return (found, "--map-root-user", "--mount")  # type: ignore[return-value]


def document(n: int) -> bytes:
    return RTP.replace(b"<USN>2142426762</USN>", b"<USN>%d</USN>" % (3_000_000_000 + n))


def test_a_full_disk_is_503_with_one_log_line_and_nothing_answered_202_is_lost(
        tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    # in the gateway's namespace: the tmpfs over disk/, a filler file, then serve (exec'd)
    script = (f'mount -t tmpfs -o size={DISK_KIB}k tmpfs "$0" && '
              f'dd if=/dev/zero of="$0/filler" bs=1k count={FILLER_KIB} status=none && '
              'exec "$@"')
    gateway = GatewayProcess(tmp_path, {"GATEWAY_STORE__URL": f"sqlite:///{disk / 'g.db'}"},
                             wrap=(*_unshare(), "sh", "-c", script, str(disk)))
    gateway.start()
    assert gateway.proc is not None
    inside = Path(f"/proc/{gateway.proc.pid}/root") / str(disk).lstrip("/")
    answered: dict[int, int] = {}
    try:
        for n in range(5000):
            r = requests.post(f"{gateway.url}/smile/messages", data=document(n), headers=XML,
                              timeout=30)
            answered[n] = r.status_code
            if r.status_code == 503:
                assert r.headers["Content-Type"] == "application/problem+json"
                assert r.headers["Retry-After"] == "5"  # nothing was recorded: resend
                break
            assert r.status_code == 202, r.text
        else:
            pytest.fail(f"5000 documents fitted on a disk of {DISK_KIB} KiB")
        for n in range(len(answered), len(answered) + 20):  # it stays full: 503 each time
            r = requests.post(f"{gateway.url}/smile/messages", data=document(n), headers=XML,
                              timeout=30)
            assert r.status_code == 503, r.text
        ready = requests.get(f"{gateway.url}/readyz", timeout=30)
        assert ready.status_code == 503 and "free on the store's disk" in ready.text
        (inside / "filler").unlink()  # room again: the next document is taken
        again = len(answered) + 20
        r = requests.post(f"{gateway.url}/smile/messages", data=document(again), headers=XML,
                          timeout=30)
        assert r.status_code == 202, r.text
        # the store as it is now, nothing being written (the disk goes with the gateway's
        # namespace; SQLite, following /proc/PID/root, would look outside it: copied out)
        copy = tmp_path / "copy"
        copy.mkdir()
        for name in ("g.db", "g.db-wal"):
            shutil.copyfile(inside / name, copy / name)
    finally:
        assert gateway.stop() == 0, gateway.log.read_text()
    accepted = {n for n, status in answered.items() if status == 202} | {again}
    assert len(accepted) > 10, Counter(answered.values())
    # every document answered 202 is in the store, which SQLite finds whole; none answered
    # 503 is
    db = sqlite3.connect(copy / "g.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        stored = {int(usn) - 3_000_000_000 for (usn,) in
                  db.execute("SELECT usn FROM subscriptions")}
    finally:
        db.close()
    assert stored == accepted
    log = gateway.log.read_text()
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert len(errors) == 1, errors  # 21 requests met the full disk: one line says so
    assert "store unavailable: commit failed: database or disk is full" in errors[0], errors
    assert "store available again: 21 requests were answered 503" in log, log
