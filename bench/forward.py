"""The forward relay's delivery rate against a bare requests loop, to an order system that
takes `--latency-ms` to answer.

    python bench/forward.py [--events N] [--subscriptions U] [--latency-ms MS]

The order system is bench/webhook.py's event sink (waitress, a process of its own), answering
204 after MS (a network round trip and the order system's own work). N inbound Smile
documents for U subscriptions are accepted into a SQLite store with forwarding on; then the forward relay
delivers them (claiming, POSTing with requests, marking sent), at each `forward.concurrency`.
The obvious alternative, in the same run: a bare loop POSTing the same N events with one
requests.Session, one after another, and the same with a pool of 8 threads, a session each
(no store). Best of `--runs`. Writes events/s to BENCHMARKS.md ("forward").
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import requests
from report import machine, write_section
from webhook import event_sink

from gateway.bootstrap import bootstrap
from gateway.config import load_settings
from gateway.ports import FORWARD, PENDING

DOCUMENT = (ROOT / "samples" / "SubscriptionActivated.xml").read_bytes()
CONCURRENCY = (1, 4, 8)


def relay_rate(url: str, folder: Path, concurrency: int, events: int,
               subscriptions: int) -> tuple[float, list[bytes]]:
    """Events/s of the forward relay delivering `events` queued ones; their bodies too."""
    settings = load_settings(None, {
        "GATEWAY_STORE__URL": f"sqlite:///{folder / f'forward-{concurrency}.db'}",
        "GATEWAY_FORWARD__URL": url,
        "GATEWAY_FORWARD__CONCURRENCY": str(concurrency),
        "GATEWAY_LOGGING__LEVEL": "WARNING"})
    runtime = bootstrap(settings)
    try:
        for n in range(events):
            usn = f"<USN>{9_000_000 + n % subscriptions}</USN>".encode()
            runtime.service.accept_smile_document(
                DOCUMENT.replace(b"<USN>2142426765</USN>", usn), "SubscriptionActivated")
        bodies = [item.body for item in runtime.store.outbox(PENDING) if item.channel == FORWARD]
        relay = runtime.forward_relay
        assert relay is not None and len(bodies) == events
        started = time.perf_counter()
        delivered = 0
        while delivered < events:
            sent = relay.run_once()
            if sent == 0:
                raise SystemExit("forward: the relay delivered nothing (is the sink up?)")
            delivered += sent
        elapsed = time.perf_counter() - started
        relay.close()
    finally:
        runtime.close()
    return events / elapsed, bodies


def bare_rate(url: str, bodies: list[bytes], threads: int) -> float:
    """Events/s of bare requests POSTs of `bodies`: one session per thread."""
    local = threading.local()
    headers = {"Content-Type": "application/json"}

    def post(body: bytes) -> None:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        response = session.post(url, data=body, headers=headers, timeout=10)
        if response.status_code != 204:
            raise SystemExit(f"forward: the order system answered {response.status_code}")

    started = time.perf_counter()
    if threads == 1:
        for body in bodies:
            post(body)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(post, bodies))
    return len(bodies) / (time.perf_counter() - started)


def best(runs: int, measure: Callable[[], float]) -> float:
    return max(measure() for _ in range(runs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=400)
    ap.add_argument("--subscriptions", type=int, default=50)
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    os.environ.pop("GATEWAY_CONFIG", None)
    with tempfile.TemporaryDirectory() as tmp, event_sink(args.latency_ms, threads=32) as url:
        folder = Path(tmp)
        rates: dict[int, float] = {}
        bodies: list[bytes] = []
        for concurrency in CONCURRENCY:
            found = []
            for run in range(args.runs):
                (folder / str(run)).mkdir(exist_ok=True)
                rate, bodies = relay_rate(url, folder / str(run), concurrency, args.events,
                                          args.subscriptions)
                found.append(rate)
            rates[concurrency] = max(found)
        loop = best(args.runs, lambda: bare_rate(url, bodies, 1))
        pooled = best(args.runs, lambda: bare_rate(url, bodies, 8))
    rows = "\n".join(
        f"| forward relay, `forward.concurrency: {c}` (claim, POST, mark sent in SQLite) | "
        f"{rate:,.0f} | {rate / loop:.2f}x |" for c, rate in rates.items())
    body = f"""`bench/forward.py --events {args.events} --subscriptions {args.subscriptions} --latency-ms {args.latency_ms:g}`:
{args.events} forwarded events of {args.subscriptions} subscriptions, to an order system (waitress,
another process) that answers 204 after {args.latency_ms:g} ms; best of {args.runs} runs.
{machine()}.

| sender | events/s | vs the bare loop |
|---|---|---|
| bare requests loop, one POST after another (no store) | {loop:,.0f} | 1.00x |
{rows}
| bare requests, 8 threads, a session each (no store, no order per subscription) | {pooled:,.0f} | {pooled / loop:.2f}x |

One POST at a time is capped at one event per round trip; the relay sends up to
`forward.concurrency` subscriptions at once, each one's events in order.
"""
    write_section("forward", body)
    print(body)


if __name__ == "__main__":
    main()
