"""Logging, configured once at start: key=value text or one JSON object per line."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from gateway.config import LoggingSettings


class JsonFormatter(logging.Formatter):
    """One JSON object per line: `ts` in UTC to the millisecond (RFC 3339), level, logger,
    message, and the traceback as `exception` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        entry = {"ts": ts.replace("+00:00", "Z"), "level": record.levelname,
                 "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


# C0 and C1 controls and DEL (tab aside), and Unicode's line separators, as escapes: a
# message is one line, whatever it quotes
_CONTROLS = {code: f"\\x{code:02x}" for code in [*range(0x20), *range(0x7F, 0xA0)]
             if code != 0x09}
_CONTROLS.update({0x0A: "\\n", 0x0D: "\\r", 0x2028: "\\u2028", 0x2029: "\\u2029"})


class TextFormatter(logging.Formatter):
    """`time level logger message`, the message on one line: line breaks and other control
    characters in it (a reason quoting a document or a broker) escaped; a traceback follows
    on lines of its own, as usual."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = record.message.translate(_CONTROLS)
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
