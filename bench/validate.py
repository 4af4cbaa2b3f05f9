"""Files/s of `smile-gateway validate` against xmllint and xmlschema, on the same files, one run.

    python bench/validate.py [--count N] [--runs R] [--xmlschema-count M]

Writes the figures and ratios to BENCHMARKS.md ("validate").
"""

from __future__ import annotations

import argparse
import compileall
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import write_corpus
from report import machine, write_section

ROOT = Path(__file__).resolve().parent.parent
XSD = ROOT / "xsd" / "smile-2.xsd"
GATEWAY = [sys.executable, "-m", "gateway"]


def timed(cmd: list[str], expect: int = 0) -> float:
    started = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False,
                          cwd=ROOT)
    elapsed = time.perf_counter() - started
    if done.returncode != expect:
        raise SystemExit(f"{cmd[:4]} exited {done.returncode}: {done.stderr[-500:]!r}")
    return elapsed


def best(runs: int, fn: object) -> float:
    return min(fn() for _ in range(runs))  # type: ignore[operator]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--count", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=3, help="best of this many runs per tool")
    ap.add_argument("--xmlschema-count", type=int, default=500,
                    help="xmlschema is slow: time it on this many of the files")
    args = ap.parse_args()
    if shutil.which("xmllint") is None:
        raise SystemExit("xmllint not found: apt-get install libxml2-utils")
    with tempfile.TemporaryDirectory(prefix="bench-validate-") as tmp:
        folder = Path(tmp) / "corpus"
        paths = write_corpus(folder, args.count)
        n = len(paths)
        # xmllint takes every file on one command line: list them through xargs-like batching
        # would add process start-ups, so hand it the list directly (ARG_MAX allows it here).
        listing = [str(p) for p in paths]
        # The gateway's modules as an installed package has them, byte-compiled: under
        # PYTHONDONTWRITEBYTECODE (set on some machines) a checkout compiles every module
        # from source at each start, 40 ms of a 20,000-file run's 0.5 s.
        for package in ("gateway", "adapters"):
            compileall.compile_dir(ROOT / package, quiet=1)
        timed([*GATEWAY, "validate", str(folder)])  # warm the page cache and imports
        figures = {
            "smile-gateway validate --jobs 1": best(
                args.runs, lambda: timed([*GATEWAY, "validate", "--jobs", "1", str(folder)])),
            "smile-gateway validate --jobs 2": best(
                args.runs, lambda: timed([*GATEWAY, "validate", "--jobs", "2", str(folder)])),
            "xmllint --noout --schema (one invocation)": best(
                args.runs, lambda: timed(["xmllint", "--noout", "--schema", str(XSD), *listing])),
        }
        rates = {name: n / secs for name, secs in figures.items()}
        import xmlschema

        schema = xmlschema.XMLSchema(str(XSD))
        sample = listing[: args.xmlschema_count]
        started = time.perf_counter()
        for p in sample:
            schema.validate(p)
        rates["xmlschema (Python loop)"] = len(sample) / (time.perf_counter() - started)

    base = rates["xmllint --noout --schema (one invocation)"]
    xs = rates["xmlschema (Python loop)"]
    rows = "\n".join(
        f"| {name} | {rate:,.0f} | {rate / base:.2f}x | {rate / xs:.1f}x |"
        for name, rate in rates.items())
    goal_lint = rates["smile-gateway validate --jobs 2"] / base
    goal_xs = rates["smile-gateway validate --jobs 2"] / xs
    body = f"""`bench/validate.py --count {args.count}`: {n} varied valid documents (0.9-2 KB), files/s,
best of {args.runs} runs (whole command, start-up included); xmlschema timed on {len(sample)} of them.
{machine()}.

| tool | files/s | vs xmllint | vs xmlschema |
|---|---|---|---|
{rows}

Goals: `--jobs 2` at 1.5x xmllint (now {goal_lint:.2f}x) and 30x xmlschema (now {goal_xs:.0f}x).
"""
    write_section("validate", body)
    print(body)


if __name__ == "__main__":
    main()
