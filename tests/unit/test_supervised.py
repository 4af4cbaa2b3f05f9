"""serve's workers: one that fails unexpectedly stops the gateway, unless it is stopping."""

from __future__ import annotations

import logging
import threading

import pytest

from gateway.cli import supervised


def broken(stop: threading.Event) -> None:
    raise RuntimeError("a bug")


def test_a_worker_failing_while_serving_stops_the_gateway(caplog: pytest.LogCaptureFixture) -> None:
    failed: list[str] = []
    supervised("pruner", broken, threading.Event(), failed.append)
    assert failed == ["pruner"]
    assert "pruner failed: stopping the gateway" in caplog.text
    assert "RuntimeError: a bug" in caplog.text


def test_a_worker_failing_while_stopping_is_only_logged(caplog: pytest.LogCaptureFixture) -> None:
    failed: list[str] = []
    stop = threading.Event()
    stop.set()
    with caplog.at_level(logging.ERROR):
        supervised("consumer", broken, stop, failed.append)
    assert failed == []
    assert "consumer failed while stopping" in caplog.text


def test_a_worker_that_ends_is_no_failure() -> None:
    failed: list[str] = []
    supervised("broker-relay", lambda stop: None, threading.Event(), failed.append)
    assert failed == []
