"""Logging for the API and the workers: one JSON object a line on stdout (or plain text for humans)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

# gunicorn's master imports this module (its JSON logger) before the gevent workers patch ssl; the
# settings import would bring redis, whose `from ssl import ...` gevent then warns about on stderr.
if TYPE_CHECKING:
    from shared.settings import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Attributes every LogRecord has; anything else on a record came from `extra=` and is logged too.
_RECORD_FIELDS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """Format a record as one line of JSON: ts, level, logger, msg, then its `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as compact JSON; a traceback goes in "exc", never on lines of its own."""
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                entry.setdefault(key, value)  # an extra field never hides one of the four above
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class _GenqHandler(logging.StreamHandler):
    """The one root handler setup_logging installs; its class marks it, so a second call replaces it."""


def make_formatter(log_format: str) -> logging.Formatter:
    """Return the formatter for GENQ_LOG_FORMAT: "json" (default) or "text"."""
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def setup_logging(settings: Settings, level: str | None = None) -> None:
    """Send every log record to stdout in settings.log_format; calling it again adds no handler."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _GenqHandler)]:
        root.removeHandler(handler)
        handler.close()
    handler = _GenqHandler(sys.stdout)
    handler.setFormatter(make_formatter(settings.log_format))
    root.addHandler(handler)
    root.setLevel((level or settings.log_level).upper())
    logging.captureWarnings(True)  # warnings.warn() becomes a log record too, not loose stderr text
