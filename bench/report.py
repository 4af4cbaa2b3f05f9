"""Writes one benchmark's section of BENCHMARKS.md, leaving the other sections as they are."""

from __future__ import annotations

import platform
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
HEADER = """# Benchmarks

Each section is written by the script it names, from one run on one machine, in which the gateway
and the obvious alternative are measured side by side. These machines are shared and noisy:
read the **ratios**, not the absolute figures. Rerun with `make bench` (or one script).
"""


def machine() -> str:
    try:
        cpu = next(line.split(":", 1)[1].strip()
                   for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or "unknown CPU"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=False).stdout.strip()
    except OSError:
        commit = ""
    return (f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {cpu}, Python {platform.python_version()}"
            + (f", commit {commit}" if commit else ""))


def write_section(name: str, body: str) -> None:
    """Replace the section `## name` (up to the next `## `) or append it."""
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else HEADER
    section = f"## {name}\n\n{body.strip()}\n\n"
    pattern = re.compile(rf"^## {re.escape(name)}\n.*?(?=^## |\Z)", re.DOTALL | re.MULTILINE)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else \
        text.rstrip() + "\n\n" + section
    BENCHMARKS.write_text(text.rstrip() + "\n")
