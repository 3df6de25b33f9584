"""Hostile input: header bytes that are not text, and requests written to forge log lines.

Requests are written byte by byte over a socket to the real test server:
aiohttp's client refuses to send most of them. Every test also reads the logs
through the production handlers (text and JSON): no traceback, no ERROR line,
and every text line is a record of its own.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator

import pytest

from proxy.upstream.helix_client import HelixClient
from tests.unit.telemetry.log_capture import Captured

#: How every record of the text format starts; a line that does not is a forged
#: record or a traceback.
RECORD_START = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ [\w.]+: ")
FORGED = (
    "2026-11-30 23:00:00,000 INFO proxy.core.refresh: refresh outcome=success grant_id=g_forged"
)


@pytest.fixture
def config_flags(request) -> dict:
    """/helix without a credential (the app token), plus what a test asks for (indirect)."""
    return {"helix.app_token": True, **getattr(request, "param", {})}


@pytest.fixture
def logs(proxy_config) -> Iterator[Captured]:
    with Captured.installed([]) as capture:
        yield capture


class Answer:
    """A raw HTTP answer: status, headers (lower-case names) and body."""

    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {name.lower(): value.strip()
                        for name, _, value in (line.partition(":") for line in lines)}

    def json(self) -> dict:
        assert self.headers["content-type"].startswith("application/json"), self.headers
        return json.loads(self.body)


async def send_raw(proxy, method: str, target: str, *headers: bytes, body: bytes = b"") -> Answer:
    """Write one request exactly as given to the proxy's socket and read the whole answer."""
    request = b"".join([
        f"{method} {target} HTTP/1.1\r\n".encode(),
        b"Host: localhost\r\nConnection: close\r\n",
        f"Content-Length: {len(body)}\r\n".encode(),
        *(header + b"\r\n" for header in headers),
        b"\r\n", body,
    ])
    reader, writer = await asyncio.open_connection(proxy.server.host, proxy.server.port)
    try:
        writer.write(request)
        await writer.drain()
        return Answer(await asyncio.wait_for(reader.read(), 10))
    finally:
        writer.close()
        await writer.wait_closed()


def assert_clean(logs: Captured) -> None:
    """No traceback, no ERROR, and one record per line in both formats."""
    text = logs.text.getvalue()
    assert "Traceback" not in text and " ERROR " not in text, text
    # str.splitlines() also splits on what some viewers show as a line break
    # (U+2028, NEL, form feed...): none of those may reach the text log raw.
    for line in text.splitlines():
        assert RECORD_START.match(line), line
    records = logs.json_lines()
    assert len(records) == len(text.splitlines())
    assert all(record["level"] != "ERROR" and "exception" not in record for record in records)


ROUTES = [
    ("GET", "/helix/users?login=twitchdev"),
    ("POST", "/refresh"),
    ("GET", "/login"),
    ("GET", "/callback?code=c&state=s"),
    ("GET", "/status"),
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("GET", "/static/style.css"),
    ("OPTIONS", "/refresh"),
    ("GET", "/no/such/page"),
]


@pytest.mark.parametrize(("method", "target"), ROUTES)
async def test_undecodable_header_bytes_get_a_400_on_every_route(proxy, logs, method, target):
    answer = await send_raw(proxy, method, target, b"Accept: text/\xff\xfe",
                            b"Origin: https://widget.example",
                            b"Access-Control-Request-Method: POST")
    assert answer.status == 400
    assert answer.json()["error"] == "invalid_header"
    assert answer.headers["x-request-id"]
    assert_clean(logs)


@pytest.mark.parametrize("header", [
    b"Authorization: Bearer tpk_\xc3",             # cut in the middle of a UTF-8 character
    b"Cookie: twitch_proxy_state=\xff",
    b"X-Forwarded-For: 203.0.113.9\xc2\x85" + FORGED.encode(),    # NEL
    b"User-Agent: widget\xe2\x80\xa8" + FORGED.encode(),          # U+2028 LINE SEPARATOR
    b"X-Anything: \xed\xa0\x80",                   # an encoded surrogate
], ids=["cut-utf8", "cookie", "nel", "line-separator", "surrogate"])
async def test_header_values_that_are_not_text_are_refused(proxy, logs, header):
    answer = await send_raw(proxy, "GET", "/helix/users?login=twitchdev", header)
    assert answer.status == 400
    assert answer.json() == {
        "error": "invalid_header",
        "message": "A request header value holds control characters or bytes that are not text.",
    }
    assert_clean(logs)
    # Text a client may send in a header still passes: a tab, UTF-8 letters.
    fine = await send_raw(proxy, "GET", "/healthz", b"X-Note: caf\xc3\xa9\tna\xc3\xafve")
    assert fine.status == 200


@pytest.mark.parametrize("header", [
    b"Accept: a\x00b", b"User-Agent: \x1b[31mred", b"X-Anything: a\x7fb", b"Accept: a\rb",
    b"X-Anything: a\x0bb",
], ids=["nul", "escape", "del", "bare-cr", "vertical-tab"])
async def test_control_characters_the_http_parser_refuses_log_no_error(proxy, logs, header):
    """aiohttp's parser answers these 400 itself, before the app sees the request."""
    answer = await send_raw(proxy, "GET", "/healthz", header)
    assert answer.status == 400
    assert_clean(logs)
    assert "INFO aiohttp.server: refused a malformed request from 127.0.0.1" in \
        logs.text.getvalue()


