"""The Pruner: what it asks the store to delete, and how it keeps going."""

from __future__ import annotations

import threading
from typing import Any, cast

from gateway.errors import StoreError
from gateway.ports import Store
from gateway.retention import DAY_S, Pruner


class FakeStore:
    """Records each prune's cut-off; fails the calls it is told to."""

    def __init__(self, failures: int = 0) -> None:
        self.cuts: list[float] = []
        self.failures = failures
        self.done = threading.Event()

    def prune(self, before: float, batch: int = 1000) -> dict[str, int]:
        self.cuts.append(before)
        if len(self.cuts) >= 3:
            self.done.set()
        if self.failures:
            self.failures -= 1
            raise StoreError("database is locked")
        return {"outbox": 2, "dedupe": 1, "dead_letters": 3}


def pruner(store: FakeStore, **kw: Any) -> Pruner:
    return Pruner(cast(Store, store), 30, clock=lambda: 100 * DAY_S, **kw)


def test_the_cut_is_the_retention_before_now() -> None:
    store = FakeStore()
    assert pruner(store).run_once() == {"outbox": 2, "dedupe": 1, "dead_letters": 3}
    assert store.cuts == [70 * DAY_S]


def test_it_prunes_on_its_interval_and_outlives_a_failing_store() -> None:
    store = FakeStore(failures=1)
    stop = threading.Event()
    thread = threading.Thread(target=pruner(store, interval_s=0.01, first_s=0.01).run,
                              args=(stop,))
    thread.start()
    try:
        assert store.done.wait(10), "the pruner stopped after the store failed"
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert store.cuts[:3] == [70 * DAY_S] * 3


def test_it_stops_at_once_before_its_first_run() -> None:
    store = FakeStore()
    stop = threading.Event()
    stop.set()
    pruner(store).run(stop)  # first_s is a minute: returns at once, pruned nothing
    assert store.cuts == []
