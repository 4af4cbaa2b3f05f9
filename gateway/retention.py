"""Retention: deleting what the store is done with (`store.retention_days`).

Outbox items sent, suppressed or discarded, dedupe keys and dead letters settled (replayed or
discarded) older than the retention are deleted; nothing that may still be needed is: pending
and dead items, outstanding dead letters, snapshots and history stay. A repeated delivery whose
dedupe key was deleted is taken as new, so the retention must exceed the longest time a sender
retries (Standard Webhooks senders: about a day).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from gateway.errors import StoreError
from gateway.ports import Store

log = logging.getLogger(__name__)

DAY_S = 86_400.0


class Pruner:
    """Prunes the store every `interval_s` (the first time `first_s` after start)."""

    def __init__(self, store: Store, retention_days: float, clock: Callable[[], float] = time.time,
                 interval_s: float = 3600.0, first_s: float = 60.0) -> None:
        self.store = store
        self.retention_days = retention_days
        self.clock = clock
        self.interval_s = interval_s
        self.first_s = first_s

    def run_once(self) -> dict[str, int]:
        before = self.clock() - self.retention_days * DAY_S
        pruned = self.store.prune(before)
        if any(pruned.values()):
            log.info("pruned outbox=%d dedupe=%d dead_letters=%d older_than_days=%g",
                     pruned["outbox"], pruned["dedupe"], pruned["dead_letters"],
                     self.retention_days)
        return pruned

    def run(self, stop: threading.Event) -> None:
        """Until `stop` is set; a store that fails is tried again at the next interval."""
        log.info("pruner started retention_days=%g", self.retention_days)
        wait = self.first_s
        while not stop.wait(wait):
            try:
                self.run_once()
            except StoreError as exc:
                log.error("store unavailable for pruning, trying again in %.0fs: %s",
                          self.interval_s, exc)
            wait = self.interval_s
        log.info("pruner stopped")
