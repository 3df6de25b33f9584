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
from collections.abc import Iterable
from typing import TYPE_CHECKING, TextIO

from .crypto import parse_keys

if TYPE_CHECKING:
    from .config import Config

__all__ = ["JsonFormatter", "RedactingFilter", "config_secrets", "make_handler", "redact",
           "setup_logging"]

#: Shorter configured "secrets" are not masked: masking "abc" everywhere helps nobody.
_MIN_SECRET_LENGTH = 8

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
    """Masks credentials in a record's message, structured fields and exception text.

    ``secrets`` are values known at start-up (the client secret, encryption
    keys, the metrics token): masked wherever they appear, whatever their shape.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = sorted({s for s in secrets if len(s) >= _MIN_SECRET_LENGTH},
                               key=len, reverse=True)

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return redact(text)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self._redact(record.getMessage())
        record.args = None
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            record.fields = {key: self._redact(value) if isinstance(value, str) else value
                             for key, value in fields.items()}
        if record.exc_info:
            record.exc_text = self._redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = self._redact(record.exc_text)
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


def make_handler(fmt: str, stream: TextIO, *, secrets: Iterable[str] = ()) -> logging.Handler:
    """A handler writing ``text`` or ``json`` lines to ``stream``, redacting first."""
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter(secrets))
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    return handler


def config_secrets(config: Config) -> list[str]:
    """The secrets a configuration holds, for :class:`RedactingFilter`."""
    values = [config.twitch.client_secret.reveal(), config.metrics.token.reveal(),
              config.store.encryption_key.reveal()]
    for part in config.store.encryption_key.reveal().split(","):
        values.append(part.strip())
    if config.store.encryption_key:
        values += [key.reveal() for key in parse_keys(config.store.encryption_key)]
    return [value for value in values if value]


def setup_logging(level: str, fmt: str, *, secrets: Iterable[str] = ()) -> None:
    """Configure the root logger once for the process (stderr, text or JSON)."""
    root = logging.getLogger()
    root.handlers[:] = [make_handler(fmt, sys.stderr, secrets=secrets)]
    root.setLevel(level.upper())
