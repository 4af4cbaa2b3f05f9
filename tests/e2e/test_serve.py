"""Through the real server: `smile-gateway serve` (waitress), ActiveMQ, an order system."""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.brokers import Endpoint, receive, require_broker, send, unique_queue, wait_until
from tests.conftest import INVALID, ROOT, SAMPLES, run_cli
from tests.e2e.servers import GatewayProcess, OrderSystem

RTP = (SAMPLES / "SubscriptionReadyToProvision.xml").read_bytes()
XML = {"Content-Type": "application/xml"}


@pytest.fixture()
def orders():
    with OrderSystem() as system:
        yield system


@pytest.fixture()
def gateway(tmp_path: Path, orders: OrderSystem):
    require_broker()
    queue = unique_queue("serve")
    gw = GatewayProcess(tmp_path, {
        "GATEWAY_EMISSION__ENABLED": "true", "GATEWAY_EMISSION__DESTINATION": queue,
        "GATEWAY_FORWARD__URL": orders.url, "GATEWAY_FORWARD__BACKOFF_S": "0.2",
        "GATEWAY_INBOUND__ENABLED": "true",
        "GATEWAY_INBOUND__DESTINATION": queue + ".in"}).start()
    gw.queue = queue  # type: ignore[attr-defined]
    yield gw
    assert gw.stop() == 0, gw.log.read_text()


def test_an_order_event_becomes_a_document_on_activemq(gateway) -> None:
    r = requests.post(f"{gateway.url}/smile/messages", data=RTP, timeout=10, headers={
        **XML, "X-Smile-Message-Type": "SubscriptionReadyToProvision",
        "X-Smile-Provision-Request-Id": "31"})
    assert r.status_code == 202, r.text
    r = requests.post(f"{gateway.url}/orders/events", timeout=10, json={
        "eventId": "ev-1", "usn": "2142426762", "vocabulary": "order", "state": "inProgress"})
    assert r.status_code == 202, r.text
    r = requests.post(f"{gateway.url}/listener/productOrderStateChangeEvent", timeout=10, json={
        "eventId": "tmf-1", "event": {"productOrder": {"state": "completed",
                                                       "externalId": "2142426762"}}})
    assert r.status_code == 204, r.text
    frames = receive(gateway.queue, 3, timeout=30)
    assert [f.headers["smileMessageType"] for f in frames] == [
        "SubscriptionProvisionResponse", "SubscriptionProvisioned",
        "SubscriptionProvisionResponse"]
    assert {f.headers["provisionRequestId"] for f in frames} == {"31"}
    assert frames[0].headers["correlation-id"] == "ev-1"
    assert frames[1].headers["correlation-id"] == "tmf-1"
    view = requests.get(f"{gateway.url}/subscriptions/2142426762", timeout=10).json()
    assert view["states"]["order_state"] == "completed"
    assert view["statuses"] == {"provision": "Provisioned", "suspend": "Active",
                                "activate": "Activated", "enable": "Enabled"}


def test_a_posted_smile_document_is_forwarded(gateway, orders: OrderSystem) -> None:
    orders.statuses = [503]  # the first try fails: the relay retries
    r = requests.post(f"{gateway.url}/smile/messages", timeout=10, data=(
        SAMPLES / "SubscriptionActivated.xml").read_bytes(), headers={
        **XML, "X-Smile-Message-Type": "SubscriptionActivated", "webhook-id": "wh-1"})
    assert r.status_code == 202
    wait_until(lambda: any(c["status"] == 200 for c in orders.received), 30,
               what="the forwarded event")
    delivered = [c for c in orders.received if c["status"] == 200]
    assert len(delivered) == 1
    event = delivered[0]["json"]
    assert (event["usn"], event["order_state"], event["smileMessageType"]) == (
        "2142426765", "completed", "SubscriptionActivated")
    assert delivered[0]["headers"]["Idempotency-Key"] == event["eventId"]
    assert orders.received[0]["json"]["eventId"] == event["eventId"]  # the retry, same event


