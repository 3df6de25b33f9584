"""proxy.helix_client against real sockets: a scripted HTTP/1.1 server on loopback.

The client is also exercised by every /helix test (test_helix, test_faults,
test_properties); these tests pin down the pool's own behaviour: reuse,
limits, stale connections, deadlines, framing, back-pressure and TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from yarl import URL

from proxy.helix_client import ConnectFailed, ConnectionBroken, HelixClient

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


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Answer], Awaitable[ScriptedServer]]]:
    servers: list[ScriptedServer] = []

    async def start(answer: Answer) -> ScriptedServer:
        server = ScriptedServer(answer)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def client() -> AsyncIterator[HelixClient]:
    client = HelixClient(pool_size=4, timeout=2)
    yield client
    await client.close()


async def fetch(client: HelixClient, url: URL, method: str = "GET", body: bytes = b"",
                headers: tuple[tuple[str, str], ...] = ()) -> tuple[int, bytes]:
    response = await client.request(method, url, headers, body)
    try:
        return response.status, await response.read()
    finally:
        response.release()


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


async def test_a_request_carries_the_callers_headers_and_body(serve, client):
    server = await serve(keep(ok()))
    status, body = await fetch(client, server.url("/helix/chat/announcements?a=1&a=2&x=%2F"),
                               "POST", b'{"message":"hi"}',
                               (("Client-Id", "cid"), ("Authorization", "Bearer t")))
    assert (status, body) == (200, b'{"data":[]}')
    request = server.requests[0]
    assert request.startswith(b"POST /helix/chat/announcements?a=1&a=2&x=%2F HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{server.port}\r\n".encode() in request
    assert b"Client-Id: cid\r\nAuthorization: Bearer t\r\n" in request
    assert b"Content-Length: 16\r\n" in request
    assert request.endswith(b'\r\n\r\n{"message":"hi"}')
    # Nothing the caller did not ask for: no compression offered, no cookies.
    assert b"Accept-Encoding" not in request and b"Cookie" not in request


async def test_connections_are_kept_alive_and_reused(serve, client):
    server = await serve(keep(ok()))
    for _ in range(5):
        assert (await fetch(client, server.url()))[0] == 200
    assert server.connections == 1


async def test_at_most_pool_size_connections_are_in_use(serve):
    async def slow(request: bytes, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.05)
        writer.write(ok())
        return True

    server = await serve(slow)
    client = HelixClient(pool_size=2, timeout=5)
    try:
        results = await asyncio.gather(*(fetch(client, server.url()) for _ in range(8)))
    finally:
        await client.close()
    assert [status for status, _ in results] == [200] * 8
    assert server.most_open == 2 and server.connections == 2


async def test_a_connection_the_server_closed_while_idle_is_replaced(serve, client):
    async def once(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(ok())  # keep-alive by HTTP/1.1, then closed anyway
        await writer.drain()
        return False

    server = await serve(once)
    assert (await fetch(client, server.url()))[0] == 200
    await asyncio.sleep(0.05)  # the close arrives while the connection is idle
    assert (await fetch(client, server.url()))[0] == 200
    assert server.connections == 2


async def test_a_get_is_retried_once_when_a_reused_connection_dies_unanswered(serve, client):
    answered = 0

    async def first_then_silent(request: bytes, writer: asyncio.StreamWriter) -> bool:
        nonlocal answered
        if answered and server.connections == 1:
            return False  # the keep-alive connection dies with the second request
        answered += 1
        writer.write(ok())
        return True

    server = await serve(first_then_silent)
    assert (await fetch(client, server.url()))[0] == 200
    assert (await fetch(client, server.url()))[0] == 200
    assert server.connections == 2


async def test_a_post_is_not_sent_twice(serve, client):
    async def first_then_silent(request: bytes, writer: asyncio.StreamWriter) -> bool:
        if len(server.requests) > 1:
            return False
        writer.write(ok())
        return True

    server = await serve(first_then_silent)
    assert (await fetch(client, server.url(), "POST", b"{}"))[0] == 200
    with pytest.raises(ConnectionBroken):
        await fetch(client, server.url(), "POST", b"{}")
    assert len(server.requests) == 2


async def test_connection_close_is_honoured(serve, client):
    server = await serve(keep(ok(b"{}", "Connection: close")))
    assert await fetch(client, server.url()) == (200, b"{}")
    assert await fetch(client, server.url()) == (200, b"{}")
    assert server.connections == 2


async def test_an_idle_connection_past_keepalive_is_not_reused(serve):
    server = await serve(keep(ok()))
    client = HelixClient(pool_size=2, timeout=2, keepalive=0.05)
    try:
        await fetch(client, server.url())
        await asyncio.sleep(0.1)
        await fetch(client, server.url())
    finally:
        await client.close()
    assert server.connections == 2


async def test_chunked_and_close_delimited_bodies(serve, client):
    chunked = await serve(keep(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                               b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"))
    assert await fetch(client, chunked.url()) == (200, b"hello world")

    async def until_close(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
        return False

    delimited = await serve(until_close)
    assert await fetch(client, delimited.url()) == (200, b"all of it")


async def test_headers_come_back_in_order_with_repeats(serve, client):
    server = await serve(keep(ok(b"{}", "Ratelimit-Remaining: 799", "X-Dup: 1", "X-Dup: 2")))
    response = await client.request("GET", server.url(), ())
    try:
        assert response.headers["ratelimit-remaining"] == "799"
        assert response.headers.getall("X-Dup") == ["1", "2"]
        assert response.content_type == "application/json"
        assert response.content_length == 2
    finally:
        response.release()


async def test_a_large_body_streams_with_back_pressure(serve, client):
    size = 4 * 1024 * 1024

    async def large(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
        for _ in range(size // 65536):
            writer.write(b"x" * 65536)
            await writer.drain()
        return True

    server = await serve(large)
    response = await client.request("GET", server.url(), ())
    received = 0
    try:
        async for chunk in response.iter_chunks():
            received += len(chunk)
            await asyncio.sleep(0)  # a slow consumer: reading pauses, then resumes
    finally:
        response.release()
    assert received == size
    assert await fetch(client, server.url()) == (200, b"x" * size)  # read whole too
    assert server.connections == 1


async def test_the_deadline_covers_a_body_that_never_ends(serve):
    async def stalls(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{")
        await asyncio.sleep(5)
        return False

    server = await serve(stalls)
    client = HelixClient(pool_size=2, timeout=0.3)
    try:
        response = await client.request("GET", server.url(), ())
        with pytest.raises(TimeoutError):
            await response.read()
        response.release()
        with pytest.raises(TimeoutError):
            await fetch(client, server.url())  # a new connection, not the dead one
    finally:
        await client.close()
    assert server.connections == 2


async def test_a_caller_waiting_for_a_slot_times_out(serve):
    server = await serve(keep(ok()))
    client = HelixClient(pool_size=1, timeout=0.2)
    try:
        held = await client.request("GET", server.url(), ())  # holds the only slot
        with pytest.raises(TimeoutError):
            await fetch(client, server.url())
        assert len(server.requests) == 1
        held.release()  # its own deadline has passed too: the connection is closed
        assert (await fetch(client, server.url()))[0] == 200
    finally:
        await client.close()


async def test_a_cancelled_caller_frees_its_slot_and_connection(serve):
    server = await serve(never_answers)
    client = HelixClient(pool_size=1, timeout=5)
    try:
        call = asyncio.ensure_future(fetch(client, server.url()))
        await asyncio.sleep(0.05)
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await call
        server.answer = keep(ok())
        assert (await asyncio.wait_for(fetch(client, server.url()), 2))[0] == 200
    finally:
        await client.close()
    assert server.connections == 2


@pytest.mark.parametrize("answer", [
    b"SMTP ready\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n",
], ids=["not-http", "two-lengths", "oversized-headers"])
async def test_an_answer_that_is_not_sane_http_breaks_the_call(serve, client, answer):
    server = await serve(keep(answer))
    with pytest.raises(ConnectionBroken):
        await fetch(client, server.url())


async def test_a_reset_before_the_answer_breaks_the_call(serve, client):
    server = await serve(lambda request, writer: asyncio.sleep(0, False))
    with pytest.raises(ConnectionBroken):
        await fetch(client, server.url(), "POST", b"{}")


async def test_nobody_listening_fails_to_connect(client):
    server = ScriptedServer(keep(ok()))
    await server.start()
    url = server.url()
    await server.close()
    with pytest.raises(ConnectFailed):
        await fetch(client, url)


async def test_a_header_value_with_a_line_break_is_refused_before_sending(serve, client):
    server = await serve(keep(ok()))
    with pytest.raises(ValueError, match="Authorization"):
        await fetch(client, server.url(), headers=(("Authorization", "Bearer x\r\nHost: evil"),))
    assert server.requests == []
    assert (await fetch(client, server.url()))[0] == 200  # the slot was given back


async def test_close_ends_calls_in_flight(serve):
    server = await serve(never_answers)
    client = HelixClient(pool_size=2, timeout=5)
    call = asyncio.ensure_future(fetch(client, server.url()))
    await asyncio.sleep(0.05)
    await client.close()
    with pytest.raises(ConnectionBroken):
        await asyncio.wait_for(call, 2)
    with pytest.raises(ConnectionBroken):
        await fetch(client, server.url())


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> tuple[str, str]:
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl on PATH")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return str(cert), str(key)


async def test_https_verifies_the_certificate(tls_files):
    cert, key = tls_files
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    server = ScriptedServer(keep(ok()))
    await server.start(server_context)
    trusting = HelixClient(pool_size=2, timeout=2,
                           ssl_context=ssl.create_default_context(cafile=cert))
    default = HelixClient(pool_size=2, timeout=2)
    try:
        for _ in range(2):
            assert await fetch(trusting, server.url(scheme="https")) == (200, b'{"data":[]}')
        assert server.connections == 1
        with pytest.raises(ConnectFailed):  # self-signed: not trusted by default
            await fetch(default, server.url(scheme="https"))
    finally:
        await trusting.close()
        await default.close()
        await server.close()


def test_the_client_runs_on_uvloop():
    """Production runs on uvloop (proxy.server): its transports differ from asyncio's."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> tuple[int, list[bytes]]:
        server = ScriptedServer(keep(ok(b"x" * 300_000)))
        await server.start()
        client = HelixClient(pool_size=2, timeout=2)
        try:
            bodies = [(await fetch(client, server.url()))[1] for _ in range(3)]
            response = await client.request("GET", server.url(), ())
            async for chunk in response.iter_chunks():
                bodies.append(chunk)
            response.release()
        finally:
            await client.close()
            await server.close()
        return server.connections, bodies

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        connections, bodies = runner.run(scenario())
    assert connections == 1
    assert b"".join(bodies) == b"x" * 300_000 * 4
