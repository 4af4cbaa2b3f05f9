"""Shared fixtures: the project's own schema, samples and fixtures; never a copy."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from adapters.smile_xml import SmileXmlCodec
from gateway.config import Settings, load_settings

# CI explores the same examples every run (a fixed seed, no example database), so that a red CI
# is reproducible; locally each run explores new ones.
hypothesis_settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI") == "true":
    hypothesis_settings.load_profile("ci")

ROOT = Path(__file__).resolve().parent.parent
XSD = ROOT / "xsd" / "smile-2.xsd"
SAMPLES = ROOT / "samples"
# A character beyond U+FFFF: four bytes in UTF-8, and two UTF-16 halves of three bytes each
# in Java's own UTF-8 (CESU-8), as ActiveMQ hands on a Java sender's TextMessage.
GRIN = "\U0001F600"
GRIN_JAVA = b"\xed\xa0\xbd\xed\xb8\x80"
DATA = ROOT / "tests" / "data"
INVALID = DATA / "invalid"


@pytest.fixture(scope="session")
def codec() -> SmileXmlCodec:
    return SmileXmlCodec(XSD)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return load_settings(ROOT / "config.yaml", {})


def run_cli(args: Sequence[str], stdin: bytes | None = None, env: dict[str, str] | None = None,
            cwd: Path = ROOT, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The real entry point, in a child process, with a timeout."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], input=stdin, capture_output=True,
        cwd=cwd, env=full_env, timeout=timeout, check=False,
        text=stdin is None)  # type: ignore[call-overload]
