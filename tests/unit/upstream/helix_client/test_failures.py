"""proxy.upstream.helix_client when things go wrong: deadlines, cancellation, broken answers,
no listener, refused headers, closing; and TLS and uvloop.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import subprocess

import pytest

from proxy.errors import ConnectFailed, ConnectionBroken
from proxy.upstream.helix_client import HelixClient
from tests.unit.upstream.helix_client.scripted_server import (
    ScriptedServer,
    fetch,
    keep,
    never_answers,
    ok,
)


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
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
], ids=["not-http", "two-lengths", "oversized-headers", "unasked-upgrade"])
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
