"""RequestsForwarder and the forward relay, with `responses` for the order system (and a real
one where what is tested is the socket: an answer that never ends)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
import responses

from adapters.http_forwarder import RequestsForwarder
from gateway.config import Settings
from gateway.ports import DEAD, FORWARD, PENDING, SENT, InMemoryRequestIds
from gateway.relay import ForwardRelay
from gateway.service import GatewayService
from gateway.translator import Translator
from tests.conftest import SAMPLES
from tests.e2e.servers import OrderSystem
from tests.stores import KINDS, open_store, store_url

URL = "http://orders.example.test/smile-events"
ACTIVATED = (SAMPLES / "SubscriptionActivated.xml").read_bytes()
SUSPENDED = ACTIVATED.replace(b"<SuspendStatus>Active</SuspendStatus>",
                              b"<SuspendStatus>Suspended</SuspendStatus>")


@pytest.fixture(params=KINDS)
def setup(request, settings: Settings, codec, tmp_path: Path):
    """On each store: the forward relay's claims and retries are the store's too."""
    s = replace(settings, forward=replace(settings.forward, url=URL, attempts=3,
                                          backoff_s=0.0, token="t0k3n"))
    with store_url(request.param, tmp_path) as url:
        store = open_store(url)
        service = GatewayService(s, codec, store,
                                 Translator(s.mapping, codec, InMemoryRequestIds()))
        yield service, ForwardRelay(store, RequestsForwarder(s.forward), s.forward), store
        store.close()


def accept(service: GatewayService) -> None:
    service.accept_smile_document((SAMPLES / "SubscriptionActivated.xml").read_bytes(),
                                  "SubscriptionActivated", dedupe_key="webhook:w1")


@responses.activate
def test_an_accepted_document_is_forwarded_once_with_an_idempotency_key(setup) -> None:
    service, relay, store = setup
    responses.post(URL, status=202)
    accept(service)
    accept(service)  # the same delivery again: deduped, not forwarded twice
    assert relay.run_once() == 1
    [call] = responses.calls
    event = json.loads(call.request.body)
    assert event["usn"] == "2142426765" and event["order_state"] == "completed"
    assert call.request.headers["Idempotency-Key"] == event["eventId"]
    assert call.request.headers["Authorization"] == "Bearer t0k3n"
    assert call.request.headers["Content-Type"] == "application/json"
    assert store.outbox(SENT)[0].channel == FORWARD


@pytest.mark.parametrize("failure", [500, 503, 408, 429, "connection"])
@responses.activate
def test_retryable_failures_are_retried_then_delivered(setup, failure) -> None:
    service, relay, store = setup
    if failure == "connection":
        responses.post(URL, body=requests.ConnectionError("refused"))
    else:
        responses.post(URL, status=failure)
    responses.post(URL, status=200)
    accept(service)
    assert relay.run_once() == 0
    [item] = store.outbox(PENDING)
    assert item.attempts == 1 and item.last_error
    assert relay.run_once() == 1
    assert store.outbox(PENDING) == []


@pytest.mark.parametrize(("retry_after", "wait_s"), [
    ("120", 120.0),
    ("99999999", 3600.0),  # honoured up to an hour: a wait stays bounded
    ("not a date", 0.0),  # unreadable: the relay's own backoff (0 s in this setup)
    ("²", 0.0),  # a digit to str.isdigit, none to float
    ("9" * 400, 3600.0),  # more seconds than a float holds
    ("Mon, 01 Jan 10000 00:00:00 GMT", 0.0),  # past the year datetime can hold
])
@responses.activate
def test_a_retry_after_is_honoured_before_the_next_try(setup, retry_after, wait_s) -> None:
    service, relay, store = setup
    responses.post(URL, status=429, headers={"Retry-After": retry_after})
    accept(service)
    before = time.time()
    assert relay.run_once() == 0
    [item] = store.outbox(PENDING)
    assert "answered 429" in (item.last_error or "")
    if wait_s:
        assert store.claim(FORWARD, 10, now=before + wait_s - 5) == []
    assert [i.id for i in store.claim(FORWARD, 10, now=time.time() + wait_s + 5)] == [item.id]


@responses.activate
def test_an_unforeseen_failure_is_retried_then_a_dead_letter_not_the_relays_end(
        setup, caplog: pytest.LogCaptureFixture) -> None:
    # an exception no forwarder foresaw (here raised by the HTTP stack itself) must not end
    # the relay: serve would stop, and the restarted gateway meet the same row again
    service, relay, store = setup
    responses.post(URL, body=RuntimeError("an answer nobody foresaw"))
    accept(service)
    for _ in range(3):  # forward.attempts
        assert relay.run_once() == 0
    [dead] = store.outbox(DEAD)
    assert dead.attempts == 3
    assert dead.last_error == (f"POST {URL} failed unexpectedly: "
                               "RuntimeError('an answer nobody foresaw')")
    assert "forwarding outbox_id=" in caplog.text and "Traceback" in caplog.text


def test_a_retry_after_date_is_read_as_the_seconds_until_it() -> None:
    from email.utils import format_datetime

    from adapters.http_forwarder import _retry_after

    soon = datetime.now(UTC) + timedelta(seconds=90)
    assert 80 <= (_retry_after(format_datetime(soon, usegmt=True)) or 0) <= 90
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # past: at once


@responses.activate
def test_a_final_4xx_is_a_dead_letter_that_can_be_replayed(
        setup, caplog: pytest.LogCaptureFixture) -> None:
    service, relay, store = setup
    responses.post(URL, status=400, json={"error": "bad"})
    responses.post(URL, status=200)
    accept(service)
    relay.run_once()
    [dead] = store.outbox(DEAD)
    assert "answered 400" in (dead.last_error or "")
    # the log line names the item as a field too (`logging.format: json` writes it)
    [line] = [r for r in caplog.records if r.getMessage().startswith("forward failed")]
    assert (line.outbox_id, line.attempt, line.dead) == (dead.id, 1, True)
    assert store.replay([dead.id]).requeued == 1
    assert relay.run_once() == 1


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@responses.activate
def test_a_redirect_is_not_followed_but_a_dead_letter_naming_the_location(setup, status) -> None:
    """requests would follow a 302 with a GET, and a login page's 200 would count as delivered."""
    service, relay, store = setup
    responses.post(URL, status=status, headers={"Location": "http://orders.example.test/login"})
    responses.get("http://orders.example.test/login", status=200)
    responses.post("http://orders.example.test/login", status=200)
    accept(service)
    assert relay.run_once() == 0
    assert [c.request.url for c in responses.calls] == [URL]
    [dead] = store.outbox(DEAD)
    assert f"answered {status} to http://orders.example.test/login: redirects are not " \
        "followed (set forward.url to where the events go)" in (dead.last_error or "")
    assert store.outbox(SENT) == []


