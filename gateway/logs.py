"""Logging, configured once at start: key=value text or one JSON object per line."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from gateway.config import LoggingSettings
from gateway.errors import printable

# what every LogRecord holds: the rest of its attributes came as a call's `extra` fields
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: `ts` in UTC to the millisecond (RFC 3339), level, logger,
    message, the fields the call gave as `extra` (`outbox_id`, `status`: for a pipeline to
    filter on), and the traceback as `exception` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        entry = {"ts": ts.replace("+00:00", "Z"), "level": record.levelname,
                 "logger": record.name, "message": record.getMessage()}
        for name, value in vars(record).items():
            if name not in _RECORD_ATTRIBUTES and name not in entry:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """`time level logger message`, the message on one line: line breaks and other control
    characters in it (a reason quoting a document or a broker) escaped; a traceback follows
    on lines of its own, as usual."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message)
        return super().formatMessage(record)


def configure_logging(settings: LoggingSettings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level.upper())
    logging.getLogger("stomp").setLevel(logging.WARNING)  # stomp.py is chatty at INFO
    # waitress warns "Task queue depth is N" whenever all threads are busy for a moment
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
