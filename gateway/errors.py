"""The gateway's one exception tree.

    GatewayError
    ├── ConfigError               names the key and what is allowed        -> exit 2
    ├── DocumentError
    │   ├── DocumentParseError    not well-formed, DOCTYPE, too large      -> 400 / exit 1
    │   └── DocumentInvalidError  .violations (line, column, path, message)-> 422 / exit 1
    ├── MappingError              unknown state (lists allowed)            -> 422 / exit 2
    ├── TransitionError           names from and to                        -> 409 / exit 1
    ├── UnknownSubscriptionError                                           -> 422
    ├── StaleDocumentError        older than the subscription's last change (replay)
    ├── KeyReusedError            a dedupe key reused for another request  -> 422
    ├── DeliveryError             retryable by the relay
    │   ├── PublishError
    │   └── ForwardError
    └── StoreError                                                         -> 503

Library errors (lxml, stomp.py, sqlite3, requests) are translated once, at the adapter that
meets them, with `raise X from exc`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

_MAX_TEXT = 200


def clip(text: str, limit: int = _MAX_TEXT) -> str:
    """Cut a payload or message for an error text, so that errors stay readable."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


# C0 and C1 controls and DEL (tab aside), and Unicode's line separators, as escapes
_CONTROLS = {code: f"\\x{code:02x}" for code in [*range(0x20), *range(0x7F, 0xA0)]
             if code != 0x09}
_CONTROLS.update({0x0A: "\\n", 0x0D: "\\r", 0x2028: "\\u2028", 0x2029: "\\u2029"})


def printable(text: str) -> str:
    """Text from outside (a request, a document, a broker, an order system) as one line a log
    or a terminal shows as text: its control characters escaped, so that none can split a
    line or drive the terminal."""
    return text.translate(_CONTROLS)


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """A configuration key is unknown, missing or holds a bad value."""

    def __init__(self, key: str, problem: str, allowed: Iterable[str] = ()) -> None:
        self.key = key
        self.problem = problem
        self.allowed = tuple(allowed)
        text = f"{key}: {problem}"
        if self.allowed:
            text += f" (allowed: {', '.join(self.allowed)})"
        super().__init__(text)


@dataclass(frozen=True, slots=True)
class Violation:
    """One problem found in a document: where it is and what was expected."""

    line: int
    column: int
    path: str
    message: str

    def as_dict(self) -> dict[str, object]:
        return {"line": self.line, "column": self.column, "path": self.path,
                "message": self.message}


class DocumentError(GatewayError):
    """A document could not be accepted; `.violations` says where and why."""

    def __init__(self, message: str, violations: Sequence[Violation] = ()) -> None:
        self.violations = tuple(violations)
        super().__init__(message)


class DocumentParseError(DocumentError):
    """Not well-formed XML, a DOCTYPE, or over the size limit."""


class UnsupportedCharsetError(DocumentError):
    """A transport labelled a document with a charset that is no character encoding the
    gateway reads."""


class DocumentInvalidError(DocumentError):
    """Well-formed, but violates the schema or a documented header rule."""


class MappingError(GatewayError):
    """A state, status or message type the mapping does not know."""

    def __init__(self, message: str, allowed: Iterable[str] = ()) -> None:
        self.allowed = tuple(allowed)
        if self.allowed:
            message += f" (allowed: {', '.join(self.allowed)})"
        super().__init__(message)


class TransitionError(GatewayError):
    """The transition graph does not allow this change."""

    def __init__(self, vocabulary: str, current: str, wanted: str,
                 allowed: Iterable[str] = ()) -> None:
        self.vocabulary = vocabulary
        self.current = current
        self.wanted = wanted
        self.allowed = tuple(allowed)
        nexts = ", ".join(self.allowed) if self.allowed else "none: it is final"
        super().__init__(
            f"{vocabulary} transition refused: {current} -> {wanted} "
            f"(from {current} the graph allows: {nexts})")


class UnknownSubscriptionError(GatewayError):
    """No snapshot is stored for this usn."""

    def __init__(self, usn: str) -> None:
        self.usn = usn
        super().__init__(f"unknown subscription usn={clip(usn)}")


class StaleDocumentError(GatewayError):
    """A document older than the subscription's last change: recording it would set the
    subscription back (a dead letter replayed after newer documents were accepted)."""

    def __init__(self, usn: str, changed_at: float, came_at: float) -> None:
        self.usn, self.changed_at, self.came_at = usn, changed_at, came_at
        super().__init__(f"subscription {clip(usn)} changed at {_utc(changed_at)}, after this "
                         f"document came at {_utc(came_at)}: recording it would set its "
                         "snapshot and states back")


def _utc(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")


# What each kind of dedupe key is called where it came from.
_KEY_NAMES = {"webhook": "webhook-id", "event": "eventId", "broker": "message id"}


class KeyReusedError(GatewayError):
    """A dedupe key seen before came with a different request: answering as the first did
    would drop this one unrecorded, and its sender would count it delivered."""

    def __init__(self, key: str) -> None:
        self.key = key
        kind, _, value = key.partition(":")
        name = _KEY_NAMES.get(kind, "key")
        super().__init__(f"{name} {clip(value)!r} was used before for a different request: "
                         "this one is not recorded (give each request an id of its own)")


class DeliveryError(GatewayError):
    """A send failed in a way that a later attempt may fix."""


class PublishError(DeliveryError):
    """The broker connection failed; `.confirmed` lists the outbox ids confirmed before that."""

    def __init__(self, message: str, confirmed: Sequence[int] = ()) -> None:
        self.confirmed = tuple(confirmed)
        super().__init__(message)


class ForwardError(DeliveryError):
    """The order system did not accept a forwarded event; `retry_after`: the seconds it asked
    for before the next try (Retry-After), if it did."""

    def __init__(self, message: str, retryable: bool = True,
                 retry_after: float | None = None) -> None:
        self.retryable = retryable
        self.retry_after = retry_after
        super().__init__(message)


class StoreError(GatewayError):
    """The store is unavailable or refused a write."""


class UsageError(GatewayError):
    """A command was asked for what it cannot do as given (a path, a store of another kind)."""
