"""docs/smile-gateway.service: a unit systemd takes, hardened, and in step with `serve` (its
command line, its stop, its exit statuses); docs/smile-gateway-backup.service and .timer: a
nightly `backup` as the same user, whose commands do what they say."""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import EXIT_USAGE, build_parser
from gateway.config import load_settings
from tests.conftest import ROOT

UNIT = ROOT / "docs" / "smile-gateway.service"
BACKUP = ROOT / "docs" / "smile-gateway-backup.service"
TIMER = ROOT / "docs" / "smile-gateway-backup.timer"
CREDENTIALS = ROOT / "docs" / "smile-gateway.service.d" / "credentials.conf"
EXPOSURE_AT_MOST = 2.0  # systemd-analyze security: "OK" is below 4


def analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.fail("systemd-analyze is missing: `make test` (scripts/system-deps.sh) installs "
                    "Debian's systemd package")
    return found


def service(unit: Path = UNIT) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys as written
    parser.read_string(unit.read_text())
    return parser["Service"]


ENTRY = Path(sys.executable).with_name("smile-gateway")


def here(tmp_path: Path, *units: Path) -> Path:
    """The units (the serve unit by default) with their ExecStart pointed at this checkout's
    entry point, which exists, in tmp_path; the first one's path."""
    assert ENTRY.is_file(), ENTRY
    written = []
    for unit in units or (UNIT,):
        written.append(tmp_path / unit.name)
        written[-1].write_text(unit.read_text().replace(
            "/opt/smile-gateway/.venv/bin/smile-gateway", str(ENTRY)))
    return written[0]


@pytest.mark.parametrize("units", [(UNIT,), (BACKUP,), (TIMER, BACKUP)],
                         ids=["serve", "backup", "timer"])