def test_a_message_from_smile_on_the_broker_is_recorded(gateway) -> None:
    suspended = {"smileMessageType": "SubscriptionSuspended", "usn": "2142426766", "sid": "176",
                 "gateway-message-id": "smile-1"}
    send(gateway.queue + ".in", (SAMPLES / "SubscriptionSuspended.xml").read_bytes(), suspended)

    def recorded() -> bool:
        r = requests.get(f"{gateway.url}/subscriptions/2142426766", timeout=5)
        return r.status_code == 200

    wait_until(recorded, 30, what="the consumed document")
    view = requests.get(f"{gateway.url}/subscriptions/2142426766", timeout=10).json()
    assert view["statuses"] == {"provision": "Provisioned", "suspend": "Suspended",
                                "activate": "NotActivated", "enable": "Enabled"}
    assert [h["source"] for h in view["history"]] == ["smile"]
    # counted by what became of them: the same document again, and one the schema refuses
    send(gateway.queue + ".in", (SAMPLES / "SubscriptionSuspended.xml").read_bytes(), suspended)
    send(gateway.queue + ".in", (INVALID / "elements-out-of-order.xml").read_bytes(),
         {"smileMessageType": "SubscriptionSuspended"})
    counted = ['smile_gateway_broker_messages_total{outcome="accepted"} 1.0',
               'smile_gateway_broker_messages_total{outcome="duplicate"} 1.0',
               'smile_gateway_broker_messages_total{outcome="dead-letter"} 1.0',
               'smile_gateway_documents_accepted_total{source="broker"} 1.0']
    wait_until(lambda: all(line in requests.get(f"{gateway.url}/metrics", timeout=5).text
                           for line in counted), 30, what="the consumed messages counted")
    # acknowledged once committed: with the gateway gone, the broker has nothing to redeliver
    assert gateway.stop() == 0, gateway.log.read_text()
    assert receive(gateway.queue + ".in", 1, timeout=3) == []


def hostile_requests(url: str) -> list[tuple[str, str, dict[str, str], bytes | Iterator[bytes]]]:
    out = [("POST", "/smile/messages", XML, p.read_bytes())
           for p in sorted(INVALID.glob("*.xml"))]
    out += [
        ("POST", "/smile/messages", XML, b""),
        ("POST", "/smile/messages", {"Content-Type": "text/plain"}, RTP),
        ("POST", "/smile/messages", {}, RTP),
        ("POST", "/smile/messages", {**XML, "X-Smile-Message-Type": "Nonsense"}, RTP),
        ("POST", "/smile/messages", {**XML, "X-Smile-Message-Type": "SubscriptionClosed"}, RTP),
        ("POST", "/smile/messages", {**XML, "X-Smile-Provision-Request-Id": "abc",
                                     "X-Smile-Message-Type": "SubscriptionReadyToProvision"},
         RTP),
        ("POST", "/smile/messages", {**XML, "X-Huge": "x" * 200_000}, RTP),
        ("POST", "/smile/messages", {**XML, "webhook-id": "id-\xff"}, RTP),  # no UTF-8
        ("POST", "/smile/messages", {**XML, "X-Smile-Provision-Request-Id": "12"}, RTP),
        ("POST", "/smile/messages", {**XML, "Content-Encoding": "gzip"}, gzip.compress(RTP)),
        ("POST", "/orders/events", {"Content-Type": "application/json", "Content-Encoding": "br"},
         json.dumps({"eventId": "x", "usn": "u", "vocabulary": "order",
                     "state": "accepted"}).encode()),
        ("POST", "/orders/events", {"Content-Type": "application/json"}, b"{"),
        ("POST", "/orders/events", {"Content-Type": "application/json"}, b"null"),
        ("POST", "/orders/events", {"Content-Type": "application/json"}, b'"text"'),
        ("POST", "/orders/events", {"Content-Type": "application/json"},
         json.dumps({"eventId": 1, "usn": None, "vocabulary": [], "state": {}}).encode()),
        ("POST", "/orders/events", {"Content-Type": "application/json"},
         json.dumps({"eventId": "x", "usn": "u", "vocabulary": "order", "state": "accepted",
                     "subscription": {"sid": "nine", "plans": "none",
                                      "properties": [{"type": "Blob"}]}}).encode()),
        ("POST", "/orders/events", {"Content-Type": "application/json"}, b"\xff\xfe\x00"),
        ("POST", "/orders/events", {"Content-Type": "application/json"},  # what XML cannot carry
         b'{"eventId": "e\\u0000", "usn": "u\\ud800", "vocabulary": "order", "state": "x"}'),
        ("POST", "/orders/events", {"Content-Type": "application/json"}, b"[" * 100_000),
        ("POST", "/listener/productOrderStateChangeEvent", {"Content-Type": "application/json"},
         b'{"eventId": "e", "event": {"productOrder": []}}'),
        ("PUT", "/smile/messages", XML, RTP),
        ("DELETE", "/orders/events", {}, b""),
        ("GET", "/orders/events", {}, b""),
        ("PATCH", "/subscriptions/x", {}, b""),
        ("GET", "/subscriptions/%00%ff", {}, b""),
        ("GET", "/nowhere", {}, b""),
        ("POST", "/smile/messages", XML, b"<a>" * 600_000),
        ("POST", "/smile/messages", XML, b"<a>" * 300_000),  # under the size limit, too deep
        # chunked (no Content-Length): over the limit as it arrives, refused by waitress
        ("POST", "/smile/messages", XML, (b"<a>" * 1000 for _ in range(1000))),
        # chunked, just over the limit: refused by the app
        ("POST", "/smile/messages", XML, (b"x" * 1025 for _ in range(1024))),
    ]
    return out


