"""POST /smile/messages against a bare Flask route, same WSGI server (waitress), same client.

    python bench/webhook.py [--requests N] [--clients C] [--pg-url postgresql://...]

The gateway side parses, validates, records the snapshot and history in SQLite (committed,
synchronous=FULL) and answers 202. The bare side is a Flask app whose route reads the body
and answers 202. Both run in their own process under waitress with the same thread count;
the client is the same: C threads, each with one keep-alive connection. Then, informative
(the goal is on the embedded defaults): the same gateway with forwarding on, each request also
queueing its JSON event while the forward relay delivers them to a sink in another process;
and with --pg-url, the same gateway on that PostgreSQL database. Each is measured against the
bare route again, in runs of its own. Writes requests/s and p50/p99 latency to BENCHMARKS.md
("webhook").
"""

from __future__ import annotations

import argparse
import http.client
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import machine, write_section

ROOT = Path(__file__).resolve().parent.parent
BODY = (ROOT / "samples" / "SubscriptionFeaturesChanged.xml").read_bytes()
BARE_APP = """
import sys
from flask import Flask, request
from waitress import serve
import logging
logging.getLogger("waitress.queue").setLevel(logging.ERROR)
app = Flask("bare")
@app.post("/smile/messages")
def smile():
    request.get_data()
    return ("{}", 202, {"Content-Type": "application/json"})
serve(app, host="127.0.0.1", port=int(sys.argv[1]), threads=int(sys.argv[2]), _quiet=True)
"""

# Where the forwarding gateway sends its events: another process, answering 204 after a delay
# (argv: port, delay in ms, threads).
SINK_APP = """
import sys, time, logging
from flask import Flask, request
from waitress import serve
logging.getLogger("waitress.queue").setLevel(logging.ERROR)
app = Flask("sink")
delay = float(sys.argv[2]) / 1000
@app.post("/events")
def events():
    request.get_data()
    if delay:
        time.sleep(delay)
    return ("", 204)
serve(app, host="127.0.0.1", port=int(sys.argv[1]), threads=int(sys.argv[3]), _quiet=True)
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gateway_env(store_url: str, port: int, threads: int) -> dict[str, str]:
    """The environment of a benchmarked `serve`: its own store, port and thread count."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update({"GATEWAY_STORE__URL": store_url,
                "GATEWAY_WEBHOOK__PORT": str(port),
                "GATEWAY_WEBHOOK__THREADS": str(threads),
                "GATEWAY_LOGGING__LEVEL": "WARNING"})
    return env


def wait_up(port: int, path: str | None = "/healthz") -> None:
    """Until the server on `port` answers GET `path` (None: accepts a connection)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            if path is None:
                conn.connect()
            else:
                conn.request("GET", path)
                conn.getresponse().read()
            conn.close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"server on {port} did not start")


def load(port: int, total: int, clients: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    lock = threading.Lock()
    per = total // clients
    headers = {"Content-Type": "application/xml",
               "X-Smile-Message-Type": "SubscriptionFeaturesChanged"}

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine = []
        for _ in range(per):
            started = time.perf_counter()
            conn.request("POST", "/smile/messages", body=BODY, headers=headers)
            response = conn.getresponse()
            response.read()
            if response.status != 202:
                raise SystemExit(f"unexpected {response.status}")
            mine.append(time.perf_counter() - started)
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    return per * clients / elapsed, latencies


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


@contextmanager
def pg_store(url: str | None) -> Iterator[str | None]:
    """A store URL on a fresh schema of the database at `url`, dropped on exit."""
    if not url:
        yield None
        return
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@contextmanager
def event_sink(latency_ms: float = 0.0, threads: int = 4) -> Iterator[str]:
    """A forward.url answering 204 after `latency_ms`, in a process of its own."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", SINK_APP, str(port), str(latency_ms),
                                str(threads)])
    try:
        wait_up(port, None)
        yield f"http://127.0.0.1:{port}/events"
    finally:
        process.terminate()
        process.wait(timeout=30)


def forwarding_row(best: Results, delivered: tuple[int, int]) -> str:
    """The forwarding gateway's row, against the bare route of its own runs."""
    rate, lat = best["forwarding"]
    bare_rate = best["forwarding-bare"][0]
    sent, queued = delivered
    return (f"| the same gateway forwarding (`forward.url` set: each request also queues its "
            f"JSON event; the forward relay, in the same process, had delivered {sent:,} of "
            f"{queued:,} when the runs ended; against the bare route's {bare_rate:,.0f}/s "
            f"then) | {rate:,.0f} | {rate / bare_rate:.2f}x | {pct(lat, 50):.2f} | "
            f"{pct(lat, 99):.2f} |\n")


