"""proxy.mock_twitch.control: the fault knobs (failures, delays, held refreshes), /_mock routes."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiohttp import web

from proxy.mock_twitch import DEFAULT_USER_ID, create_mock_app
from tests.unit.mock_twitch.twitch_calls import (
    CLIENT_ID,
    CLIENT_SECRET,
    SCOPES,
    control,
    helix_headers,
    post_token,
    refresh,
    validate,
    wait_for,
)

# -- faults, latency, holding ------------------------------------------------------


async def test_fail_next_overrides_one_response_each(client, mock, user_token):
    mock.fail_next["token"] = [(503, "<html><body>Service Unavailable</body></html>")]
    mock.queue_failure("validate", 500, {"status": 500, "message": "Internal Server Error"})
    mock.queue_failure("helix", 502, None, times=2)

    response = await client.post("/oauth2/token", data={"grant_type": "client_credentials"})
    assert (response.status, response.content_type) == (503, "text/html")
    assert (await post_token(client, grant_type="client_credentials"))[0] == 200
    assert (await validate(client, user_token)) == (
        500,
        {"status": 500, "message": "Internal Server Error"},
    )
    statuses = [
        (await client.get("/helix/users", headers=helix_headers(user_token))).status
        for _ in range(3)
    ]
    assert statuses == [502, 502, 200]
    assert mock.calls["helix:GET /users"] == 3


async def test_token_delay(client, mock):
    mock.token_delay = 0.2
    started = time.monotonic()

    await post_token(client, grant_type="client_credentials")

    assert time.monotonic() - started >= 0.2


async def test_hold_refresh_parks_refresh_grants(client, mock):
    tokens = mock.issue_tokens(DEFAULT_USER_ID, SCOPES)
    mock.hold_refresh = asyncio.Event()

    pending = asyncio.create_task(refresh(client, tokens["refresh_token"]))
    await wait_for(lambda: mock.calls["token:refresh_token"] == 1)
    assert (await post_token(client, grant_type="client_credentials"))[0] == 200  # not held
    assert not pending.done()
    mock.hold_refresh.set()

    assert (await pending)[0] == 200


@pytest.fixture
async def plain_server(mock):
    """The mock served like ``main()`` serves it: handlers are not cancelled on disconnect."""
    runner = web.AppRunner(create_mock_app(state=mock))
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield runner.addresses[0][:2]
    finally:
        await runner.cleanup()


async def test_refresh_held_when_the_caller_dies_leaves_the_token_unspent(plain_server, mock):
    host, port = plain_server
    tokens = mock.issue_tokens(DEFAULT_USER_ID, SCOPES)
    mock.hold_refresh = asyncio.Event()
    form = {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "grant_type": "refresh_token",
        "refresh_token": tokens["refresh_token"],
    }
    payload = aiohttp.FormData(form)().decode()
    _, writer = await asyncio.open_connection(host, port)
    writer.write(
        (
            f"POST /oauth2/token HTTP/1.1\r\nHost: {host}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n{payload}"
        ).encode()
    )
    await writer.drain()
    await wait_for(lambda: mock.calls["token:refresh_token"] == 1)
    writer.close()  # the proxy is killed mid-refresh
    await writer.wait_closed()
    await asyncio.sleep(0.05)

    mock.hold_refresh.set()
    await asyncio.sleep(0.05)

    assert tokens["refresh_token"] in mock.refresh_tokens
    async with aiohttp.ClientSession() as session:
        response = await session.post(f"http://{host}:{port}/oauth2/token", data=form)
        assert response.status == 200


async def test_shutdown_releases_held_refreshes(mock):
    runner = web.AppRunner(create_mock_app(state=mock))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    tokens = mock.issue_tokens(DEFAULT_USER_ID, SCOPES)
    mock.hold_refresh = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        form = {
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
        }
        pending = asyncio.create_task(session.post(f"http://{host}:{port}/oauth2/token", data=form))
        await wait_for(lambda: mock.calls["token:refresh_token"] == 1)
        started = time.monotonic()

        await runner.cleanup()  # would wait out the 60 s shutdown timeout if still parked

        assert time.monotonic() - started < 5
        response = await pending
        assert response.status == 200
        response.release()


async def test_control_endpoints_drive_the_mock(client, mock):
    tokens = await control(client, "issue", {"user_id": DEFAULT_USER_ID, "scopes": SCOPES})
    assert tokens["scope"] == SCOPES
    await validate(client, tokens["access_token"])
    assert await (await client.get("/_mock/calls")).json() == {"validate": 1}
    assert await control(client, "reset_calls") == {"calls": {}}
    assert mock.calls == {}

    assert await control(client, "expire") == {"expired": 1}
    assert await control(client, "expire", {"user_id": "nobody"}) == {"expired": 0}
    await post_token(client, grant_type="client_credentials")
    assert await control(client, "expire_app") == {"expired": 1}
    assert await control(client, "revoke_refresh") == {"revoked": 1}
    assert (await refresh(client, tokens["refresh_token"]))[0] == 400

    assert await control(
        client, "fail", {"endpoint": "token", "status": 502, "body": "<h1>Bad gateway</h1>"}
    ) == {"queued": 1}
    assert mock.fail_next["token"] == [(502, "<h1>Bad gateway</h1>")]
    response = await client.post("/_mock/fail", json={"endpoint": "nope", "status": 500})
    assert response.status == 400

    assert await control(client, "delay", {"token": 0.5, "helix": 0.25}) == {
        "token": 0.5,
        "helix": 0.25,
    }
    assert await control(client, "delay", {"token": 0}) == {"token": 0.0, "helix": 0.25}
    assert await control(client, "ratelimit", {"limit": 5}) == {"limit": 5}
    assert mock.ratelimit_limit == 5

    assert await control(client, "hold_refresh", {"hold": True}) == {"hold": True}
    held = mock.hold_refresh
    assert held is not None and not held.is_set()
    assert await control(client, "hold_refresh", {"hold": False}) == {"hold": False}
    assert held.is_set() and mock.hold_refresh is None

    await control(client, "add_user", {"user_id": "7", "login": "seven"})
    assert await control(client, "set_live", {"user_id": "7", "title": "Live!"}) == {"live": True}
    assert mock.streams["7"].title == "Live!"
    assert (await control(client, "advance", {"seconds": 30}))["clock_offset"] == 30

    state = await (await client.get("/_mock/state")).json()
    assert state["refresh_reuses"] == 0 and state["refresh_tokens"] == 0


async def test_control_helix_requests(client, mock, user_token):
    await client.post("/helix/chat/messages?x=1", data=b"{}", headers=helix_headers(user_token))

    (recorded,) = await (await client.get("/_mock/helix_requests")).json()

    assert recorded["method"] == "POST" and recorded["path"] == "/chat/messages"
    assert recorded["query_string"] == "x=1" and recorded["body"] == "{}"
    assert recorded["headers"]["Client-Id"] == CLIENT_ID