def test_hostile_and_malformed_requests_get_4xx_never_5xx(gateway) -> None:
    results = []
    for method, path, headers, body in hostile_requests(gateway.url):
        r = requests.request(method, gateway.url + path, headers=headers, data=body, timeout=30)
        results.append((method, path, r.status_code))
        assert 400 <= r.status_code < 500, (method, path, headers.get("Content-Type"),
                                            r.status_code, r.text[:300])
        # waitress's own refusals (body or headers over its limits) too
        assert r.headers["Content-Type"] == "application/problem+json", (method, path, r.text)
        assert r.json()["status"] == r.status_code
    assert requests.get(f"{gateway.url}/healthz", timeout=5).status_code == 200
    assert len(results) > 40
    # each one is in the log too, as answered (waitress's own refusals as well)
    lines = gateway.log.read_text().splitlines()
    refused = [line for line in lines if " refused " in line]
    assert len(refused) == len(results), "\n".join(refused)
    # one line each, whatever the request held (a NUL in a path, bytes that are no UTF-8)
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ", line)
               for line in lines), "\n".join(lines)
    assert any("refused GET /subscriptions/\\x00" in line for line in refused)
    assert any(": 413 Content Too Large: " in line for line in refused)
    assert any(": 431 " in line or "Request Header Fields Too Large" in line
               for line in refused), "\n".join(refused)


def test_a_slow_or_broken_client_does_not_hang_the_server(gateway) -> None:
    host, port = "127.0.0.1", int(gateway.url.rsplit(":", 1)[1])
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"POST /smile/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/xml"
                  b"\r\nContent-Length: 100\r\n\r\n<a>")  # and then nothing more
        r = requests.get(f"{gateway.url}/healthz", timeout=5)
        assert r.status_code == 200  # another request is served meanwhile
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"GARBAGE\r\n\r\n")
        s.settimeout(5)
        answer = b""
        while chunk := s.recv(4096):  # waitress closes the connection after its answer
            answer += chunk
        assert answer.startswith(b"HTTP/1.0 400 ")
        assert b"\r\nContent-Type: application/problem+json\r\n" in answer
        assert answer.endswith(b'"status": 400, "detail": "Start line is invalid"}')
    assert "refused ? ?: 400 Bad Request: Start line is invalid (from 127.0.0.1)" in (
        gateway.log.read_text())


