"""Logging as configured by `logging.format`: JSON lines a log pipeline can read."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator

import pytest

from gateway.config import LoggingSettings
from gateway.logs import configure_logging


@pytest.fixture()
def root_restored() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_a_utc_millisecond_time_and_the_traceback(
        root_restored: None, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LoggingSettings(level="INFO", format="json"))
    log = logging.getLogger("gateway.test")
    log.debug("not at INFO")
    log.info("accepted usn=%s", "2142426765")
    try:
        raise RuntimeError("a bug")
    except RuntimeError:
        log.exception("pruner failed: stopping the gateway")
    first, second = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["ts"])
    assert first == {"ts": first["ts"], "level": "INFO", "logger": "gateway.test",
                     "message": "accepted usn=2142426765"}
    assert second["level"] == "ERROR"
    assert second["exception"].startswith("Traceback (most recent call last):")
    assert second["exception"].endswith("RuntimeError: a bug")
