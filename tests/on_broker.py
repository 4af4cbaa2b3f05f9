"""The gateway's own parts over a real broker, for the tests that run them there: a service on
SQLite, a seeded subscription, a consumer in a thread, and one message each way."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from adapters.smile_xml import SmileXmlCodec
from adapters.sql_store import SqlStore
from adapters.stomp_broker import StompConsumer, StompPublisher
from gateway.config import BrokerSettings, Settings
from gateway.errors import PublishError
from gateway.ports import SENT, Envelope, InMemoryRequestIds
from gateway.relay import BrokerRelay
from gateway.service import GatewayService, StateChange
from gateway.translator import Translator
from tests.brokers import Broker, receive, send, wait_until
from tests.conftest import SAMPLES


def make_service(settings: Settings, codec: SmileXmlCodec, tmp_path: Path) -> GatewayService:
    store = SqlStore(f"sqlite:///{tmp_path / 'gateway.db'}")
    return GatewayService(settings, codec, store,
                          Translator(settings.mapping, codec, InMemoryRequestIds()))


def seed(service: GatewayService, usn_suffix: str = "") -> str:
    data = (SAMPLES / "SubscriptionReadyToProvision.xml").read_bytes()
    if usn_suffix:
        data = data.replace(b"<USN>2142426762</USN>", f"<USN>2142426762{usn_suffix}</USN>".encode())
    result = service.accept_smile_document(data, "SubscriptionReadyToProvision",
                                           {"provisionRequestId": "4242"})
    return str(result["usn"])


def recording_consumer(s: Settings, service: GatewayService,
                       outcomes: list[str]) -> StompConsumer:
    """A consumer over the real service that notes each delivery's outcome."""

    def handler(headers, body):
        outcome = service.consume(headers, body)
        outcomes.append(outcome)
        return outcome

    return StompConsumer(s.broker, s.inbound, handler,
                         lambda h, b, r: service.dead_letter("broker", r, h, b))


class ConsumerThread:
    def __init__(self, consumer: StompConsumer) -> None:
        self.consumer = consumer
        self.stop = threading.Event()
        self.thread = threading.Thread(target=consumer.run, args=(self.stop,), daemon=True)

    def __enter__(self) -> ConsumerThread:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=15)
        assert not self.thread.is_alive()


def publish_and_consume(s: Settings, service: GatewayService, queue: str,
                        broker: Broker) -> None:
    """One state change published by the relay and read back from `broker`, then one
    message sent there taken by the consumer: both ways through `s.broker`."""
    relay = BrokerRelay(service.store, StompPublisher(s.broker), s.emission, s.broker)
    try:
        usn = seed(service)
        service.apply_state_change(StateChange(f"evt-{queue}", usn, "order", "inProgress"))
        assert relay.drain(time.time() + 30) == 1
    finally:
        relay.publisher.close()
    [item] = service.store.outbox()
    assert item.status == SENT
    [frame] = receive(queue, 1, timeout=20, broker=broker)
    assert frame.headers["gateway-message-id"] == item.message_id
    outcomes: list[str] = []
    with ConsumerThread(recording_consumer(s, service, outcomes)):
        send(queue, (SAMPLES / "SubscriptionActivated.xml").read_bytes(),
             {"smileMessageType": "SubscriptionActivated"}, broker=broker)
        wait_until(lambda: outcomes == ["accepted"], 30, what="the consumed message")


def publish_refused(broker: BrokerSettings) -> str:
    """Why a publisher over `broker` cannot send one message (it must fail)."""
    publisher = StompPublisher(broker)
    try:
        publisher.publish([Envelope(1, "/queue/x", {}, b"<x/>")])
    except PublishError as exc:
        return str(exc)
    finally:
        publisher.close()
    raise AssertionError("the publish was confirmed")
