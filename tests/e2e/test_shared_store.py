"""Two `smile-gateway serve` processes sharing one PostgreSQL store and one broker queue."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from tests.brokers import receive, require_broker, unique_queue
from tests.conftest import SAMPLES
from tests.e2e.servers import GatewayProcess
from tests.stores import pg_schema

pytestmark = pytest.mark.postgres

USN = "2142426762"
RTP = (SAMPLES / "SubscriptionReadyToProvision.xml").read_bytes()


def test_two_gateways_on_one_store_answer_alike_and_publish_each_message_once(
        tmp_path: Path) -> None:
    require_broker()
    queue = unique_queue("shared")
    with pg_schema() as url:
        env = {"GATEWAY_STORE__URL": url, "GATEWAY_EMISSION__ENABLED": "true",
               "GATEWAY_EMISSION__DESTINATION": queue}
        gateways = []
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            gateways.append(GatewayProcess(tmp_path / name, env).start())
        a, b = gateways
        try:
            r = requests.post(f"{a.url}/smile/messages", data=RTP, timeout=10, headers={
                "Content-Type": "application/xml",
                "X-Smile-Message-Type": "SubscriptionReadyToProvision",
                "X-Smile-Provision-Request-Id": "31", "webhook-id": "wh-1"})
            assert r.status_code == 202, r.text
            # the same delivery at the other gateway is the same delivery
            again = requests.post(f"{b.url}/smile/messages", data=RTP, timeout=10, headers={
                "Content-Type": "application/xml",
                "X-Smile-Message-Type": "SubscriptionReadyToProvision",
                "X-Smile-Provision-Request-Id": "31", "webhook-id": "wh-1"})
            assert (again.status_code, again.json()) == (202, r.json())
            assert requests.get(f"{b.url}/subscriptions/{USN}", timeout=10).json()[
                "statuses"]["provision"] == "ReadyToProvision"
            r = requests.post(f"{b.url}/orders/events", timeout=10, json={
                "eventId": "ev-1", "usn": USN, "vocabulary": "order", "state": "inProgress"})
            assert r.status_code == 202, r.text
            r = requests.post(f"{a.url}/orders/events", timeout=10, json={
                "eventId": "ev-2", "usn": USN, "vocabulary": "order", "state": "completed"})
            assert r.status_code == 202, r.text
            frames = receive(queue, 4, timeout=20, idle=5)
            assert [f.headers["smileMessageType"] for f in frames] == [
                "SubscriptionProvisionResponse", "SubscriptionProvisioned",
                "SubscriptionProvisionResponse"]  # in order, each once, whichever relay sent
            assert [f.headers["correlation-id"] for f in frames] == ["ev-1", "ev-2", "ev-2"]
            history = requests.get(f"{a.url}/subscriptions/{USN}", timeout=10).json()["history"]
            assert [h["to"] for h in history if h["vocabulary"] == "order"][-2:] == [
                "inProgress", "completed"]
        finally:
            for gateway in gateways:
                assert gateway.stop() == 0, gateway.log.read_text()
