"""Backoff and retry delays stay within their caps, however long the outage."""

from __future__ import annotations

import random

from gateway.relay import Backoff, retry_delay


def test_backoff_doubles_with_jitter_up_to_its_cap() -> None:
    backoff = Backoff(0.5, 30.0, random.Random(7))
    ceilings = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    for ceiling in ceilings:
        assert ceiling / 2 <= backoff.next_delay() <= ceiling
    backoff.reset()
    assert 0.25 <= backoff.next_delay() <= 0.5


def test_backoff_outlives_a_broker_down_for_days() -> None:
    # at 30 s a try, 1,024 failures are some six hours; a float 2 ** 1024 overflows
    backoff = Backoff(0.5, 30.0, random.Random(7))
    delays = [backoff.next_delay() for _ in range(20_000)]
    assert all(15.0 <= delay <= 30.0 for delay in delays[10:])


def test_retry_delay_is_capped_for_any_attempt_count() -> None:
    assert [retry_delay(n, 1.0) for n in (0, 1, 2, 3)] == [1.0, 1.0, 2.0, 4.0]
    assert retry_delay(5_000, 1.0) == 300.0
    assert retry_delay(5_000, 0.0) == 0.0
