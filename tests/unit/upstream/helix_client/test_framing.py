"""proxy.upstream.helix_client reading answers: bodiless, interim, chunked, repeated headers,
large bodies under back-pressure.
"""

from __future__ import annotations

import asyncio

import pytest

from proxy.upstream.helix_client import HelixClient
from tests.unit.upstream.helix_client.scripted_server import fetch, keep, ok, target


async def test_a_head_answer_has_no_body_whatever_its_headers_say(serve):
    async def head_then_get(request: bytes, writer: asyncio.StreamWriter) -> bool:
        if request.startswith(b"HEAD "):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n")
        else:
            writer.write(ok(target(request)))
        return True

    server = await serve(head_then_get)
    client = HelixClient(pool_size=2, timeout=0.5)
    try:
        response = await client.request("HEAD", server.url("/first"), ())
        try:
            assert response.content_length == 11
            assert await response.read() == b""
        finally:
            response.release()
        assert await fetch(client, server.url("/second")) == (200, b"/second")
    finally:
        await client.close()
    # llhttp cannot be told that an answer was to a HEAD: it would wait for
    # 11 bytes of body, so the connection is not kept.
    assert server.connections == 2


@pytest.mark.parametrize("status", [204, 304])
async def test_a_bodiless_answer_does_not_take_what_follows_as_its_body(serve, client, status):
    async def bodiless_then_echo(request: bytes, writer: asyncio.StreamWriter) -> bool:
        if b" /first " in request:
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 5\r\n\r\nhello".encode())
        else:
            writer.write(ok(target(request)))
        return True

    server = await serve(bodiless_then_echo)
    assert await fetch(client, server.url("/first")) == (status, b"")
    assert await fetch(client, server.url("/second")) == (200, b"/second")
    assert server.connections == 2


async def test_interim_answers_are_skipped(serve, client):
    server = await serve(keep(b"HTTP/1.1 100 Continue\r\n\r\n"
                              b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n"
                              + ok(b"{}")))
    response = await client.request("POST", server.url(), (), b"{}")
    try:
        assert response.status == 200
        assert "Link" not in response.headers  # the interim answer's headers are not the answer's
        assert await response.read() == b"{}"
    finally:
        response.release()
    assert await fetch(client, server.url()) == (200, b"{}")
    assert server.connections == 1


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
