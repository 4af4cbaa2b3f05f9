"""The relay, publisher and consumer against real brokers on loopback.

Tests that take the `broker` fixture run on ActiveMQ (the project's broker) and on RabbitMQ
with its STOMP plugin (the design says the gateway works on both); the others use what only
ActiveMQ has (JMS clients, its own refusals)."""

from __future__ import annotations

import json
import logging
import re
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import stomp

from adapters.smile_xml import SmileXmlCodec
from adapters.stomp_broker import StompConsumer, StompPublisher, _broker_error
from gateway.config import BrokerSettings, Settings
from gateway.errors import PublishError, StoreError
from gateway.ports import BROKER, DEAD, PENDING, SENT, Envelope, NewOutboxItem
from gateway.relay import BrokerRelay
from gateway.service import StateChange
from tests.brokers import (
    ACTIVEMQ,
    OPENWIRE_PORT,
    RABBITMQ,
    Broker,
    Endpoint,
    TlsFront,
    connect,
    make_certificate,
    rabbitmq_queue,
    rabbitmq_single_active_queue,
    receive,
    require_broker,
    send,
    unique_queue,
    wait_until,
)
from tests.conftest import GRIN, GRIN_JAVA, INVALID, SAMPLES
from tests.on_broker import (
    ConsumerThread,
    make_service,
    publish_and_consume,
    publish_refused,
    recording_consumer,
    seed,
)

pytestmark = pytest.mark.broker


@pytest.fixture(params=[ACTIVEMQ, RABBITMQ], ids=str)
def broker(request: pytest.FixtureRequest) -> Broker:
    require_broker(request.param)
    return request.param  # type: ignore[no-any-return]


@pytest.fixture()
def activemq() -> Broker:
    require_broker(ACTIVEMQ)
    return ACTIVEMQ


def make_settings(settings: Settings, queue: str, broker: Broker, **emission) -> Settings:
    return replace(settings,
                   broker=replace(settings.broker, port=broker.port, user=broker.user,
                                  password=broker.password, receipt_timeout_s=5.0,
                                  reconnect_initial_s=0.2, reconnect_max_s=1.0,
                                  heartbeat_ms=2000),
                   emission=replace(settings.emission, enabled=True, destination=queue,
                                    **emission),
                   inbound=replace(settings.inbound, enabled=True, destination=queue))


def test_a_state_change_arrives_with_every_header(settings: Settings, codec, tmp_path, broker) -> None:
    queue = unique_queue("roundtrip")
    s = make_settings(settings, queue, broker)
    service = make_service(s, codec, tmp_path)
    usn = seed(service)  # order acknowledged, request 4242 open from Smile
    service.apply_state_change(StateChange("evt-41", usn, "order", "inProgress"))
    response = service.apply_state_change(StateChange("urn:evt:42", usn, "order", "completed"))
    assert [m["status"] for m in response["messages"]] == [PENDING, PENDING]
    relay = BrokerRelay(service.store, StompPublisher(s.broker), s.emission, s.broker)
    assert relay.drain(time.time() + 30) == 3
    relay.publisher.close()
    frames = receive(queue, 3, timeout=20, broker=broker)
    assert len(frames) == 3
    progress, first, second = frames
    assert progress.headers["smileMessageType"] == "SubscriptionProvisionResponse"
    assert b"<status>InProgress</status>" in progress.body
    h = first.headers
    assert h["smileMessageType"] == "SubscriptionProvisioned"
    assert (h["usn"], h["sid"], h["provisionRequestId"]) == (usn, "170", "4242")
    assert h["correlation-id"] == "urn:evt:42"  # sent escaped (STOMP 1.2), read back as it was
    assert h["gateway-message-id"] == response["messages"][0]["id"]
    assert h["persistent"] == "true"
    assert h["gateway-origin"] == "smile-gateway"
    if broker is ACTIVEMQ:  # a JMS TextMessage: ActiveMQ adds none (RabbitMQ always does)
        assert "content-length" not in h
    assert b"<ProvisionStatus>Provisioned</ProvisionStatus>" in first.body
    assert codec.check(first.body) == []
    assert second.headers["smileMessageType"] == "SubscriptionProvisionResponse"
    assert second.headers["provisionRequestId"] == "4242"
    assert b"<status>Provisioned</status>" in second.body
    statuses = {i.status for i in service.store.outbox()}
    assert statuses == {SENT}


JMS_LIBS = "/usr/share/activemq/lib/*"