@responses.activate
def test_a_refusal_keeps_the_start_of_its_body_not_all_of_it(setup) -> None:
    service, relay, store = setup
    responses.post(URL, status=422, body=b"E" * 5_000_000)
    accept(service)
    relay.run_once()
    [dead] = store.outbox(DEAD)
    assert "answered 422: EEEE" in (dead.last_error or "")
    assert len(dead.last_error or "") < 1000


@responses.activate
def test_bounded_attempts_end_in_a_dead_letter(setup) -> None:
    service, relay, store = setup
    responses.post(URL, status=503)
    accept(service)
    for _ in range(5):
        relay.run_once()
    [dead] = store.outbox(DEAD)
    assert dead.attempts == 3
    assert len(responses.calls) == 3


@responses.activate
def test_a_retried_event_keeps_the_later_events_of_its_subscription_waiting(setup) -> None:
    service, relay, store = setup
    responses.post(URL, status=503)  # the first attempt at the first event
    responses.post(URL, status=200)
    service.accept_smile_document(ACTIVATED, "SubscriptionActivated")
    service.accept_smile_document(SUSPENDED, "SubscriptionSuspended")
    assert relay.run_once() == 0  # the second did not overtake the first
    assert len(responses.calls) == 1
    assert relay.run_once() == 2
    delivered = [json.loads(call.request.body)["smileMessageType"]
                 for call in responses.calls[1:]]
    assert delivered == ["SubscriptionActivated", "SubscriptionSuspended"]
    assert store.outbox(PENDING) == [] and len(store.outbox(SENT)) == 2


