"""RequestsForwarder and the forward relay, with `responses` for the order system."""

from __future__ import annotations

import json
from dataclasses import replace
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
from tests.stores import KINDS, open_store, store_url

URL = "http://orders.example.test/smile-events"


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


@responses.activate
def test_a_final_4xx_is_a_dead_letter_that_can_be_replayed(setup) -> None:
    service, relay, store = setup
    responses.post(URL, status=400, json={"error": "bad"})
    responses.post(URL, status=200)
    accept(service)
    relay.run_once()
    [dead] = store.outbox(DEAD)
    assert "answered 400" in (dead.last_error or "")
    assert store.replay([dead.id]) == 1
    assert relay.run_once() == 1


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
    activated = (SAMPLES / "SubscriptionActivated.xml").read_bytes()
    suspended = activated.replace(b"<SuspendStatus>Active</SuspendStatus>",
                                  b"<SuspendStatus>Suspended</SuspendStatus>")
    service.accept_smile_document(activated, "SubscriptionActivated")
    service.accept_smile_document(suspended, "SubscriptionSuspended")
    assert relay.run_once() == 0  # the second did not overtake the first
    assert len(responses.calls) == 1
    assert relay.run_once() == 2
    delivered = [json.loads(call.request.body)["smileMessageType"]
                 for call in responses.calls[1:]]
    assert delivered == ["SubscriptionActivated", "SubscriptionSuspended"]
    assert store.outbox(PENDING) == [] and len(store.outbox(SENT)) == 2