def test_a_store_removed_while_served_is_a_503_not_a_202_into_a_deleted_file(
        tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path, {}).start()
    try:
        r = requests.post(f"{gw.url}/smile/messages", data=RTP, headers=XML, timeout=10)
        assert r.status_code == 202, r.text
        (tmp_path / "gateway.db").unlink()  # a cleanup gone wrong
        r = requests.post(f"{gw.url}/smile/messages", data=RTP, headers=XML, timeout=10)
        assert r.status_code == 503, r.text
        ready = requests.get(f"{gw.url}/readyz", timeout=10)
        assert ready.status_code == 503
        assert f"the store file {tmp_path / 'gateway.db'} was removed while in use" in (
            ready.json()["checks"]["store"])
    finally:
        assert gw.stop() == 0
    assert "was removed while in use: nothing more is committed to it" in gw.log.read_text()


def test_json_logs_give_a_refusal_and_its_fields_one_line(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path, {"GATEWAY_LOGGING__FORMAT": "json"}).start()
    try:
        r = requests.post(f"{gw.url}/smile/messages", data=b"<a>", timeout=10,
                          headers={"Content-Type": "application/xml", "webhook-id": "msg_1"})
        assert r.status_code == 400
    finally:
        assert gw.stop() == 0
    entries = [json.loads(line) for line in gw.log.read_text().splitlines()]  # each JSON
    [refused] = [e for e in entries if e["message"].startswith("refused ")]
    assert {k: refused[k] for k in ("level", "logger", "method", "path", "status", "remote",
                                    "webhook_id")} == {
        "level": "INFO", "logger": "adapters.webhook", "method": "POST",
        "path": "/smile/messages", "status": 400, "remote": "127.0.0.1", "webhook_id": "msg_1"}


def test_a_port_already_taken_is_a_clear_start_up_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli(["serve"], env={"GATEWAY_STORE__URL": f"sqlite:///{tmp_path / 'gw.db'}",
                                       "GATEWAY_WEBHOOK__PORT": str(port)})
    assert done.returncode == 2
    assert f"webhook.port: cannot listen on 127.0.0.1:{port}: Address already in use" \
        in done.stderr
    assert "Traceback" not in done.stderr


def test_a_host_name_that_does_not_resolve_is_a_clear_start_up_error(tmp_path: Path) -> None:
    done = run_cli(["serve"], env={"GATEWAY_STORE__URL": f"sqlite:///{tmp_path / 'gw.db'}",
                                   "GATEWAY_WEBHOOK__HOST": "no-such-host.invalid"})
    assert done.returncode == 2
    assert "webhook.host: cannot listen on no-such-host.invalid:8080: " in done.stderr
    assert "Traceback" not in done.stderr


def test_a_worker_that_fails_unexpectedly_stops_the_gateway_with_exit_1(tmp_path: Path) -> None:
    # a bug in a worker thread (here the pruner's, once the server is up) must not leave the
    # gateway answering while its work is not done: it stops, and says why, for a restart
    script = ("import sys\n"
              "from gateway import cli, retention\n"
              "def broken(self, stop):\n"
              "    stop.wait(1)\n"
              "    raise RuntimeError('a bug')\n"
              "retention.Pruner.run = broken\n"
              "sys.exit(cli.main(['serve']))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update({"GATEWAY_STORE__URL": f"sqlite:///{tmp_path / 'gw.db'}",
                "GATEWAY_WEBHOOK__PORT": "0"})
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stderr
    assert "pruner failed: stopping the gateway" in done.stderr
    assert "RuntimeError: a bug" in done.stderr
    assert "signal 15: stopping" in done.stderr
    assert "stopped because pruner failed" in done.stderr


def test_serve_says_at_start_which_brokers_it_will_use(tmp_path: Path) -> None:
    """With emission or inbound on, the start line names the brokers in the order tried, and
    TLS; an operator reading the log knows where a message went without the config file."""
    gw = GatewayProcess(tmp_path, {"GATEWAY_EMISSION__ENABLED": "true",
                                   "GATEWAY_BROKER__PORT": "61999",
                                   "GATEWAY_BROKER__FAILOVER": "standby.example:61998"}).start()
    assert gw.stop() == 0
    assert ("serving store=sqlite:///" in gw.log.read_text() and
            "broker=127.0.0.1:61999 or standby.example:61998 (plain text)" in gw.log.read_text())
    (tmp_path / "off").mkdir()
    off = GatewayProcess(tmp_path / "off", {}).start()
    assert off.stop() == 0
    assert "broker=" not in off.log.read_text()
    assert "signatures=off" in off.log.read_text()
    assert "WARNING" not in off.log.read_text()  # on loopback: the machine's own callers


