"""Instructions per request of POST /smile/messages against a bare Flask route, by callgrind.

    python bench/webhook_cost.py [--requests N]

Throughput on a shared machine moves by a third between runs; instruction counts do not.
Each server (the gateway's `serve`, and the bare Flask app of bench/webhook.py) runs under
`valgrind --tool=callgrind`, under waitress with the same threads; one client connection sends
the same POST, one request at a time: after a warm-up the counters are zeroed, N requests
are sent, and the counters dumped. So the figures hold what one request costs the server,
WSGI server included, without the thread contention of a loaded run (bench/webhook.py
measures that). The gateway's cost is split into the C work it cannot avoid (libxml2 parsing
and XSD validation, SQLite statements; the fsync itself is the kernel's and not counted)
and the rest. Needs valgrind (Debian: valgrind). Writes BENCHMARKS.md ("webhook-cost").
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import machine, write_section
from webhook import BARE_APP, BODY, free_port, gateway_env

ROOT = Path(__file__).resolve().parent.parent
WARM = 50
THREADS = 8
# callgrind functions whose inclusive cost is the C work of a request
C_PARTS = {
    # the codec validates while libxml2 parses: one pass, inside xmlCtxtReadMemory
    "libxml2 parse and XSD validation (one pass)": ("xmlCtxtReadMemory",),
    "SQLite statements": ("pysqlite_connection_execute", "pysqlite_connection_executemany",
                          "pysqlite_connection_executescript", "pysqlite_connection_commit",
                          "pysqlite_cursor_fetchone"),
}
HEADERS = {"Content-Type": "application/xml",
           "X-Smile-Message-Type": "SubscriptionFeaturesChanged"}


def connect(port: int, deadline: float) -> http.client.HTTPConnection:
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            conn.connect()
            return conn
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"webhook_cost: no server on port {port}") from None
            time.sleep(0.5)


def post(conn: http.client.HTTPConnection, count: int) -> None:
    for _ in range(count):
        conn.request("POST", "/smile/messages", body=BODY, headers=HEADERS)
        response = conn.getresponse()
        response.read()
        if response.status != 202:
            raise SystemExit(f"webhook_cost: unexpected {response.status}")


def annotate(path: Path) -> dict[str, int]:
    """Total instructions, and the inclusive counts of the C_PARTS functions."""
    text = subprocess.run(["callgrind_annotate", "--inclusive=yes", str(path)],
                          check=True, capture_output=True, text=True).stdout
    counts = {"total": int(re.search(r"([\d,]+) \([\d.]+%\)\s+PROGRAM TOTALS", text)
                           .group(1).replace(",", ""))}
    for part, functions in C_PARTS.items():
        counts[part] = 0
        for function in functions:
            # the outermost entry (a recursive function appears again as name'2)
            hit = re.search(r"^\s*([\d,]+) \([^)]*\)\s+\S*:" + re.escape(function) + r" \[",
                            text, re.MULTILINE)
            if hit:
                counts[part] += int(hit.group(1).replace(",", ""))
    return counts


def measure(which: str, requests: int, folder: Path) -> dict[str, float]:
    port = free_port()
    out = folder / f"{which}.out"
    if which == "gateway":
        env = gateway_env(f"sqlite:///{folder / 'cost.db'}", port, THREADS)
        command = [sys.executable, "-m", "gateway", "serve"]
    else:
        env = dict(os.environ)
        command = [sys.executable, "-c", BARE_APP, str(port), str(THREADS)]
    server = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *command],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        conn = connect(port, time.monotonic() + 300)
        post(conn, WARM)
        subprocess.run(["callgrind_control", "--zero", str(server.pid)], check=True,
                       capture_output=True)
        post(conn, requests)
        subprocess.run(["callgrind_control", "--dump", str(server.pid)], check=True,
                       capture_output=True)
        conn.close()
    finally:
        server.terminate()
        server.wait(timeout=120)
    dumps = sorted(folder.glob(f"{which}.out.*"))  # the dump holds the N requests only
    if not dumps:
        raise SystemExit("webhook_cost: callgrind wrote no dump")
    return {k: v / requests for k, v in annotate(dumps[0]).items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=200)
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("webhook_cost: valgrind is not installed (Debian: apt install valgrind)")
    with tempfile.TemporaryDirectory() as tmp:
        bare = measure("bare", args.requests, Path(tmp))
        gateway = measure("gateway", args.requests, Path(tmp))
    c_work = sum(gateway[part] for part in C_PARTS)
    rows = "\n".join(
        f"| gateway: {part} | {gateway[part] / 1000:,.0f} | {gateway[part] / bare['total']:.2f}x |"
        for part in C_PARTS)
    rest = gateway["total"] - c_work - bare["total"]  # Python, beyond what the bare route does
    body = f"""`bench/webhook_cost.py --requests {args.requests}`: instructions per request in the
server process, counted by callgrind: waitress with {THREADS} threads on both sides, one
keep-alive client connection, one request at a time, the same POST of the 1.9 KB
SubscriptionFeaturesChanged document. {machine()}.

| what | k instructions / request | vs the bare route |
|---|---|---|
| bare Flask route answering 202 | {bare['total'] / 1000:,.0f} | 1.00x |
| gateway `POST /smile/messages`, whole | {gateway['total'] / 1000:,.0f} | {gateway['total'] / bare['total']:.2f}x |
{rows}
| gateway: the rest beyond the bare route's own cost (Python) | {rest / 1000:,.0f} | {rest / bare['total']:.2f}x |

Half the bare route's throughput needs a request to cost the gateway at most twice what it
costs the bare route (now {gateway['total'] / bare['total']:.2f}x). The C work alone is
{c_work / bare['total']:.2f}x the bare route's whole request.
"""
    write_section("webhook-cost", body)
    print(body)


if __name__ == "__main__":
    main()
