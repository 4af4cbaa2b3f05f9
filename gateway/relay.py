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
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from gateway.config import BrokerSettings, EmissionSettings, ForwardSettings
from gateway.errors import ForwardError, PublishError, StoreError
from gateway.ports import (
    BROKER,
    FORWARD,
    PENDING,
    Envelope,
    Forwarder,
    OutboxItem,
    Publisher,
    Store,
)

log = logging.getLogger(__name__)

# A forwarded row and how its delivery ended: None when the order system took it.
Outcome = tuple[OutboxItem, ForwardError | None]


class Backoff:
    """Exponential backoff with full jitter, capped."""

    def __init__(self, initial: float, maximum: float, rng: random.Random | None = None) -> None:
        self.initial = initial
        self.maximum = maximum
        self.rng = rng or random.Random()
        self.failures = 0

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.initial * _doubled(self.failures))
        self.failures += 1
        return self.rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.failures = 0


def retry_delay(attempts: int, base: float, maximum: float = 300.0) -> float:
    """Delay before attempt `attempts + 1` of one message."""
    return min(maximum, base * _doubled(max(0, attempts - 1)))


def _doubled(times: int) -> float:
    """2 ** times, held at 2 ** 64 (past any cap): a float power overflows from 2 ** 1024,
    which a broker down for some six hours would reach in reconnect attempts."""
    return 2.0 ** min(times, 64)


RETRY_AFTER_MAX_S = 3600.0  # the longest Retry-After honoured: a wait stays bounded


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
        self.waiting_for: str | None = None  # who relays from the store instead, if another
        self.last_failure: str | None = None  # why the broker could not be used, until it could

    def our_turn(self) -> bool:
        """Whether this process relays the store's broker rows (on SQLite one process at a
        time does: two would send a subscription's rows twice and out of order)."""
        holder = self.store.take_relay(BROKER)
        if holder is None:
            if self.waiting_for is not None:
                log.info("broker relay taking over from %s", self.waiting_for)
            self.waiting_for = None
            return True
        if holder != self.waiting_for:
            log.info("broker relay waiting: %s relays from this store", holder)
        self.waiting_for = holder
        return False

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
            fields = {"outbox_id": item_id, "attempt": tries, "dead": dead}
            if dead:
                log.error("dead letter outbox_id=%d attempts=%d error=%s", item_id, tries, error,
                          extra=fields)
            else:
                log.warning("broker refused outbox_id=%d attempt=%d error=%s",
                            item_id, tries, error, extra=fields)
            self.store.mark_failed(item_id, error, self.clock() + retry_delay(tries, 1.0), dead)
        return len(outcome.confirmed)

    def drain(self, deadline: float) -> int:
        """Publish until nothing is ready or the deadline passes (for `publish` and tests);
        nothing while another process relays from the store."""
        sent = 0
        while self.clock() < deadline and self.our_turn():
            try:
                n = self.run_once()
            except PublishError as exc:
                self.last_failure = str(exc)
                delay = self.backoff.next_delay()
                log.warning("publish failed, retrying in %.1fs: %s", delay, exc)
                time.sleep(min(delay, max(0.0, deadline - self.clock())))
                continue
            self.backoff.reset()
            self.last_failure = None
            if n == 0 and not self.store.claim(BROKER, 1, self.clock()):
                break
            sent += n
        return sent

    def deliver(self, message_ids: Sequence[str], deadline: float,
                poll_s: float = 0.2) -> list[OutboxItem]:
        """For `publish`: relay as `drain` does, or, while another process relays from the
        store, wait for it to send these rows (or give up on them) until the deadline.
        Returns the rows as they are then."""
        while not self.our_turn():
            items = self.store.outbox_by_message_ids(message_ids)
            left = deadline - self.clock()
            if left <= 0 or all(i.status != PENDING for i in items):
                return items
            time.sleep(min(poll_s, left))
        self.drain(deadline)
        return self.store.outbox_by_message_ids(message_ids)

    def run(self, stop: threading.Event, idle_s: float = 0.5) -> None:
        """Until `stop` is set: publish, back off on failure, sleep when idle."""
        log.info("broker relay started destination=%s", self.emission.destination)
        while not stop.is_set():
            try:
                if not self.our_turn():  # `publish` is relaying: after it, this one
                    stop.wait(idle_s)
                    continue
                n = self.run_once()
            except PublishError as exc:
                self.last_failure = str(exc)
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
            self.last_failure = None
            if n == 0:
                self.wake.wait(idle_s)
                self.wake.clear()
        self.publisher.close()
        log.info("broker relay stopped")


