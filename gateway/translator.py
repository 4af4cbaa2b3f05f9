"""Translation both ways: state change + snapshot -> Smile messages; Smile document -> states."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from gateway.domain import (
    INTEGER_HEADERS,
    LONG_RANGE,
    MESSAGE_TYPES,
    Document,
    DocumentOutline,
    MessageType,
    Statuses,
    SubscriptionFeaturesUpdate,
    SubscriptionProvisionResponse,
    SubscriptionUpdated,
    subscription_of,
)
from gateway.errors import DocumentInvalidError, MappingError, Violation
from gateway.mapping import StateMapping
from gateway.ports import Codec, RequestIds

# Output keys for the two standard vocabularies; any other vocabulary V is reported as V_state.
STATE_KEYS = {"order": "order_state", "subscription": "subscription_status"}


def state_key(vocabulary: str) -> str:
    return STATE_KEYS.get(vocabulary, f"{vocabulary}_state")


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """One rendered, validated Smile message with its STOMP/JMS headers."""

    smile_message_type: str
    headers: dict[str, str]
    body: bytes

    def as_dict(self) -> dict[str, object]:
        return {"smileMessageType": self.smile_message_type, "headers": dict(self.headers),
                "body": self.body.decode("utf-8")}


@dataclass(frozen=True, slots=True)
class OutboundTranslation:
    """What a state change does: the messages, the new flags, the provision request after it."""

    vocabulary: str
    previous: str | None
    state: str
    changed: bool
    statuses: Statuses
    provision_request_id: int | None
    messages: tuple[OutboundMessage, ...] = ()


@dataclass(frozen=True, slots=True)
class InboundTranslation:
    """What a Smile document means for the internal states (None = no change)."""

    smile_message_type: str | None
    outline: DocumentOutline
    states: dict[str, str | None]
    features_added: tuple[int, ...] = ()
    features_removed: tuple[int, ...] = ()
    headers: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        outline = self.outline
        statuses = outline.statuses
        out: dict[str, object] = {
            "smileMessageType": self.smile_message_type,
            "usn": outline.usn,
            "sid": outline.sid,
            "statuses": statuses.as_dict() if statuses is not None else None,
        }
        for vocabulary, state in self.states.items():
            out[state_key(vocabulary)] = state
        out["features_added"] = list(self.features_added)
        out["features_removed"] = list(self.features_removed)
        if outline.body is SubscriptionProvisionResponse:
            out["provisionRequestId"] = outline.provision_request_id
            out["status"] = outline.status
        return out


def new_message_id() -> str:
    return str(uuid.uuid4())


class Translator:
    """The mapping tables applied to documents; renders through the Codec port, so every
    document it returns has passed the schema."""

    def __init__(self, mapping: StateMapping, codec: Codec, request_ids: RequestIds,
                 message_id: Callable[[], str] = new_message_id) -> None:
        self.mapping = mapping
        self.codec = codec
        self.request_ids = request_ids
        self.message_id = message_id

    # -- outbound ---------------------------------------------------------------------------

    def to_smile(self, vocabulary: str, state: str, snapshot: SubscriptionFeaturesUpdate,
                 current: str | None = None, *, check_transition: bool = True,
                 open_request: int | None = None,
                 correlation_id: str | None = None,
                 request_ids: RequestIds | None = None) -> OutboundTranslation:
        """Apply `current -> state` to the snapshot; raises MappingError or TransitionError."""
        ids = request_ids if request_ids is not None else self.request_ids
        vocab = self.mapping.vocabulary(vocabulary)
        wanted = vocab.resolve(state)
        previous = None if current is None else vocab.resolve(current)
        if check_transition:
            changed = vocab.check_transition(previous, wanted)
        else:
            changed = previous != wanted
        statuses = snapshot.subscription.statuses
        if not changed:  # a repeat of the current state is a harmless no-op
            return OutboundTranslation(vocab.name, previous, wanted, False, statuses,
                                       open_request)
        rule = vocab.rule(wanted)
        statuses = rule.apply(statuses)
        correlation = correlation_id or self.message_id()
        messages = []
        request = open_request
        sub = replace(snapshot.subscription, statuses=statuses)
        if rule.message is not None:
            mtype = MESSAGE_TYPES[rule.message]
            extra: dict[str, str] = {}
            if "provisionRequestId" in mtype.headers:
                if request is None:
                    request = ids.next_provision_request_id()
                extra["provisionRequestId"] = str(request)
            if "commandID" in mtype.headers:
                extra["command"] = wanted
                extra["commandID"] = str(ids.next_provision_request_id())
            body: Document = (SubscriptionUpdated(sub) if mtype.body is SubscriptionUpdated
                              else replace(snapshot, subscription=sub))
            messages.append(self._message(mtype, body, correlation, extra))
            if mtype.name == "SubscriptionProvisioned":
                closing = request
                request = None
            else:
                closing = None
        else:
            closing = None
        if rule.response is not None:
            answered = request if request is not None else closing
            if answered is not None:
                response = SubscriptionProvisionResponse(
                    answered, rule.response, f"{vocab.name} state {wanted}")
                messages.append(self._message(
                    MESSAGE_TYPES["SubscriptionProvisionResponse"], response, correlation,
                    {"provisionRequestId": str(answered)}, sub.usn, sub.sid))
                if rule.response not in self.mapping.progress_statuses:
                    request = None
        return OutboundTranslation(vocab.name, previous, wanted, True, statuses, request,
                                   tuple(messages))

    def _message(self, mtype: MessageType, body: Document, correlation: str,
                 extra: dict[str, str], usn: str | None = None,
                 sid: int | None = None) -> OutboundMessage:
        sub = subscription_of(body)
        headers = {"smileMessageType": mtype.name}
        if sub is not None:
            headers["usn"] = sub.usn
            headers["sid"] = str(sub.sid)
        elif usn is not None:
            # Responses carry only provisionRequestId by Smile's documentation; usn and sid
            # are added so that consumers and the per-subscription ordering can use them.
            headers["usn"] = usn
            headers["sid"] = str(sid)
        headers.update(extra)
        headers["gateway-message-id"] = self.message_id()
        headers["correlation-id"] = correlation
        return OutboundMessage(mtype.name, headers, self.codec.encode(body))

    # -- inbound ----------------------------------------------------------------------------

    def from_smile(self, data: bytes, message_type: str | None = None,
                   headers: Mapping[str, str] | None = None,
                   previous: SubscriptionFeaturesUpdate | None = None) -> InboundTranslation:
        """Validate, check the body against its message type and headers, map the flags.
        Reads the document's outline only: the states and the diff need no more."""
        outline = self.codec.outline(data)
        given = dict(headers or {})
        message_type = message_type or given.get("smileMessageType") or None
        if message_type is not None:
            check_message(message_type, outline, headers)
        elif headers:
            check_headers(None, outline, given)
        if outline.statuses is None:
            states: dict[str, str | None] = dict.fromkeys(self.mapping.vocabularies)
            return InboundTranslation(message_type, outline, states, headers=given)
        states = self.mapping.inbound_states(outline.statuses)
        before = previous.feature_ids() if previous is not None else frozenset()
        added, removed = feature_diff(outline, before)
        return InboundTranslation(message_type, outline, states, added, removed, given)


