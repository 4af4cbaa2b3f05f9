"""The use cases: accept a Smile document, apply a state change, publish, inspect."""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from gateway.config import Settings
from gateway.domain import (
    MESSAGE_TYPES,
    ActivateStatus,
    Document,
    EnableStatus,
    ProvisionStatus,
    Statuses,
    Subscription,
    SubscriptionFeaturesUpdate,
    SubscriptionProvisionResponse,
    SubscriptionUpdated,
    SuspendStatus,
    outline_of,
    subscription_of,
)
from gateway.errors import (
    DocumentError,
    DocumentInvalidError,
    GatewayError,
    KeyReusedError,
    MappingError,
    StaleDocumentError,
    StoreError,
    UnknownSubscriptionError,
    Violation,
    clip,
)
from gateway.jsontext import json_text
from gateway.ports import (
    BROKER,
    FORWARD,
    PENDING,
    SUPPRESSED,
    Codec,
    Decision,
    HistoryEntry,
    NewOutboxItem,
    RequestIds,
    Store,
    SubscriptionRecord,
)
from gateway.translator import Translator, check_message, feature_diff, state_key

log = logging.getLogger(__name__)

ORIGIN_HEADER = "gateway-origin"
# what `consume` makes of a broker message (its consumer counts them, /metrics exports them)
CONSUME_OUTCOMES = ("accepted", "duplicate", "dead-letter", "own")
# The flags of a subscription the gateway creates from an order event, before any change.
NEW_SUBSCRIPTION_FLAGS = Statuses(ProvisionStatus.READY_TO_PROVISION, SuspendStatus.ACTIVE,
                                  ActivateStatus.NOT_ACTIVATED, EnableStatus.NOT_ENABLED)


