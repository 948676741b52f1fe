"""Logging: every record made while serving a request carries that request's id, and the
output is plain text or one JSON object per line.

The id lives in a context variable that the gateway middleware sets for each request; asyncio
copies the context into the tasks a request starts, so the services' log line finds it without
being handed it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Literal

request_id_var: ContextVar[str] = ContextVar("hearth_request_id", default="-")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"


# C0 and C1 control characters and DEL: a newline or an escape code a client smuggles into a
# logged value (a path, a field name) must not start a forged line or drive a terminal.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def escape_controls(text: str) -> str:
    """``text`` with every control character written as an escape (``\\n``, ``\\x1b``)."""
    if not _CONTROL.search(text):
        return text
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


# A value written bare in a key=value line: nothing that could end it (a space), start another
# field (``=``), open a quoted value or an escape, or break the line.
_BARE = re.compile(r'[^\s"=\\\x00-\x1f\x7f-\x9f]+')


def key_values(fields: Mapping[str, object]) -> str:
    """``fields`` as ``name=value`` pairs (empty and None values left out). A value that a
    client may have chosen (a path, a model name) and that holds a space, ``=``, a quote, a
    backslash or a control character is written in double quotes, with ``\\"``, ``\\\\``
    and control characters escaped, so that no value can pass for another field."""
    return " ".join(
        f"{name}={_quoted(str(value))}"
        for name, value in fields.items()
        if value is not None and value != ""
    )


def _quoted(text: str) -> str:
    if _BARE.fullmatch(text):
        return text
    return '"' + escape_controls(text.replace("\\", "\\\\").replace('"', '\\"')) + '"'


class TextFormatter(logging.Formatter):
    """The text format, with control characters in the message escaped (a traceback that
    follows it keeps its lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` (``-`` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, request id, message, the record's
    ``fields`` (``logger.info(..., extra={"fields": {...}})``) and any exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, log_format: Literal["text", "json"] = "text") -> None:
    """Set up the root logger for ``hearth serve``."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