class ForwardRelay:
    """Delivers pending forward rows to the order system, in order per subscription: each
    subscription's rows one after another, up to `forward.concurrency` subscriptions at once.

    The order system is a network round trip away: one POST at a time caps a gateway at one
    event per round trip (50 a second at 20 ms). Only the HTTP calls run on the sending
    threads; the store is read and written from the relay's own thread (the PostgreSQL store's
    claims are held by that thread's connection).
    """

    def __init__(self, store: Store, forwarder: Forwarder, settings: ForwardSettings,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.forwarder = forwarder
        self.settings = settings
        self.clock = clock
        self.wake = threading.Event()
        self._pool: ThreadPoolExecutor | None = None

    def _final(self, item: OutboxItem, failure: ForwardError) -> bool:
        """Whether this failed attempt makes the row a dead letter."""
        return not failure.retryable or item.attempts + 1 >= self.settings.attempts

    def _deliver(self, items: list[OutboxItem], outcomes: list[Outcome],
                 stop: threading.Event) -> None:
        """One subscription's rows, oldest first, until one is to be retried: the rows after
        it wait for it (left pending, untried). A final failure does not hold them. Once
        `stop` is set no further POST starts: the rest are left pending for the next run."""
        for item in items:
            if stop.is_set():
                return
            try:
                self.forwarder.forward(item)
            except ForwardError as exc:
                failure = exc
            except Exception as exc:  # an answer the forwarder did not foresee, or its bug:
                # retried, then a dead letter, like any failure; not the relay's end, which
                # would stop the gateway, and the restarted one at the same row again
                log.exception("forwarding outbox_id=%d failed unexpectedly", item.id)
                failure = ForwardError(f"POST {self.settings.url} failed unexpectedly: {exc!r}")
            else:
                outcomes.append((item, None))
                continue
            outcomes.append((item, failure))
            if not self._final(item, failure):
                return

    def run_once(self, limit: int = 50, stop: threading.Event | None = None) -> int:
        """Deliver the claimed rows, each subscription's oldest first, and record the outcomes
        when all are done: the delivered rows marked sent together (one commit, not one per
        row; a crash before it sends them again, with the same Idempotency-Key). Once `stop`
        is set, the POSTs in progress end (each within forward.timeout_s) and no more start."""
        stop = stop or threading.Event()
        lanes: dict[str, list[OutboxItem]] = {}
        for item in self.store.claim(FORWARD, limit, self.clock()):
            lanes.setdefault(item.usn, []).append(item)
        results: list[list[Outcome]] = [[] for _ in lanes]
        error: BaseException | None = None
        try:
            if len(lanes) > 1 and self.settings.concurrency > 1:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.settings.concurrency,
                                                    thread_name_prefix="forward")
                futures = [self._pool.submit(self._deliver, lane, outcomes, stop)
                           for lane, outcomes in zip(lanes.values(), results, strict=True)]
                for future in futures:  # every lane ends before the outcomes are recorded
                    try:
                        future.result()
                    except BaseException as exc:
                        error = error or exc
            else:
                for lane, outcomes in zip(lanes.values(), results, strict=True):
                    self._deliver(lane, outcomes, stop)
        except BaseException as exc:  # what was delivered before it is still recorded
            error = exc
        done = [outcome for outcomes in results for outcome in outcomes]
        sent = [item.id for item, failure in done if failure is None]
        try:
            for item, failure in done:
                if failure is None:
                    continue
                tries, dead = item.attempts + 1, self._final(item, failure)
                log.warning("forward failed outbox_id=%d attempt=%d dead=%s error=%s",
                            item.id, tries, dead, failure,
                            extra={"outbox_id": item.id, "attempt": tries, "dead": dead})
                delay = retry_delay(tries, self.settings.backoff_s)
                if failure.retry_after is not None:  # the order system said when: no sooner
                    delay = max(delay, min(failure.retry_after, RETRY_AFTER_MAX_S))
                self.store.mark_failed(item.id, str(failure), self.clock() + delay, dead)
        finally:
            if sent:
                self.store.mark_sent(sent)
        if error is not None:
            raise error
        return len(sent)

    def close(self) -> None:
        """Stop the sending threads (after the calls in progress)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def run(self, stop: threading.Event, idle_s: float = 0.5) -> None:
        log.info("forward relay started url=%s", self.settings.url)
        while not stop.is_set():
            try:
                n = self.run_once(stop=stop)
            except StoreError as exc:
                log.error("store unavailable for forwarding: %s", exc)
                stop.wait(1.0)
                continue
            if n == 0:
                self.wake.wait(idle_s)
                self.wake.clear()
        self.close()
        log.info("forward relay stopped")
