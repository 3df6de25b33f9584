"""proxy.upstream.helix_client's pool: connections kept alive, reused, limited, and never
reused once out of step with their server.
"""

from __future__ import annotations

import asyncio
import socket

import pytest
from yarl import URL

from proxy.errors import ConnectionBroken
from proxy.upstream.helix_client import HelixClient
from tests.unit.upstream.helix_client.scripted_server import (
    echo_keeping_writers,
    fetch,
    keep,
    ok,
    target,
)


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


@pytest.mark.parametrize("extra", [
    ok(b"/someone-else"),
    b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n/someone-",
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"garbage",
], ids=["a-second-answer", "part-of-an-answer", "an-interim-answer", "garbage"])
async def test_bytes_after_a_whole_answer_close_the_connection(serve, client, extra):
    async def answer_and_more(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(ok(target(request)) + extra)  # one write: one chunk for the client
        return True

    server = await serve(answer_and_more)
    assert await fetch(client, server.url("/first")) == (200, b"/first")
    assert await fetch(client, server.url("/second")) == (200, b"/second")
    assert server.connections == 2


@pytest.mark.parametrize("delivered", [True, False], ids=["read-while-idle", "still-unread"])
async def test_an_answer_sent_while_the_connection_is_idle_closes_it(serve, client, delivered):
    writers: list[asyncio.StreamWriter] = []
    server = await serve(echo_keeping_writers(writers))
    assert await fetch(client, server.url("/first")) == (200, b"/first")
    await asyncio.sleep(0.05)  # idle in the pool
    writers[0].write(ok(b"/nobody-asked"))  # on loopback, in the client's socket at once
    if delivered:
        await asyncio.sleep(0.05)
    # Else the next call takes the connection before the event loop has read
    # those bytes, as a busy loop would.
    assert await fetch(client, server.url("/second")) == (200, b"/second")
    assert server.connections == 2


async def test_a_connection_the_server_closed_is_not_reused_even_unread(serve, client):
    writers: list[asyncio.StreamWriter] = []
    server = await serve(echo_keeping_writers(writers))
    assert await fetch(client, server.url("/first")) == (200, b"/first")
    writers[0].get_extra_info("socket").shutdown(socket.SHUT_WR)  # the server's FIN, unread
    # A POST is never retried: it must not be sent on the closed connection.
    assert await fetch(client, server.url("/second"), "POST", b"{}") == (200, b"/second")
    assert server.connections == 2


async def test_an_answer_before_the_request_was_sent_whole_is_not_reused(client):
    """A server that answers a POST before reading its body, then reads on for a next request.

    What it reads next is the rest of the body, here ending in a request of
    its own: reused, the connection would hand that request's answer to the
    next caller.
    """
    connections = 0

    async def ignores_bodies(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            while True:
                writer.write(ok(target(await reader.readuntil(b"\r\n\r\n"))))
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client left, or the test ended
        finally:
            writer.close()

    body = b"x" * (32 * 1024 * 1024) + b" /smuggled HTTP/1.1\r\n\r\n"
    server = await asyncio.start_server(ignores_bodies, "127.0.0.1", 0, limit=len(body) * 2)
    url = URL(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    try:
        assert await fetch(client, url / "first", "POST", body) == (200, b"/first")
        assert await fetch(client, url / "second") == (200, b"/second")
    finally:
        server.close()
        await server.wait_closed()
    assert connections == 2


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
