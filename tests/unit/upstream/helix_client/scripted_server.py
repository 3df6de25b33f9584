"""A scripted HTTP/1.1 server on loopback, and the answers the helix_client tests script."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable

from yarl import URL

from proxy.upstream.helix_client import HelixClient

Answer = Callable[[bytes, asyncio.StreamWriter], Awaitable[bool]]


def ok(body: bytes = b'{"data":[]}', *extra: str) -> bytes:
    head = "".join(f"{line}\r\n" for line in extra)
    return (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{head}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


class ScriptedServer:
    """Answers each request with ``answer(request_bytes, writer)``; True keeps the connection."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections = 0
        self.open_now = 0
        self.most_open = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=ssl_context)
        self.port = self.server.sockets[0].getsockname()[1]

    def url(self, path: str = "/helix/users", scheme: str = "http") -> URL:
        return URL(f"{scheme}://127.0.0.1:{self.port}{path}", encoded=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                request = head + (await reader.readexactly(length) if length else b"")
                self.requests.append(request)
                if not await self.answer(request, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client left, or the test ended
        finally:
            self.open_now -= 1
            with contextlib.suppress(Exception):
                writer.close()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def fetch(client: HelixClient, url: URL, method: str = "GET", body: bytes = b"",
                headers: tuple[tuple[str, str], ...] = ()) -> tuple[int, bytes]:
    response = await client.request(method, url, headers, body)
    try:
        return response.status, await response.read()
    finally:
        response.release()


def target(request: bytes) -> bytes:
    """The request's target: answers that echo it tell whose request they answer."""
    return request.split(b" ", 2)[1]


def keep(answer: bytes) -> Answer:
    async def respond(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer)
        await writer.drain()
        return True
    return respond


async def never_answers(request: bytes, writer: asyncio.StreamWriter) -> bool:
    """Reads the request and says nothing until the test is over."""
    await asyncio.sleep(5)
    return False


def echo_keeping_writers(writers: list[asyncio.StreamWriter]):
    """A server behaviour that echoes each target and keeps each connection's writer,
    so that a test can send more on a connection the client thinks is idle."""
    async def echo(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writers.append(writer)
        writer.write(ok(target(request)))
        return True

    return echo