@pytest.fixture(scope="module")
def jms(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """How to run the Smile-side JMS programs of tests/jms (a listener, a sender), compiled
    once: the java command and its class path."""
    javac, java = shutil.which("javac"), shutil.which("java")
    if not javac or not java:
        pytest.fail("javac and java are needed for the JMS programs (the JDK is on the machine)")
    classes = tmp_path_factory.mktemp("jms-classes")
    sources = sorted(str(p) for p in (Path(__file__).resolve().parent.parent / "jms").glob("*.java"))
    subprocess.run([javac, "-cp", JMS_LIBS, "-d", str(classes), *sources], check=True, timeout=120)
    return [java, "-cp", f"{JMS_LIBS}:{classes}"]


def jms_receive(jms: list[str], queue: str, count: int) -> list[dict[str, Any]]:
    """What a JMS listener gets from `queue`: per message its class, properties and text."""
    done = subprocess.run([*jms, "JmsProbe", f"tcp://127.0.0.1:{OPENWIRE_PORT}",
                           queue.removeprefix("/queue/"), str(count), "10000"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr  # a getText() that fails says why here
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_a_jms_listener_gets_text_messages_with_string_properties(settings, codec, tmp_path,
                                                                  activemq, jms) -> None:
    queue = unique_queue("jms")
    s = make_settings(settings, queue, activemq)
    service = make_service(s, codec, tmp_path)
    usn = seed(service)
    # STOMP escapes ':' and '\\' in a header's value (1.2): a URN as the event id, and a
    # backslash, reach the JMS side as they were sent
    event_id = "urn:uuid:0f6e1c2a-evt:jms\\2"
    service.apply_state_change(StateChange(event_id, usn, "subscription", "activating"))
    relay = BrokerRelay(service.store, StompPublisher(s.broker), s.emission, s.broker)
    relay.drain(time.time() + 30)
    relay.publisher.close()
    lines = jms_receive(jms, queue, 2)
    assert [m["class"] for m in lines] == ["TextMessage", "TextMessage"]
    for m in lines:
        props = m["properties"]
        for name in ("smileMessageType", "usn", "sid"):
            assert props[name][0] == "String", (name, props[name])
        assert m["text"].startswith('<?xml version="1.0" encoding="UTF-8"?>')
    assert lines[0]["properties"]["smileMessageType"][1] == "SubscriptionProvisioned"
    assert [m["correlationId"] for m in lines] == [event_id] * 2


def test_a_jms_listener_reads_a_character_beyond_u_ffff_the_gateway_sent(
        settings, codec, tmp_path, activemq, jms) -> None:
    """A JMS client reads a TextMessage in Java's own UTF-8, which has no four-byte form:
    getText() failed on such a character (UTFDataFormatException). Rendered or published as
    it is, the gateway writes it as a character reference."""
    queue = unique_queue("jms-grin")
    s = make_settings(settings, queue, activemq)
    service = make_service(s, codec, tmp_path)
    data = (SAMPLES / "SubscriptionReadyToProvision.xml").read_text("utf-8")
    name = re.search(r"<ServiceName>(.*?)</ServiceName>", data)[1]  # type: ignore[index]
    grinning = data.replace(name, f"{name} {GRIN}").encode("utf-8")
    service.accept_smile_document(grinning, "SubscriptionReadyToProvision",
                                  {"provisionRequestId": "4242"})
    usn = re.search(r"<USN>(.*?)</USN>", data)[1]  # type: ignore[index]
    service.apply_state_change(StateChange("evt-grin", usn, "subscription", "activating"))
    service.publish_documents("SubscriptionReadyToProvision", [grinning])
    relay = BrokerRelay(service.store, StompPublisher(s.broker), s.emission, s.broker)
    assert relay.drain(time.time() + 30) == 3
    relay.publisher.close()
    lines = jms_receive(jms, queue, 3)
    assert [m["class"] for m in lines] == ["TextMessage"] * 3
    assert [m["properties"]["smileMessageType"][1] for m in lines] == [
        "SubscriptionProvisioned", "SubscriptionProvisionResponse", "SubscriptionReadyToProvision"]
    for m in (lines[0], lines[2]):  # rendered, and published as it was
        assert f"<ServiceName>{name} &#x1F600;</ServiceName>" in m["text"]


def test_a_java_senders_character_beyond_u_ffff_is_recorded(settings, codec, tmp_path,
                                                            activemq, jms) -> None:
    """ActiveMQ hands a Java sender's TextMessage to STOMP in Java's own UTF-8: a character
    beyond U+FFFF as two three-byte halves, which XML refused as not UTF-8 (a dead letter)."""
    queue = unique_queue("jms-in")
    s = make_settings(settings, queue, activemq)
    s = replace(s, inbound=replace(s.inbound, dead_letter_destination=queue + ".DLQ"))
    service = make_service(s, codec, tmp_path)
    text = (SAMPLES / "SubscriptionActivated.xml").read_text("utf-8").replace(
        "Home broadband", f"Home {GRIN} broadband")
    document, invalid = tmp_path / "grin.xml", tmp_path / "grin-invalid.xml"
    document.write_text(text, "utf-8")
    invalid.write_text(text.replace("<SID>175</SID>", "<SID>x</SID>"), "utf-8")
    outcomes: list[str] = []
    with ConsumerThread(recording_consumer(s, service, outcomes)):
        for path in (document, invalid):
            subprocess.run([*jms, "JmsSend", f"tcp://127.0.0.1:{OPENWIRE_PORT}",
                            queue.removeprefix("/queue/"), str(path),
                            "smileMessageType=SubscriptionActivated", "usn=2142426765",
                            "sid:long=175"],
                           check=True, capture_output=True, timeout=60)
        wait_until(lambda: len(outcomes) == 2, 20, what="the Java sender's messages")
    assert outcomes == ["accepted", "dead-letter"], service.store.dead_letters()
    # the invalid one's copy is passed on as it came: a JMS listener reads Smile's text
    [copy] = jms_receive(jms, queue + ".DLQ", 1)
    assert copy["text"] == invalid.read_text("utf-8")
    assert service.store.subscription("2142426765").snapshot == text.encode("utf-8")
    assert f"Home {GRIN} broadband" in service.subscription_view("2142426765")["snapshot"]
    # one that an earlier gateway refused is recorded when its dead letter is replayed
    other = text.replace("2142426765", "2142426799").encode("utf-8")
    java = other.replace(GRIN.encode("utf-8"), GRIN_JAVA)
    letter = service.dead_letter("broker", "not well-formed: Invalid bytes in character encoding",
                                 {"smileMessageType": "SubscriptionActivated",
                                  "message-id": "ID:earlier-1"}, java)
    assert service.replay_dead_letter(letter).outcome == "accepted"
    assert service.store.subscription("2142426799").snapshot == other


def test_a_java_senders_text_is_read_as_text_whatever_its_declaration_says(
        settings, codec, tmp_path, activemq, jms) -> None:
    """A Java sender that wrote its document out as ISO-8859-1 into a String sends text:
    ActiveMQ hands it on in Java's UTF-8, and read by its declaration "Café" became "CafÃ©"
    (recorded, silently wrong). A STOMP sender's ISO-8859-1 bytes are still read as such
    (test_a_content_type_charset_on_a_message_decides_over_the_declaration)."""
    queue = unique_queue("jms-latin")
    s = make_settings(settings, queue, activemq)
    service = make_service(s, codec, tmp_path)
    text = (SAMPLES / "SubscriptionActivated.xml").read_text("utf-8").replace(
        "Home broadband", "Café broadband")
    compressed = text.replace("2142426765", "2142426766").replace("Café", f"Café {GRIN}")
    documents = {"2142426765": (text, ""), "2142426766": (compressed, "?jms.useCompression=true")}
    outcomes: list[str] = []
    with ConsumerThread(recording_consumer(s, service, outcomes)):
        for usn, (body, options) in documents.items():
            # a sender whose connection compresses: ActiveMQ hands the text on in UTF-8 then
            document = tmp_path / f"{usn}.xml"
            document.write_text(body.replace('encoding="UTF-8"', 'encoding="ISO-8859-1"'),
                                "utf-8")
            subprocess.run([*jms, "JmsSend", f"tcp://127.0.0.1:{OPENWIRE_PORT}{options}",
                            queue.removeprefix("/queue/"), str(document),
                            "smileMessageType=SubscriptionActivated"],
                           check=True, capture_output=True, timeout=60)
        wait_until(lambda: len(outcomes) == 2, 20, what="the Java sender's messages")
    assert outcomes == ["accepted"] * 2, service.store.dead_letters()
    for usn, (body, _) in documents.items():
        assert service.store.subscription(usn).snapshot == body.encode("utf-8")


def test_publishing_keeps_order_per_subscription(settings, codec, tmp_path, broker) -> None:
    queue = unique_queue("order")
    s = make_settings(settings, queue, broker, max_attempts=3)
    s = replace(s, broker=replace(s.broker, max_in_flight=64))
    service = make_service(s, codec, tmp_path)
    usns = [seed(service, str(i)) for i in range(3)]
    data = (SAMPLES / "SubscriptionFeaturesChanged.xml").read_bytes()
    expected = defaultdict(list)
    for round_ in range(60):
        for usn in usns:
            body = data.replace(b"<USN>2142426763</USN>", f"<USN>{usn}</USN>".encode())
            [mid] = service.publish_documents("SubscriptionFeaturesChanged", [body],
                                              correlation_id=f"r{round_}")
            expected[usn].append(mid)
    relay = BrokerRelay(service.store, StompPublisher(s.broker), s.emission, s.broker)
    assert relay.drain(time.time() + 60) == 180
    relay.publisher.close()
    frames = receive(queue, 180, timeout=30, broker=broker)
    got = defaultdict(list)
    for f in frames:
        got[f.headers["usn"]].append(f.headers["gateway-message-id"])
    assert got == expected


def relay_twice(service, s: Settings) -> tuple[BrokerRelay, dict[str, Any]]:
    """Two passes of a relay over the service's outbox, the second past the retry delay: the
    relay (its connection closed) and the outbox items by message id."""
    relay = BrokerRelay(service.store, StompPublisher(s.broker), s.emission, s.broker)
    relay.run_once()
    relay.clock = lambda: time.time() + 10_000  # past the retry delay
    relay.run_once()
    relay.publisher.close()
    return relay, {i.message_id: i for i in service.store.outbox()}


def test_a_message_the_broker_refuses_becomes_a_dead_letter_and_can_be_replayed(
        settings, codec, tmp_path, activemq) -> None:
    queue = unique_queue("refused")
    s = make_settings(settings, queue, activemq, max_attempts=2)
    service = make_service(s, codec, tmp_path)
    body = (SAMPLES / "SubscriptionEnabled.xml").read_bytes()
    # ActiveMQ drops the connection on a SEND whose `expires` is not a number
    poison = NewOutboxItem(BROKER, "poison-1", "u1", "SubscriptionEnabled",
                           {"smileMessageType": "SubscriptionEnabled", "usn": "u1", "expires": "soon"},
                           body)
    later = NewOutboxItem(BROKER, "later-1", "u1", "SubscriptionEnabled",
                          {"smileMessageType": "SubscriptionEnabled", "usn": "u1"}, body)
    good = NewOutboxItem(BROKER, "good-1", "u2", "SubscriptionEnabled",
                         {"smileMessageType": "SubscriptionEnabled", "usn": "u2"}, body)
    service.store.enqueue([poison, later, good])
    relay, by_id = relay_twice(service, s)
    assert by_id["good-1"].status == SENT
    assert by_id["poison-1"].status == DEAD and by_id["poison-1"].attempts == 2
    assert by_id["poison-1"].last_error
    # the same subscription's next message waited behind it, then went out in order
    assert by_id["later-1"].status == PENDING
    relay.run_once()
    relay.publisher.close()
    assert service.store.outbox_by_message_ids(["later-1"])[0].status == SENT
    assert service.store.replay(None).requeued == 1
    assert service.store.outbox(PENDING)[0].message_id == "poison-1"
    frames = receive(queue, 2, timeout=10)  # the good one and the later one; no poison
    assert sorted(f.headers["usn"] for f in frames) == ["u1", "u2"]


def test_a_send_rabbitmq_refuses_after_it_confirmed_the_commit_is_not_counted_sent(
        settings, codec, tmp_path) -> None:
    """RabbitMQ answers a transaction's COMMIT with its RECEIPT before the ERROR for a SEND in
    it that it refuses (seen for a queue declared beforehand with arguments of its own, a
    quorum or single-active-consumer queue, named /queue/NAME): counted on the COMMIT's
    receipt, every message was marked sent and none reached the queue. On a broker other than
    ActiveMQ each message is confirmed by a receipt of its own."""
    require_broker(RABBITMQ)
    declared = rabbitmq_single_active_queue("refusing")
    s = make_settings(settings, declared.replace("/amq/queue/", "/queue/"), RABBITMQ,
                      max_attempts=2)
    service = make_service(s, codec, tmp_path)
    body = (SAMPLES / "SubscriptionEnabled.xml").read_bytes()
    service.store.enqueue([
        NewOutboxItem(BROKER, f"refused-{n}", usn, "SubscriptionEnabled",
                      {"smileMessageType": "SubscriptionEnabled", "usn": usn}, body)
        for n, usn in enumerate(("u1", "u1", "u2"))])
    _, by_id = relay_twice(service, s)
    assert [by_id[f"refused-{n}"].status for n in range(3)] == [DEAD, PENDING, DEAD]
    assert "PRECONDITION_FAILED - inequivalent arg 'x-single-active-consumer'" in \
        (by_id["refused-0"].last_error or "")
    assert receive(declared, 1, timeout=2, broker=RABBITMQ) == []


def test_rabbitmq_confirms_each_message_so_those_before_a_refused_one_stand(
        settings, codec, tmp_path) -> None:
    """Pipelined receipts on RabbitMQ: the messages confirmed before the one it refuses (a
    non-numeric `expiration`: its ERROR ends the connection) are not sent again; the refused
    one is retried, then dead; the rest go on, each once."""
    require_broker(RABBITMQ)
    queue = unique_queue("pipelined")
    s = make_settings(settings, queue, RABBITMQ, max_attempts=2)
    service = make_service(s, codec, tmp_path)
    body = (SAMPLES / "SubscriptionEnabled.xml").read_bytes()

    def item(message_id: str, usn: str, **extra: str) -> NewOutboxItem:
        return NewOutboxItem(BROKER, message_id, usn, "SubscriptionEnabled",
                             {"smileMessageType": "SubscriptionEnabled", "usn": usn, **extra},
                             body)

    service.store.enqueue([item("before", "u1"), item("poison", "u2", expiration="soon"),
                           item("after", "u3")])
    _, by_id = relay_twice(service, s)
    assert {k: v.status for k, v in by_id.items()} == \
        {"before": SENT, "poison": DEAD, "after": SENT}
    assert "invalid expiration 'soon'" in (by_id["poison"].last_error or "")
    frames = receive(queue, 3, timeout=10, idle=2, broker=RABBITMQ)
    assert sorted(f.headers["usn"] for f in frames) == ["u1", "u3"]  # each once


def test_the_consumer_commits_then_acks_skips_duplicates_and_own_messages(
        settings, codec, tmp_path, broker) -> None:
    queue = unique_queue("consume")
    s = make_settings(settings, queue, broker)
    service = make_service(s, codec, tmp_path)
    outcomes: list[str] = []
    consumer = recording_consumer(s, service, outcomes)
    rtp = (SAMPLES / "SubscriptionReadyToProvision.xml").read_bytes()
    headers = {"smileMessageType": "SubscriptionReadyToProvision", "usn": "2142426762",
               "sid": "170", "provisionRequestId": "77", "gateway-message-id": "smile-1"}
    with ConsumerThread(consumer):
        send(queue, rtp, headers, broker=broker)
        send(queue, rtp, headers, broker=broker)  # the same message again: a duplicate
        send(queue, rtp, {**headers, "gateway-message-id": "own-1",
                          "gateway-origin": "smile-gateway"}, broker=broker)
        send(queue, (INVALID / "sid-not-integer.xml").read_bytes(),
             {"smileMessageType": "SubscriptionReadyToProvision", "gateway-message-id": "bad-1"},
             broker=broker)
        send(queue, (SAMPLES / "SubscriptionProvisioned.xml").read_bytes(),
             {"smileMessageType": "SubscriptionProvisioned", "usn": "058554", "sid": "171",
              "provisionRequestId": "78", "gateway-message-id": "smile-2"}, broker=broker)
        wait_until(lambda: len(outcomes) == 5, 20, what="five deliveries")
    assert outcomes == ["accepted", "duplicate", "own", "dead-letter", "accepted"]
    record = service.store.subscription("2142426762")
    assert record is not None and record.provision_request_id == 77
    assert record.states == {"order": "acknowledged", "subscription": "provisioning_in_progress"}
    [dead] = service.store.dead_letters()
    assert "SID" in dead["reason"] and dead["headers"]["gateway-message-id"] == "bad-1"
    # everything was acknowledged: nothing is delivered again
    assert receive(queue, 1, timeout=2, broker=broker) == []


def test_a_message_delivered_again_after_its_commit_is_taken_once(
        settings, codec, tmp_path, broker) -> None:
    """The gateway committed a message and lost it before its ACK went out: the broker
    delivers it again. ActiveMQ keeps its message-id; RabbitMQ gives each delivery a
    message-id of its own and keeps the sender's id in amqp-message-id (a JMS sender's
    JMSMessageID), so that one is the key there (before, the second delivery was recorded
    again)."""
    queue = unique_queue("redelivered")
    s = make_settings(settings, queue, broker)
    service = make_service(s, codec, tmp_path)
    outcomes: list[str] = []
    redelivered: list[str | None] = []

    def handler(headers, body) -> str:
        redelivered.append(headers.get("redelivered"))
        outcomes.append(service.consume(headers, body))
        if len(outcomes) == 1:  # committed; then the connection is gone before the ACK
            consumer._conn.transport.disconnect_socket()
        return outcomes[-1]

    consumer = StompConsumer(s.broker, s.inbound, handler,
                             lambda h, b, why: service.dead_letter("broker", why, h, b))
    headers = {"smileMessageType": "SubscriptionActivated"}
    if broker is RABBITMQ:
        headers["amqp-message-id"] = "ID:smile-jms-1"
    with ConsumerThread(consumer):
        send(queue, (SAMPLES / "SubscriptionActivated.xml").read_bytes(), headers,
             broker=broker)
        wait_until(lambda: len(outcomes) == 2, 30, what="the second delivery")
    assert redelivered[-1] == "true"
    assert outcomes == ["accepted", "duplicate"]
    history = service.subscription_view("2142426765")["history"]
    assert len({change["eventId"] for change in history}) == 1  # one document, recorded once


def test_a_message_id_reused_for_another_document_is_a_dead_letter(
        settings, codec, tmp_path, broker) -> None:
    queue = unique_queue("reused")
    s = make_settings(settings, queue, broker)
    service = make_service(s, codec, tmp_path)
    outcomes: list[str] = []
    rtp = (SAMPLES / "SubscriptionReadyToProvision.xml").read_bytes()
    other = rtp.replace(b"<SID>170</SID>", b"<SID>171</SID>")
    headers = {"smileMessageType": "SubscriptionReadyToProvision", "provisionRequestId": "77",
               "gateway-message-id": "smile-9"}
    with ConsumerThread(recording_consumer(s, service, outcomes)):
        for body in (rtp, rtp, other):  # the first, its redelivery, another under its id
            send(queue, body, headers, broker=broker)
        wait_until(lambda: len(outcomes) == 3, 20, what="three deliveries")
    assert outcomes == ["accepted", "duplicate", "dead-letter"]
    assert service.store.subscription("2142426762").sid == 170
    [dead] = service.store.dead_letters()
    assert dead["reason"].startswith("message id 'smile-9' was used before for a different "
                                     "request")
    assert bytes(dead["body"]) == other


def test_a_dead_letter_is_replayed_as_the_broker_delivered_it_once_its_cause_is_fixed(
        settings, codec, tmp_path, broker) -> None:
    """A document over schema.max_bytes is a dead letter; with the limit raised, the replay
    reads it by its delivery's headers (provisionRequestId) and message id, so the broker's
    redelivery of the same message, also dead, counts as replayed without a second record."""
    from tests.conftest import XSD

    queue = unique_queue("replay")
    s = make_settings(settings, queue, broker)
    body = (SAMPLES / "SubscriptionReadyToProvision.xml").read_bytes()
    small = replace(s, schema=replace(s.schema, max_bytes=len(body) - 1))
    tight = make_service(small, SmileXmlCodec(XSD, len(body) - 1), tmp_path)
    outcomes: list[str] = []
    headers = {"smileMessageType": "SubscriptionReadyToProvision", "provisionRequestId": "41",
               "gateway-message-id": "smile-41"}
    with ConsumerThread(recording_consumer(small, tight, outcomes)):
        for _ in range(2):
            send(queue, body, headers, broker=broker)
        wait_until(lambda: len(outcomes) == 2, 20, what="two deliveries")
    assert outcomes == ["dead-letter", "dead-letter"]
    first, again = (d["id"] for d in tight.store.dead_letters())
    assert tight.store.subscription("2142426762") is None
    service = make_service(s, codec, tmp_path)  # the limit raised: the cause fixed
    replays = [service.replay_dead_letter(first), service.replay_dead_letter(again)]
    assert [(r.outcome, r.usn) for r in replays] == [("accepted", "2142426762"),
                                                     ("duplicate", "2142426762")]
    assert service.store.subscription("2142426762").provision_request_id == 41
    assert [h["eventId"] for h in service.store.history("2142426762")] == [
        "broker:smile-41"] * len(service.store.history("2142426762"))
    assert service.store.outstanding_dead_letters() == []
    assert service.replay_dead_letter(first).outcome == "replayed before"


def test_a_content_type_charset_on_a_message_decides_over_the_declaration(
        settings, codec, tmp_path, broker) -> None:
    queue = unique_queue("charset")
    s = make_settings(settings, queue, broker)
    service = make_service(s, codec, tmp_path)
    outcomes: list[str] = []
    text = (SAMPLES / "SubscriptionActivated.xml").read_text("utf-8").replace(
        'encoding="UTF-8"', 'encoding="ISO-8859-1"').replace("Home broadband", "Café broadband")
    labelled = {"smileMessageType": "SubscriptionActivated",
                "content-type": 'text/xml; charset="UTF-8"'}
    with ConsumerThread(recording_consumer(s, service, outcomes)):
        # a sender that says its bytes are UTF-8, whatever the declaration says: recorded in
        # UTF-8, the declaration saying so
        send(queue, text.encode("utf-8"), {**labelled, "gateway-message-id": "label-1"},
             broker=broker)
        wait_until(lambda: len(outcomes) == 1, 20, what="the labelled message")
        utf8 = text.replace('encoding="ISO-8859-1"', 'encoding="UTF-8"').encode("utf-8")
        assert service.store.subscription("2142426765").snapshot == utf8
        # no label: the declaration decides, the bytes kept as they came
        send(queue, text.encode("latin-1"), {"smileMessageType": "SubscriptionActivated",
                                             "gateway-message-id": "plain-1"}, broker=broker)
        wait_until(lambda: len(outcomes) == 2, 20, what="the unlabelled message")
        assert service.store.subscription("2142426765").snapshot == text.encode("latin-1")
        assert "<ServiceName>Café broadband" in service.subscription_view("2142426765")["snapshot"]
        send(queue, text.encode("utf-8"), {**labelled, "gateway-message-id": "bad-1",
                                           "content-type": "text/xml; charset=no-such"},
             broker=broker)
        wait_until(lambda: len(outcomes) == 3, 20, what="the mislabelled message")
    assert outcomes == ["accepted", "accepted", "dead-letter"]
    [dead] = service.store.dead_letters()
    assert dead["reason"].startswith("charset 'no-such' is not a character encoding")
    assert dead["headers"]["gateway-message-id"] == "bad-1"


def test_a_dead_letter_is_passed_on_as_it_came_nul_bytes_and_all(
        settings, codec, tmp_path, broker) -> None:
    """A BytesMessage (a content-length) may hold NUL bytes: passed on without its length,
    the frame would end at the first one and the broker would read the rest as a new frame."""
    queue = unique_queue("dlq-bytes")
    s = make_settings(settings, queue, broker)
    s = replace(s, inbound=replace(s.inbound, dead_letter_destination=queue + ".DLQ"))
    service = make_service(s, codec, tmp_path)
    outcomes: list[str] = []
    body = "<not a document>".encode("utf-16")  # NUL bytes in it
    with ConsumerThread(recording_consumer(s, service, outcomes)):
        send(queue, body, {"gateway-message-id": "bytes-1", "content-length": str(len(body))},
             broker=broker)
        send(queue, b"<still not one/>", {"gateway-message-id": "text-1"}, broker=broker)
        wait_until(lambda: len(outcomes) == 2, 20, what="two deliveries")
    assert outcomes == ["dead-letter", "dead-letter"]
    frames = receive(queue + ".DLQ", 2, timeout=20, broker=broker)
    assert [(f.headers["gateway-message-id"], f.body) for f in frames] == [
        ("bytes-1", body), ("text-1", b"<still not one/>")]
    if broker is ACTIVEMQ:  # RabbitMQ gives every frame it delivers a content-length
        assert "content-length" not in frames[1].headers  # a TextMessage stays one


def test_a_copy_the_broker_refuses_is_said_and_the_message_is_taken_once(
        settings, codec, tmp_path, caplog) -> None:
    """The dead letter is the store's; its copy to inbound.dead_letter_destination is acked
    for first and then sent with a receipt: a broker that refuses the copy (RabbitMQ: a name
    it does not take) is logged with why, and the message is neither redelivered nor kept
    twice."""
    import logging

    require_broker(RABBITMQ)
    queue = unique_queue("dlq-refused")
    s = make_settings(settings, queue, RABBITMQ)
    s = replace(s, inbound=replace(s.inbound, dead_letter_destination="/queue/a/b"))
    service = make_service(s, codec, tmp_path)
    outcomes: list[str] = []
    caplog.set_level(logging.WARNING, logger="adapters.stomp_broker")
    with ConsumerThread(recording_consumer(s, service, outcomes)):
        send(queue, b"<not a document/>", {"gateway-message-id": "refused-copy"},
             broker=RABBITMQ)
        wait_until(lambda: "copy of message-id=" in caplog.text, 20, what="the refusal said")
        time.sleep(2)  # a redelivery, if there were one, would come now
    assert outcomes == ["dead-letter"]
    assert service.store.dead_letter_counts() == {"broker": (1, 1)}
    assert "to /queue/a/b not confirmed" in caplog.text
    assert receive(queue, 1, timeout=2, broker=RABBITMQ) == []  # acked: nothing left


def test_a_poison_message_does_not_loop(settings, codec, tmp_path, broker) -> None:
    queue = unique_queue("poison")
    s = make_settings(settings, queue, broker)
    service = make_service(s, codec, tmp_path)
    calls: list[str] = []

    def broken_handler(headers, body):
        calls.append(headers.get("gateway-message-id", ""))
        raise RuntimeError("a bug in the handler")

    consumer = StompConsumer(s.broker, s.inbound, broken_handler,
                             lambda h, b, r: service.dead_letter("broker", r, h, b))
    with ConsumerThread(consumer):
        send(queue, b"<whatever/>", {"gateway-message-id": "poison-2"}, broker=broker)
        wait_until(lambda: calls, 20, what="the delivery")
        time.sleep(1.5)
    assert calls == ["poison-2"]
    [dead] = service.store.dead_letters()
    assert "a bug in the handler" in dead["reason"]
    assert receive(queue, 1, timeout=2, broker=broker) == []


def test_a_consumer_stopped_says_nothing_is_wrong(settings, codec, tmp_path, broker,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """A stop closes the connection the consumer was using: that is no lost connection."""
    queue = unique_queue("cleanstop")
    s = make_settings(settings, queue, broker)
    service = make_service(s, codec, tmp_path)
    outcomes: list[str] = []
    with caplog.at_level(logging.INFO), ConsumerThread(recording_consumer(s, service, outcomes)):
        send(queue, (SAMPLES / "SubscriptionActivated.xml").read_bytes(),
             {"smileMessageType": "SubscriptionActivated"}, broker=broker)
        wait_until(lambda: outcomes == ["accepted"], 30, what="the consumed message")
    said = [(r.levelname, r.getMessage()) for r in caplog.records
            if r.name.startswith(("adapters", "stomp"))]
    assert ("INFO", "consumer stopped") in said
    assert [m for level, m in said if level in ("WARNING", "ERROR")] == []


def test_a_store_failure_leaves_the_message_on_the_broker(settings, codec, tmp_path, broker) -> None:

    queue = unique_queue("storefail")
    s = make_settings(settings, queue, broker)
    service = make_service(s, codec, tmp_path)
    failures = [1]
    threads = []

    def flaky(headers, body):
        threads.append(threading.current_thread())
        if failures:
            failures.pop()
            raise StoreError("disk full")
        return service.consume(headers, body)

    consumer = StompConsumer(s.broker, s.inbound, flaky,
                             lambda h, b, r: service.dead_letter("broker", r, h, b))
    rtp = (SAMPLES / "SubscriptionReadyToProvision.xml").read_bytes()
    with ConsumerThread(consumer) as running:
        send(queue, rtp, {"smileMessageType": "SubscriptionReadyToProvision",
                          "provisionRequestId": "5", "gateway-message-id": "retry-1"},
             broker=broker)
        wait_until(lambda: service.store.subscription("2142426762") is not None, 30,
                   what="the redelivered message to be stored")
    assert failures == []
    # Both deliveries were handled on the consumer's own thread, not on the reader thread of
    # each connection: a thread per reconnect would open a store connection per reconnect.
    assert threads == [running.thread, running.thread]


def test_a_store_that_stays_down_is_retried_with_backoff_not_in_a_loop(
        settings, codec, tmp_path, broker) -> None:
    """The message stays on the broker while the store fails; reconnecting at once for each
    redelivery would take and drop it as fast as the broker can deliver, and log each time."""
    queue = unique_queue("storedown")
    tries, consumer = through_a_store_outage(settings, codec, tmp_path, broker, queue)
    # backoff 0.2 s doubled up to 1 s (with jitter): some 5-7 tries in 3 s, not hundreds
    assert 2 <= len(tries) <= 10, len(tries)
    assert consumer.outcomes["accepted"] == 1
    # tried again as it was delivered, not given back: a broker counts each redelivery, and
    # some give a message up after so many (a quorum queue's delivery-limit, below)
    assert {t.get("redelivered", "false") for t in tries} == {"false"}, tries


def test_a_store_outage_longer_than_a_queues_delivery_limit_loses_nothing(
        settings, codec, tmp_path) -> None:
    """A RabbitMQ quorum queue drops a message delivered more than its x-delivery-limit
    times (RabbitMQ 4 sets 20 by default; ActiveMQ Artemis moves it to its DLQ after 10):
    a store outage must not spend its deliveries."""
    require_broker(RABBITMQ)
    queue = rabbitmq_queue("deliverylimit", '{<<"x-queue-type">>, longstr, <<"quorum">>}',
                           '{<<"x-delivery-limit">>, long, 2}')
    tries, _ = through_a_store_outage(settings, codec, tmp_path, RABBITMQ, queue)
    assert len(tries) > 3  # more tries than the queue allows deliveries


def test_a_consumer_stopped_while_the_store_is_down_stops_at_once_and_leaves_the_message(
        settings, codec, tmp_path, broker) -> None:
    queue = unique_queue("downstop")
    s = make_settings(settings, queue, broker)
    s = replace(s, broker=replace(s.broker, reconnect_initial_s=30.0, reconnect_max_s=30.0))
    tries: list[float] = []

    def store_down(headers, body):
        tries.append(time.monotonic())
        raise StoreError("disk full")

    consumer = StompConsumer(s.broker, s.inbound, store_down, lambda h, b, r: None)
    with ConsumerThread(consumer) as running:
        send(queue, b"<x/>", {"gateway-message-id": "kept-1"}, broker=broker)
        wait_until(lambda: tries, 30, what="the first try")
        running.stop.set()
        running.thread.join(timeout=5)
        stopped = time.monotonic()
        assert not running.thread.is_alive(), "the stop waited for the 30 s backoff"
    assert len(tries) == 1 and stopped - tries[0] < 5
    [frame] = receive(queue, 1, timeout=10, broker=broker)  # unacknowledged: still there
    assert frame.headers["gateway-message-id"] == "kept-1"


def through_a_store_outage(settings, codec, tmp_path, broker: Broker,
                           queue: str) -> tuple[list[dict[str, str]], StompConsumer]:
    """One message consumed from `queue` while the store fails for 3 s, then recorded: the
    headers of each try, and the consumer."""
    s = make_settings(settings, queue, broker)
    service = make_service(s, codec, tmp_path)
    down_until = time.monotonic() + 3.0
    tries: list[dict[str, str]] = []

    def store_down(headers, body):
        tries.append(headers)
        if time.monotonic() < down_until:
            raise StoreError("disk full")
        return service.consume(headers, body)

    consumer = StompConsumer(s.broker, s.inbound, store_down,
                             lambda h, b, r: service.dead_letter("broker", r, h, b))
    rtp = (SAMPLES / "SubscriptionReadyToProvision.xml").read_bytes()
    with ConsumerThread(consumer):
        send(queue, rtp, {"smileMessageType": "SubscriptionReadyToProvision",
                          "provisionRequestId": "6", "gateway-message-id": "down-1"},
             broker=broker)
        wait_until(lambda: service.store.subscription("2142426762") is not None, 30,
                   what="the message to be stored once the store is back")
    return tries, consumer


@pytest.mark.parametrize("exclusive", [True, False])
def test_two_gateways_on_one_queue_take_it_in_turn_so_order_holds(
        settings, codec, tmp_path, activemq, exclusive: bool) -> None:
    """Several gateways (on one PostgreSQL store) consume one queue: shared out between them,
    a subscription's documents would be recorded out of order. As ActiveMQ's exclusive
    consumer, one gateway takes every message and the others stand by, taking over when it
    goes; inbound.exclusive: false shares them out (measured here, so that the test can fail)."""
    s = replace(settings, inbound=replace(settings.inbound, exclusive=exclusive))
    _two_gateways_take_turns(s, codec, tmp_path, unique_queue(f"exclusive-{exclusive}"),
                             activemq, one_at_a_time=exclusive)


def test_two_gateways_on_rabbitmq_take_a_single_active_consumer_queue_in_turn(
        settings, codec, tmp_path) -> None:
    """RabbitMQ's STOMP plugin ignores ActiveMQ's exclusive header, and will not declare a
    queue with x-single-active-consumer: the queue is declared so beforehand and named as
    /amq/queue/NAME (README, The broker). One gateway then takes every message and the other
    takes over when it goes, as on ActiveMQ."""
    require_broker(RABBITMQ)
    _two_gateways_take_turns(settings, codec, tmp_path, rabbitmq_single_active_queue("sac"),
                             RABBITMQ, one_at_a_time=True)


def test_a_plain_rabbitmq_queue_shares_two_gateways_out(settings, codec, tmp_path) -> None:
    """What the queue declared beforehand is for: on a /queue/ destination RabbitMQ shares the
    messages out between the two gateways, whatever inbound.exclusive says."""
    require_broker(RABBITMQ)
    _two_gateways_take_turns(settings, codec, tmp_path, unique_queue("shared"), RABBITMQ,
                             one_at_a_time=False)


def _two_gateways_take_turns(settings: Settings, codec, tmp_path: Path, queue: str,
                             broker: Broker, one_at_a_time: bool) -> None:
    """Two consumers, each with its own store, on `queue`; 20 messages, then (one at a time)
    the first goes and 5 more reach the second alone; else both got some of the 20."""
    s = make_settings(settings, queue, broker)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first_seen: list[str] = []
    second_seen: list[str] = []
    first = ConsumerThread(recording_consumer(s, make_service(s, codec, tmp_path / "a"),
                                              first_seen))
    second = ConsumerThread(recording_consumer(s, make_service(s, codec, tmp_path / "b"),
                                               second_seen))
    body = (SAMPLES / "SubscriptionActivated.xml").read_bytes()
    with first:
        wait_until(lambda: first.consumer._conn is not None, 20, what="the first consumer")
        with second:
            wait_until(lambda: second.consumer._conn is not None, 20, what="the second")
            time.sleep(0.5)  # both subscribed at the broker
            for _ in range(20):
                send(queue, body, {"smileMessageType": "SubscriptionActivated"}, broker=broker)
            wait_until(lambda: len(first_seen) + len(second_seen) == 20, 30,
                       what="20 messages consumed")
            if not one_at_a_time:
                assert first_seen and second_seen  # shared out: what one at a time prevents
                return
            assert (len(first_seen), second_seen) == (20, [])
            first.__exit__(None, None, None)  # the active gateway goes: the other takes over
            for _ in range(5):
                send(queue, body, {"smileMessageType": "SubscriptionActivated"}, broker=broker)
            wait_until(lambda: len(second_seen) == 5, 30, what="the standby taking over")
        assert len(first_seen) == 20


def test_a_backlog_is_taken_a_hundred_messages_at_a_time(settings, broker) -> None:
    """A gateway that was down comes back to a queue of Smile's messages: the broker hands it
    at most 100 unacknowledged at a time (ActiveMQ's activemq.prefetchSize, RabbitMQ's
    prefetch-count), not the whole backlog into the gateway's memory (RabbitMQ's default
    is no limit: measured, 929 of 1,000 held by a consumer that had handled a few)."""
    queue = unique_queue("backlog")
    conn = connect(broker)
    try:
        for n in range(300):
            conn.send(queue, b"<x/>", headers={"persistent": "true", "n": str(n)})
    finally:
        conn.disconnect(receipt=str(uuid.uuid4()))  # the broker has read them all
    release = threading.Event()
    handled: list[str] = []

    def handler(headers, body) -> str:
        release.wait(30)
        handled.append(headers["n"])
        return "accepted"

    s = make_settings(settings, queue, broker)
    consumer = StompConsumer(s.broker, s.inbound, handler, lambda h, b, why: None)
    with ConsumerThread(consumer):
        wait_until(lambda: consumer._inbox.qsize() >= 99, 20, what="the first deliveries")
        time.sleep(1.0)  # what more the broker would push, if it did
        held = consumer._inbox.qsize()
        release.set()
        wait_until(lambda: len(handled) == 300, 60, what="the whole backlog")
    assert held <= 100, held
    assert handled == [str(n) for n in range(300)]  # in order, each once


def test_a_topic_gets_a_durable_subscription(settings, codec, tmp_path, broker) -> None:
    topic = unique_queue("durable").replace("/queue/", "/topic/")
    s = make_settings(settings, topic, broker)
    s = replace(s, inbound=replace(s.inbound, subscription_name=f"test.gw-{topic[-10:]}"))
    service = make_service(s, codec, tmp_path)
    outcomes: list[str] = []

    def consumer() -> StompConsumer:
        return recording_consumer(s, service, outcomes)

    with ConsumerThread(consumer()):  # registers the durable subscription
        time.sleep(1.0)
    # published while no consumer is connected: kept for the durable subscription
    send(topic, (SAMPLES / "SubscriptionEnabled.xml").read_bytes(),
         {"smileMessageType": "SubscriptionEnabled", "gateway-message-id": "durable-1"},
         broker=broker)
    with ConsumerThread(consumer()):
        wait_until(lambda: outcomes == ["accepted"], 20, what="the kept message")
    assert service.store.subscription("2142426764") is not None


# -- addresses that are not a working broker: a precise error, never a hang ------------------


def stomp_threads() -> list[str]:
    """stomp.py's reader threads still running (named after their function)."""
    return [t.name for t in threading.enumerate() if t.name.endswith("(__io_loop)")]


@pytest.mark.parametrize(("answer", "why"), [
    ("silent", "no answer to CONNECT within 1s (is it a STOMP port?)"),
    ("close", "the connection was closed before CONNECTED"),
    ("nothing", "Connection refused"),
])
def test_a_publisher_names_why_it_cannot_connect_and_does_not_hang(settings, answer,
                                                                   why) -> None:
    endpoint = Endpoint(answer)
    port = endpoint.port
    if answer == "nothing":
        with socket.socket() as unused:  # a port that nothing listens on
            unused.bind(("127.0.0.1", 0))
            port = unused.getsockname()[1]
    broker = replace(settings.broker, port=port, receipt_timeout_s=1.0)
    publisher = StompPublisher(broker)
    failures: list[BaseException] = []

    def publish() -> None:
        try:
            publisher.publish([Envelope(1, "/queue/x", {}, b"<x/>")])
        except PublishError as exc:
            failures.append(exc)

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    thread.join(30)  # stomp.py's own wait for CONNECTED has no deadline
    try:
        assert not thread.is_alive(), "the publisher hung waiting for CONNECTED"
        assert [str(f) for f in failures] == [f"cannot connect to 127.0.0.1:{port}: {why}"]
        wait_until(lambda: not stomp_threads(), 10, what="the connection's reader to end")
    finally:
        publisher.close()
        endpoint.close()


def unused_port() -> int:
    with socket.socket() as unused:  # a port that nothing listens on: a connect is refused
        unused.bind(("127.0.0.1", 0))
        return unused.getsockname()[1]


def test_the_relay_and_the_consumer_fail_over_to_the_next_broker_listed(
        settings, codec, tmp_path, broker) -> None:
    """broker.host:port down (a failed primary), a silent address next (a load balancer
    before a dead node): both are passed over for the first listed broker that answers."""
    silent = Endpoint("silent")
    queue = unique_queue("failover")
    s = make_settings(settings, queue, broker)
    s = replace(s, broker=replace(s.broker, port=unused_port(), receipt_timeout_s=1.0,
                                  failover=(("127.0.0.1", silent.port),
                                            ("127.0.0.1", broker.port))))
    try:
        publish_and_consume(s, make_service(s, codec, tmp_path), queue, broker)
    finally:
        silent.close()


def test_a_broker_that_drops_each_connection_is_retried_with_backoff(settings, codec,
                                                                      tmp_path) -> None:
    """A connection that ends on its own, no ERROR said, is reconnected at once (a broker
    restarting, a network blip); one that ends before it delivered anything, over and over,
    is a broker that will not keep this client: backoff, not a loop of connections."""
    endpoint = Endpoint("hangup")
    s = replace(settings, broker=replace(settings.broker, port=endpoint.port,
                                         receipt_timeout_s=1.0, reconnect_initial_s=0.2,
                                         reconnect_max_s=1.0, heartbeat_ms=0),
                inbound=replace(settings.inbound, enabled=True, destination="/queue/x"))
    service = make_service(s, codec, tmp_path)
    consumer = StompConsumer(s.broker, s.inbound, service.consume,
                             lambda h, b, r: service.dead_letter("broker", r, h, b))
    try:
        with ConsumerThread(consumer):
            time.sleep(3)
    finally:
        endpoint.close()
    # backoff 0.2 s doubled up to 1 s (with jitter): some 5-7 connections in 3 s
    assert 2 <= endpoint.accepted <= 12, endpoint.accepted


def test_readiness_takes_any_listed_broker_that_listens(settings, tmp_path) -> None:
    from gateway.bootstrap import bootstrap, ready_checks

    down, also_down, listening = unused_port(), unused_port(), Endpoint("silent")

    def check(failover: int, folder: str) -> None:
        s = replace(settings,
                    store=replace(settings.store, url=f"sqlite:///{tmp_path / folder / 'g.db'}"),
                    emission=replace(settings.emission, enabled=True),
                    broker=replace(settings.broker, port=down,
                                   failover=(("127.0.0.1", failover),)))
        runtime = bootstrap(s)
        try:
            ready_checks(runtime)["broker"]()
        finally:
            runtime.close()

    try:
        check(listening.port, "a")  # the second one listens
    finally:
        listening.close()
    with pytest.raises(RuntimeError) as caught:
        check(also_down, "b")
    assert str(caught.value) == (f"cannot connect to 127.0.0.1:{down}: Connection refused; "
                                 f"127.0.0.1:{also_down}: Connection refused")


def test_when_no_broker_listed_answers_each_is_named_with_why(settings) -> None:
    down, silent = unused_port(), Endpoint("silent")
    broker = replace(settings.broker, port=down, receipt_timeout_s=1.0,
                     failover=(("127.0.0.1", silent.port),))
    try:
        why = publish_refused(broker)
    finally:
        silent.close()
    assert why == (
        f"cannot connect to any broker: 127.0.0.1:{down}: Connection refused; "
        f"127.0.0.1:{silent.port}: no answer to CONNECT within 1s (is it a STOMP port?)")


def tls_settings(settings: Settings, queue: str, front: TlsFront, host: str = "localhost",
                 **tls: str) -> Settings:
    s = make_settings(settings, queue, ACTIVEMQ)
    return replace(s, broker=replace(s.broker, host=host, port=front.port, tls=True,
                                     receipt_timeout_s=2.0, **tls))


def test_publishing_and_consuming_over_tls_check_the_brokers_certificate(
        settings, codec, tmp_path, activemq) -> None:
    cert, key = make_certificate(tmp_path / "tls", "broker", ["localhost", "127.0.0.1"])
    client_cert, client_key = make_certificate(tmp_path / "tls", "gateway", ["smile-gateway"])
    front = TlsFront(cert, key, activemq.port, client_ca=client_cert)  # mutual TLS
    queue = unique_queue("tls")
    s = tls_settings(settings, queue, front, tls_ca_file=str(cert),
                     tls_cert_file=str(client_cert), tls_key_file=str(client_key))
    try:
        publish_and_consume(s, make_service(s, codec, tmp_path), queue, activemq)
    finally:
        front.close()
    assert front.refused == []


@pytest.mark.parametrize(("case", "why"), [
    ("another CA", "TLS: CERTIFICATE_VERIFY_FAILED (self-signed certificate)"),
    ("another name", "TLS: CERTIFICATE_VERIFY_FAILED (Hostname mismatch, certificate is not "
                     "valid for 'localhost'.)"),
    ("no client certificate", "the connection was closed before CONNECTED"),
])
def test_a_tls_broker_the_gateway_cannot_trust_or_that_refuses_it_is_named_with_why(
        settings, tmp_path, activemq, case, why) -> None:
    cert, key = make_certificate(tmp_path / "tls", "broker", ["localhost"])
    other, _ = make_certificate(tmp_path / "tls", "other", ["localhost"])
    misnamed, misnamed_key = make_certificate(tmp_path / "tls", "misnamed", ["broker.example"])
    client_cert, _ = make_certificate(tmp_path / "tls", "gateway", ["smile-gateway"])
    if case == "another name":
        front, ca = TlsFront(misnamed, misnamed_key, activemq.port), misnamed
    elif case == "another CA":
        front, ca = TlsFront(cert, key, activemq.port), other
    else:
        front, ca = TlsFront(cert, key, activemq.port, client_ca=client_cert), cert
    s = tls_settings(settings, "/queue/x", front, tls_ca_file=str(ca))
    try:
        refused = publish_refused(s.broker)
    finally:
        front.close()
    assert refused == f"cannot connect to localhost:{front.port}: {why}"


def idle_consumer(settings: Settings, broker: BrokerSettings) -> StompConsumer:
    return StompConsumer(broker, settings.inbound, lambda h, b: "accepted",
                         lambda h, b, why: None)


def test_a_subscription_the_broker_refuses_is_a_failure_retried_with_backoff(
        settings, caplog) -> None:
    """RabbitMQ answers a SUBSCRIBE to a destination it cannot take with an ERROR frame and
    keeps the connection open: the consumer sat there subscribed to nothing, and /readyz
    said ready. The ERROR now ends the connection, is the consumer's failure (readiness shows
    it) and is retried with backoff, not at once."""
    require_broker(RABBITMQ)
    broker = replace(settings.broker, port=RABBITMQ.port, user=RABBITMQ.user,
                     password=RABBITMQ.password, reconnect_initial_s=0.5, reconnect_max_s=1.0)
    inbound = replace(settings.inbound, enabled=True, destination="/queue/a/b")
    consumer = StompConsumer(broker, inbound, lambda h, b: "accepted", lambda h, b, why: None)
    caplog.set_level("INFO", logger="adapters.stomp_broker")
    with ConsumerThread(consumer):
        wait_until(lambda: consumer.last_failure is not None, 20, what="the refusal")
        refusal = "broker ERROR: Invalid destination: '/a/b' is not a valid queue destination"
        assert consumer.last_failure == refusal
        time.sleep(2.5)
        assert consumer.last_failure == refusal  # still: /readyz
    subscribes = caplog.text.count("consumer subscribed destination=/queue/a/b")
    assert 2 <= subscribes <= 5, subscribes  # retried, 0.5 s then 1 s apart, not in a loop
    assert f"consumer: {refusal}; retrying in" in caplog.text


def test_a_queue_named_beforehand_that_does_not_exist_is_named_by_the_failure(
        settings) -> None:
    """RabbitMQ's ERROR says what is wrong in its body; its message header is a code
    (`not_found`). The failure /readyz shows and the log says carries both."""
    require_broker(RABBITMQ)
    broker = replace(settings.broker, port=RABBITMQ.port, user=RABBITMQ.user,
                     password=RABBITMQ.password, reconnect_initial_s=0.5, reconnect_max_s=1.0)
    queue = f"test.absent.{uuid.uuid4().hex[:10]}"
    inbound = replace(settings.inbound, enabled=True, destination=f"/amq/queue/{queue}")
    consumer = idle_consumer(replace(settings, inbound=inbound), broker)
    with ConsumerThread(consumer):
        wait_until(lambda: consumer.last_failure is not None, 20, what="the refusal")
    assert consumer.last_failure == \
        f"broker ERROR: not_found: NOT_FOUND - no queue '{queue}' in vhost '/'"


def test_an_activemq_error_is_named_by_its_message_not_its_stack_trace() -> None:
    """ActiveMQ's ERROR frame, as it sent one here (a SEND with no destination): the reason
    in the header, a Java stack trace in the body whose first line repeats it."""
    frame = stomp.utils.Frame("ERROR", {
        "content-type": "text/plain", "receipt-id": "r1",
        "message": "SEND received without a Destination specified!"},
        "org.apache.activemq.transport.stomp.ProtocolException: SEND received without a "
        "Destination specified!\n\tat org.apache.activemq.transport.stomp.ProtocolConverter"
        ".onStompSend(ProtocolConverter.java:325)\n")
    assert _broker_error(frame) == \
        "broker ERROR: SEND received without a Destination specified!"
    frame.headers.pop("message")  # no header: the body's first line, not the whole trace
    assert _broker_error(frame) == ("broker ERROR: org.apache.activemq.transport.stomp."
                                    "ProtocolException: SEND received without a Destination "
                                    "specified!")


def test_a_login_the_broker_refuses_is_named_with_its_reason(settings) -> None:
    """RabbitMQ refuses a bad password with `message:Bad CONNECT` and the reason in the body:
    the gateway's failure names the user refused, not only 'Bad CONNECT'."""
    require_broker(RABBITMQ)
    broker = replace(settings.broker, port=RABBITMQ.port, user="guest", password="wrong",
                     receipt_timeout_s=5.0)
    publisher = StompPublisher(broker)
    try:
        with pytest.raises(PublishError) as refused:
            publisher.publish([Envelope(1, unique_queue("refused"), {}, b"<x/>")])
    finally:
        publisher.close()
    assert str(refused.value) == (f"cannot connect to 127.0.0.1:{RABBITMQ.port}: broker ERROR: "
                                  "Bad CONNECT: Access refused for user 'guest'")


def test_a_consumer_says_why_it_cannot_connect_and_stops_when_asked(settings, caplog) -> None:
    endpoint = Endpoint("silent")
    broker = replace(settings.broker, port=endpoint.port, receipt_timeout_s=1.0,
                     reconnect_initial_s=0.1, reconnect_max_s=0.2)
    caplog.set_level("WARNING", logger="adapters.stomp_broker")
    try:
        with ConsumerThread(idle_consumer(settings, broker)):  # and it stops when asked
            wait_until(lambda: "no answer to CONNECT within 1s" in caplog.text, 30,
                       what="the consumer to log why")
    finally:
        endpoint.close()
    assert (f"consumer: cannot connect to 127.0.0.1:{endpoint.port}: no answer to CONNECT "
            "within 1s (is it a STOMP port?); retrying in") in caplog.text


def test_a_refused_connect_is_said_once_by_the_gateway_not_again_by_stomp_py(settings,
                                                                             caplog) -> None:
    with socket.socket() as probe:  # a port nothing listens on: the connect is refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    broker = replace(settings.broker, port=port, reconnect_initial_s=0.1, reconnect_max_s=0.2)
    caplog.set_level("WARNING")
    with ConsumerThread(idle_consumer(settings, broker)):
        wait_until(lambda: "Connection refused" in caplog.text, 30, what="the consumer to log")
    ours = [r for r in caplog.records if r.name == "adapters.stomp_broker"]
    assert ours and f"cannot connect to 127.0.0.1:{port}" in ours[0].getMessage()
    assert not [r for r in caplog.records if r.name.startswith("stomp")]


def test_a_consumer_stops_when_asked_even_if_the_broker_no_longer_answers(settings,
                                                                          caplog) -> None:
    """Its DISCONNECT asks for a receipt; a frozen broker (heart-beats off) never sends it."""
    endpoint = Endpoint("frozen")
    broker = replace(settings.broker, port=endpoint.port, receipt_timeout_s=1.0, heartbeat_ms=0)
    caplog.set_level("INFO", logger="adapters.stomp_broker")
    try:
        with ConsumerThread(idle_consumer(settings, broker)):  # its exit: stopped in 15 s
            wait_until(lambda: "consumer subscribed" in caplog.text, 30,
                       what="the subscription")
    finally:
        endpoint.close()
    assert "no receipt for DISCONNECT within 1s: closing the connection" in caplog.text
    wait_until(lambda: not stomp_threads(), 10, what="the connection's reader to end")
