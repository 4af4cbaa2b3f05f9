"""docs/smile-gateway.service: a unit systemd takes, hardened, and in step with `serve` (its
command line, its stop, its exit statuses)."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import EXIT_USAGE, build_parser
from gateway.config import load_settings
from tests.conftest import ROOT

UNIT = ROOT / "docs" / "smile-gateway.service"
EXPOSURE_AT_MOST = 2.0  # systemd-analyze security: "OK" is below 4


def analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.fail("systemd-analyze is missing: `make test` (scripts/system-deps.sh) installs "
                    "Debian's systemd package")
    return found


def service() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys as written
    parser.read_string(UNIT.read_text())
    return parser["Service"]


def here(tmp_path: Path) -> Path:
    """The unit with its ExecStart pointed at this checkout's entry point, which exists."""
    entry = Path(sys.executable).with_name("smile-gateway")
    assert entry.is_file(), entry
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/smile-gateway/.venv/bin/smile-gateway",
                                             str(entry)))
    return unit


def test_systemd_takes_the_unit(tmp_path: Path) -> None:
    done = subprocess.run([analyze(), "verify", str(here(tmp_path))], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_the_unit_is_hardened(tmp_path: Path) -> None:
    done = subprocess.run([analyze(), "security", "--offline=true", str(here(tmp_path))],
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
