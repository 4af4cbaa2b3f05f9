"""The composition root: the only place in gateway/ that builds adapters and wires them."""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

from adapters.smile_xml import SmileXmlCodec
from gateway.batch import Checker
from gateway.config import Settings
from gateway.ports import InMemoryRequestIds, RequestIds
from gateway.translator import Translator


def build_codec(settings: Settings) -> SmileXmlCodec:
    return SmileXmlCodec(settings.schema.path, settings.schema.max_bytes)


def _checker(schema_path: Path, max_bytes: int) -> Checker:
    return Checker(SmileXmlCodec(schema_path, max_bytes), max_bytes,
                   lambda: sys.stdin.buffer.read(max_bytes + 1))


def checker_factory(settings: Settings) -> partial[Checker]:
    """A picklable factory, so that each validate worker process builds its own codec."""
    return partial(_checker, settings.schema.path, settings.schema.max_bytes)


def build_translator(settings: Settings, request_ids: RequestIds | None = None) -> Translator:
    return Translator(settings.mapping, build_codec(settings),
                      request_ids if request_ids is not None else InMemoryRequestIds())
