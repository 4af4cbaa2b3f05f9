"""Logging as configured by `logging.format`: JSON lines a log pipeline can read."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

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


def test_json_lines_carry_the_fields_a_line_names_for_a_pipeline_to_filter_on(
        root_restored: None, capsys: pytest.CaptureFixture[str]) -> None:
    """What a line is about (a route and status, an outbox item, a dead letter) is a field of
    its own in JSON, beside the message that says it in words: a log pipeline filters on
    `status` or `outbox_id` without parsing sentences. The text format is unchanged."""
    configure_logging(LoggingSettings(level="INFO", format="json"))
    log = logging.getLogger("gateway.test")
    log.warning("broker refused outbox_id=%d", 7,
                extra={"outbox_id": 7, "attempt": 2, "dead": False, "path": "/a\nb",
                       "at": Path("/var/gateway.db")})
    [entry] = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert entry["message"] == "broker refused outbox_id=7"
    assert (entry["outbox_id"], entry["attempt"], entry["dead"], entry["path"]) == (
        7, 2, False, "/a\nb")
    assert entry["at"] == "/var/gateway.db"  # what JSON cannot hold is written as its text
    assert set(entry) == {"ts", "level", "logger", "message", "outbox_id", "attempt", "dead",
                          "path", "at"}
    configure_logging(LoggingSettings(level="INFO", format="text"))
    log.warning("broker refused outbox_id=%d", 7, extra={"outbox_id": 7})
    assert capsys.readouterr().err.rstrip().endswith(
        "WARNING gateway.test broker refused outbox_id=7")


def test_a_text_line_is_one_line_whatever_its_message_carries(
        root_restored: None, capsys: pytest.CaptureFixture[str]) -> None:
    """A reason from a document or a broker can hold line breaks and terminal escapes: in
    the text format they are escaped, so that no message can forge or split a line; a
    traceback still follows on its own lines."""
    configure_logging(LoggingSettings(level="INFO", format="text"))
    log = logging.getLogger("gateway.test")
    log.warning("dead letter reason=%s",
                "3 violations:\n  line 4: x\r\n2026 INFO forged\x1b[2K\x9b2K\u2028é")
    try:
        raise RuntimeError("a bug")
    except RuntimeError:
        log.exception("relay failed")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].endswith(
        r"WARNING gateway.test dead letter reason=3 violations:\n  line 4: x\r\n2026 INFO "
        r"forged\x1b[2K\x9b2K\u2028é")
    assert lines[1].endswith("ERROR gateway.test relay failed")
    assert lines[2] == "Traceback (most recent call last):"
    assert lines[-1] == "RuntimeError: a bug"