async def test_a_path_cannot_forge_a_log_line(proxy, logs):
    target = "/x%0D%0A" + FORGED.replace(" ", "%20") + "%0A%1B%5B2J%E2%80%A8"
    answer = await send_raw(proxy, "GET", target)
    assert answer.status == 404
    assert_clean(logs)
    (line,) = [line for line in logs.text.getvalue().splitlines() if "proxy.request:" in line]
    # The request line logs the path percent-encoded, as it came: no space in it
    # can start a field of its own either.
    assert f"path={target} " in line
    (record,) = [r for r in logs.json_lines() if r.get("event") == "request"]
    assert record["path"] == target


@pytest.mark.parametrize("config_flags", [{"server.trust_forwarded": True}], indirect=True)
async def test_a_forwarded_address_cannot_forge_a_log_line(proxy, logs):
    # The last entry is the client address (64 characters at most), so no comma.
    forged = "CRITICAL proxy.core.refresh: forged"
    answer = await send_raw(proxy, "GET", "/healthz",
                            b"X-Forwarded-For: 198.51.100.7\xe2\x80\xa9" + forged.encode())
    assert answer.status == 400
    assert_clean(logs)
    # Not an address, so not written at all: no word of it reaches the line.
    assert "client=unreadable " in logs.text.getvalue()
    assert forged not in logs.text.getvalue()


@pytest.mark.parametrize("config_flags", [{"server.trust_forwarded": True}], indirect=True)
@pytest.mark.parametrize(("forwarded", "client"), [
    ("198.51.100.7", "198.51.100.7"),
    ("198.51.100.7:4711", "198.51.100.7"),
    ("[2001:db8::1]:4711", "2001:db8::1"),
    ("2001:DB8::1", "2001:db8::1"),
    ("10.0.0.1 grant_id=g_forged request_id=abc", "unreadable"),
    ("198.51.100.7,", "unreadable"),
    ("not-an-address", "unreadable"),
])
async def test_the_forwarded_client_is_an_address_or_unreadable(proxy, logs, forwarded, client):
    answer = await proxy.get("/healthz", headers={"X-Forwarded-For": forwarded})
    assert answer.status == 200
    (record,) = [r for r in logs.json_lines() if r.get("event") == "request"]
    assert record["client"] == client
    assert f"client={client} " in logs.text.getvalue()


async def test_an_exception_message_cannot_forge_a_log_line(proxy, logs, monkeypatch):
    """The unexpected is logged with its traceback; what its exception says is escaped."""
    async def broken(self, method, url, headers, body=b""):
        raise RuntimeError(f"cannot send\r\n{FORGED}")

    monkeypatch.setattr(HelixClient, "request", broken)
    answer = await send_raw(proxy, "GET", "/helix/users?login=twitchdev")
    assert answer.status == 500
    text = logs.text.getvalue()
    assert "Traceback (most recent call last):" in text
    assert "RuntimeError: cannot send\\r\\n" + FORGED in text
    for line in text.splitlines():
        assert not line.startswith(FORGED), line
    (error,) = [r for r in logs.json_lines() if r["level"] == "ERROR"]
    assert "RuntimeError: cannot send" in error["exception"]


@pytest.mark.parametrize(("path", "content_type", "body"), [
    ("/refresh", "application/json", b'{"refresh_token": "\\ud800"}'),
    ("/refresh", "multipart/form-data; boundary=x", b"garbage"),
    ("/refresh", "application/x-www-form-urlencoded", b"refresh_token=%ff%fe"),
    ("/status", "application/x-www-form-urlencoded", b"key=\xff"),
    ("/refresh", "application/x-www-form-urlencoded; charset=nonexistent-cs", b"refresh_token=x"),
    ("/status", "application/x-www-form-urlencoded; charset=bogus", b"key=x"),
])
async def test_bodies_that_cannot_be_read_are_a_400(proxy, path, content_type, body):
    response = await proxy.post(path, data=body, headers={"Content-Type": content_type,
                                                          "Accept": "application/json"})
    assert response.status == 400, await response.text()
    assert (await response.json())["error"] == "invalid_request"


@pytest.mark.parametrize("path", ["/refresh", "/helix/users", "/status"])
@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
async def test_a_compressed_request_body_is_a_400(proxy, logs, path, encoding):
    answer = await send_raw(proxy, "POST", path,
                            f"Content-Encoding: {encoding}\r\nContent-Type: application/json"
                            .encode(), body=b"\x1f\x8b not really gzip")
    assert answer.status == 400
    if encoding != "br":  # an encoding aiohttp cannot decode is refused by its parser
        assert answer.json()["error"] == "invalid_request"
    assert_clean(logs)


async def test_a_second_content_encoding_header_is_seen_too(proxy, logs):
    answer = await send_raw(proxy, "POST", "/refresh",
                            b"Content-Encoding: identity", b"Content-Encoding: gzip",
                            b"Content-Type: application/json", body=b"\x1f\x8b broken")
    assert answer.status == 400
    assert answer.json()["error"] == "invalid_request"
    assert_clean(logs)


@pytest.mark.parametrize("config_flags", [{"server.trust_forwarded": True}], indirect=True)
async def test_a_zone_id_cannot_carry_words_into_the_log(proxy, logs):
    forged = "fe80::1%eth0 status=200 grant_id=g_deadbeef"
    assert (await proxy.get("/healthz", headers={"X-Forwarded-For": forged})).status == 200
    assert "client=unreadable " in logs.text.getvalue()
    assert "g_deadbeef" not in logs.text.getvalue()
