"""Log lines a machine can read: one JSON object per line (``--log-format json``).

Each line has ``time`` (UTC, ISO 8601), ``level``, ``logger`` and ``message``; a line
logged while a handler runs also has the ``agent``, ``message_id`` and
``conversation_id`` of the delivery it handles, and, with tracing on, the
``trace_id`` (32 hex digits) that a tracing backend shows for the same work. An
exception's traceback goes into ``exception``, on the same line.

The handler's context comes from :mod:`amqp_agents.instrumentation`, which keeps it
only while it is on (``instrument(log_context=True)``).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from . import instrumentation

LOG_FORMATS = ("text", "json")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
"""The CLI's text lines (cli.py)."""


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON, with the handled delivery's ids."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if (handling := instrumentation.current_handling()) is not None:
            entry["agent"] = handling.agent
            entry["message_id"] = handling.message_id
            if handling.conversation_id:
                entry["conversation_id"] = handling.conversation_id
        if (trace_id := instrumentation.trace_id()) is not None:
            entry["trace_id"] = trace_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def use_format(log_format: str) -> None:
    """Format every handler of the root logger as ``log_format`` (``text`` or ``json``)."""
    formatter = JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter)
