"""Logging set-up: text or JSON lines, with a last-resort redaction filter.

The code never logs a token on purpose (grants print without theirs, errors
carry messages the proxy wrote). The :class:`RedactingFilter` is the safety net
for what a library might put in a message: proxy keys, ``Bearer``/``OAuth``
credentials and ``token=``/``code=``/``secret=`` query or form values are
masked before any handler sees the record.

Nor can a client write a line of its own into the log, whatever it puts in a
path, a header or anything an error message quotes: the text format escapes
every unprintable character of a record's line (:class:`TextFormatter`), and a
traceback keeps its lines but not the line breaks of what its exceptions say
(:func:`format_exception`). JSON escapes by itself.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import traceback
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, TextIO, TypeAlias

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from ..config.encryption_keys import parse_keys

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["JsonFormatter", "MalformedRequestFilter", "RedactingFilter", "TextFormatter",
           "config_secrets", "escape_unprintable", "format_exception", "make_handler", "redact",
           "setup_logging"]

#: A record's ``exc_info``, as ``sys.exc_info()`` gives it.
_ExcInfo: TypeAlias = (tuple[type[BaseException], BaseException, TracebackType | None]
                      | tuple[None, None, None])

#: Shorter configured "secrets" are not masked: masking "abc" everywhere helps nobody.
_MIN_SECRET_LENGTH = 8

_PATTERNS = [
    re.compile(r"tpk_[A-Za-z0-9_\-]+"),
    re.compile(r"tkt_[A-Za-z0-9_\-]+"),  # a live-events ticket: single use, but still a key
    re.compile(r"(?i)\b(bearer|oauth)\s+[^\s,;\"']+"),
    re.compile(r"(?i)\b((?:access_|refresh_)?token|code|client_secret|secret|key|ticket)"
               r"([\"']?\s*[=:]\s*[\"']?)[^&\s,;\"']+"),
]


def redact(text: str) -> str:
    """``text`` with anything shaped like a credential replaced by ``***``."""
    text = _PATTERNS[0].sub("tpk_***", text)
    text = _PATTERNS[1].sub("tkt_***", text)
    text = _PATTERNS[2].sub(lambda m: f"{m.group(1)} ***", text)
    return _PATTERNS[3].sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)


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
            record.exc_text = self._redact(format_exception(record.exc_info[1]))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = self._redact(record.exc_text)
        return True


class MalformedRequestFilter(logging.Filter):
    """aiohttp's report of a request its HTTP parser refused, as one INFO line, no traceback.

    Anyone can send bytes that are not HTTP (a NUL in a header, a broken
    request line); aiohttp answers them 400 itself and logs an ERROR with a
    traceback, which would bury the proxy's real errors. Its own reports of
    anything else (a 500) are left as they are.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "malformed_request", False):  # not rewritten by another handler
            error = record.exc_info[1] if record.exc_info else None
            if record.name != "aiohttp.server" or record.levelno < logging.ERROR:
                return True
            if isinstance(error, RequestPayloadError):
                # A body the parser could not read (a broken compressed one),
                # met while aiohttp drained it after the answer had been sent.
                record.msg = "dropped a request body that could not be read"
            elif isinstance(error, HttpProcessingError) and error.code < 500:
                # "Error handling request from <address>": aiohttp's words, kept for the address.
                origin = record.getMessage().removeprefix("Error handling request")
                reason = error.message.partition("\n")[0].rstrip(": ")
                record.msg = f"refused a malformed request{origin}: {error.code} {reason}"
            else:
                return True
            record.args = None
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info, record.exc_text = None, None
            record.malformed_request = True
        # The logger let it through as an ERROR; as an INFO it must pass LOG_LEVEL again.
        return logging.getLogger(record.name).isEnabledFor(logging.INFO)


def escape_unprintable(text: str) -> str:
    """``text`` with each unprintable character escaped as Python writes it (``\\n``, ``\\x1b``)."""
    if text.isprintable():
        return text  # nearly always, and checked in C
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"


def format_exception(error: BaseException | None) -> str:
    """The traceback of ``error`` as Python prints it, but what each exception says on one line.

    Frames (file, line, code) come from the source and keep their lines. An
    exception's message and notes may quote a request, so each exception's
    own text is one line with its unprintable characters escaped: a line break
    in it cannot start a line that looks like a log record.
    """
    if error is None:
        return "NoneType: None"  # logging.exception() outside an except block
    lines = _traceback_lines(traceback.TracebackException.from_exception(error))
    return "".join(lines).rstrip("\n")


def _traceback_lines(error: traceback.TracebackException) -> Iterator[str]:
    # The chain as the standard library walks it: from the outermost exception
    # to the first cause, printed the other way round.
    chain: list[tuple[str | None, traceback.TracebackException]] = []
    node: traceback.TracebackException | None = error
    while node is not None:
        if node.__cause__ is not None:
            chain.append((_CAUSE, node))
            node = node.__cause__
        elif node.__context__ is not None and not node.__suppress_context__:
            chain.append((_CONTEXT, node))
            node = node.__context__
        else:
            chain.append((None, node))
            node = None
    for link, node in reversed(chain):
        if link is not None:
            yield link
        if node.stack:
            yield "Traceback (most recent call last):\n"
            yield from node.stack.format()
        yield escape_unprintable("".join(node.format_exception_only()).rstrip("\n")) + "\n"
        for number, member in enumerate(node.exceptions or (), 1):  # an ExceptionGroup's
            yield f"  +---------------- {number} ----------------\n"
            lines = "".join(_traceback_lines(member)).rstrip("\n")
            yield "  | " + lines.replace("\n", "\n  | ") + "\n"


class TextFormatter(logging.Formatter):
    """``time level logger: message`` lines that a client cannot break or forge.

    Every unprintable character of the line is escaped (CR, LF, ESC, U+2028,
    undecodable bytes...), whoever logged it and whatever argument carried it,
    so a path, a header or an error message quoting a request stays inside its
    record. A traceback follows on lines of its own (see :func:`format_exception`).
    """

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_unprintable(super().formatMessage(record))

    def formatException(self, ei: _ExcInfo) -> str:
        return format_exception(ei[1])


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
    handler.addFilter(MalformedRequestFilter())  # first: what it writes is redacted too
    handler.addFilter(RedactingFilter(secrets))
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
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