def test_an_answer_that_drips_in_is_cut_at_forward_timeout_s_and_retried(setup) -> None:
    """Each read of the answer returns within the timeout (a byte every 50 ms, in a header
    line that never ends); the POST as a whole may not outlast forward.timeout_s."""
    service, relay, store = setup
    with OrderSystem(drip_s=0.05) as orders:
        forward = replace(relay.settings, url=orders.url, timeout_s=0.5)
        relay = ForwardRelay(store, RequestsForwarder(forward), forward)
        accept(service)
        done: list[int] = []
        thread = threading.Thread(target=lambda: done.append(relay.run_once()), daemon=True)
        thread.start()
        thread.join(timeout=30)
        assert not thread.is_alive(), "the POST outlived forward.timeout_s"
        [item] = store.outbox(PENDING)
        assert done == [0] and item.attempts == 1
        assert item.last_error == (f"POST {orders.url} failed: no whole answer within "
                                   "forward.timeout_s (0.5 s)")
        orders.drip_s = None  # the order system answers again: the retry delivers it
        assert relay.run_once() == 1
    assert [c["status"] for c in orders.received] == [200, 200]
    assert store.outbox(PENDING) == [] and len(store.outbox(SENT)) == 1


@responses.activate
def test_once_stopping_no_further_post_starts(setup) -> None:
    service, relay, store = setup
    stop = threading.Event()

    def answer(request):
        stop.set()  # the gateway is told to stop while the first event is being POSTed
        return 200, {}, ""

    responses.add_callback(responses.POST, URL, callback=answer)
    service.accept_smile_document(ACTIVATED, "SubscriptionActivated")
    service.accept_smile_document(SUSPENDED, "SubscriptionSuspended")
    assert relay.run_once(stop=stop) == 1  # the POST in progress ends and is recorded
    assert len(responses.calls) == 1
    [waiting] = store.outbox(PENDING)
    assert waiting.attempts == 0 and waiting.kind == "SubscriptionSuspended"
    assert relay.run_once() == 1


def accept_for(service: GatewayService, usns: list[str], rounds: int) -> None:
    """`rounds` events for each subscription, alternately activated and suspended."""
    for n in range(rounds):
        for usn in usns:
            body, mtype = ((ACTIVATED, "SubscriptionActivated") if n % 2 == 0
                           else (SUSPENDED, "SubscriptionSuspended"))
            service.accept_smile_document(
                body.replace(b"<USN>2142426765</USN>", f"<USN>{usn}</USN>".encode()), mtype)


def sent_order(store) -> dict[str, list[str]]:
    """Each subscription's event ids in the order they were queued."""
    order: dict[str, list[str]] = {}
    for item in sorted(store.outbox(SENT), key=lambda i: i.id):
        order.setdefault(item.usn, []).append(item.message_id)
    return order


@responses.activate
def test_subscriptions_are_delivered_at_once_each_in_its_order(setup) -> None:
    service, relay, store = setup
    usns = ["9000001", "9000002", "9000003"]
    # Each POST waits until one POST of every subscription is in flight: a relay sending one
    # event at a time breaks the barrier (its timeout) and is answered 500.
    together = threading.Barrier(len(usns), timeout=10)
    received: dict[str, list[str]] = {}

    def order_system(request):
        try:
            together.wait()
        except threading.BrokenBarrierError:
            return (500, {}, "not concurrent")
        event = json.loads(request.body)
        received.setdefault(event["usn"], []).append(event["eventId"])
        return (200, {}, "")

    responses.add_callback(responses.POST, URL, callback=order_system)
    accept_for(service, usns, rounds=3)
    assert relay.settings.concurrency >= len(usns)
    assert relay.run_once() == 9
    assert received == sent_order(store)
    assert {usn: len(ids) for usn, ids in received.items()} == dict.fromkeys(usns, 3)
    assert store.outbox(PENDING) == []
    relay.close()