def _fingerprint(*parts: object) -> str:
    """What a request asked, to tell its retry (the same) from another request that reuses
    its dedupe key: bytes as they are, the rest by their repr (frozen dataclasses, text)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else repr(part).encode())
        digest.update(b"\0")
    return digest.hexdigest()


def _charset(content_type: str) -> str | None:
    """The charset parameter of a STOMP content-type header (written as HTTP's), if any. A
    frame without one is read by its own byte order mark or declaration: ActiveMQ passes a
    STOMP sender's bytes on as they came, content-length or not."""
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"') or None
    return None


@dataclass(frozen=True, slots=True)
class StateChange:
    """An internal state change from the order side."""

    event_id: str
    usn: str
    vocabulary: str
    state: str
    subscription: SubscriptionFeaturesUpdate | None = None  # creates an unknown usn
    source: str = "order-system"


@dataclass(frozen=True, slots=True)
class LetterReplay:
    """What came of replaying a dead letter. `outcome`: "accepted"; "duplicate" (its
    message id was recorded before: a repeated delivery); "refused" (still not acceptable,
    `detail` says why); "stale" (its subscription changed after it came, at `at`);
    "replayed before" (at `at`, with the outcome in `detail`); "unknown" (no such letter)."""

    letter_id: int
    outcome: str
    usn: str | None = None
    at: float | None = None
    detail: str = ""

    @property
    def recorded(self) -> bool:
        return self.outcome in ("accepted", "duplicate")


def _reason(error: GatewayError | str) -> str:
    """An error as a dead letter's reason: its message and its first violations."""
    reason = str(error)
    if isinstance(error, DocumentError) and error.violations:
        reason += "; " + "; ".join(f"{v.line}:{v.column} {v.path} {v.message}"
                                   for v in error.violations[:20])
    return reason


class GatewayService:
    """Everything the entry points (HTTP, broker consumer, command line) ask of the gateway.

    Every accepted input is committed to the store, with the outbox rows it causes, before
    the method returns: callers answer 202 or ack only after that.
    """

    def __init__(self, settings: Settings, codec: Codec, store: Store, translator: Translator,
                 notify: Callable[[str], None] = lambda channel: None) -> None:
        self.settings = settings
        self.codec = codec
        self.store = store
        self.translator = translator
        self.notify = notify  # wakes the relay of a channel after a commit

    # -- helpers ----------------------------------------------------------------------------

    def _snapshot(self, record: SubscriptionRecord) -> SubscriptionFeaturesUpdate:
        document = self.codec.decode(record.snapshot)
        if isinstance(document, SubscriptionUpdated):
            # only a SubscriptionClosed/Updated was ever seen: no features or plans known
            return SubscriptionFeaturesUpdate(document.subscription)
        if not isinstance(document, SubscriptionFeaturesUpdate):  # pragma: no cover
            raise DocumentInvalidError(f"stored snapshot of usn={record.usn} is not a "
                                       "subscription document")
        return document

    def _feature_ids(self, record: SubscriptionRecord) -> frozenset[int]:
        if record.feature_ids is not None:
            return record.feature_ids
        return self.codec.feature_ids(record.snapshot)

    def _states(self, record: SubscriptionRecord | None) -> dict[str, str | None]:
        base: dict[str, str | None] = dict.fromkeys(self.settings.mapping.vocabularies)
        if record is not None:
            base.update(record.states)
        return base

    def _wake(self, items: Sequence[NewOutboxItem]) -> None:
        for channel in {i.channel for i in items if i.status == PENDING}:
            self.notify(channel)

    # -- outbound: order side -> Smile ------------------------------------------------------

    def apply_state_change(self, change: StateChange) -> dict[str, Any]:
        """Check, apply, render, validate and queue; returns {"messages": [...]}.

        A repeated event id answers as the first time did and changes nothing."""
        vocabulary = self.settings.mapping.vocabulary(change.vocabulary)
        state = vocabulary.resolve(change.state)
        written: list[NewOutboxItem] = []

        def decide(record: SubscriptionRecord | None, ids: RequestIds) -> Decision:
            written.clear()  # a retried transaction decides again
            if record is None:
                if change.subscription is None:
                    raise UnknownSubscriptionError(change.usn)
                sub = change.subscription.subscription
                if sub.usn != change.usn:
                    problem = (f"subscription.usn {sub.usn!r} differs from usn "
                               f"{change.usn!r}")
                    raise DocumentInvalidError(problem, [Violation(0, 0, "/usn", problem)])
                snapshot = change.subscription
                request = None
            else:
                given = change.subscription
                if given is not None and given.subscription.sid != record.sid:
                    # the order side and the gateway disagree on which subscription it is
                    problem = (f"subscription.sid {given.subscription.sid} differs from sid "
                               f"{record.sid}, stored for usn {change.usn!r}")
                    raise DocumentInvalidError(
                        problem, [Violation(0, 0, "/subscription/sid", problem)])
                snapshot = self._snapshot(record)
                request = record.provision_request_id
            states = self._states(record)
            current = states.get(vocabulary.name)
            result = self.translator.to_smile(
                vocabulary.name, state, snapshot, current, open_request=request,
                correlation_id=change.event_id, request_ids=ids)
            messages = []
            for message in result.messages:
                sends = self.settings.emission.sends(message.smile_message_type)
                headers = {**message.headers, ORIGIN_HEADER: self.settings.emission.origin}
                item = NewOutboxItem(BROKER, headers["gateway-message-id"], change.usn,
                                     message.smile_message_type, headers, message.body,
                                     PENDING if sends else SUPPRESSED)
                written.append(item)
                messages.append({"id": item.message_id,
                                 "smileMessageType": item.kind, "status": item.status})
            response = {"usn": change.usn, "vocabulary": vocabulary.name,
                        "from": current, "to": state, "messages": messages}
            if not result.changed and record is not None:
                return Decision(None, (), (), response)
            states[vocabulary.name] = state
            body = self.codec.encode(snapshot.with_statuses(result.statuses))
            new = SubscriptionRecord(change.usn, snapshot.subscription.sid, body, states,
                                     result.provision_request_id, snapshot.feature_ids())
            history = HistoryEntry(change.source, change.event_id, vocabulary.name, current,
                                   state, {"messages": messages})
            return Decision(new, tuple(written), (history,), response)

        asked = _fingerprint(change.usn, change.vocabulary, change.state, change.subscription)
        response, duplicate = self.store.record(change.usn, f"event:{change.event_id}", decide,
                                                asked)
        if not duplicate:
            self._wake(written)
        return response

    # -- inbound: Smile -> order side -------------------------------------------------------

    def accept_smile_document(self, data: bytes, message_type: str | None = None,
                              headers: Mapping[str, str] | None = None,
                              dedupe_key: str | None = None,
                              source: str = "smile") -> dict[str, Any]:
        """Validate, record the snapshot and states (facts, never refused for their
        transition), queue the forward event; returns the translation as JSON. A repeated
        dedupe key answers as the first time did."""
        return self._accept(data, message_type, headers, dedupe_key, source)[0]

    def _accept(self, data: bytes, message_type: str | None,
                headers: Mapping[str, str] | None, dedupe_key: str | None,
                source: str, came_at: float | None = None) -> tuple[dict[str, Any], bool]:
        """`came_at` (a dead letter's replay): refuse with StaleDocumentError when the
        subscription changed after then, checked in the transaction that would record it."""
        translation = self.translator.from_smile(data, message_type, headers)
        outline = translation.outline
        given = dict(headers or {})
        usn = outline.usn if outline.usn is not None else given.get("usn", "")
        written: list[NewOutboxItem] = []

        def decide(record: SubscriptionRecord | None, ids: RequestIds) -> Decision:
            written.clear()  # a retried transaction decides again
            if came_at is not None:
                last = self.store.history(usn, 1)  # the transaction's own connection
                if last and last[-1]["at"] > came_at:
                    raise StaleDocumentError(usn, last[-1]["at"], came_at)
            previous = None
            if record is not None and outline.body is SubscriptionUpdated:
                previous = self._snapshot(record)  # merged below: needs the whole document
            before = frozenset() if record is None else self._feature_ids(record)
            added, removed = feature_diff(outline, before)
            response = translation.as_dict()
            response["features_added"], response["features_removed"] = list(added), list(removed)
            history = []
            new = None
            statuses = outline.statuses
            if statuses is not None and outline.usn is not None and outline.sid is not None:
                states = self._states(record)
                flags = statuses.as_dict()
                for vocabulary, state in translation.states.items():
                    if state is not None and states.get(vocabulary) != state:
                        history.append(HistoryEntry(
                            source, dedupe_key, vocabulary, states.get(vocabulary), state,
                            {"smileMessageType": translation.smile_message_type,
                             "statuses": flags}))
                        states[vocabulary] = state
                if added or removed:
                    history.append(HistoryEntry(source, dedupe_key, None, None, None, {
                        "smileMessageType": translation.smile_message_type,
                        "features_added": list(added), "features_removed": list(removed)}))
                if not history:
                    history.append(HistoryEntry(source, dedupe_key, None, None, None, {
                        "smileMessageType": translation.smile_message_type,
                        "statuses": flags}))
                snapshot = self._new_snapshot(previous, data)
                feature_ids = (previous.feature_ids() if previous is not None
                               else outline.feature_ids)
                request = record.provision_request_id if record is not None else None
                mtype = translation.smile_message_type
                if mtype == "SubscriptionReadyToProvision" and given.get("provisionRequestId"):
                    request = int(given["provisionRequestId"])
                elif mtype in ("SubscriptionProvisioned", "SubscriptionClosed"):
                    request = None
                new = SubscriptionRecord(outline.usn, outline.sid, snapshot, states, request,
                                         feature_ids)
            elif outline.body is SubscriptionProvisionResponse:
                history.append(HistoryEntry(source, dedupe_key, None, None, None, {
                    "smileMessageType": "SubscriptionProvisionResponse",
                    "provisionRequestId": outline.provision_request_id,
                    "status": outline.status}))
            if self.settings.forward.url:
                event_id = str(uuid.uuid4())
                event = {"eventId": event_id, "source": source, "dedupeKey": dedupe_key,
                         **response}
                written.append(NewOutboxItem(
                    FORWARD, event_id, usn, translation.smile_message_type or "SmileDocument",
                    {"Idempotency-Key": event_id, "Content-Type": "application/json"},
                    json_text(event).encode()))
            return Decision(new, tuple(written), tuple(history), response)

        asked = None if dedupe_key is None else _fingerprint(
            data, translation.smile_message_type, given.get("provisionRequestId"))
        response, duplicate = self.store.record(usn, dedupe_key, decide, asked)
        if not duplicate:
            self._wake(written)
        return response, duplicate

    def _new_snapshot(self, previous: SubscriptionFeaturesUpdate | None, data: bytes) -> bytes:
        """The document as received (validated: kept byte for byte), or, for a
        SubscriptionUpdated/Closed, the stored snapshot with the new subscription in it."""
        if previous is None:
            return data
        document = self.codec.decode(data)  # the whole subscription this time
        assert isinstance(document, SubscriptionUpdated)
        return self.codec.encode(replace(previous, subscription=document.subscription))

    def consume(self, headers: Mapping[str, str], body: bytes) -> str:
        """One message from the broker: 'own', 'duplicate', 'accepted' or 'dead-letter'.
        The consumer acks after this returns; StoreError propagates (no ack)."""
        if headers.get(ORIGIN_HEADER) == self.settings.emission.origin:
            return "own"
        try:
            _, duplicate = self._accept_delivery(headers, body)
        except (DocumentError, MappingError, KeyReusedError) as exc:
            self.dead_letter("broker", exc, headers, body)
            return "dead-letter"
        return "duplicate" if duplicate else "accepted"

    def _accept_delivery(self, headers: Mapping[str, str], body: bytes,
                         came_at: float | None = None) -> tuple[dict[str, Any], bool]:
        """A broker message's document, read by its headers (charset, smileMessageType) and
        deduplicated by its message id: (response, recorded before)."""
        # the sender's id, stable when the broker delivers a message again: ours, else
        # RabbitMQ's copy of an AMQP/JMS sender's (its message-id is per delivery), else the
        # broker's (ActiveMQ's stays the message's own)
        key = (headers.get("gateway-message-id") or headers.get("amqp-message-id")
               or headers.get("message-id"))
        dedupe_key = f"broker:{key}" if key else None
        message_type = headers.get("smileMessageType") or None
        charset = _charset(headers.get("content-type", ""))
        data = (self.codec.labelled(body, charset) if charset else
                self.codec.delivered(body, "content-length" not in headers))
        return self._accept(data, message_type, headers, dedupe_key, "smile", came_at)

    def replay_dead_letter(self, letter_id: int, force: bool = False) -> LetterReplay:
        """Take a dead letter again as the broker first delivered it (its headers, its
        message id for dedupe), once its cause is fixed; mark it replayed when it is
        recorded, now or before. One that is refused again stays as it is, and so does one
        older than its subscription's last change unless `force`."""
        letter = self.store.dead_letter(letter_id)
        if letter is None:
            return LetterReplay(letter_id, "unknown")
        if letter["replayed"] is not None:
            return LetterReplay(letter_id, "replayed before", at=letter["replayed"]["at"],
                                detail=letter["replayed"]["outcome"])
        headers: dict[str, str] = letter["headers"]
        try:
            response, duplicate = self._accept_delivery(headers, letter["body"],
                                                        None if force else letter["at"])
        except StaleDocumentError as exc:
            return LetterReplay(letter_id, "stale", exc.usn, exc.changed_at, str(exc))
        except StoreError:
            raise
        except GatewayError as exc:  # still invalid, or refused for another reason
            return LetterReplay(letter_id, "refused", detail=_reason(exc))
        outcome = "duplicate" if duplicate else "accepted"
        self.store.mark_dead_letter_replayed(letter_id, outcome)
        return LetterReplay(letter_id, outcome, response.get("usn"))

    def dead_letter(self, source: str, error: GatewayError | str, headers: Mapping[str, str],
                    body: bytes) -> int:
        reason = _reason(error)
        log.warning("dead letter source=%s reason=%s", source, clip(reason),
                    extra={"source": source})
        return self.store.add_dead_letter(source, reason, dict(headers), body)

    # -- operator ---------------------------------------------------------------------------

    def publish_documents(self, message_type: str, documents: Sequence[bytes],
                          correlation_id: str | None = None) -> list[str]:
        """Validate and queue documents as they are (`smile-gateway publish`)."""
        mtype = MESSAGE_TYPES.get(message_type)
        if mtype is None:
            raise MappingError(f"unknown smileMessageType {message_type!r}", MESSAGE_TYPES)
        correlation = correlation_id or str(uuid.uuid4())
        decoded = [self.codec.decode(data) for data in documents]  # every one valid, or none
        documents = [self.codec.text_message(data) for data in documents]  # the bus carries text
        items: list[NewOutboxItem] = []

        def decide(record: SubscriptionRecord | None, ids: RequestIds) -> Decision:
            for data, document in zip(documents, decoded, strict=True):
                headers = _document_headers(message_type, document)
                if "provisionRequestId" in mtype.headers and "provisionRequestId" not in headers:
                    headers["provisionRequestId"] = str(ids.next_provision_request_id())
                if "commandID" in mtype.headers:
                    headers["command"] = "provision"
                    headers["commandID"] = str(ids.next_provision_request_id())
                check_message(message_type, outline_of(document), headers)  # they agree
                message_id = str(uuid.uuid4())
                headers.update({"gateway-message-id": message_id, "correlation-id": correlation,
                                ORIGIN_HEADER: self.settings.emission.origin})
                items.append(NewOutboxItem(BROKER, message_id, headers.get("usn", ""),
                                           message_type, headers, data))
            return Decision(None, tuple(items))

        self.store.record("", None, decide)
        self._wake(items)
        return [i.message_id for i in items]

    def subscription_view(self, usn: str) -> dict[str, Any]:
        record = self.store.subscription(usn)
        if record is None:
            raise UnknownSubscriptionError(usn)
        snapshot = self._snapshot(record)
        sub: Subscription = snapshot.subscription
        return {
            "usn": record.usn,
            "sid": record.sid,
            "statuses": sub.statuses.as_dict(),
            "states": {state_key(v): s for v, s in record.states.items()},
            "provisionRequestId": record.provision_request_id,
            "features": [{"featureId": f.feature_id, "name": f.name} for f in snapshot.features],
            "snapshot": self.codec.utf8(record.snapshot).decode("utf-8"),  # kept as it came
            "history": self.store.history(usn),
        }



def _document_headers(message_type: str, document: Document) -> dict[str, str]:
    headers = {"smileMessageType": message_type}
    sub = subscription_of(document)
    if sub is not None:
        headers.update(usn=sub.usn, sid=str(sub.sid))
    if isinstance(document, SubscriptionProvisionResponse):
        headers["provisionRequestId"] = str(document.provision_request_id)
    return headers
