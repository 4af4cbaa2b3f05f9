"""docs/prometheus-alerts.yaml: valid rules (promtool check), alerts that fire as meant on the
series the gateway exports (promtool test), and no metric a rule names that the gateway does
not export."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from adapters.sql_store import SqlStore
from adapters.webhook import create_app
from gateway.ports import InMemoryRequestIds
from gateway.service import GatewayService
from gateway.translator import Translator
from tests.conftest import ROOT

RULES = ROOT / "docs" / "prometheus-alerts.yaml"
RULE_TESTS = ROOT / "tests" / "alerts" / "prometheus-alerts-test.yaml"


def promtool() -> str:
    found = shutil.which("promtool") or ROOT / "var" / "tools" / "promtool"
    if not Path(found).exists():
        pytest.fail("promtool is missing: `make test` (scripts/system-deps.sh) takes it out of "
                    "Debian's prometheus package into var/tools/")
    return str(found)


def run(*args: str, cwd: Path = ROOT) -> None:
    done = subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_rules_are_valid() -> None:
    run("check", "rules", str(RULES))


def test_the_alerts_fire_as_meant() -> None:
    run("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)


def test_every_metric_a_rule_names_is_one_the_gateway_exports(settings, codec,
                                                             tmp_path) -> None:
    store = SqlStore(f"sqlite:///{tmp_path / 'g.db'}")
    service = GatewayService(settings, codec, store,
                             Translator(settings.mapping, codec, InMemoryRequestIds()))
    client = create_app(service, settings, {"store": store.ping}).test_client()
    client.get("/healthz")  # a request, so that the request counter has a sample
    text = client.get("/metrics").data.decode()
    # the samples' names (a counter's with _total), and the families' (a gauge read from the
    # store has no sample while the store holds nothing of its kind)
    names = set(re.findall(r"^(\w+)[{ ]", text, re.M)) | set(
        re.findall(r"^# TYPE (\w+) gauge", text, re.M))
    rules = [rule for group in yaml.safe_load(RULES.read_text())["groups"]
             for rule in group["rules"]]
    used = {name for rule in rules for name in re.findall(r"\bsmile_gateway_\w+", rule["expr"])}
    assert used, "no rule names a gateway metric"
    assert used <= names, used - names
    assert {rule["alert"] for rule in rules} == {
        "SmileGatewayDown", "SmileGatewayNotReady", "SmileGatewayOutboxStuck", "SmileGatewayOutboxDead",
        "SmileGatewayDeadLetters", "SmileGatewayServerErrors", "SmileGatewayRefusals",
        "SmileGatewayStoreDiskFilling"}