def test_systemd_takes_the_unit(tmp_path: Path, units: tuple[Path, ...]) -> None:
    done = subprocess.run([analyze(), "verify", str(here(tmp_path, *units))],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


@pytest.mark.parametrize("unit", [UNIT, BACKUP], ids=["serve", "backup"])
def test_the_unit_is_hardened(tmp_path: Path, unit: Path) -> None:
    done = subprocess.run([analyze(), "security", "--offline=true", str(here(tmp_path, unit))],
                          capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for \S+: ([\d.]+)", done.stdout)
    assert found, done.stdout + done.stderr
    assert float(found.group(1)) <= EXPOSURE_AT_MOST, done.stdout


def test_the_unit_runs_serve_as_the_command_line_has_it_and_stops_it_in_time() -> None:
    unit = service()
    command = unit["ExecStart"].split()
    args = build_parser().parse_args(command[1:])  # the options exist, in this order
    assert args.func.__name__ == "cmd_serve" and args.config == "/etc/smile-gateway/config.yaml"
    assert unit["KillSignal"] == "SIGTERM"  # the graceful stop
    defaults = load_settings(None, {})
    longest_wait = defaults.broker.receipt_timeout_s + defaults.forward.timeout_s
    assert float(unit["TimeoutStopSec"]) >= 2 * longest_wait
    assert unit["RestartPreventExitStatus"] == str(EXIT_USAGE)  # bad config: no restart loop
    # the default store, sqlite:///var/gateway.db, is relative to the working directory
    assert unit["WorkingDirectory"] == "/var/lib/" + unit["StateDirectory"]
    assert defaults.store.url == "sqlite:///var/gateway.db"


def test_systemd_takes_the_credentials_drop_in(tmp_path: Path) -> None:
    unit = here(tmp_path)
    (tmp_path / CREDENTIALS.parent.name).mkdir()
    shutil.copy(CREDENTIALS, tmp_path / CREDENTIALS.parent.name / CREDENTIALS.name)
    done = subprocess.run([analyze(), "verify", str(unit)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    done = subprocess.run([analyze(), "security", "--offline=true", str(unit)],
                          capture_output=True, text=True, timeout=60)
    assert not done.stderr.strip(), done.stderr  # systemd read the drop-in, and all of it


def test_the_credentials_drop_in_hands_the_gateway_every_secret(tmp_path: Path) -> None:
    """Each credential systemd loads is named to the gateway by the variable beside it, every
    secret the configuration reads from a file is there, and the gateway, given the folder as
    systemd fills it (%d), takes them all."""
    from gateway.config import FILE_SUFFIX, SECRETS

    # systemd takes a key many times over, configparser only the last: read the lines
    lines = [line.split("=", 1) for line in CREDENTIALS.read_text().splitlines()
             if line and not line.startswith(("#", "["))]
    loaded = dict(value.split(":", 1) for key, value in lines if key == "LoadCredential")
    environment = dict(value.split("=", 1) for key, value in lines if key == "Environment")
    assert {key for key, _ in lines} == {"LoadCredential", "Environment"}
    assert all(path.startswith("/etc/smile-gateway/credentials/") for path in loaded.values())
    assert sorted(environment.values()) == sorted(f"%d/{name}" for name in loaded)
    assert set(environment) == {f"GATEWAY_{section.upper()}__{key.upper()}{FILE_SUFFIX}"
                                for section, key in SECRETS} | {"PGPASSFILE"}
    folder = tmp_path / "credentials"
    folder.mkdir()
    for name in loaded:
        (folder / name).write_text("whsec_c2VjcmV0\n" if name == "webhook-secret" else
                                   f"{name} value\n")
    env = {var: value.replace("%d", str(folder)) for var, value in environment.items()}
    settings = load_settings(None, env)
    assert settings.webhook.secret == "whsec_c2VjcmV0"
    assert (settings.webhook.read_token, settings.broker.password, settings.forward.token) == (
        "webhook-read-token value", "broker-password value", "forward-token value")


def _unescaped(line: str) -> list[str]:
    """A unit's command line as systemd hands it on: `$$` is `$`, `%%` is `%`."""
    return shlex.split(line.replace("$$", "$").replace("%%", "%"))


def test_the_backup_unit_runs_as_the_gateway_and_its_commands_work(tmp_path: Path) -> None:
    backup, serve = service(BACKUP), service(UNIT)
    # the same dynamic user as serve (the unit's name is serve's user name) and its folder
    assert backup["User"] == UNIT.stem and backup["DynamicUser"] == serve["DynamicUser"]
    assert backup["WorkingDirectory"] == serve["WorkingDirectory"]
    assert backup["StateDirectory"].split()[0] == serve["StateDirectory"]
    assert backup["EnvironmentFile"] == serve["EnvironmentFile"]
    # ExecStart, run here as systemd would run it, writes a checked copy into backups/
    state = tmp_path / "state"
    (state / "backups").mkdir(parents=True)
    shell, flag, script = _unescaped(backup["ExecStart"])
    assert (shell, flag) == ("/bin/sh", "-c")
    command = shlex.split(script)
    assert command[:2] == ["exec", "/opt/smile-gateway/.venv/bin/smile-gateway"]
    args = build_parser().parse_args(command[2:])
    assert args.func.__name__ == "cmd_backup" and args.config == serve["ExecStart"].split()[2]
    from adapters.sql_store import SqlStore

    SqlStore(f"sqlite:///{state / 'var' / 'gateway.db'}").close()  # the default store.url
    script = script.replace("/opt/smile-gateway/.venv/bin/smile-gateway", str(ENTRY)).replace(
        "--config /etc/smile-gateway/config.yaml ", "")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    done = subprocess.run([shell, flag, script], cwd=state, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    [copy] = (state / "backups").iterdir()
    assert re.fullmatch(r"gateway-\d{4}-\d\d-\d\dT\d{6}Z\.db", copy.name), copy.name
    assert "integrity ok" in done.stdout
    # ExecStartPost deletes the copies older than 14 days, and only those
    old, recent = state / "backups" / "gateway-old.db", state / "backups" / "gateway-13d.db"
    other = state / "backups" / "notes.txt"
    for path, days in ((old, 15), (recent, 13), (other, 40)):
        path.write_text("x")
        os.utime(path, (path.stat().st_atime, path.stat().st_mtime - days * 86_400 + 3600))
    prune = _unescaped(backup["ExecStartPost"])
    prune[1] = str(state / "backups")
    assert subprocess.run(prune, timeout=60).returncode == 0
    assert sorted(p.name for p in (state / "backups").iterdir()) == sorted(
        [copy.name, recent.name, other.name])
    timer = configparser.ConfigParser(interpolation=None)
    timer.read_string(TIMER.read_text())
    assert timer["Timer"]["Persistent"] == "true"  # a night missed runs at the next boot
