"""The ports: what the core needs from the outside world, as Protocols."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.domain import Document, DocumentOutline
from gateway.errors import Violation


class Codec(Protocol):
    """Reads and writes Smile XML documents, always against the project's schema."""

    def check(self, data: bytes) -> list[Violation]:
        """Every violation in `data` (parse errors included); empty when it is valid."""
        ...

    def decode(self, data: bytes) -> Document:
        """Parse and validate; raises DocumentParseError or DocumentInvalidError."""
        ...

    def outline(self, data: bytes) -> DocumentOutline:
        """Parse and validate as `decode` does, refusing the same documents with the same
        errors, but read only the document's outline."""
        ...

    def encode(self, document: Document) -> bytes:
        """Render UTF-8 bytes, validated; deterministic for equal documents. A character
        beyond U+FFFF is written as a character reference (see `text_message`)."""
        ...

    def feature_ids(self, data: bytes) -> frozenset[int]:
        """The FeatureIds of a document the gateway stored itself (trusted: not validated)."""
        ...

    def utf8(self, data: bytes) -> bytes:
        """A well-formed document in UTF-8, its declaration saying so: `data` itself when it
        is already."""
        ...

    def text_message(self, data: bytes) -> bytes:
        """A valid document as the bus carries it, a JMS TextMessage: `utf8(data)`, with each
        character beyond U+FFFF written as a character reference (ActiveMQ's JMS clients read
        a TextMessage in Java's own UTF-8, which has no four-byte form): `data` itself when
        there is nothing to change."""
        ...

    def delivered(self, data: bytes, text_message: bool) -> bytes:
        """A document as a broker delivered it. ActiveMQ hands a JMS TextMessage (a frame
        without a content-length) to STOMP in Java's own UTF-8 whatever the document's
        declaration says, and Java's UTF-8 writes a character beyond U+FFFF as its two UTF-16
        halves (CESU-8, never UTF-8): in a document read as UTF-8 those are joined, and a
        `text_message` whose declaration names another encoding is read as a JMS listener
        reads it, in UTF-8 (its declaration then saying so), where one could read it at all;
        what none could is a STOMP sender's bytes, read by their declaration. `data` itself
        where nothing changes."""
        ...

    def labelled(self, data: bytes, charset: str) -> bytes:
        """A document that its transport labelled with `charset` (an HTTP Content-Type's), in
        UTF-8 as that label says to read it (RFC 7303: a byte order mark, else the label,
        over the declaration): `data` itself when the label agrees. UnsupportedCharsetError
        for a label that is no text encoding; DocumentParseError where the bytes are not."""
        ...


class RequestIds(Protocol):
    """Allocates provisionRequestIds: unique, increasing, persisted by a real store."""

    def next_provision_request_id(self) -> int: ...


class InMemoryRequestIds:
    """RequestIds for one process (the command line's dry runs and the unit tests)."""

    def __init__(self, start: int = 1) -> None:
        self._next = start

    def next_provision_request_id(self) -> int:
        value = self._next
        self._next += 1
        return value


# -- the store ---------------------------------------------------------------------------------

BROKER = "broker"    # outbox channel: Smile documents for the STOMP broker
FORWARD = "forward"  # outbox channel: JSON events for the order system

PENDING, SENT, SUPPRESSED, DEAD = "pending", "sent", "suppressed", "dead"
DISCARDED = "discarded"  # dead, then set aside by an operator (`outbox discard`)
# how the note of a discard begins: an outbox item's last error, a dead letter's outcome
DISCARD_NOTE = "discarded: "
OUTBOX_STATUSES = (PENDING, SENT, SUPPRESSED, DEAD, DISCARDED)


@dataclass(frozen=True, slots=True)
class SubscriptionRecord:
    """What the gateway keeps per subscription: the latest snapshot and the internal states."""

    usn: str
    sid: int
    snapshot: bytes  # the latest SubscriptionFeaturesUpdate document, as validated XML
    states: dict[str, str | None]
    provision_request_id: int | None = None
    # The snapshot's FeatureIds, kept beside it so that a diff needs no parse; None when a
    # store written before they were kept has not recorded them (read from the snapshot).
    feature_ids: frozenset[int] | None = None


