"""The ports: what the core needs from the outside world, as Protocols."""

from __future__ import annotations

from typing import Protocol

from gateway.domain import Document
from gateway.errors import Violation


class Codec(Protocol):
    """Reads and writes Smile XML documents, always against the project's schema."""

    def check(self, data: bytes) -> list[Violation]:
        """Every violation in `data` (parse errors included); empty when it is valid."""
        ...

    def decode(self, data: bytes) -> Document:
        """Parse and validate; raises DocumentParseError or DocumentInvalidError."""
        ...

    def encode(self, document: Document) -> bytes:
        """Render UTF-8 bytes, validated; deterministic for equal documents."""
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
