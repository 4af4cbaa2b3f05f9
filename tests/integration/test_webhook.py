"""The Flask app over the real service and a SQLite file: routes, errors, signatures."""

from __future__ import annotations

import base64
import gzip
import json
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from adapters.sql_store import SqlStore
from adapters.webhook import create_app
from gateway.config import Settings
from gateway.ports import InMemoryRequestIds
from gateway.service import GatewayService
from gateway.signatures import sign
from gateway.translator import Translator
from tests.conftest import INVALID, ROOT, SAMPLES

SECRET_KEY = b"0123456789abcdef0123456789abcdef"
SECRET = "whsec_" + base64.b64encode(SECRET_KEY).decode()
RTP = (SAMPLES / "SubscriptionReadyToProvision.xml").read_bytes()


def build(settings: Settings, codec, tmp_path: Path, **webhook):
    s = replace(settings, webhook=replace(settings.webhook, **webhook))
    store = SqlStore(f"sqlite:///{tmp_path / 'g.db'}")
    service = GatewayService(s, codec, store, Translator(s.mapping, codec, InMemoryRequestIds()))
    app = create_app(service, s, {"store": store.ping})
    return app.test_client(), service


@pytest.fixture()
def client(settings, codec, tmp_path):
    return build(settings, codec, tmp_path)[0]


def post_xml(client, body: bytes, **headers):
    return client.post("/smile/messages", data=body,
                       headers={"Content-Type": "application/xml", **headers})


def seed(client) -> None:
    r = post_xml(client, RTP, **{"X-Smile-Message-Type": "SubscriptionReadyToProvision",
                                 "X-Smile-Provision-Request-Id": "12"})
    assert r.status_code == 202, r.json


def test_a_smile_document_is_recorded_and_translated(client) -> None:
    r = post_xml(client, RTP, **{"X-Smile-Message-Type": "SubscriptionReadyToProvision",
                                 "X-Smile-Provision-Request-Id": "12"})
    assert r.status_code == 202
    assert r.json["order_state"] == "acknowledged"
    assert r.json["subscription_status"] == "provisioning_in_progress"
    view = client.get("/subscriptions/2142426762").json
    assert view["provisionRequestId"] == 12
    assert view["states"] == {"order_state": "acknowledged",
                              "subscription_status": "provisioning_in_progress"}
    assert view["history"][0]["source"] == "webhook"


def test_an_order_event_renders_the_documents(client) -> None:
    seed(client)
    r = client.post("/orders/events", json={"eventId": "e-1", "usn": "2142426762",
                                            "vocabulary": "order", "state": "inProgress"})
    assert r.status_code == 202
    assert [(m["smileMessageType"], m["status"]) for m in r.json["messages"]] == [
        ("SubscriptionProvisionResponse", "suppressed")]  # emission is off by default
    again = client.post("/orders/events", json={"eventId": "e-1", "usn": "2142426762",
                                                "vocabulary": "order", "state": "inProgress"})
    assert again.status_code == 202 and again.json == r.json  # processed once


def test_a_provision_request_id_no_store_can_hold_is_422_not_500(client) -> None:
    r = post_xml(client, RTP, **{"X-Smile-Message-Type": "SubscriptionReadyToProvision",
                                 "X-Smile-Provision-Request-Id": "9" * 30})
    assert r.status_code == 422 and r.mimetype == "application/problem+json"
    assert "header provisionRequestId must be an integer from" in r.json["detail"]
    assert client.get("/subscriptions/2142426762").status_code == 404  # nothing recorded


def test_a_provision_request_id_without_the_message_type_is_422_not_dropped(client) -> None:
    r = post_xml(client, RTP, **{"X-Smile-Provision-Request-Id": "12"})
    assert r.status_code == 422 and r.mimetype == "application/problem+json"
    assert "header provisionRequestId needs the smileMessageType" in r.json["detail"]
    assert client.get("/subscriptions/2142426762").status_code == 404  # nothing recorded
    r = post_xml(client, RTP, **{"X-Smile-Provision-Request-Id": "abc"})
    assert r.status_code == 422 and "must be an integer" in r.json["detail"]
    assert post_xml(client, RTP).status_code == 202  # without either, as before


def test_an_order_event_can_create_the_subscription(client) -> None:
    r = client.post("/orders/events", json={
        "eventId": "e-new", "usn": "N1", "vocabulary": "subscription", "state": "draft",
        "subscription": {"sid": 9, "serviceName": "Fibre", "parent": "P1",
                         "properties": [{"type": "Boolean", "name": "vip", "value": True}],
                         "plans": [{"planCode": "f100", "start": "2025-01-01T00:00:00+10:00"}]}})
    assert r.status_code == 202, r.json
    assert client.get("/subscriptions/N1").json["states"]["subscription_status"] == "draft"


def test_a_subscription_given_for_a_known_usn_must_be_the_same_sid(client) -> None:
    # the stored snapshot is used for a known usn; one of another sid means the two sides
    # disagree on which subscription the usn is: refused, nothing applied or rendered
    def event(event_id: str, sid: int, state: str) -> dict[str, object]:
        return {"eventId": event_id, "usn": "N1", "vocabulary": "order", "state": state,
                "subscription": {"sid": sid, "serviceName": "Fibre", "parent": "P1",
                                 "plans": [{"planCode": "f100"}]}}

    assert client.post("/orders/events", json=event("e-1", 9, "accepted")).status_code == 202
    r = client.post("/orders/events", json=event("e-2", 10, "inProgress"))
    assert r.status_code == 422 and r.mimetype == "application/problem+json"
    problem = "subscription.sid 10 differs from sid 9, stored for usn 'N1'"
    assert r.json["errors"] == [{"line": 0, "column": 0, "path": "/subscription/sid",
                                 "message": problem}]
    view = client.get("/subscriptions/N1").json
    assert (view["sid"], view["states"]["order_state"]) == (9, "accepted")
    # the same sid again (a creation event resent under a new id) is the stored one
    r = client.post("/orders/events", json=event("e-3", 9, "inProgress"))
    assert r.status_code == 202, r.json
    assert client.get("/subscriptions/N1").json["states"]["order_state"] == "inProgress"