@dataclass(frozen=True, slots=True)
class SubscriptionSummary:
    """A subscription as `subscription list` shows it: its states and when it last changed."""

    usn: str
    sid: int
    states: dict[str, str | None]
    provision_request_id: int | None
    updated_at: float


@dataclass(frozen=True, slots=True)
class NewOutboxItem:
    channel: str
    message_id: str
    usn: str
    kind: str  # smileMessageType, or the forwarded event's type
    headers: dict[str, str]
    body: bytes
    status: str = PENDING


@dataclass(frozen=True, slots=True)
class OutboxItem:
    id: int
    channel: str
    message_id: str
    usn: str
    kind: str
    headers: dict[str, str]
    body: bytes
    status: str
    attempts: int
    last_error: str | None
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class Replayed:
    """What a replay did: how many items it re-queued, and the ids given that it did not."""

    requeued: int
    pending: tuple[int, ...] = ()  # pending already: the relay sends them anyway
    unknown: tuple[int, ...] = ()  # no such item (never was, or pruned)


@dataclass(frozen=True, slots=True)
class Discarded:
    """What a discard did: how many dead items it set aside, and the ids given that it did
    not."""

    discarded: int
    not_dead: tuple[tuple[int, str], ...] = ()  # (id, its status): left as they are
    unknown: tuple[int, ...] = ()  # no such item (never was, or pruned)


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    source: str  # smile, order-system, tmf622, operator
    event_id: str | None
    vocabulary: str | None
    previous: str | None
    state: str | None
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Decision:
    """What one accepted input changes, committed together or not at all."""

    record: SubscriptionRecord | None
    outbox: tuple[NewOutboxItem, ...] = ()
    history: tuple[HistoryEntry, ...] = ()
    response: dict[str, Any] = field(default_factory=dict)


Decide = Callable[[SubscriptionRecord | None, RequestIds], Decision]