@responses.activate
def test_a_retried_event_holds_back_only_its_own_subscription(setup) -> None:
    service, relay, store = setup
    failed: list[str] = []

    def order_system(request):
        event = json.loads(request.body)
        if event["usn"] == "9000001" and not failed:
            failed.append(event["eventId"])
            return (503, {}, "busy")
        return (200, {}, "")

    responses.add_callback(responses.POST, URL, callback=order_system)
    accept_for(service, ["9000001", "9000002"], rounds=2)
    assert relay.run_once() == 2  # 9000002's two; 9000001's second waits for its first
    [first, second] = sorted(store.outbox(PENDING), key=lambda i: i.id)
    assert (first.message_id, first.attempts) == (failed[0], 1)
    assert second.attempts == 0
    assert relay.run_once() == 2
    assert store.outbox(PENDING) == []
    assert sent_order(store)["9000001"] == [first.message_id, second.message_id]
    relay.close()


def test_each_sending_thread_has_its_own_session(settings: Settings) -> None:
    forwarder = RequestsForwarder(replace(settings.forward, url=URL))
    mine = forwarder.session
    theirs: list[requests.Session] = []
    thread = threading.Thread(target=lambda: theirs.append(forwarder.session))
    thread.start()
    thread.join(timeout=10)
    assert forwarder.session is mine and theirs and theirs[0] is not mine


def _tls_sink(tmp_path: Path, client_ca: Path | None = None):
    import ssl

    from tests.brokers import make_certificate

    cert, key = make_certificate(tmp_path / "tls", "orders", ["localhost"])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(client_ca)
    return OrderSystem(tls=context), cert


def _forward_once(settings: Settings, forward, codec, tmp_path: Path) -> str | None:
    """One accepted document forwarded with `forward`: None when delivered, else why not."""
    from adapters.sql_store import SqlStore

    s = replace(settings, forward=forward)
    store = SqlStore(f"sqlite:///{tmp_path / 'g.db'}")
    try:
        service = GatewayService(s, codec, store,
                                 Translator(s.mapping, codec, InMemoryRequestIds()))
        accept(service)
        ForwardRelay(store, RequestsForwarder(s.forward), s.forward).run_once()
        [item] = store.outbox()
        return None if item.status == SENT else item.last_error
    finally:
        store.close()


def test_an_https_order_system_is_checked_against_forward_ca_file(settings, codec,
                                                                  tmp_path) -> None:
    sink, cert = _tls_sink(tmp_path)
    with sink:
        forward = replace(settings.forward, url=sink.url, attempts=1, backoff_s=0.0)
        why = _forward_once(settings, forward, codec, tmp_path / "a")
        assert why is not None and "CERTIFICATE_VERIFY_FAILED" in why  # not certifi's
        assert _forward_once(settings, replace(forward, ca_file=str(cert)), codec,
                             tmp_path / "b") is None
    assert [r["json"]["usn"] for r in sink.received] == ["2142426765"]


def test_an_order_system_that_asks_for_a_client_certificate_gets_forward_cert_file(
        settings, codec, tmp_path) -> None:
    from tests.brokers import make_certificate

    client, client_key = make_certificate(tmp_path / "tls", "gateway", ["smile-gateway"])
    sink, cert = _tls_sink(tmp_path, client_ca=client)
    with sink:
        forward = replace(settings.forward, url=sink.url, attempts=1, backoff_s=0.0,
                          ca_file=str(cert))
        assert _forward_once(settings, forward, codec, tmp_path / "a") is not None
        assert _forward_once(settings, replace(forward, cert_file=str(client),
                                               key_file=str(client_key)),
                             codec, tmp_path / "b") is None
    assert len(sink.received) == 1