def feature_diff(outline: DocumentOutline,
                 before: frozenset[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """FeatureIds added and removed against a snapshot's (Smile sends the whole set)."""
    if outline.body is not SubscriptionFeaturesUpdate:
        return (), ()
    now = outline.feature_ids
    return tuple(sorted(now - before)), tuple(sorted(before - now))


def check_message(message_type: str, outline: DocumentOutline,
                  headers: Mapping[str, str] | None) -> None:
    """The body must be the type's body; given headers must be complete and agree with it."""
    mtype = MESSAGE_TYPES.get(message_type)
    if mtype is None:
        raise MappingError(f"unknown smileMessageType {message_type!r}", MESSAGE_TYPES)
    if outline.body is not mtype.body:
        problem = (f"{message_type} carries {mtype.body.__name__}, "
                   f"found {outline.body.__name__}")
        raise DocumentInvalidError(problem, [Violation(1, 1, "/", problem)])
    if headers is not None:
        check_headers(mtype, outline, headers)


def check_headers(mtype: MessageType | None, outline: DocumentOutline,
                  headers: Mapping[str, str]) -> None:
    """Given headers must be well-typed and agree with the body; with a message type, its
    headers must all be there. Without one, a provisionRequestId the body does not carry is
    refused: the gateway records one only for the types that open or close a request, and
    would otherwise drop it unseen."""
    problems = []
    usn, sid = outline.usn, outline.sid
    if mtype is not None:
        for name in mtype.headers:
            # usn and sid may come in the body alone; when both are given they must agree
            if headers.get(name) in (None, "") and not (usn is not None and name in ("usn", "sid")):
                problems.append(f"header {name} is required for {mtype.name}")
    for name in sorted(INTEGER_HEADERS & headers.keys()):  # typed: checked whenever given
        value = headers[name]
        if value != "" and not _is_integer(value):
            problems.append(f"header {name} must be an integer from {LONG_RANGE[0]} to "
                            f"{LONG_RANGE[1]} (xs:long), found {value!r}")
    if (mtype is None and headers.get("provisionRequestId") not in (None, "")
            and outline.body is not SubscriptionProvisionResponse):
        opening = " or ".join(t.name for t in MESSAGE_TYPES.values()
                              if "provisionRequestId" in t.headers and t.body is outline.body)
        problems.append(
            f"header provisionRequestId needs the smileMessageType ({opening}): without it "
            f"the request id would be dropped" if opening else
            f"header provisionRequestId: no message with a {outline.body.__name__} body "
            f"carries one")
    if usn is not None:
        if headers.get("usn") not in (None, "") and headers["usn"] != usn:
            problems.append(f"header usn={headers['usn']!r} but the body has USN {usn!r}")
        if headers.get("sid") not in (None, "") and _is_integer(headers["sid"]) \
                and int(headers["sid"]) != sid:
            problems.append(f"header sid={headers['sid']!r} but the body has SID {sid}")
    if outline.body is SubscriptionProvisionResponse:
        rid = headers.get("provisionRequestId")
        if rid not in (None, "") and _is_integer(rid) and int(rid) != outline.provision_request_id:
            problems.append(f"header provisionRequestId={rid!r} but the body has "
                            f"{outline.provision_request_id}")
    if problems:
        raise DocumentInvalidError("; ".join(problems),
                                   [Violation(0, 0, "", p) for p in problems])


_DIGITS = re.compile(r"[+-]?[0-9]{1,40}")  # xs:long's lexical form (leading zeros allowed)


def _is_integer(value: str | None) -> bool:
    """An xs:long written in ASCII digits, as the schema types sid and provisionRequestId
    (int() alone would take "1_000", " 7 ", other scripts' digits, and numbers no column
    holds)."""
    if value is None or not _DIGITS.fullmatch(value):
        return False
    return LONG_RANGE[0] <= int(value) <= LONG_RANGE[1]
