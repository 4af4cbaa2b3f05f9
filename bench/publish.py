"""Confirmed messages/s of the outbox relay against bare stomp.py loops, same broker, one run.

    python bench/publish.py [--count N] [--rabbitmq-port P]   (needs the project's broker:
    make broker; RabbitMQ's rows when its STOMP plugin listens: scripts/rabbitmq-stomp.sh)

- relay: rows queued in a SQLite outbox, published by BrokerRelay (one STOMP transaction per
  batch, confirmed by the COMMIT's receipt; rows marked sent in the store): every message
  confirmed and recorded.
- bare, wait each: stomp.py, one SEND with a receipt, wait for it, next.
- bare, no receipts: stomp.py SENDs without receipts (not durable: see the README), one final
  DISCONNECT receipt so that the broker has read them all.
Then, informative, the same three on RabbitMQ's STOMP plugin when it listens: there the relay
sends each message with a receipt of its own, pipelined (RabbitMQ confirms a COMMIT before it
refuses a SEND in it, so a transaction's receipt confirms nothing there).
Writes the figures to BENCHMARKS.md ("publish").
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

import stomp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import machine, write_section

from adapters.sql_store import SqlStore
from adapters.stomp_broker import StompPublisher
from gateway.config import load_settings
from gateway.ports import BROKER, SENT, NewOutboxItem
from gateway.relay import BrokerRelay

ROOT = Path(__file__).resolve().parent.parent
BODY = (ROOT / "samples" / "SubscriptionFeaturesChanged.xml").read_bytes()


class Receipts(stomp.ConnectionListener):
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.seen: set[str] = set()

    def on_receipt(self, frame) -> None:
        with self.cond:
            self.seen.add(frame.headers["receipt-id"])
            self.cond.notify_all()

    def wait(self, receipt: str, timeout: float = 10.0) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: receipt in self.seen, timeout):
                raise SystemExit(f"no receipt {receipt} in {timeout}s")


def bare(port: int, queue: str, count: int, receipts: bool, login: str = "bench") -> float:
    conn = stomp.Connection12([("127.0.0.1", port)], vhost="/", auto_content_length=False,
                              auto_decode=False)
    listener = Receipts()
    conn.set_listener("r", listener)
    conn.connect(login, login, wait=True)
    headers = {"persistent": "true", "smileMessageType": "SubscriptionFeaturesChanged",
               "usn": "2142426763", "sid": "173"}
    started = time.perf_counter()
    for i in range(count):
        if receipts:
            rid = f"r{i}"
            conn.send(queue, BODY, headers=headers, receipt=rid)
            listener.wait(rid)
        else:
            conn.send(queue, BODY, headers=headers)
    done = str(uuid.uuid4())
    conn.disconnect(receipt=done)
    elapsed = time.perf_counter() - started
    return count / elapsed


def relay_rate(settings, queue: str, count: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        store = SqlStore(f"sqlite:///{tmp}/bench.db")
        headers = {"smileMessageType": "SubscriptionFeaturesChanged", "usn": "2142426763",
                   "sid": "173"}
        store.enqueue([NewOutboxItem(BROKER, str(uuid.uuid4()), f"u{i % 50}",
                                     "SubscriptionFeaturesChanged",
                                     {**headers, "usn": f"u{i % 50}"}, BODY)
                       for i in range(count)])
        emission = replace(settings.emission, enabled=True, destination=queue)
        relay = BrokerRelay(store, StompPublisher(settings.broker), emission, settings.broker)
        started = time.perf_counter()
        relay.drain(time.time() + 600)
        elapsed = time.perf_counter() - started
        relay.publisher.close()
        confirmed = store.counts().get((BROKER, SENT), 0)
        store.close()
        if confirmed != count:
            raise SystemExit(f"relay confirmed {confirmed} of {count}")
        return count / elapsed


def drain_queue(port: int, queue: str, login: str = "bench") -> None:
    """Empty the benchmark queue so that the broker's store does not grow run after run."""
    conn = stomp.Connection12([("127.0.0.1", port)], vhost="/")
    conn.connect(login, login, wait=True)
    last = [time.monotonic()]

    class Drain(stomp.ConnectionListener):
        def on_message(self, frame) -> None:
            last[0] = time.monotonic()

    conn.set_listener("d", Drain())
    conn.subscribe(queue, id="d", ack="auto")
    while time.monotonic() - last[0] < 1.0:  # until a second passes without a message
        time.sleep(0.1)
    conn.disconnect()