def test_serve_says_whether_it_checks_signatures_and_warns_when_exposed_without(
        tmp_path: Path) -> None:
    secrets = "whsec_bmV3 whsec_b2xk"
    signed = GatewayProcess(tmp_path, {"GATEWAY_WEBHOOK__SECRET": secrets}).start()
    assert signed.stop() == 0
    assert "signatures=on (2 secrets)" in signed.log.read_text()
    assert secrets.split()[0] not in signed.log.read_text()  # never the secret itself
    (tmp_path / "open").mkdir()
    exposed = GatewayProcess(tmp_path / "open", {"GATEWAY_WEBHOOK__HOST": "0.0.0.0"}).start()
    assert exposed.stop() == 0
    assert ("WARNING gateway.cli webhook.host 0.0.0.0 takes requests from other machines and "
            "webhook.secret is unset: anyone who reaches the port can post documents and "
            "events") in exposed.log.read_text()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP])
def test_sigint_and_sighup_stop_it_as_sigterm_does(tmp_path: Path, signum: int) -> None:
    gw = GatewayProcess(tmp_path, {}).start()
    r = requests.post(f"{gw.url}/smile/messages", data=RTP, headers=XML, timeout=10)
    assert r.status_code == 202
    assert gw.stop(signum) == 0
    log = gw.log.read_text()
    assert f"signal {int(signum)}: stopping" in log and log.rstrip().endswith("stopped")


def test_serve_runs_the_pruner_unless_retention_is_off(tmp_path: Path) -> None:
    for env, running in (({}, True), ({"GATEWAY_STORE__RETENTION_DAYS": "0"}, False)):
        (tmp_path / str(running)).mkdir()
        gw = GatewayProcess(tmp_path / str(running), env).start()
        assert gw.stop() == 0, gw.log.read_text()
        log = gw.log.read_text()
        assert ("pruner started retention_days=30" in log) is running, log
        assert ("pruner stopped" in log) is running, log


def test_a_second_serve_on_one_sqlite_store_is_refused_until_the_first_stops(
        tmp_path: Path) -> None:
    """Two relays on one SQLite file could send a subscription's messages out of order."""
    first = GatewayProcess(tmp_path, {}).start()
    store = first.env["GATEWAY_STORE__URL"]
    try:
        second = run_cli(["serve"], env={"GATEWAY_STORE__URL": store,
                                         "GATEWAY_WEBHOOK__PORT": "0"}, timeout=30)
        assert second.returncode == 1
        assert (f"store error: the store {store} is already served by pid {first.proc.pid}: "
                "one `smile-gateway serve` serves a SQLite store") in second.stderr
        assert requests.get(f"{first.url}/healthz", timeout=5).status_code == 200
    finally:
        assert first.stop() == 0, first.log.read_text()
    (tmp_path / "again").mkdir()
    again = GatewayProcess(tmp_path / "again", {"GATEWAY_STORE__URL": store}).start()
    assert again.stop() == 0, again.log.read_text()


