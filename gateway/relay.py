"""The outbox relays: move committed outbox rows to the broker (and to the order system).

A row leaves `pending` only when its delivery was confirmed (the broker's receipt, a 2xx), or
as a dead letter once its bounded attempts are used. A crash anywhere leaves it pending, so it
is sent again with the same gateway-message-id; consumers dedupe on that id.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

from gateway.config import BrokerSettings, EmissionSettings, ForwardSettings
from gateway.errors import ForwardError, PublishError, StoreError
from gateway.ports import BROKER, FORWARD, Envelope, Forwarder, Publisher, Store

log = logging.getLogger(__name__)


class Backoff:
    """Exponential backoff with full jitter, capped."""

    def __init__(self, initial: float, maximum: float, rng: random.Random | None = None) -> None:
        self.initial = initial
        self.maximum = maximum
        self.rng = rng or random.Random()
        self.failures = 0

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.initial * 2.0 ** self.failures)
        self.failures += 1
        return self.rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.failures = 0


def retry_delay(attempts: int, base: float, maximum: float = 300.0) -> float:
    """Delay before attempt `attempts + 1` of one message."""
    return min(maximum, base * 2.0 ** max(0, attempts - 1))


class BrokerRelay:
    """Publishes pending broker rows in order, many receipts in flight per batch."""

    def __init__(self, store: Store, publisher: Publisher, emission: EmissionSettings,
                 broker: BrokerSettings, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.publisher = publisher
        self.emission = emission
        self.broker = broker
        self.clock = clock
        self.backoff = Backoff(broker.reconnect_initial_s, broker.reconnect_max_s)
        self.wake = threading.Event()

    def run_once(self) -> int:
        """One batch: returns how many were confirmed. Raises PublishError on a broken
        connection (after recording what was confirmed)."""
        items = self.store.claim(BROKER, self.broker.max_in_flight, self.clock())
        if not items:
            return 0
        envelopes = [Envelope(i.id, self.emission.destination, i.headers, i.body, i.usn)
                     for i in items]
        try:
            outcome = self.publisher.publish(envelopes)
        except PublishError as exc:
            self.store.mark_sent(exc.confirmed)
            raise
        self.store.mark_sent(outcome.confirmed)
        attempts = {i.id: i.attempts for i in items}
        for item_id, error in outcome.refused.items():
            tries = attempts[item_id] + 1
            dead = tries >= self.emission.max_attempts
            if dead:
                log.error("dead letter outbox_id=%d attempts=%d error=%s", item_id, tries, error)
            else:
                log.warning("broker refused outbox_id=%d attempt=%d error=%s",
                            item_id, tries, error)
            self.store.mark_failed(item_id, error, self.clock() + retry_delay(tries, 1.0), dead)
        return len(outcome.confirmed)

    def drain(self, deadline: float) -> int:
        """Publish until nothing is ready or the deadline passes (for `publish` and tests)."""
        sent = 0
        while self.clock() < deadline:
            try:
                n = self.run_once()
            except PublishError as exc:
                delay = self.backoff.next_delay()
                log.warning("publish failed, retrying in %.1fs: %s", delay, exc)
                time.sleep(min(delay, max(0.0, deadline - self.clock())))
                continue
            self.backoff.reset()
            if n == 0 and not self.store.claim(BROKER, 1, self.clock()):
                break
            sent += n
        return sent

    def run(self, stop: threading.Event, idle_s: float = 0.5) -> None:
        """Until `stop` is set: publish, back off on failure, sleep when idle."""
        log.info("broker relay started destination=%s", self.emission.destination)
        while not stop.is_set():
            try:
                n = self.run_once()
            except PublishError as exc:
                delay = self.backoff.next_delay()
                log.warning("publish failed, reconnecting in %.1fs: %s", delay, exc)
                stop.wait(delay)
                continue
            except StoreError as exc:
                delay = self.backoff.next_delay()
                log.error("store unavailable for the relay, retrying in %.1fs: %s", delay, exc)
                stop.wait(delay)
                continue
            self.backoff.reset()
            if n == 0:
                self.wake.wait(idle_s)
                self.wake.clear()
        self.publisher.close()
        log.info("broker relay stopped")


class ForwardRelay:
    """Delivers pending forward rows to the order system, one at a time, in order per
    subscription."""

    def __init__(self, store: Store, forwarder: Forwarder, settings: ForwardSettings,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.forwarder = forwarder
        self.settings = settings
        self.clock = clock
        self.wake = threading.Event()

    def run_once(self, limit: int = 50) -> int:
        """Deliver the claimed rows oldest first. After a row that will be retried, the later
        rows of its subscription wait for it (per-subscription order). The delivered rows are
        marked sent together when the batch ends: one commit, not one per row (a crash before
        it sends them again, with the same Idempotency-Key)."""
        sent: list[int] = []
        waiting: set[str] = set()  # subscriptions whose earlier row is to be retried
        try:
            for item in self.store.claim(FORWARD, limit, self.clock()):
                if item.usn in waiting:
                    continue
                try:
                    self.forwarder.forward(item)
                except ForwardError as exc:
                    tries = item.attempts + 1
                    dead = not exc.retryable or tries >= self.settings.attempts
                    log.warning("forward failed outbox_id=%d attempt=%d dead=%s error=%s",
                                item.id, tries, dead, exc)
                    self.store.mark_failed(item.id, str(exc),
                                           self.clock() + retry_delay(tries,
                                                                      self.settings.backoff_s),
                                           dead)
                    if not dead:
                        waiting.add(item.usn)
                    continue
                sent.append(item.id)
        finally:
            if sent:
                self.store.mark_sent(sent)
        return len(sent)

    def run(self, stop: threading.Event, idle_s: float = 0.5) -> None:
        log.info("forward relay started url=%s", self.settings.url)
        while not stop.is_set():
            try:
                n = self.run_once()
            except StoreError as exc:
                log.error("store unavailable for forwarding: %s", exc)
                stop.wait(1.0)
                continue
            if n == 0:
                self.wake.wait(idle_s)
                self.wake.clear()
        log.info("forward relay stopped")