def measure(settings, login: str, queue: str, args: argparse.Namespace) -> dict[str, float]:
    """The relay and both bare loops on settings.broker, interleaved after a warm-up: the
    best run of each (messages/s)."""
    port = settings.broker.port
    # warm the broker first: ActiveMQ's first run after a start is about 2x slower (JIT)
    bare(port, queue, 2000, False, login)
    relay_rate(settings, queue, 2000)
    bare(port, queue, 500, True, login)
    drain_queue(port, queue, login)
    figures: dict[str, list[float]] = {"relay": [], "wait": [], "none": []}
    for _ in range(args.runs):
        figures["relay"].append(relay_rate(settings, queue, args.count))
        figures["wait"].append(bare(port, queue, min(args.count, 2000), True, login))
        figures["none"].append(bare(port, queue, args.count, False, login))
        drain_queue(port, queue, login)  # keep the broker's store small between runs
    return {k: max(v) for k, v in figures.items()}


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def rabbit_rows(best: dict[str, float] | None, batch: int) -> str:
    if best is None:
        return ""
    return f"""
Informative, RabbitMQ's STOMP plugin on loopback (the machine's), measured the same way
after: the relay sends each message with its own receipt, pipelined (a batch of {batch} in
flight), since RabbitMQ answers a COMMIT before it refuses a SEND in it.

| path | msgs/s | vs wait-each | vs no-receipt |
|---|---|---|---|
| outbox relay: receipts pipelined, rows marked sent in SQLite | {best['relay']:,.0f} | {best['relay'] / best['wait']:.1f}x | {best['relay'] / best['none']:.2f}x |
| bare stomp.py, wait for each receipt | {best['wait']:,.0f} | 1.0x | {best['wait'] / best['none']:.2f}x |
| bare stomp.py, no receipts (not durable) | {best['none']:,.0f} | {best['none'] / best['wait']:.1f}x | 1.00x |
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rabbitmq-port", type=int,
                    default=int(os.environ.get("RABBIT_STOMP_PORT", "61623")),
                    help="RabbitMQ's STOMP plugin, measured too when it listens there")
    args = ap.parse_args()
    settings = load_settings(ROOT / "config.yaml", {})
    best = measure(settings, "bench", f"/queue/bench.publish.{uuid.uuid4().hex[:8]}", args)
    rabbit = None
    if listening(args.rabbitmq_port):
        on_rabbit = replace(settings, broker=replace(
            settings.broker, port=args.rabbitmq_port, user="guest", password="guest"))
        # named test.*: scripts/rabbitmq-stomp.sh stop deletes the queue
        rabbit = measure(on_rabbit, "guest", f"/queue/test.bench.{uuid.uuid4().hex[:8]}", args)
    body = f"""`bench/publish.py --count {args.count}`: 1.9 KB SubscriptionFeaturesChanged documents
to ActiveMQ 5.17 on loopback, `persistent:true`, messages/s, best of {args.runs} interleaved
runs after a warm-up. {machine()}.

| path | msgs/s | vs wait-each | vs no-receipt |
|---|---|---|---|
| outbox relay: a transaction per batch of {settings.broker.max_in_flight}, COMMIT receipt, rows marked sent in SQLite | {best['relay']:,.0f} | {best['relay'] / best['wait']:.1f}x | {best['relay'] / best['none']:.2f}x |
| bare stomp.py, wait for each receipt | {best['wait']:,.0f} | 1.0x | {best['wait'] / best['none']:.2f}x |
| bare stomp.py, no receipts (not durable) | {best['none']:,.0f} | {best['none'] / best['wait']:.1f}x | 1.00x |

Goals: at least 2x the wait-each loop (now {best['relay'] / best['wait']:.1f}x) and at least half
the no-receipt rate (now {best['relay'] / best['none']:.2f}x), every message confirmed.
{rabbit_rows(rabbit, settings.broker.max_in_flight)}"""
    write_section("publish", body)
    print(body)


if __name__ == "__main__":
    main()
