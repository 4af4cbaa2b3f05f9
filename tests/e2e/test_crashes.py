"""Nothing is lost when the broker or the gateway is SIGKILLed in the middle of publishing, or
the broker frozen (SIGSTOP) in the middle of publishing or consuming."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from adapters.sql_base import SqlStoreBase
from adapters.sql_store import SqlStore
from adapters.stomp_broker import StompPublisher
from gateway.config import Settings
from gateway.ports import BROKER, SENT, InMemoryRequestIds
from gateway.relay import BrokerRelay
from gateway.service import GatewayService
from gateway.translator import Translator
from tests.brokers import (
    ACTIVEMQ,
    BrokerInstance,
    connect,
    port_open,
    receive,
    require_broker,
    unique_queue,
    wait_until,
)
from tests.conftest import ROOT, SAMPLES
from tests.on_broker import ConsumerThread, make_service, recording_consumer
from tests.stores import KINDS, open_store, store_url

pytestmark = pytest.mark.broker
COUNT = 2000
CRASH_STOMP, CRASH_OPENWIRE = 61633, 61636


@pytest.fixture()
def own_broker(tmp_path: Path):
    require_broker()  # the project's broker is installed and runs: this one can start too
    if port_open(CRASH_STOMP):
        pytest.fail(f"port {CRASH_STOMP} is taken: a broker left from a crashed run?")
    broker = BrokerInstance(tmp_path / "activemq", CRASH_STOMP, CRASH_OPENWIRE)
    broker.start()
    yield broker
    broker.stop()


def queue_documents(store: SqlStoreBase, settings: Settings, codec, count: int) -> set[str]:
    service = GatewayService(settings, codec, store,
                             Translator(settings.mapping, codec, InMemoryRequestIds()))
    data = (SAMPLES / "SubscriptionFeaturesChanged.xml").read_bytes()
    ids: set[str] = set()
    for start in range(0, count, 100):
        batch = [data.replace(b"<USN>2142426763</USN>", f"<USN>u{(start + i) % 20}</USN>".encode())
                 for i in range(min(100, count - start))]
        ids.update(service.publish_documents("SubscriptionFeaturesChanged", batch))
    return ids


def sent(store: SqlStoreBase) -> int:
    return store.counts().get((BROKER, SENT), 0)


def crash_settings(settings: Settings, queue: str, **broker: Any) -> Settings:
    """The relay against the broker of its own, reconnecting fast."""
    return replace(settings,
                   broker=replace(settings.broker, port=CRASH_STOMP, receipt_timeout_s=5.0,
                                  reconnect_initial_s=0.2, reconnect_max_s=1.0,
                                  heartbeat_ms=1000, max_in_flight=100, **broker),
                   emission=replace(settings.emission, enabled=True, destination=queue))


def relay_through_a_kill(s: Settings, store: SqlStoreBase, own_broker: BrokerInstance,
                         restart: bool, freeze: bool = False) -> int:
    """Run the relay until every queued message is confirmed, killing the broker of its own
    a quarter of the way in (and starting it again after a second if `restart`; freezing it
    instead if `freeze`); returns how many were confirmed when it was killed."""
    relay = BrokerRelay(store, StompPublisher(s.broker), s.emission, s.broker)
    stop = threading.Event()
    thread = threading.Thread(target=relay.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(lambda: sent(store) >= COUNT // 4, 60, what="a quarter confirmed")
        own_broker.freeze() if freeze else own_broker.kill()
        killed_at = sent(store)
        if restart:
            time.sleep(1.0)
            own_broker.start()
        wait_until(lambda: sent(store) == COUNT, 120, interval=0.2, what="all confirmed")
    finally:
        stop.set()
        relay.wake.set()
        thread.join(timeout=30)
    assert killed_at < COUNT, "the kill came too late to test anything"
    return killed_at


def test_a_broker_killed_mid_publish_loses_nothing(settings: Settings, codec, tmp_path,
                                                   own_broker: BrokerInstance) -> None:
    queue = unique_queue("brokerkill")
    s = crash_settings(settings, queue)
    store = SqlStore(f"sqlite:///{tmp_path / 'g.db'}")
    ids = queue_documents(store, s, codec, COUNT)
    relay_through_a_kill(s, store, own_broker, restart=True)
    frames = receive(queue, COUNT + 1000, timeout=60, idle=3.0, broker=replace(ACTIVEMQ, port=CRASH_STOMP))
    got = [f.headers["gateway-message-id"] for f in frames]
    assert set(got) == ids  # every message arrived
    assert len(got) - len(set(got)) <= s.broker.max_in_flight  # resends bounded by one window


def test_a_broker_killed_mid_publish_fails_over_to_the_next_and_loses_nothing(
        settings: Settings, codec, tmp_path, own_broker: BrokerInstance) -> None:
    """broker.host:port is a broker of its own, killed for good a quarter of the way in; the
    relay goes on with the next one listed (the project's broker) and every message is on
    one of the two: those the first had confirmed in its store, the rest on the second."""
    relay_fails_over(settings, codec, tmp_path, own_broker, freeze=False)


def test_a_broker_that_freezes_mid_publish_is_left_for_the_next_and_nothing_is_lost(
        settings: Settings, codec, tmp_path, own_broker: BrokerInstance,
        caplog: pytest.LogCaptureFixture) -> None:
    """A broker that stops answering with its connection open (SIGSTOP: no RECEIPT, no
    heart-beat, no reset) is given up within the heart-beat and receipt deadlines; the relay
    goes on with the next one listed. Once it runs again it has, at most, what it had
    confirmed plus the one batch in flight."""
    with caplog.at_level(logging.INFO):
        relay_fails_over(settings, codec, tmp_path, own_broker, freeze=True)
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    frozen = f"127.0.0.1:{CRASH_STOMP}"
    # why, once, in the gateway's words; and that it went on with the next broker listed
    assert any(f"heart-beat timeout: nothing from {frozen} for 1.5s" in m for m in said), said
    assert not any(m.startswith("heartbeat timeout: diff_receive") for m in said), said
    assert any(m.startswith(f"cannot connect to {frozen}: no answer to CONNECT")
               and f"using 127.0.0.1:{ACTIVEMQ.port}" in m for m in said), said


def relay_fails_over(settings: Settings, codec, tmp_path: Path, own_broker: BrokerInstance,
                     freeze: bool) -> None:
    """The relay's first broker (of its own) killed or frozen a quarter of the way in, the
    project's broker listed next: every message ends on one of the two, and once the first
    runs again it holds at least what it had confirmed."""
    queue = unique_queue("freeze" if freeze else "failover")
    s = crash_settings(settings, queue, failover=(("127.0.0.1", ACTIVEMQ.port),))
    store = SqlStore(f"sqlite:///{tmp_path / 'g.db'}")
    ids = queue_documents(store, s, codec, COUNT)
    failed_at = relay_through_a_kill(s, store, own_broker, restart=False, freeze=freeze)
    second = receive(queue, COUNT + 1000, timeout=60, idle=3.0)
    # what the first confirmed is in its journal
    own_broker.resume() if freeze else own_broker.start()
    first = receive(queue, COUNT + 1000, timeout=60, idle=3.0,
                    broker=replace(ACTIVEMQ, port=CRASH_STOMP))
    got = [f.headers["gateway-message-id"] for f in first + second]
    assert len(first) >= failed_at and second, (len(first), len(second))
    assert set(got) == ids  # every message arrived, on one broker or the other
    assert len(got) - len(set(got)) <= s.broker.max_in_flight  # resends bounded by one window


def test_a_consumer_whose_broker_freezes_takes_every_message_once_when_it_runs_again(
        settings: Settings, codec, tmp_path, own_broker: BrokerInstance,
        caplog: pytest.LogCaptureFixture) -> None:
    """The consumer's broker stops answering mid-backlog with its connection open (SIGSTOP):
    the consumer gives the connection up by its heart-beat deadline and tries again with
    backoff, its CONNECT unanswered; once the broker runs again it takes what is left, and
    each message is recorded once (those committed whose ACK the frozen broker never read
    come again and are known)."""
    queue = unique_queue("consumerfreeze")
    s = replace(crash_settings(settings, queue),
                inbound=replace(settings.inbound, enabled=True, destination=queue))
    service = make_service(s, codec, tmp_path)
    data = (SAMPLES / "SubscriptionFeaturesChanged.xml").read_bytes()
    # enough that the freeze comes mid-backlog however quick the consumer: after it, the
    # consumer can still take what it had prefetched (100) and what it took while the wait
    # below looked (300 at first; a quicker codec and store took them all before the freeze)
    count = 1000
    conn = connect(replace(ACTIVEMQ, port=CRASH_STOMP))
    try:
        for i in range(count):
            conn.send(queue, data.replace(b"<USN>2142426763</USN>", f"<USN>f{i}</USN>".encode()),
                      headers={"persistent": "true", "gateway-message-id": f"freeze-{i}",
                               "smileMessageType": "SubscriptionFeaturesChanged"},
                      receipt=f"r{i}" if i == count - 1 else None)
        time.sleep(0.5)
    finally:
        conn.disconnect(receipt="bye")
    outcomes: list[str] = []
    with caplog.at_level(logging.INFO), ConsumerThread(recording_consumer(s, service, outcomes)):
        wait_until(lambda: len(outcomes) >= count // 5, 60, interval=0.01, what="a fifth taken")
        own_broker.freeze()
        frozen_at = len(outcomes)
        time.sleep(4 * s.broker.heartbeat_ms / 1000)
        assert len(outcomes) < count, "the freeze came too late to test anything"
        own_broker.resume()
        wait_until(lambda: outcomes.count("accepted") == count, 90, interval=0.2,
                   what="every message recorded")
        time.sleep(1.0)  # what the broker delivers again, it delivers now
    assert frozen_at < count
    assert outcomes.count("accepted") == count, Counter(outcomes)
    assert set(outcomes) <= {"accepted", "duplicate"}, Counter(outcomes)
    assert service.store.dead_letters() == []
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(f"heart-beat timeout: nothing from 127.0.0.1:{CRASH_STOMP} for 1.5s" in m
               for m in said), said
    assert len([m for m in said if "connection" in m or "heart-beat" in m]) == 1, said


@pytest.mark.parametrize("kind", KINDS)
def test_a_gateway_killed_mid_run_drains_its_outbox_after_restart(
        settings: Settings, codec, tmp_path, kind: str) -> None:
    """On PostgreSQL the killed gateway's claims go with its connection: the next one sends."""
    require_broker()
    with store_url(kind, tmp_path) as url:
        killed_and_restarted(settings, codec, url)


def killed_and_restarted(settings: Settings, codec, url: str) -> None:
    queue = unique_queue("gatewaykill")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update({"GATEWAY_STORE__URL": url, "GATEWAY_EMISSION__ENABLED": "true",
                "GATEWAY_EMISSION__DESTINATION": queue, "GATEWAY_WEBHOOK__PORT": "0",
                "GATEWAY_BROKER__MAX_IN_FLIGHT": "50", "GATEWAY_LOGGING__LEVEL": "WARNING"})
    s = replace(settings, emission=replace(settings.emission, enabled=True, destination=queue))
    store = open_store(url)
    ids = queue_documents(store, s, codec, COUNT)

    def serve() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "gateway", "serve"], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    first = serve()
    try:
        wait_until(lambda: sent(store) >= COUNT // 5, 60, what="a fifth confirmed")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        killed_at = sent(store)
        assert killed_at < COUNT, "the kill came too late to test anything"
    finally:
        if first.poll() is None:
            first.kill()
    second = serve()
    try:
        wait_until(lambda: sent(store) == COUNT, 120, interval=0.2, what="the outbox to drain")
    finally:
        second.send_signal(signal.SIGTERM)
        try:
            assert second.wait(timeout=30) == 0, second.stderr.read().decode() if second.stderr else ""
        finally:
            if second.poll() is None:
                second.kill()
    frames = receive(queue, COUNT + 500, timeout=60, idle=3.0)
    got = [f.headers["gateway-message-id"] for f in frames]
    assert set(got) == ids
    assert len(got) - len(set(got)) <= 50  # at most the batch in flight at the kill
    store.close()