def test_a_refused_transition_is_409_naming_both_states(client) -> None:
    seed(client)
    r = client.post("/orders/events", json={"eventId": "e-2", "usn": "2142426762",
                                            "vocabulary": "order", "state": "closed"})
    assert r.status_code == 409
    assert r.mimetype == "application/problem+json"
    assert "acknowledged -> closed" in r.json["detail"]


@pytest.mark.parametrize(("body", "status", "words"), [
    ({"eventId": "e", "usn": "nobody", "vocabulary": "order", "state": "accepted"}, 422,
     "unknown subscription"),
    ({"eventId": "e", "usn": "2142426762", "vocabulary": "order", "state": "shipped"}, 422,
     "unknown order state"),
    ({"eventId": "e", "usn": "2142426762", "vocabulary": "orders", "state": "held"}, 422,
     "unknown vocabulary"),
    ({"eventId": 5, "usn": ["x"], "vocabulary": "order"}, 422, "/eventId"),
    ([1, 2], 422, "expected a JSON object"),
    # numbers no document and no store column can hold name the field, not a rendered element
    ({"eventId": "e", "usn": "N2", "vocabulary": "order", "state": "acknowledged",
      "subscription": {"sid": 2**63, "serviceName": "F", "parent": "P",
                       "plans": [{"planCode": "f"}]}}, 422,
     "/subscription/sid: expected an integer from -9223372036854775808 to 9223372036854775807"),
    ({"eventId": "e", "usn": "N2", "vocabulary": "order", "state": "acknowledged",
      "subscription": {"sid": 1, "serviceName": "F", "parent": "P",
                       "plans": [{"planCode": "f", "planScheduleType": 2**31}]}}, 422,
     "/subscription/plans/0/planScheduleType: expected an integer from -2147483648 to "
     "2147483647"),
    # what XML cannot carry, a lone surrogate the store cannot encode, ids too long for a header
    ({"eventId": "e", "usn": "N\u0001", "vocabulary": "order", "state": "acknowledged"}, 422,
     "/usn: U+0001 at offset 1 is not a character XML can carry"),
    ({"eventId": "e\ud800", "usn": "N2", "vocabulary": "order", "state": "acknowledged"}, 422,
     "/eventId: U+D800 at offset 1 is not a character XML can carry"),
    ({"eventId": "e" * 1025, "usn": "N2", "vocabulary": "order", "state": "acknowledged"}, 422,
     "/eventId: expected at most 1024 characters, found 1025"),
    ({"eventId": "e", "usn": "N2", "vocabulary": "order", "state": "acknowledged",
      "subscription": {"sid": 1, "serviceName": "F\u0000", "parent": "P",
                       "plans": [{"planCode": "f"}]}},
     422, "/subscription/serviceName: U+0000 at offset 1"),
    ({"eventId": "e", "usn": "N2", "vocabulary": "order", "state": "acknowledged",
      "subscription": {"sid": 1, "serviceName": "F", "parent": "P",
                       "plans": [{"planCode": "f", "start": "2025-01-01T00:00:00-23:00"}],
                       "properties": [{"type": "String", "name": "s", "value": "\ufffe"}]}},
     422, "/subscription/properties/0/value: U+FFFE at offset 0 is not a character XML can "
     "carry; /subscription/plans/0/start: expected a UTC offset from -14:00 to +14:00"),
    # xs:dateTime's offset is hours and minutes: Python's fromisoformat also takes seconds
    ({"eventId": "e", "usn": "N2", "vocabulary": "order", "state": "acknowledged",
      "subscription": {"sid": 1, "serviceName": "F", "parent": "P",
                       "plans": [{"planCode": "f", "start": "2025-01-01T00:00:00+10:00:30"}],
                       "properties": [{"type": "Timestamp", "name": "t",
                                       "value": "2025-01-01T00:00:00-05:00:00.5"}]}},
     422, "/subscription/properties/0/value: expected a UTC offset in whole minutes, found "
     "-05:00:00.500000; /subscription/plans/0/start: expected a UTC offset in whole minutes, "
     "found +10:00:30"),
    # a Decimal is written out in full: "1e999999999" would be a gigabyte of digits
    ({"eventId": "e", "usn": "N2", "vocabulary": "order", "state": "acknowledged",
      "subscription": {"sid": 1, "serviceName": "F", "parent": "P", "plans": [{"planCode": "f"}],
                       "properties": [{"type": "Decimal", "name": "d", "value": "1e999999999"}]}},
     422, "a Decimal of at most 100 digits written out (xs:decimal has no exponent), "
     "found 1000000000"),
])
def test_bad_order_events_are_4xx_problems(client, body, status, words) -> None:
    seed(client)
    r = client.post("/orders/events", json=body)
    assert r.status_code == status
    assert words in json.dumps(r.json)


