"""Logging set-up: text or JSON lines, with a last-resort redaction filter.

The code never logs a token on purpose (grants print without theirs, errors
carry messages the proxy wrote). The :class:`RedactingFilter` is the safety net
for what a library might put in a message: proxy keys, ``Bearer``/``OAuth``
credentials and ``token=``/``code=``/``secret=`` query or form values are
masked before any handler sees the record.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time

__all__ = ["JsonFormatter", "RedactingFilter", "redact", "setup_logging"]

_PATTERNS = [
    re.compile(r"tpk_[A-Za-z0-9_\-]+"),
    re.compile(r"(?i)\b(bearer|oauth)\s+[^\s,;\"']+"),
    re.compile(r"(?i)\b((?:access_|refresh_)?token|code|client_secret|secret|key)"
               r"([\"']?\s*[=:]\s*[\"']?)[^&\s,;\"']+"),
]


def redact(text: str) -> str:
    """``text`` with anything shaped like a credential replaced by ``***``."""
    text = _PATTERNS[0].sub("tpk_***", text)
    text = _PATTERNS[1].sub(lambda m: f"{m.group(1)} ***", text)
    return _PATTERNS[2].sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)


class RedactingFilter(logging.Filter):
    """Masks credentials in a record's message and exception text."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log drains."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry)


def setup_logging(level: str, fmt: str) -> None:
    """Configure the root logger once for the process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
