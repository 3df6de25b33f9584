"""proxy.telemetry.logs: what a client sends, or an exception says, cannot break or forge a line."""

from __future__ import annotations

import io
import json
import logging

from proxy.telemetry.logs import make_handler
from tests.unit.telemetry.log_capture import Captured

FORGED = (
    "2026-11-30 23:00:00,000 INFO proxy.core.refresh: refresh outcome=success grant_id=g_forged"
)


def test_text_lines_escape_what_could_break_or_forge_a_line():
    text, as_json = io.StringIO(), io.StringIO()
    log = logging.getLogger("tests.hostile")
    for handler in (make_handler("text", text), make_handler("json", as_json)):
        log.addHandler(handler)
    try:
        log.warning("path=%s", f"/x\r\n{FORGED}\x1b[2J\u2028\x85\udcff\t\u202eend")
    finally:
        log.handlers[:] = []
    (line,) = text.getvalue().splitlines()
    assert line.endswith(f"path=/x\\r\\n{FORGED}\\x1b[2J\\u2028\\x85\\udcff\\t\\u202eend")
    # JSON escapes by itself; the message keeps what was logged.
    (entry,) = [json.loads(line) for line in as_json.getvalue().splitlines()]
    assert entry["message"] == f"path=/x\r\n{FORGED}\x1b[2J\u2028\x85\udcff\t\u202eend"


def test_a_traceback_keeps_its_lines_but_not_what_its_exceptions_say():
    text, as_json = io.StringIO(), io.StringIO()
    log = logging.getLogger("tests.hostile")
    for handler in (make_handler("text", text), make_handler("json", as_json)):
        log.addHandler(handler)
    try:
        try:
            try:
                raise KeyError("first")
            except KeyError as exc:
                error = ValueError(f"bad value\r\n{FORGED}")
                error.add_note(f"a note\n{FORGED}")
                raise error from exc
        except ValueError as exc:
            group = ExceptionGroup("several", [exc, OSError(f"also\n{FORGED}")])
            try:
                raise group
            except ExceptionGroup:
                log.exception("unexpected error on GET %s", f"/x\n{FORGED}")
    finally:
        log.handlers[:] = []
    output = text.getvalue()
    lines = output.splitlines()
    assert lines[0].endswith(f"unexpected error on GET /x\\n{FORGED}")
    assert "Traceback (most recent call last):" in lines
    assert "The above exception was the direct cause of the following exception:" in output
    assert f"ValueError: bad value\\r\\n{FORGED}" in output
    assert f"a note\\n{FORGED}" in output and f"OSError: also\\n{FORGED}" in output
    assert any(line.strip().startswith('File "') for line in lines)
    assert not [line for line in lines if FORGED in line.lstrip(" |+-")[:len(FORGED)]]
    (entry,) = [json.loads(line) for line in as_json.getvalue().splitlines()]
    assert f"ValueError: bad value\\r\\n{FORGED}" in entry["exception"]


def test_a_request_the_http_parser_refused_is_one_info_line(proxy_config):
    from aiohttp.http_exceptions import BadHttpMessage

    def refuse() -> None:
        try:
            raise BadHttpMessage("Invalid header value char:\n\n  b'X-A: \\x00'\n        ^")
        except BadHttpMessage as exc:
            logging.getLogger("aiohttp.server").exception(
                "Error handling request from %s", "127.0.0.1", exc_info=exc)

    with Captured.installed([]) as capture:
        refuse()
        logging.getLogger().setLevel(logging.WARNING)  # LOG_LEVEL=WARNING: not even that
        refuse()
    (line,) = capture.text.getvalue().splitlines()
    assert line.endswith(" INFO aiohttp.server: refused a malformed request from 127.0.0.1: "
                         "400 Invalid header value char")
    (entry,) = capture.json_lines()
    assert entry["level"] == "INFO" and "exception" not in entry


def test_a_ticket_in_a_path_is_masked_like_a_key():
    """A ticket pasted into a path (a 404 under /eventsub) never reaches the log whole."""
    from proxy.telemetry.logs import redact

    ticket = "tkt_" + "T1cketSecret-_" * 3
    key = "tpk_" + "KeySecret0123456789"
    line = redact(f"request path=/eventsub/{ticket} other=/x?ticket={ticket[4:]} k={key}")
    assert ticket not in line and ticket[4:] not in line and key not in line
    assert "path=/eventsub/tkt_***" in line