def test_malformed_json_is_400_and_a_wrong_type_is_415(client) -> None:
    r = client.post("/orders/events", data=b"{nope", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.mimetype == "application/problem+json"
    r = client.post("/orders/events", data=b"{}", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415


@pytest.mark.parametrize("route", ["/orders/events", "/listener/productOrderStateChangeEvent"])
@pytest.mark.parametrize("body, detail", [
    (b'{"eventId": "e1", "usn": "2142426762", "eventId": "e2"}',
     "body is not valid JSON: the name 'eventId' is given twice in one object"),
    (b'{"event": {"productOrder": {"state": "accepted", "state": "cancelled"}}}',
     "the name 'state' is given twice in one object"),
    (b'{"eventId": NaN}', "body is not valid JSON: NaN is not a JSON value"),
    (b'{"sid": -Infinity}', "-Infinity is not a JSON value"),
    (b'{"sid": ' + b"9" * 5000 + b"}",
     "body is not valid JSON: a number of 5000 digits, longer than any this gateway reads (4300)"),
    (b'{"sid": -' + b"9" * 4301 + b"}", "a number of 4301 digits")])
def test_a_name_given_twice_or_a_non_json_number_is_400(client, route, body, detail) -> None:
    """Parsers differ on which of two values of a name counts: none is picked."""
    r = client.post(route, data=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.mimetype == "application/problem+json"
    assert detail in r.json["detail"]


def test_the_tmf622_listener_answers_204(client) -> None:
    seed(client)
    event = {"eventId": "tmf-1", "eventType": "ProductOrderStateChangeEvent",
             "event": {"productOrder": {"id": "PO-1", "state": "accepted",
                                        "externalId": "2142426762"}}}
    r = client.post("/listener/productOrderStateChangeEvent", json=event)
    assert r.status_code == 204 and r.data == b""
    states = client.get("/subscriptions/2142426762").json["states"]
    assert states["order_state"] == "accepted"
    bad = client.post("/listener/productOrderStateChangeEvent", json={"eventId": "x"})
    assert bad.status_code == 422 and "productOrder" in bad.json["detail"]
    numeric = client.post("/listener/productOrderStateChangeEvent", json={
        "eventId": "tmf-3", "event": {"productOrder": {"state": "inProgress",
                                                      "externalId": 2142426762}}})
    assert numeric.status_code == 204  # a numeric externalId names the usn by its digits
    long = client.post("/listener/productOrderStateChangeEvent", json={
        "eventId": "tmf-4", "event": {"productOrder": {"state": "held",
                                                      "externalId": int("9" * 1100)}}})
    assert long.status_code == 422 and "at most 1024 characters" in long.json["detail"]
    odd = client.post("/listener/productOrderStateChangeEvent", json={
        "eventId": "tmf-2", "event": {"productOrder": {"state": "accepted",
                                                      "externalId": "2142426762\udfff"}}})
    assert odd.status_code == 422
    assert odd.json["errors"][0]["path"] == "/event/productOrder/externalId"



def tmf622_v5(event_id: str, state: str, *external_ids: dict) -> dict:
    """TMF622 v5 carries externalId as a list of ExternalIdentifier objects."""
    return {"eventId": event_id, "eventType": "ProductOrderStateChangeEvent",
            "event": {"productOrder": {"id": "PO-5", "state": state,
                                       "externalId": [{"@type": "ExternalIdentifier", **e}
                                                      for e in external_ids]}}}


def test_a_tmf622_v5_external_identifier_names_the_usn(client) -> None:
    seed(client)
    r = client.post("/listener/productOrderStateChangeEvent", json=tmf622_v5(
        "v5-1", "accepted", {"owner": "Smile", "externalIdentifierType": "usn",
                             "id": "2142426762"}))
    assert r.status_code == 204, r.json
    assert client.get("/subscriptions/2142426762").json["states"]["order_state"] == "accepted"
    numeric = client.post("/listener/productOrderStateChangeEvent",
                          json=tmf622_v5("v5-2", "inProgress", {"id": 2142426762}))
    assert numeric.status_code == 204, numeric.json


@pytest.mark.parametrize(("ids", "path", "words"), [
    ([{"owner": "CRM", "id": "PO-77"}, {"owner": "Smile", "id": "2142426762"}],
     "/event/productOrder/externalId",
     "2 external identifiers (owners 'CRM', 'Smile'): set webhook.tmf622_external_id_owner"),
    ([{"id": "2142426762"}, {"owner": "CRM", "id": "PO-77"}], "/event/productOrder/externalId",
     "2 external identifiers (owners (none), 'CRM')"),
    ([], "/event/productOrder/externalId", "no external identifier"),
    ([{"owner": "Smile"}], "/event/productOrder/externalId/0/id",
     "required: the subscription's usn"),
])
def test_a_tmf622_v5_list_that_names_no_one_usn_is_422(client, ids, path, words) -> None:
    r = client.post("/listener/productOrderStateChangeEvent",
                    json=tmf622_v5("v5-x", "accepted", *ids))
    assert r.status_code == 422 and r.mimetype == "application/problem+json"
    assert r.json["errors"][0]["path"] == path and words in r.json["errors"][0]["message"]


def test_the_owner_setting_picks_the_usn_among_external_identifiers(settings, codec,
                                                                    tmp_path) -> None:
    client = build(settings, codec, tmp_path, tmf622_external_id_owner="Smile")[0]
    seed(client)
    both = [{"owner": "CRM", "id": "PO-77"}, {"owner": "Smile", "id": "2142426762"}]
    r = client.post("/listener/productOrderStateChangeEvent",
                    json=tmf622_v5("v5-3", "accepted", *both))
    assert r.status_code == 204, r.json
    none = client.post("/listener/productOrderStateChangeEvent",
                       json=tmf622_v5("v5-4", "accepted", {"owner": "CRM", "id": "PO-77"}))
    assert none.status_code == 422
    assert "no external identifier whose owner is 'Smile' (owners 'CRM')" in (
        none.json["errors"][0]["message"])


@pytest.mark.parametrize("name", sorted(p.name for p in INVALID.glob("*.xml")))
def test_every_invalid_fixture_is_a_4xx_with_its_errors(client, name) -> None:
    r = post_xml(client, (INVALID / name).read_bytes())
    assert r.status_code in (400, 413, 422), (name, r.status_code)
    assert r.mimetype == "application/problem+json"
    if r.status_code != 413:
        assert r.json["errors"] and {"line", "column", "path", "message"} <= set(r.json["errors"][0])


def test_doctype_is_400_schema_violations_are_422(client) -> None:
    assert post_xml(client, (INVALID / "xxe-external-entity.xml").read_bytes()).status_code == 400
    r = post_xml(client, (INVALID / "several-violations.xml").read_bytes())
    assert r.status_code == 422 and len(r.json["errors"]) == 3


def test_content_type_and_size_limits(settings, codec, tmp_path) -> None:
    client, _ = build(settings, codec, tmp_path, max_body_bytes=2000)
    r = client.post("/smile/messages", data=RTP, headers={"Content-Type": "application/json"})
    assert r.status_code == 415
    r = post_xml(client, RTP + b" " * 2000)
    assert r.status_code == 413 and r.mimetype == "application/problem+json"
    assert post_xml(client, RTP, **{"Content-Type": "text/xml; charset=utf-8"}).status_code == 202


def test_a_repeated_webhook_id_answers_as_the_first_time(client) -> None:
    first = post_xml(client, RTP, **{"webhook-id": "msg_1"})
    second = post_xml(client, RTP, **{"webhook-id": "msg_1"})
    assert first.status_code == second.status_code == 202
    assert first.json == second.json
    assert len(client.get("/subscriptions/2142426762").json["history"]) == 2  # states + once


def test_a_webhook_id_or_event_id_reused_for_another_request_is_422(client) -> None:
    # answered as the first, the second document or change would be dropped unrecorded while
    # its sender counted it delivered (the Idempotency-Key draft's 422 for a reused key)
    assert post_xml(client, RTP, **{"webhook-id": "msg_1"}).status_code == 202
    other = RTP.replace(b"<SID>170</SID>", b"<SID>171</SID>")
    r = post_xml(client, other, **{"webhook-id": "msg_1"})
    assert r.status_code == 422 and r.mimetype == "application/problem+json"
    assert r.json["detail"] == ("webhook-id 'msg_1' was used before for a different request: "
                                "this one is not recorded (give each request an id of its own)")
    assert client.get("/subscriptions/2142426762").json["sid"] == 170  # nothing recorded
    # the same document under another message type is another request too
    typed = {"X-Smile-Message-Type": "SubscriptionReadyToProvision",
             "X-Smile-Provision-Request-Id": "12"}
    reused = post_xml(client, RTP, **{"webhook-id": "msg_1", **typed})
    assert reused.status_code == 422 and "'msg_1' was used before" in reused.json["detail"]
    assert post_xml(client, RTP, **{"webhook-id": "msg_2", **typed}).status_code == 202
    event = {"eventId": "ev-9", "usn": "2142426762", "vocabulary": "order", "state": "accepted"}
    first = client.post("/orders/events", json=event)
    assert first.status_code == 202, first.json
    assert client.post("/orders/events", json=event).json == first.json  # a retry
    r = client.post("/orders/events", json={**event, "state": "rejected"})
    assert r.status_code == 422 and r.json["detail"].startswith("eventId 'ev-9' was used before")
    assert client.get("/subscriptions/2142426762").json["states"]["order_state"] == "accepted"


def signed_headers(body: bytes, msg_id: str = "msg_abc", when: int | None = None,
                   key: bytes = SECRET_KEY) -> dict[str, str]:
    ts = int(time.time()) if when is None else when
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts),
            "webhook-signature": sign(key, msg_id, ts, body)}


def test_signatures_are_checked_when_a_secret_is_set(settings, codec, tmp_path) -> None:
    client, _ = build(settings, codec, tmp_path, secret=SECRET)
    assert post_xml(client, RTP).status_code == 401
    assert post_xml(client, RTP, **signed_headers(RTP)).status_code == 202
    assert post_xml(client, RTP + b" ", **signed_headers(RTP)).status_code == 401
    old = signed_headers(RTP, "msg_old", int(time.time()) - 301)
    assert post_xml(client, RTP, **old).status_code == 401
    rotated = signed_headers(RTP, "msg_rot")
    rotated["webhook-signature"] = (sign(b"another key", "msg_rot", int(
        rotated["webhook-timestamp"]), RTP) + " " + rotated["webhook-signature"])
    assert post_xml(client, RTP, **rotated).status_code == 202
    body = json.dumps({"eventId": "e", "usn": "2142426762", "vocabulary": "order",
                       "state": "accepted"}).encode()
    r = client.post("/orders/events", data=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 401
    r = client.post("/orders/events", data=body, headers={
        "Content-Type": "application/json", **signed_headers(body, "msg_ev")})
    assert r.status_code == 202


def test_the_gateway_takes_either_of_two_secrets_while_one_replaces_the_other(
        settings, codec, tmp_path) -> None:
    """Rotating the gateway's own secret: with the new and the old one set (space-separated),
    a sender that still signs with the old key, or already with the new, is taken; once the
    old one is dropped from webhook.secret, it is refused."""
    new_key = b"fedcba9876543210fedcba9876543210"
    new = "whsec_" + base64.b64encode(new_key).decode()
    both, _ = build(settings, codec, tmp_path, secret=f"{new} {SECRET}")
    assert post_xml(both, RTP, **signed_headers(RTP, "msg_a", key=SECRET_KEY)).status_code == 202
    assert post_xml(both, RTP, **signed_headers(RTP, "msg_b", key=new_key)).status_code == 202
    assert post_xml(both, RTP, **signed_headers(RTP, "msg_c", key=b"k" * 32)).status_code == 401
    (tmp_path / "later").mkdir()
    only_new, _ = build(settings, codec, tmp_path / "later", secret=new)
    assert post_xml(only_new, RTP,
                    **signed_headers(RTP, "msg_d", key=SECRET_KEY)).status_code == 401


def wire(text: str) -> str:
    """A header value as a WSGI server hands it on (PEP 3333: the bytes sent, as latin-1)."""
    return text.encode().decode("latin-1")


def test_a_signed_webhook_id_is_the_utf8_it_was_signed_as(settings, codec, tmp_path) -> None:
    client, _ = build(settings, codec, tmp_path, secret=SECRET)
    headers = signed_headers(RTP, "msg_é")  # Standard Webhooks signs the id's UTF-8 bytes
    r = post_xml(client, RTP, **{**headers, "webhook-id": wire("msg_é")})
    assert r.status_code == 202, r.json
    again = post_xml(client, RTP, **{**headers, "webhook-id": wire("msg_é")})
    assert again.status_code == 202 and again.json == r.json
    stamp = f"0{int(time.time())}"  # signed as written: leading zero and all
    zero = {"webhook-id": "msg_0", "webhook-timestamp": stamp,
            "webhook-signature": sign(SECRET_KEY, "msg_0", stamp, RTP)}
    assert post_xml(client, RTP, **zero).status_code == 202


@pytest.mark.parametrize("stamp", ["1_700_000_000", " 1700000000", "+1700000000", "\u0661\u0667\u0660\u0660"])
def test_a_webhook_timestamp_is_ascii_digits_only(settings, codec, tmp_path, stamp) -> None:
    client, _ = build(settings, codec, tmp_path, secret=SECRET)
    now = int(time.time())
    headers = {**signed_headers(RTP, when=now), "webhook-timestamp": wire(stamp)}
    r = post_xml(client, RTP, **headers)
    assert r.status_code == 401
    assert "webhook-timestamp is not a whole number of seconds" in r.json["detail"]


def test_header_values_are_read_as_utf8(client) -> None:
    r = post_xml(client, RTP, **{"X-Smile-Message-Type": wire("Ñope")})
    assert r.status_code == 422 and "unknown smileMessageType 'Ñope'" in r.json["detail"]
    r = post_xml(client, RTP, **{"X-Smile-Message-Type": "\xff\xfe"})  # no UTF-8
    assert r.status_code == 400 and r.mimetype == "application/problem+json"
    assert r.json["detail"] == "header X-Smile-Message-Type is not UTF-8"
    r = post_xml(client, RTP, **{"webhook-id": "id-\xff"})
    assert r.status_code == 400 and r.json["detail"] == "header webhook-id is not UTF-8"


def test_health_readiness_metrics_and_openapi(client) -> None:
    assert client.get("/healthz").json == {"status": "ok"}
    assert client.get("/readyz").json["status"] == "ready"
    seed(client)
    assert client.post("/smile/messages", data=b"{}",
                       headers={"Content-Type": "application/json"}).status_code == 415
    assert client.get("/no/such/route").status_code == 404
    metrics = client.get("/metrics").data.decode()
    assert 'smile_gateway_http_requests_total{route="/smile/messages",status="202"} 1.0' in metrics
    assert 'smile_gateway_http_requests_total{route="/smile/messages",status="415"} 1.0' in metrics
    assert 'smile_gateway_http_requests_total{route="(none)",status="404"} 1.0' in metrics
    assert 'smile_gateway_http_request_seconds_count{route="/smile/messages"} 2.0' in metrics
    assert 'smile_gateway_documents_accepted_total{source="webhook"} 1.0' in metrics
    assert "smile_gateway_broker_messages" not in metrics  # no consumer in this process
    spec = yaml.safe_load(client.get("/openapi.yaml").data)
    assert spec["openapi"].startswith("3.")


def test_metrics_give_the_room_left_on_the_sqlite_stores_disk(settings, codec,
                                                               tmp_path) -> None:
    """What the readiness check compares with its 4 MiB, as a gauge: an alert can see the
    disk filling hours before readiness fails and requests are 503s."""
    import os
    import re

    client, _ = build(settings, codec, tmp_path)
    metrics = client.get("/metrics").data.decode()
    assert "# TYPE smile_gateway_store_disk_free_bytes gauge" in metrics
    [shown] = re.findall(r"^smile_gateway_store_disk_free_bytes ([0-9.e+]+)$", metrics, re.M)
    disk = os.statvfs(tmp_path)
    assert abs(float(shown) - disk.f_bavail * disk.f_frsize) < 64 * 1024 * 1024  # as it moves


def test_metrics_count_the_outbox_and_the_dead_letters_from_the_store(settings, codec,
                                                                     tmp_path) -> None:
    client, service = build(settings, codec, tmp_path)
    assert "# TYPE smile_gateway_dead_letters gauge" in client.get("/metrics").data.decode()
    service.store.add_dead_letter("broker", "not well-formed", {}, b"<")
    replayed = service.store.add_dead_letter("broker", "unknown smileMessageType", {}, b"<x/>")
    seed(client)
    metrics = client.get("/metrics").data.decode()
    assert 'smile_gateway_dead_letters{source="broker"} 2.0' in metrics
    assert 'smile_gateway_dead_letters_outstanding{source="broker"} 2.0' in metrics
    service.store.mark_dead_letter_replayed(replayed, "accepted")
    metrics = client.get("/metrics").data.decode()
    assert 'smile_gateway_dead_letters{source="broker"} 2.0' in metrics  # kept (retention)
    assert 'smile_gateway_dead_letters_outstanding{source="broker"} 1.0' in metrics
    client.post("/orders/events", json={"eventId": "e-m", "usn": "2142426762",
                                        "vocabulary": "order", "state": "accepted"})
    metrics = client.get("/metrics").data.decode()
    assert 'smile_gateway_outbox_items{channel="broker",status="suppressed"} 1.0' in metrics
    # nothing pending: the age of the oldest pending item is 0 on both channels
    assert 'smile_gateway_outbox_oldest_pending_seconds{channel="broker"} 0.0' in metrics
    assert 'smile_gateway_outbox_oldest_pending_seconds{channel="forward"} 0.0' in metrics


def test_metrics_carry_the_version_and_the_process(client) -> None:
    """What a fleet's dashboards expect of any service: which version runs, and the process's
    CPU, memory, open files and the interpreter's collections."""
    from gateway import __version__

    metrics = client.get("/metrics").data.decode()
    assert f'smile_gateway_build_info{{version="{__version__}"}} 1.0' in metrics
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes",
                 "process_open_fds", "process_start_time_seconds", "python_info",
                 "python_gc_collections_total"):
        assert f"\n{name}" in metrics, name


def test_the_age_of_the_oldest_pending_item_is_a_metric(settings, codec, tmp_path) -> None:
    """A pending count that holds steady can hide a relay stuck on one message: the age of
    the oldest pending item, per channel, is what an alert wants."""
    from gateway.ports import FORWARD, NewOutboxItem

    s = settings
    store = SqlStore(f"sqlite:///{tmp_path / 'g.db'}", clock=lambda: 1000.0)
    service = GatewayService(s, codec, store, Translator(s.mapping, codec, InMemoryRequestIds()))
    client = create_app(service, s, {}, clock=lambda: 1090.5).test_client()
    store.enqueue([NewOutboxItem(FORWARD, "ev-1", "u1", "SubscriptionActivated", {}, b"{}")])
    metrics = client.get("/metrics").data.decode()
    assert "# TYPE smile_gateway_outbox_oldest_pending_seconds gauge" in metrics
    assert 'smile_gateway_outbox_oldest_pending_seconds{channel="forward"} 90.5' in metrics
    assert 'smile_gateway_outbox_oldest_pending_seconds{channel="broker"} 0.0' in metrics


def test_each_readiness_check_is_a_metric(settings, codec, tmp_path) -> None:
    """/readyz answers a probe, not Prometheus: a store whose disk fills, or a broker the
    relay cannot use, raises an alert while it lasts only if the metrics say so too."""
    store = SqlStore(f"sqlite:///{tmp_path / 'g.db'}")
    service = GatewayService(settings, codec, store,
                             Translator(settings.mapping, codec, InMemoryRequestIds()))
    failing: dict[str, str] = {}

    def broker() -> None:
        if "broker" in failing:
            raise RuntimeError(failing["broker"])

    client = create_app(service, settings, {"store": store.ping, "broker": broker}).test_client()
    metrics = client.get("/metrics").data.decode()
    assert "# TYPE smile_gateway_ready gauge" in metrics
    assert 'smile_gateway_ready{check="store"} 1.0' in metrics
    assert 'smile_gateway_ready{check="broker"} 1.0' in metrics
    failing["broker"] = "cannot connect to 127.0.0.1:61613: Connection refused"
    metrics = client.get("/metrics").data.decode()
    assert 'smile_gateway_ready{check="store"} 1.0' in metrics
    assert 'smile_gateway_ready{check="broker"} 0.0' in metrics
    assert client.get("/readyz").json["checks"]["broker"] == f"failing: {failing['broker']}"


def test_the_openapi_file_describes_every_route(client) -> None:
    spec = yaml.safe_load((ROOT / "docs" / "openapi.yaml").read_text())
    app_routes = {r.rule.replace("<path:usn>", "{usn}")
                  for r in client.application.url_map.iter_rules() if r.endpoint != "static"}
    assert set(spec["paths"]) == app_routes


def test_unknown_routes_and_methods_are_problems(client) -> None:
    r = client.get("/nope")
    assert r.status_code == 404 and r.mimetype == "application/problem+json"
    r = client.get("/smile/messages")
    assert r.status_code == 405 and r.mimetype == "application/problem+json"


def test_a_store_outage_is_503(settings, codec, tmp_path) -> None:
    client, service = build(settings, codec, tmp_path)
    service.store.close()
    Path(service.store.path).unlink()
    Path(service.store.path).mkdir()  # the database is now a folder: nothing can open it
    r = post_xml(client, RTP)
    assert r.status_code == 503 and r.mimetype == "application/problem+json"
    assert r.headers["Retry-After"] == "5"  # nothing was recorded: the sender resends


def test_a_store_outage_is_logged_once_then_summed_up_not_a_line_a_request(
        settings, codec, tmp_path, caplog) -> None:
    """A full disk or a lock held elsewhere fails every request: an ERROR for each would be
    thousands of lines a second, into the journal on the same disk. The first is logged at
    once, then a line at most every 30 s with how many met it since, and one when a request
    gets through again."""
    import logging
    import sqlite3

    now = [1_000_000.0]
    s = settings
    store = SqlStore(f"sqlite:///{tmp_path / 'g.db'}", busy_timeout_ms=50)
    service = GatewayService(s, codec, store, Translator(s.mapping, codec, InMemoryRequestIds()))
    client = create_app(service, s, {"store": store.ping}, clock=lambda: now[0]).test_client()
    assert post_xml(client, RTP).status_code == 202
    other = sqlite3.connect(store.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock: commits fail
    caplog.set_level(logging.INFO, logger="adapters.webhook")

    def outage_lines() -> list[tuple[int, str]]:
        found = [(r.levelno, r.getMessage()) for r in caplog.records
                 if r.name == "adapters.webhook" and "store" in r.getMessage()]
        caplog.clear()
        return found

    for _ in range(5):
        assert post_xml(client, RTP).status_code == 503
        now[0] += 1
    [(level, first)] = outage_lines()
    assert level == logging.ERROR
    assert first.startswith("store unavailable: ") and "database is locked" in first
    assert "answering 503" in first and "at most every 30 s" in first
    now[0] += 30
    assert post_xml(client, RTP).status_code == 503
    [(level, again)] = outage_lines()
    assert level == logging.ERROR and again.startswith("store still unavailable: ")
    assert "5 requests answered 503 since the last line, 6 since it began 35 s ago" in again
    assert post_xml(client, RTP).status_code == 503
    assert outage_lines() == []
    other.rollback()
    now[0] += 4
    assert post_xml(client, RTP).status_code == 202
    assert outage_lines() == [(logging.INFO, "store available again: 7 requests were answered "
                                             "503 over 39 s")]
    assert post_xml(client, RTP).status_code == 202
    assert outage_lines() == []
    # a new outage is logged at once again
    other.execute("BEGIN IMMEDIATE")
    assert post_xml(client, RTP).status_code == 503
    [(level, first)] = outage_lines()
    assert level == logging.ERROR and first.startswith("store unavailable: ")
    other.rollback()


@pytest.mark.parametrize("encoding, codec_name", [
    ("ISO-8859-1", "latin-1"), ("UTF-16", "utf-16"), ("UTF-8", "utf-8-sig")])
def test_a_document_in_another_encoding_is_kept_viewed_and_rendered_from(
        settings, codec, tmp_path, encoding, codec_name) -> None:
    client, service = build(settings, codec, tmp_path)
    text = (SAMPLES / "SubscriptionActivated.xml").read_text("utf-8").replace(
        'encoding="UTF-8"', f'encoding="{encoding}"').replace("Home broadband", "Café broadband")
    data = text.encode(codec_name)  # utf-8-sig: UTF-8 with a byte order mark
    assert post_xml(client, data, **{"X-Smile-Message-Type": "SubscriptionActivated"}
                    ).status_code == 202
    view = client.get("/subscriptions/2142426765")
    assert view.status_code == 200, view.json
    # as it came, read in its encoding; in JSON's text its declaration says UTF-8
    assert view.json["snapshot"] == text.replace(f'encoding="{encoding}"', 'encoding="UTF-8"')
    assert service.store.subscription("2142426765").snapshot == data  # kept byte for byte
    r = client.post("/orders/events", json={"eventId": "ev-1", "usn": "2142426765",
                                            "vocabulary": "subscription",
                                            "state": "decommissioning"})
    assert r.status_code == 202, r.json
    [message] = service.store.outbox()
    assert "<ServiceName>Café broadband &amp; voice</ServiceName>" in message.body.decode()


def cafe(declaration: str) -> str:
    return (SAMPLES / "SubscriptionActivated.xml").read_text("utf-8").replace(
        '<?xml version="1.0" encoding="UTF-8"?>', declaration).replace(
        "Home broadband", "Café broadband")


@pytest.mark.parametrize("declaration", ['<?xml version="1.0"?>', "",
                                         '<?xml version="1.0" encoding="UTF-8"?>',
                                         '<?xml version="1.0" encoding=\'windows-1252\'?>'])
def test_a_content_type_charset_decides_over_the_declaration(
        settings, codec, tmp_path, declaration) -> None:
    # RFC 7303: the label is read before the declaration (a bridge that writes a String out
    # in ISO-8859-1 and says so, whatever the document's declaration says)
    client, service = build(settings, codec, tmp_path)
    text = cafe(declaration)
    r = client.post("/smile/messages", data=text.encode("latin-1"),
                    headers={"Content-Type": "text/xml; charset=ISO-8859-1"})
    assert r.status_code == 202, r.json
    # kept in UTF-8, the declaration's encoding (if it names one) saying so
    utf8 = text.replace("encoding='windows-1252'", 'encoding="UTF-8"')
    assert service.store.subscription("2142426765").snapshot == utf8.encode("utf-8")
    assert client.get("/subscriptions/2142426765").json["snapshot"] == utf8


@pytest.mark.parametrize("content_type, data", [
    ("application/xml; charset=utf-8", cafe('<?xml version="1.0" encoding="UTF-8"?>').encode()),
    ("application/xml; charset=UTF8", cafe("").encode()),
    ("application/xml; charset=iso-8859-1",
     cafe('<?xml version="1.0" encoding="latin1"?>').encode("latin-1")),
    ("application/xml; charset=utf-8",  # a byte order mark decides over the label
     cafe('<?xml version="1.0" encoding="UTF-16"?>').encode("utf-16"))])
def test_a_charset_that_agrees_keeps_the_document_as_it_came(
        settings, codec, tmp_path, content_type: str, data: bytes) -> None:
    client, service = build(settings, codec, tmp_path)
    r = client.post("/smile/messages", data=data, headers={"Content-Type": content_type})
    assert r.status_code == 202, r.json
    assert service.store.subscription("2142426765").snapshot == data


@pytest.mark.parametrize("charset", ["no-such-charset", "base64", "unicode_escape", "utf-7"])
def test_a_charset_that_is_no_text_encoding_is_415(client, charset: str) -> None:
    r = client.post("/smile/messages", data=cafe("").encode(),
                    headers={"Content-Type": f"application/xml; charset={charset}"})
    assert r.status_code == 415 and r.mimetype == "application/problem+json"
    assert r.json["detail"] == (f"charset {charset!r} is not a character encoding the "
                                "gateway reads")


def test_bytes_that_are_not_the_labelled_charset_are_400_with_where(client) -> None:
    data = cafe('<?xml version="1.0"?>').encode("utf-8")
    r = client.post("/smile/messages", data=data,
                    headers={"Content-Type": "application/xml; charset=us-ascii"})
    assert r.status_code == 400, r.json
    at = data.index("é".encode())
    assert r.json["detail"] == (f"not well-formed: byte {at} (0xc3) is not us-ascii, as the "
                                "Content-Type says the document is")
    [error] = r.json["errors"]
    assert error["line"] == data.count(b"\n", 0, at) + 1
    assert error["column"] == at - data.rfind(b"\n", 0, at)


def test_the_feature_diff_is_taken_against_the_stored_snapshot(client) -> None:
    changed = (SAMPLES / "SubscriptionFeaturesChanged.xml").read_bytes()
    first = post_xml(client, changed).json
    assert (first["features_added"], first["features_removed"]) == ([5001, 5003], [])
    fewer = changed.replace(b"<FeatureId>5003</FeatureId>", b"<FeatureId>5004</FeatureId>")
    second = post_xml(client, fewer).json
    assert (second["features_added"], second["features_removed"]) == ([5004], [5003])
    again = post_xml(client, fewer).json
    assert (again["features_added"], again["features_removed"]) == ([], [])


@pytest.mark.parametrize("coding", ["gzip", "br", "identity, gzip", "x-unknown"])
def test_a_body_in_a_content_coding_is_415_and_nothing_is_recorded(settings, codec, tmp_path,
                                                                   coding: str) -> None:
    # RFC 9110, 15.5.16: content in a coding the server does not take is refused with 415,
    # and Accept-Encoding says what it takes (RFC 7694), rather than read as if plain
    client, service = build(settings, codec, tmp_path)
    body = gzip.compress(RTP) if coding == "gzip" else RTP
    r = post_xml(client, body, **{"Content-Encoding": coding,
                                  "X-Smile-Message-Type": "SubscriptionReadyToProvision"})
    assert r.status_code == 415 and r.mimetype == "application/problem+json"
    assert r.headers["Accept-Encoding"] == "identity"
    assert r.json["detail"] == (f"Content-Encoding {coding!r} is not taken: send the body "
                                "as it is (identity)")
    assert service.store.subscription("2142426762") is None
    event = {"eventId": "e-9", "usn": "2142426762", "vocabulary": "order", "state": "accepted"}
    for path in ("/orders/events", "/listener/productOrderStateChangeEvent"):
        r = client.post(path, json=event, headers={"Content-Encoding": coding})
        assert r.status_code == 415 and r.headers["Accept-Encoding"] == "identity"


@pytest.mark.parametrize("coding", ["identity", "Identity", " identity "])
def test_the_identity_coding_is_the_body_as_it_is(client, coding: str) -> None:
    r = post_xml(client, RTP, **{"Content-Encoding": coding,
                                 "X-Smile-Message-Type": "SubscriptionReadyToProvision",
                                 "X-Smile-Provision-Request-Id": "12"})
    assert r.status_code == 202, r.json


def test_each_refusal_is_logged_with_why_and_from_where(settings, codec, tmp_path,
                                                        caplog) -> None:
    """The sender sees the problem+json; the operator, asked why Smile's posts fail, finds
    the same in the gateway's log: route, status, why, the peer and the webhook-id."""
    import logging

    client, _ = build(settings, codec, tmp_path, secret=SECRET)
    caplog.set_level(logging.INFO, logger="adapters.webhook")
    r = post_xml(client, RTP, **{"webhook-id": "msg_7", "webhook-timestamp": "1",
                                 "webhook-signature": "v1,AAAA"})
    assert r.status_code == 401
    refusals = [rec for rec in caplog.records if rec.name == "adapters.webhook"]
    assert [rec.getMessage() for rec in refusals] == [
        "refused POST /smile/messages: 401 Unauthorized: webhook-timestamp is outside the "
        "300s window (from 127.0.0.1, webhook-id msg_7)"]
    assert refusals[0].levelno == logging.INFO
    # and as fields of their own, which `logging.format: json` writes beside the message
    assert (refusals[0].method, refusals[0].path, refusals[0].status, refusals[0].remote,
            refusals[0].webhook_id) == ("POST", "/smile/messages", 401, "127.0.0.1", "msg_7")
    caplog.clear()
    assert client.get("/nope").status_code == 404
    assert client.post("/orders/events", data="{", content_type="application/json",
                       headers={"webhook-id": "x\x1b[2Kforged"}).status_code == 401
    messages = [rec.getMessage() for rec in caplog.records if rec.name == "adapters.webhook"]
    assert messages[0].startswith("refused GET /nope: 404 Not Found: The requested URL")
    assert messages[0].endswith("(from 127.0.0.1)")
    assert messages[1].endswith("(from 127.0.0.1, webhook-id x\x1b[2Kforged)")  # logs.py
    # a proxy's X-Request-ID, for the line to be found beside the proxy's own
    caplog.clear()
    assert client.get("/nope", headers={"X-Request-ID": "f00d-1"}).status_code == 404
    [line] = [rec for rec in caplog.records if rec.name == "adapters.webhook"]
    assert line.getMessage().endswith("(from 127.0.0.1, request-id f00d-1)")
    assert line.request_id == "f00d-1"
    # escapes it in the line written (tests/unit/test_logs.py)
    caplog.clear()
    timestamp = str(int(time.time()))
    ok = post_xml(client, RTP, **{"webhook-id": "msg_8", "webhook-timestamp": timestamp,
                                  "webhook-signature": sign(SECRET_KEY, "msg_8", timestamp,
                                                            RTP),
                                  "X-Smile-Message-Type": "SubscriptionReadyToProvision",
                                  "X-Smile-Provision-Request-Id": "12"})
    assert ok.status_code == 202, ok.json
    assert not [rec for rec in caplog.records if rec.name == "adapters.webhook"]  # quiet


def test_a_read_token_guards_the_subscription_view_and_the_metrics(settings, codec,
                                                                  tmp_path) -> None:
    """GET /subscriptions/<usn> answers a subscription's snapshot and history, /metrics the
    store's counts: with webhook.read_token set, both want `Authorization: Bearer <token>`;
    the probes and the API description stay open, and the POST routes keep their own check."""
    client, _ = build(settings, codec, tmp_path, read_token="s3cret-read")
    seed(client)
    for path in ("/subscriptions/2142426762", "/metrics"):
        for given in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-read"},
                      {"Authorization": "Basic czNjcmV0LXJlYWQ="}):
            r = client.get(path, headers=given)
            assert r.status_code == 401, (path, given)
            assert r.mimetype == "application/problem+json"
            assert r.headers["WWW-Authenticate"] == 'Bearer realm="smile-gateway"'
        ok = client.get(path, headers={"Authorization": "Bearer s3cret-read"})
        assert ok.status_code == 200, (path, ok.data[:200])
    for path in ("/healthz", "/readyz", "/openapi.yaml"):
        assert client.get(path).status_code == 200, path
    assert client.get("/subscriptions/nobody", headers={
        "Authorization": "Bearer s3cret-read"}).status_code == 404


def test_a_subscription_with_accessory_data_is_shown_and_moved_along(client) -> None:
    """Its snapshot could not be read back: GET answered 500, and so did every order event."""
    data = RTP.replace(b"</EnableStatus>", b"</EnableStatus><AccessoryDataList><Item>x</Item>"
                                           b"</AccessoryDataList>")
    r = post_xml(client, data, **{"X-Smile-Message-Type": "SubscriptionReadyToProvision",
                                  "X-Smile-Provision-Request-Id": "12"})
    assert r.status_code == 202, r.json
    shown = client.get("/subscriptions/2142426762")
    assert shown.status_code == 200 and "<AccessoryDataList>" in shown.json["snapshot"]
    r = client.post("/orders/events", json={"eventId": "acc-1", "usn": "2142426762",
                                            "vocabulary": "order", "state": "inProgress"})
    assert r.status_code == 202, r.json


def test_a_usn_from_the_order_side_is_the_token_the_smile_document_carries(client) -> None:
    """A usn is an xs:token in Smile's documents: XML's whitespace around it is no part of
    it. Kept as sent, " N-1\\t" made a subscription that Smile's documents for N-1 (and a
    GET of N-1) never found."""
    r = client.post("/orders/events", json={
        "eventId": "ws-1", "usn": " N-1\t", "vocabulary": "order", "state": "accepted",
        "subscription": {"sid": 501, "serviceName": "Fibre 100", "parent": "1000000008",
                         "plans": [{"planCode": "fibre100"}]}})
    assert r.status_code == 202, r.json
    assert r.json["usn"] == "N-1"
    assert client.get("/subscriptions/N-1").json["states"]["order_state"] == "accepted"
    event = {"eventId": "ws-2", "event": {"productOrder": {"state": "inProgress",
                                                           "externalId": "N-1 "}}}
    assert client.post("/listener/productOrderStateChangeEvent", json=event).status_code == 204
    assert client.get("/subscriptions/N-1").json["states"]["order_state"] == "inProgress"
    # U+00A0 is no XML whitespace: part of the usn, as in a Smile document
    r = client.post("/orders/events", json={"eventId": "ws-3", "usn": "N-1\u00a0",
                                            "vocabulary": "order", "state": "completed"})
    assert r.status_code == 422, r.json  # no such subscription