class Store(Protocol):
    """Durable state: snapshots, history, outbox, dedupe keys, dead letters, sequences.

    `record` runs `decide` inside one write transaction: the stored record is read, the
    decision written (record, outbox rows, history, the dedupe key with its response and
    the request's fingerprint), and committed before it returns. A dedupe key seen before
    returns the first response; seen with another fingerprint, KeyReusedError (a key kept
    without one, from before fingerprints, matches any).
    `decide` may be called more than once for one record (a store may retry its
    transaction), so it must not keep anything from an earlier call.
    """

    def record(self, usn: str, dedupe_key: str | None, decide: Decide,
               fingerprint: str | None = None) -> tuple[dict[str, Any], bool]:
        """(response, duplicate)."""
        ...

    def subscription(self, usn: str) -> SubscriptionRecord | None: ...

    def history(self, usn: str, limit: int = 100) -> list[dict[str, Any]]: ...

    def subscriptions(self, state: tuple[str, str] | None = None,
                      changed_before: float | None = None,
                      limit: int = 1000) -> list[SubscriptionSummary]:
        """Least recently changed first; with `state` (vocabulary, state) those in it, with
        `changed_before` those unchanged since."""
        ...

    def enqueue(self, items: Sequence[NewOutboxItem]) -> list[int]: ...

    def claim(self, channel: str, limit: int, now: float) -> list[OutboxItem]:
        """Pending items ready to send, oldest first, none behind a waiting one of its usn."""
        ...

    def take_relay(self, channel: str) -> str | None:
        """Take this process's turn to relay `channel` where only one process at a time may
        (SQLite, whose claims are not locked across processes): None once this store holds
        it (until close), else who holds it ("pid N"). None always where claims are locked
        across processes (PostgreSQL)."""
        ...

    def mark_sent(self, ids: Sequence[int]) -> None: ...

    def mark_failed(self, item_id: int, error: str, retry_at: float, dead: bool) -> None: ...

    def outbox(self, status: str | None = None, limit: int = 1000, usn: str | None = None,
               channel: str | None = None) -> list[OutboxItem]:
        """The newest `limit` items (of this status, subscription, channel), oldest first."""
        ...

    def outbox_by_message_ids(self, message_ids: Sequence[str]) -> list[OutboxItem]: ...

    def outbox_item(self, item_id: int) -> OutboxItem | None: ...

    def replay(self, ids: Sequence[int] | None = None) -> Replayed:
        """Re-queue these items (None: every dead one) in one transaction."""
        ...

    def discard(self, ids: Sequence[int], reason: str) -> Discarded:
        """Set these dead items aside for good (status discarded, the reason before their last
        error) in one transaction; items in any other status are left as they are."""
        ...

    def add_dead_letter(self, source: str, reason: str, headers: dict[str, str],
                        body: bytes) -> int: ...

    def dead_letters(self, limit: int = 100, outstanding: bool = False) -> list[dict[str, Any]]:
        """The newest `limit` (with `outstanding`, of those not settled), oldest first: id,
        source, reason, headers, body, at, and replayed (None, or {"at", "outcome"})."""
        ...

    def dead_letter(self, letter_id: int) -> dict[str, Any] | None: ...

    def outstanding_dead_letters(self) -> list[int]:
        """The ids of the dead letters not settled (replayed or discarded), oldest first."""
        ...

    def mark_dead_letter_replayed(self, letter_id: int, outcome: str) -> None:
        """Record that the letter was replayed and what came of it; the letter is kept."""
        ...

    def discard_dead_letter(self, letter_id: int, reason: str) -> bool:
        """Settle a letter not replayed without taking it (its outcome DISCARD_NOTE + reason);
        False, changing nothing, when there is no such letter or it is settled already."""
        ...

    def dead_letter_counts(self) -> dict[str, tuple[int, int]]:
        """Dead letters per source: (all kept, those not settled)."""
        ...

    def counts(self) -> dict[tuple[str, str], int]:
        """Outbox items per (channel, status)."""
        ...

    def oldest_pending(self) -> dict[str, float]:
        """Per channel with pending items, when its oldest pending item was queued."""
        ...

    def prune(self, before: float, batch: int = 1000) -> dict[str, int]:
        """Delete what is done with: outbox items sent, suppressed or discarded, and dedupe
        keys, last changed before `before`, and dead letters settled (replayed or discarded)
        before it; pending and dead items, outstanding dead letters, snapshots and history
        stay. Each batch is a short transaction of its own. Returns {"outbox": n,
        "dedupe": m, "dead_letters": k}."""
        ...

    def ping(self) -> None:
        """Raises StoreError when the store cannot be used."""
        ...

    def disk_free(self) -> int | None:
        """Bytes free to this process on the disk that holds the store; None when the store
        is no local file (PostgreSQL's server keeps its own)."""
        ...

    def close(self) -> None: ...


# -- the broker --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Envelope:
    """One message to send: the outbox id it comes from, where, with which headers."""

    item_id: int
    destination: str
    headers: dict[str, str]
    body: bytes
    usn: str = ""  # the ordering key: one subscription's messages keep their order


@dataclass(frozen=True, slots=True)
class PublishOutcome:
    confirmed: tuple[int, ...]  # outbox ids whose receipt came back
    refused: dict[int, str]     # outbox ids the broker answered with an ERROR, and why


class Publisher(Protocol):
    """Sends envelopes; a send counts only once the broker's receipt came back."""

    def publish(self, envelopes: Sequence[Envelope]) -> PublishOutcome:
        """Sends all and waits for the broker's confirmation up to the receipt timeout;
        messages the broker refuses are in `.refused`, with messages of the same usn after
        them left unsent. Raises PublishError (with .confirmed) when the broker cannot be
        reached."""
        ...

    def close(self) -> None: ...


class Forwarder(Protocol):
    """Delivers one JSON event to the order system; raises ForwardError."""

    def forward(self, item: OutboxItem) -> None: ...