def pg_row(best: Results) -> str:
    """The PostgreSQL gateway's row, its ratio against the bare route of its own runs."""
    if "postgres" not in best:
        return ""
    rate, lat = best["postgres"]
    bare_rate = best["postgres-bare"][0]
    return (f"| the same gateway on PostgreSQL (`store.url: postgresql://`, one gateway; "
            f"measured after, against the bare route's {bare_rate:,.0f}/s then) | "
            f"{rate:,.0f} | {rate / bare_rate:.2f}x | {pct(lat, 50):.2f} | {pct(lat, 99):.2f} |\n")


Results = dict[str, tuple[float, list[float]]]


def compare(env: dict[str, str], port: int,
            args: argparse.Namespace) -> tuple[Results, list[float]]:
    """One gateway (`serve` with `env`, on `port`) and the bare route, each started afresh,
    interleaved runs after a warm-up; the best run of each, and the gateway's ratio to the
    bare route in each pair of runs (how far the noise moves it)."""
    bare_port = free_port()
    gateway = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], cwd=ROOT, env=env)
    bare = subprocess.Popen([sys.executable, "-c", BARE_APP, str(bare_port),
                             str(args.threads)])
    try:
        wait_up(port)
        wait_up(bare_port, None)  # the bare app has no /healthz
        ports = {"gateway": port, "bare": bare_port}
        for each in ports.values():  # warm up both
            load(each, 300, args.clients)
        runs: dict[str, list[tuple[float, list[float]]]] = {name: [] for name in ports}
        for _ in range(args.runs):
            for name, each in ports.items():
                runs[name].append(load(each, args.requests, args.clients))
    finally:
        for process in (gateway, bare):
            process.terminate()
        for process in (gateway, bare):
            process.wait(timeout=30)
    ratios = [g[0] / b[0] for g, b in zip(runs["gateway"], runs["bare"], strict=True)]
    return {name: max(found, key=lambda r: r[0]) for name, found in runs.items()}, ratios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--threads", type=int, default=8,
                    help="waitress threads on both sides (8: webhook.threads' default)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--pg-url", help="then measure the gateway on this PostgreSQL database "
                    "too, against the bare route again (in a schema of its own, dropped after)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        best, ratios = compare(
            gateway_env(f"sqlite:///{Path(tmp) / 'bench.db'}", port, args.threads), port, args)
        # afterwards too: the same gateway with forwarding on, its relay delivering meanwhile
        with event_sink() as url:
            port = free_port()
            env = gateway_env(f"sqlite:///{Path(tmp) / 'forwarding.db'}", port, args.threads)
            env["GATEWAY_FORWARD__URL"] = url
            forwarding, _ = compare(env, port, args)
        with sqlite3.connect(Path(tmp) / "forwarding.db") as db:
            counts = dict(db.execute("SELECT status, COUNT(*) FROM outbox GROUP BY status"))
        delivered = (counts.get("sent", 0), sum(counts.values()))
        best["forwarding"] = forwarding["gateway"]
        best["forwarding-bare"] = forwarding["bare"]
    if args.pg_url:  # afterwards, so that the server's own work cannot weigh on the above
        with pg_store(args.pg_url) as pg_url:
            assert pg_url is not None
            port = free_port()
            on_pg, _ = compare(gateway_env(pg_url, port, args.threads), port, args)
        best["postgres"] = on_pg["gateway"]
        best["postgres-bare"] = on_pg["bare"]
    gw_rate, gw_lat = best["gateway"]
    bare_rate, bare_lat = best["bare"]
    pg_flag = " --pg-url URL" if args.pg_url else ""
    body = f"""`bench/webhook.py --requests {args.requests} --clients {args.clients}{pg_flag}`: POST of a
1.9 KB SubscriptionFeaturesChanged document, waitress with {args.threads} threads on both
sides, {args.clients} keep-alive client threads, best of {args.runs} interleaved runs after a
warm-up. {machine()}.

| server | requests/s | vs bare | p50 ms | p99 ms |
|---|---|---|---|---|
| gateway `POST /smile/messages` (parse, validate, translate, SQLite commit, 202) | {gw_rate:,.0f} | {gw_rate / bare_rate:.2f}x | {pct(gw_lat, 50):.2f} | {pct(gw_lat, 99):.2f} |
{forwarding_row(best, delivered)}{pg_row(best)}| bare Flask route answering 202 | {bare_rate:,.0f} | 1.00x | {pct(bare_lat, 50):.2f} | {pct(bare_lat, 99):.2f} |

Goal: at least half the bare route's throughput (now {gw_rate / bare_rate:.2f}x), on the
embedded defaults (forwarding off: the request records the document, nothing is queued). In
each interleaved pair of runs the gateway made {min(ratios):.2f}x-{max(ratios):.2f}x of the bare
route (median {statistics.median(ratios):.2f}x). Mean gateway latency
{statistics.fmean(gw_lat) * 1000:.2f} ms.
"""
    write_section("webhook", body)
    print(body)


if __name__ == "__main__":
    main()
