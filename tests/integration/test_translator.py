"""Translator with the real codec: every documented row rendered, validated and read back."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from adapters.smile_xml import SmileXmlCodec
from gateway.config import Settings
from gateway.domain import SubscriptionFeaturesUpdate
from gateway.errors import DocumentInvalidError, TransitionError
from gateway.ports import InMemoryRequestIds
from gateway.translator import Translator
from tests.conftest import INVALID, SAMPLES
from tests.spec_tables import FLAGS, graphs, outbound_rows

NS = {"s": "http://xml.inomial.com/smile/2.xsd"}


@pytest.fixture()
def translator(settings: Settings, codec: SmileXmlCodec) -> Translator:
    return Translator(settings.mapping, codec, InMemoryRequestIds(500))


@pytest.fixture(scope="module")
def snapshot(codec: SmileXmlCodec) -> SubscriptionFeaturesUpdate:
    doc = codec.decode((SAMPLES / "SubscriptionFeaturesChanged.xml").read_bytes())
    assert isinstance(doc, SubscriptionFeaturesUpdate)
    return doc


def flags_of(body: bytes) -> dict[str, str]:
    root = etree.fromstring(body)
    return {f: root.findtext(f".//s:{f.capitalize()}Status", namespaces=NS) for f in FLAGS}


ROWS = [("order", r) for r in outbound_rows()["order"]] + \
       [("subscription", r) for r in outbound_rows()["subscription"]]


@pytest.mark.parametrize(("vocabulary", "row"), ROWS, ids=lambda x: getattr(x, "state", x))
@pytest.mark.parametrize("open_request", [None, 42])
def test_every_row_renders_its_documented_messages(translator: Translator, codec: SmileXmlCodec,
                                                   snapshot, vocabulary, row,
                                                   open_request) -> None:
    result = translator.to_smile(vocabulary, row.state, snapshot, check_transition=False,
                                 open_request=open_request, correlation_id="evt-1")
    expected = []
    if row.message:
        expected.append(row.message)
    opened = open_request is not None or row.message in (
        "SubscriptionReadyToProvision", "SubscriptionProvisioned")
    if row.response and opened:
        expected.append("SubscriptionProvisionResponse")
    assert [m.smile_message_type for m in result.messages] == expected
    current = snapshot.subscription.statuses.as_dict()
    want = {f: (v if v is not None else current[f]) for f, v in row.flags.items()}
    assert result.statuses.as_dict() == want
    for message in result.messages:
        assert codec.check(message.body) == []
        h = message.headers
        assert h["smileMessageType"] == message.smile_message_type
        assert h["correlation-id"] == "evt-1" and len(h["gateway-message-id"]) == 36
        assert (h["usn"], h["sid"]) == ("2142426763", "173")
        if message.smile_message_type == "SubscriptionProvisionResponse":
            body = etree.fromstring(message.body)
            assert body.findtext("s:status", namespaces=NS) == row.response
            assert body.findtext("s:provisionRequestId", namespaces=NS) == \
                h["provisionRequestId"]
        else:
            assert flags_of(message.body) == want
        if message.smile_message_type in ("SubscriptionReadyToProvision",
                                          "SubscriptionProvisioned"):
            assert h["provisionRequestId"] == str(open_request or 500)
        if message.smile_message_type == "SubscriptionClosed":
            assert etree.fromstring(message.body).tag.endswith("}SubscriptionUpdated")


def test_ready_to_provision_opens_a_request_and_provisioned_closes_it(
        translator: Translator, snapshot) -> None:
    opened = translator.to_smile("order", "accepted", snapshot, "acknowledged")
    assert opened.provision_request_id == 500
    progress = translator.to_smile("order", "inProgress", snapshot, "accepted",
                                   open_request=opened.provision_request_id)
    assert [m.smile_message_type for m in progress.messages] == ["SubscriptionProvisionResponse"]
    assert progress.provision_request_id == 500  # a progress update keeps it open
    done = translator.to_smile("order", "completed", snapshot, "inProgress", open_request=500)
    assert [m.headers["provisionRequestId"] for m in done.messages] == ["500", "500"]
    assert done.provision_request_id is None
    again = translator.to_smile("order", "accepted", snapshot, "acknowledged")
    assert again.provision_request_id == 501  # unique and increasing


def test_a_request_already_open_from_smile_is_reused(translator: Translator, snapshot) -> None:
    result = translator.to_smile("subscription", "provisioning_in_progress", snapshot,
                                 "contract_signed", open_request=9001)
    assert result.messages[0].headers["provisionRequestId"] == "9001"


def test_a_refused_transition_names_both_states(translator: Translator, snapshot) -> None:
    with pytest.raises(TransitionError) as caught:
        translator.to_smile("order", "acknowledged", snapshot, "completed")
    assert "completed -> acknowledged" in str(caught.value)


def test_a_repeat_of_the_current_state_is_a_no_op(translator: Translator, snapshot) -> None:
    result = translator.to_smile("order", "completed", snapshot, "completed")
    assert result.changed is False and result.messages == ()


def test_inbound_reads_states_and_the_feature_diff(translator: Translator, codec, snapshot) -> None:
    data = (SAMPLES / "SubscriptionResumed.xml").read_bytes()
    result = translator.from_smile(data, "SubscriptionResumed", previous=snapshot)
    assert result.states == {"order": "completed", "subscription": "active"}
    assert (result.features_added, result.features_removed) == ((), (5003,))
    first = translator.from_smile(data, "SubscriptionResumed")
    assert first.features_added == (5001,)


@pytest.mark.parametrize(("headers", "words"), [
    ({"usn": "2142426762", "sid": "170"}, "provisionRequestId is required"),
    ({"usn": "99", "sid": "170", "provisionRequestId": "1"}, "header usn='99'"),
    ({"usn": "2142426762", "sid": "171", "provisionRequestId": "1"}, "header sid='171'"),
    ({"usn": "2142426762", "sid": "170", "provisionRequestId": "x"}, "must be an integer"),
    ({"usn": "2142426762", "sid": "170", "provisionRequestId": "1_000"}, "must be an integer"),
    ({"usn": "2142426762", "sid": "170", "provisionRequestId": str(2**63)},
     r"must be an integer from -9223372036854775808 to 9223372036854775807 \(xs:long\)"),
])
def test_headers_must_be_complete_and_agree_with_the_body(translator: Translator, headers,
                                                          words) -> None:
    data = (SAMPLES / "SubscriptionReadyToProvision.xml").read_bytes()
    with pytest.raises(DocumentInvalidError, match=words):
        translator.from_smile(data, "SubscriptionReadyToProvision", headers)


@pytest.mark.parametrize("request_id", ["12", "+12", "0012", str(2**63 - 1)])
def test_an_integer_header_may_be_any_xs_long(translator: Translator, request_id) -> None:
    data = (SAMPLES / "SubscriptionReadyToProvision.xml").read_bytes()
    translation = translator.from_smile(data, "SubscriptionReadyToProvision", {
        "usn": "2142426762", "sid": "170", "provisionRequestId": request_id})
    assert translation.smile_message_type == "SubscriptionReadyToProvision"
    assert translation.states == {"order": "acknowledged",
                                  "subscription": "provisioning_in_progress"}


@pytest.mark.parametrize(("sample", "headers", "words"), [
    ("SubscriptionReadyToProvision", {"provisionRequestId": "x"}, "must be an integer"),
    ("SubscriptionReadyToProvision", {"sid": "171"}, "header sid='171' but the body has SID 170"),
    ("SubscriptionReadyToProvision", {"provisionRequestId": "12"},
     "header provisionRequestId needs the smileMessageType (SubscriptionReadyToProvision or "
     "SubscriptionProvisioned): without it the request id would be dropped"),
    ("SubscriptionProvisionResponse", {"provisionRequestId": "12"},
     "header provisionRequestId='12' but the body has 9001"),
    ("SubscriptionClosed", {"provisionRequestId": "12"},
     "header provisionRequestId: no message with a SubscriptionUpdated body carries one"),
])
def test_headers_given_without_a_message_type_are_checked_too(translator: Translator, sample,
                                                              headers, words) -> None:
    # a header the gateway would not use or that disagrees is an error, not silently dropped
    data = (SAMPLES / f"{sample}.xml").read_bytes()
    with pytest.raises(DocumentInvalidError, match=re.escape(words)):
        translator.from_smile(data, None, headers)


def test_an_integer_header_the_type_does_not_name_is_still_checked(
        translator: Translator) -> None:
    data = (SAMPLES / "SubscriptionEnabled.xml").read_bytes()
    with pytest.raises(DocumentInvalidError, match="header provisionRequestId must be an integer"):
        translator.from_smile(data, "SubscriptionEnabled", {"provisionRequestId": "\u0661\u0662"})
    translator.from_smile(data, "SubscriptionEnabled", {"provisionRequestId": "12"})


def test_agreeing_headers_without_a_message_type_are_taken(translator: Translator) -> None:
    data = (SAMPLES / "SubscriptionProvisionResponse.xml").read_bytes()
    assert translator.from_smile(data, None, {"provisionRequestId": "9001"}).outline \
        .provision_request_id == 9001
    data = (SAMPLES / "SubscriptionReadyToProvision.xml").read_bytes()
    plain = translator.from_smile(data, None, {"usn": "2142426762", "sid": "170",
                                              "JMSXDeliveryCount": "1"})
    assert plain.smile_message_type is None and plain.states["order"] == "acknowledged"


def test_a_body_that_is_not_the_types_body_is_refused(translator: Translator) -> None:
    data = (SAMPLES / "SubscriptionReadyToProvision.xml").read_bytes()
    with pytest.raises(DocumentInvalidError, match="SubscriptionClosed carries SubscriptionUpdated"):
        translator.from_smile(data, "SubscriptionClosed")


def test_an_invalid_document_is_refused_inbound(translator: Translator) -> None:
    with pytest.raises(DocumentInvalidError):
        translator.from_smile((INVALID / "sid-not-integer.xml").read_bytes())


# -- property: random legal walks --------------------------------------------------------------

# States whose emitted flags read back as the same state (the others read back as an earlier
# or unchanged state: Smile's four flags say less than the internal vocabularies).
FIXED_POINTS = {"order": {"completed", "cancelled"},
                "subscription": {"provisioning_in_progress", "activating", "active", "canceled"}}


@st.composite
def walks(draw):
    vocabulary = draw(st.sampled_from(["order", "subscription"]))
    graph, initial = graphs()[vocabulary]
    state = draw(st.sampled_from(sorted(initial)))
    path = [state]
    for _ in range(draw(st.integers(0, 12))):
        nexts = sorted(graph[state])
        if not nexts:
            break
        state = draw(st.sampled_from(nexts))
        path.append(state)
    return vocabulary, path


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(walks())
def test_random_legal_walks_render_valid_documents_that_read_back_consistently(
        settings: Settings, codec: SmileXmlCodec, snapshot, walk) -> None:
    vocabulary, path = walk
    translator = Translator(settings.mapping, codec, InMemoryRequestIds())
    current = None
    request = None
    doc = snapshot
    for state in path:
        result = translator.to_smile(vocabulary, state, doc, current, open_request=request)
        for message in result.messages:
            assert codec.check(message.body) == []
            back = translator.from_smile(message.body, message.smile_message_type,
                                         message.headers)
            if message.smile_message_type == "SubscriptionProvisionResponse":
                continue
            assert back.outline.statuses == result.statuses
            assert back.states == settings.mapping.inbound_states(result.statuses)
            if state in FIXED_POINTS[vocabulary]:
                assert back.states[vocabulary] == state
        doc = replace(doc, subscription=replace(doc.subscription, statuses=result.statuses))
        current, request = state, result.provision_request_id


def test_json_of_an_inbound_translation_has_the_documented_keys(translator: Translator) -> None:
    result = translator.from_smile((SAMPLES / "SubscriptionSuspended.xml").read_bytes())
    report = result.as_dict()
    assert list(report) == ["smileMessageType", "usn", "sid", "statuses", "order_state",
                            "subscription_status", "features_added", "features_removed"]
    assert report["order_state"] is None and report["subscription_status"] is None
    json.dumps(report)