def test_an_address_that_takes_connections_but_is_no_broker_fails_readyz_with_why(
        tmp_path: Path) -> None:
    """A load balancer before a dead broker: TCP works, STOMP never answers. Neither the
    relay nor the consumer may hang on it, /readyz says what they met, SIGTERM still stops."""
    endpoint = Endpoint("silent")
    gw = GatewayProcess(tmp_path, {
        "GATEWAY_EMISSION__ENABLED": "true", "GATEWAY_INBOUND__ENABLED": "true",
        "GATEWAY_BROKER__PORT": str(endpoint.port), "GATEWAY_BROKER__RECEIPT_TIMEOUT_S": "1",
        "GATEWAY_BROKER__RECONNECT_MAX_S": "1"}).start()
    try:
        r = requests.post(f"{gw.url}/smile/messages", data=RTP, timeout=10, headers={
            **XML, "X-Smile-Message-Type": "SubscriptionReadyToProvision",
            "X-Smile-Provision-Request-Id": "31"})
        assert r.status_code == 202, r.text
        r = requests.post(f"{gw.url}/orders/events", timeout=10, json={
            "eventId": "ev-1", "usn": "2142426762", "vocabulary": "order", "state": "inProgress"})
        assert r.status_code == 202, r.text  # recorded; its message waits in the outbox

        def not_ready() -> bool:
            r = requests.get(f"{gw.url}/readyz", timeout=10)
            return r.status_code == 503 and "no answer to CONNECT" in r.json()["checks"]["broker"]

        wait_until(not_ready, 30, what="/readyz to say why the broker is not usable")
        broker = requests.get(f"{gw.url}/readyz", timeout=10).json()["checks"]["broker"]
        assert broker == (f"failing: cannot connect to 127.0.0.1:{endpoint.port}: no answer to "
                          "CONNECT within 1s (is it a STOMP port?)")
        metrics = requests.get(f"{gw.url}/metrics", timeout=10).text  # for an alert, too
        assert 'smile_gateway_ready{check="broker"} 0.0' in metrics
        assert 'smile_gateway_ready{check="store"} 1.0' in metrics
    finally:
        assert gw.stop() == 0, gw.log.read_text()
        endpoint.close()
    assert "no answer to CONNECT" in gw.log.read_text()


def test_an_order_system_that_never_finishes_its_answer_does_not_hold_the_shutdown(
        tmp_path: Path) -> None:
    """The forward relay's POST is cut at forward.timeout_s, retried, and SIGTERM still stops."""
    with OrderSystem(drip_s=0.05) as orders:
        gw = GatewayProcess(tmp_path, {"GATEWAY_FORWARD__URL": orders.url,
                                       "GATEWAY_FORWARD__TIMEOUT_S": "1",
                                       "GATEWAY_FORWARD__BACKOFF_S": "0.2"}).start()
        try:
            r = requests.post(f"{gw.url}/smile/messages", timeout=10, data=(
                SAMPLES / "SubscriptionActivated.xml").read_bytes(), headers={
                **XML, "X-Smile-Message-Type": "SubscriptionActivated"})
            assert r.status_code == 202, r.text
            wait_until(lambda: "no whole answer within forward.timeout_s (1 s)"
                       in gw.log.read_text(), 30, what="the POST to be cut at its deadline")
            wait_until(lambda: len(orders.received) >= 2, 30, what="the retry")
        finally:
            assert gw.stop() == 0, gw.log.read_text()  # within 30 s, a POST in progress or not
    [row] = json.loads(run_cli(["outbox", "list", "--format", "json"], env=gw.env).stdout)
    assert row["status"] == "pending" and row["attempts"] >= 1


@pytest.mark.parametrize("trusted", ["", "127.0.0.1"])
def test_the_peer_behind_a_trusted_proxy_is_the_forwarded_address(tmp_path: Path,
                                                                  trusted: str) -> None:
    """Behind a TLS-terminating proxy every request comes from the proxy's address: with
    webhook.trusted_proxy set to it, its X-Forwarded-For names the sender (in the log and
    to the app); from anyone else, or with none set, the header is dropped, not believed."""
    gw = GatewayProcess(tmp_path, {"GATEWAY_WEBHOOK__TRUSTED_PROXY": trusted}).start()
    try:
        r = requests.post(f"{gw.url}/orders/events", data="{", timeout=10, headers={
            "Content-Type": "application/json", "X-Forwarded-For": "203.0.113.9",
            "X-Forwarded-Proto": "https"})
        assert r.status_code == 400
    finally:
        assert gw.stop() == 0, gw.log.read_text()
    [line] = [line for line in gw.log.read_text().splitlines() if " refused " in line]
    assert line.endswith("(from 203.0.113.9)" if trusted else "(from 127.0.0.1)"), line
    if trusted:
        assert "trusted proxy 127.0.0.1" in gw.log.read_text()
