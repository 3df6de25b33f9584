"""The fault-injection suites' pieces: a misbehaving Twitch, and checks that a grant survived.

Upstream faults come from :class:`FaultyUpstream`, a raw asyncio server that
stands in front of the mock Twitch. By default it relays each request to the
mock (one request per connection, ``Connection: close``); for the requests a
scenario targets (the token endpoint or Helix) it misbehaves instead: refuses
connections, resets them before or in the middle of a body, never finishes,
sends one byte per second, answers 5xx, HTML, invalid JSON, a token answer
without its fields, or a huge body.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections import Counter

from proxy.web.keys import grants_key
from tests.helpers import login

TIMEOUT = 1.0  # twitch.timeout for these tests: hanging faults end in a 504 quickly


SECOND_USER = ("90001", "seconduser")


class FaultyUpstream:
    """A raw TCP server in front of the mock Twitch that misbehaves on demand."""

    def __init__(self, mock_port: int) -> None:
        self.mock_port = mock_port
        self.fault = "pass"
        self.target = ""  # path prefix the fault applies to
        self.hits: Counter[str] = Counter()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def close(self) -> None:
        await self.stop_listening()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b"\r\n", 1)[0].split(b" ")[1].decode()
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = await reader.readexactly(length)
            fault = self.fault if self.target and path.startswith(self.target) else "pass"
            self.hits[fault] += 1
            await getattr(self, "_" + fault)(reader, writer, head, body)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self._tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    # -- behaviours -------------------------------------------------------------------

    async def _pass(self, reader, writer, head: bytes, body: bytes) -> None:
        first, _, rest = head.partition(b"\r\n")
        upstream_reader, upstream_writer = await asyncio.open_connection(
            "127.0.0.1", self.mock_port)
        upstream_writer.write(first + b"\r\nConnection: close\r\n" + rest + body)
        await upstream_writer.drain()
        while chunk := await upstream_reader.read(65536):
            writer.write(chunk)
            await writer.drain()
        upstream_writer.close()

    @staticmethod
    def _rst(writer) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def _reset_before_headers(self, reader, writer, head, body) -> None:
        self._rst(writer)

    async def _reset_mid_body(self, reader, writer, head, body) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"access_token\": \"abc")
        await writer.drain()
        await asyncio.sleep(0.05)
        self._rst(writer)

    async def _never_ends(self, reader, writer, head, body) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"data\": [")
        await writer.drain()
        await reader.read()  # until the proxy gives up and closes

    async def _one_byte_per_second(self, reader, writer, head, body) -> None:
        answer = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 20\r\n\r\n{\"data\": []}        ")
        for index in range(len(answer)):
            writer.write(answer[index:index + 1])
            await writer.drain()
            await asyncio.sleep(1)

    async def _status(self, writer, status: int, body: bytes, content_type: str) -> None:
        writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        await writer.drain()

    async def _status_500(self, reader, writer, head, body) -> None:
        await self._status(writer, 500, b'{"status":500,"message":"Internal Server Error"}',
                           "application/json")

    async def _status_502(self, reader, writer, head, body) -> None:
        await self._status(writer, 502, b"<html><body>502 Bad Gateway</body></html>",
                           "text/html")

    async def _status_503(self, reader, writer, head, body) -> None:
        await self._status(writer, 503, b'{"status":503,"message":"Service Unavailable"}',
                           "application/json")

    async def _status_504(self, reader, writer, head, body) -> None:
        await self._status(writer, 504, b"<html>Gateway Time-out</html>", "text/html")

    async def _html(self, reader, writer, head, body) -> None:
        await self._status(writer, 200, b"<!doctype html><title>Login to Wi-Fi</title>",
                           "text/html")

    async def _invalid_json(self, reader, writer, head, body) -> None:
        await self._status(writer, 200, b'{"access_token": "x", "expires_in": ', "application/json")

    async def _missing_fields(self, reader, writer, head, body) -> None:
        await self._status(writer, 200, b'{"token_type": "bearer", "scope": []}',
                           "application/json")

    async def _reset_mid_huge_body(self, reader, writer, head, body) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 8388608\r\n\r\n{\"data\": [\"" + b"x" * 1048576)
        await writer.drain()
        await asyncio.sleep(0.05)
        self._rst(writer)

    async def _huge(self, reader, writer, head, body) -> None:
        size = 8 * 1024 * 1024
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {size + 11}\r\n\r\n".encode() + b'{"data": ["')
        chunk = b"x" * 65536
        for _ in range(size // len(chunk)):
            writer.write(chunk)
            await writer.drain()
        writer.write(b'"]}')
        await writer.drain()



async def second_login(proxy, mock) -> dict:
    mock.add_user(*SECOND_USER)
    mock.signed_in_user_id = SECOND_USER[0]
    try:
        return await login(proxy)
    finally:
        mock.signed_in_user_id = "141981764"


async def grant_of(proxy, key: str):
    grants = proxy.app[grants_key]
    record = await grants.key_record(key)
    assert record is not None, "the proxy key was lost"
    return await grants.get(record.grant_id)


async def grant_survived(proxy, mock, key: str, first: dict, caplog, reliability) -> None:
    """After a store fault: the grant holds a token Twitch still accepts, nothing leaked."""
    grant = await grant_of(proxy, key)
    lost = grant is None or grant.refresh_token not in mock.refresh_tokens
    reliability.tokens_lost += int(lost)
    assert not lost
    assert reliability.leaks(secrets_of(mock, first), caplog.text) == []
    reliability.fault_scenarios += 1


def secrets_of(mock, *results) -> list[str]:
    values = {"mock-client-secret"}
    values.update(mock.access_tokens)
    values.update(mock.refresh_tokens)
    values.update(mock.spent_refresh_tokens)
    for result in results:
        values.update({result["proxy_key"], result["access_token"], result["refresh_token"]})
    return sorted(values)
