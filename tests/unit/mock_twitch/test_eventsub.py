"""The mock's EventSub WebSocket, over real sockets: it must behave like Twitch's.

Helpers here are shared with the other ``test_eventsub_*`` files. Time-related
knobs are lowered (keepalive floor 1 s, short grace) so the protocol runs
fast; nothing asserts how long anything took.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from proxy.mock_twitch import DEFAULT_USER_ID, MockTwitch, create_mock_app

CLIENT_ID = "mock-client-id"
ALL_SCOPES = ["moderator:read:followers", "channel:read:subscriptions", "bits:read",
              "channel:read:redemptions", "user:read:chat"]
FOLLOW = {"type": "channel.follow", "version": "2",
          "condition": {"broadcaster_user_id": DEFAULT_USER_ID,
                        "moderator_user_id": DEFAULT_USER_ID}}


@pytest.fixture
def mock():
    state = MockTwitch()
    state.eventsub.keepalive_floor = 1
    return state


@pytest.fixture
async def client(aiohttp_client, mock):
    return await aiohttp_client(create_mock_app(state=mock))


@pytest.fixture
def token(mock):
    return mock.issue_tokens(DEFAULT_USER_ID, ALL_SCOPES)["access_token"]


def helix_headers(access_token, client_id=CLIENT_ID):
    return {"Authorization": f"Bearer {access_token}", "Client-Id": client_id}


async def connect(client, keepalive=10, **options):
    """Open an EventSub socket; return it and its welcome's session."""
    ws = await client.ws_connect(f"/ws?keepalive_timeout_seconds={keepalive}", **options)
    welcome = await ws.receive_json(timeout=5)
    assert welcome["metadata"]["message_type"] == "session_welcome"
    return ws, welcome["payload"]["session"]


async def subscribe(client, access_token, session_id, spec=FOLLOW, **extra):
    """POST /helix/eventsub/subscriptions; return (status, body)."""
    body = {"transport": {"method": "websocket", "session_id": session_id}, **spec, **extra}
    response = await client.post("/helix/eventsub/subscriptions", json=body,
                                 headers=helix_headers(access_token))
    return response.status, await response.json()


async def subscribed_socket(client, access_token, keepalive=10, spec=FOLLOW):
    """A socket with one subscription; return (ws, session id, subscription)."""
    ws, session = await connect(client, keepalive)
    status, body = await subscribe(client, access_token, session["id"], spec)
    assert status == 202, body
    return ws, session["id"], body["data"][0]


async def control(client, name, **body):
    """POST /_mock/eventsub/<name>; return the JSON answer (asserting a 200)."""
    response = await client.post(f"/_mock/eventsub/{name}", json=body)
    assert response.status == 200, await response.text()
    return await response.json()


async def next_message(ws):
    """The next text frame as JSON, past keepalives."""
    while True:
        message = await ws.receive_json(timeout=5)
        if message["metadata"]["message_type"] != "session_keepalive":
            return message


async def close_code(ws):
    """Read until the server closes; return the close code it sent (None: no close frame)."""
    while True:
        message = await ws.receive(timeout=5)
        if message.type == aiohttp.WSMsgType.CLOSE:
            return message.data
        if message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
            return None


async def until(condition):
    """Wait (a few seconds at most) until the mock's state shows ``condition()``."""
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the mock's state never got there")


# -- welcome and keepalive ---------------------------------------------------------


@pytest.mark.parametrize(("asked", "given"), [(5, 10), (10, 10), (30, 30), (1000, 600)])
async def test_welcome_carries_the_clamped_keepalive(client, mock, asked, given):
    mock.eventsub.keepalive_floor = 10  # Twitch's own floor
    ws, session = await connect(client, asked)
    assert session["keepalive_timeout_seconds"] == given
    assert session["status"] == "connected"
    assert session["reconnect_url"] is None
    assert session["id"] in mock.eventsub.sessions
    await ws.close()


async def test_welcome_without_a_keepalive_asks_for_twitchs_default(client):
    ws = await client.ws_connect("/ws")
    welcome = await ws.receive_json(timeout=5)
    assert welcome["payload"]["session"]["keepalive_timeout_seconds"] == 10
    await ws.close()


async def test_a_keepalive_that_is_no_number_is_refused(client):
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect("/ws?keepalive_timeout_seconds=soon")
    assert refused.value.status == 400


async def test_keepalive_arrives_when_nothing_else_was_sent(client, mock, token):
    ws, session_id, _ = await subscribed_socket(client, token, keepalive=1)
    message = await ws.receive_json(timeout=5)
    assert message["metadata"]["message_type"] == "session_keepalive"
    assert message["payload"] == {}
    log = mock.eventsub.sessions[session_id].log
    assert [entry["message_type"] for entry in log][:2] == ["session_welcome",
                                                            "session_keepalive"]
    assert log[0]["sequence"] < log[1]["sequence"]
    await ws.close()


# -- pings, inbound traffic, unused connections -------------------------------------------


async def test_the_server_pings_and_an_answering_client_stays(client, mock, token):
    mock.eventsub.ping_interval = 0.1
    ws, session_id, _ = await subscribed_socket(client, token)
    # Reading, aiohttp answers every ping. (Its receive(timeout=) starts afresh after each
    # ping, so only an outer timeout bounds the wait.)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.6):
            await ws.receive()
    assert not ws.closed
    assert session_id in mock.eventsub.sessions
    await ws.close()


async def test_an_unanswered_ping_closes_with_4002(client, mock, token):
    mock.eventsub.ping_interval = 0.1
    ws, session = await connect(client, autoping=False)
    await subscribe(client, token, session["id"])
    assert (await ws.receive(timeout=5)).type == aiohttp.WSMsgType.PING
    assert await close_code(ws) == 4002
    listed = await list_subscriptions(client, token)
    assert listed["data"][0]["status"] == "websocket_failed_ping_pong"


async def list_subscriptions(client, access_token, **query):
    response = await client.get("/helix/eventsub/subscriptions", params=query,
                                headers=helix_headers(access_token))
    assert response.status == 200
    return await response.json()


async def test_inbound_data_closes_with_4001(client, mock, token):
    ws, session_id, _ = await subscribed_socket(client, token)
    await ws.send_str('{"type": "PING"}')
    assert await close_code(ws) == 4001
    assert ws.close_code == 4001
    assert session_id not in mock.eventsub.sessions
    listed = await list_subscriptions(client, token)
    assert listed["data"][0]["status"] == "websocket_received_inbound_traffic"
    assert listed["total_cost"] == 0


async def test_a_socket_without_subscription_closes_with_4003(client, mock):
    ws, session = await connect(client, keepalive=1)
    assert await close_code(ws) == 4003
    assert session["id"] not in mock.eventsub.sessions


async def test_a_subscribed_socket_outlives_its_first_keepalive_window(client, mock, token):
    ws, session_id, _ = await subscribed_socket(client, token, keepalive=1)
    for _ in range(2):  # two keepalive windows, two keepalives
        message = await ws.receive_json(timeout=5)
        assert message["metadata"]["message_type"] == "session_keepalive"
    assert session_id in mock.eventsub.sessions
    await ws.close()


# -- session_reconnect ---------------------------------------------------------------------


async def test_reconnect_moves_the_session_and_closes_the_old_socket_with_4004(
        client, mock, token):
    mock.eventsub.reconnect_grace = 0.5
    old, session_id, sub = await subscribed_socket(client, token)
    urls = (await control(client, "reconnect", session_id=session_id))["reconnect_urls"]
    message = await next_message(old)
    assert message["metadata"]["message_type"] == "session_reconnect"
    session = message["payload"]["session"]
    assert session["status"] == "reconnecting"
    assert session["keepalive_timeout_seconds"] is None
    assert session["reconnect_url"] == urls[session_id]

    new = await client.session.ws_connect(session["reconnect_url"])
    welcome = await new.receive_json(timeout=5)
    assert welcome["metadata"]["message_type"] == "session_welcome"
    assert welcome["payload"]["session"]["id"] == session_id
    assert welcome["payload"]["session"]["keepalive_timeout_seconds"] == 10

    sent = await control(client, "trigger", type="channel.follow")
    notification = await next_message(new)
    assert notification["metadata"]["message_id"] == sent["sent"][0]["message_id"]
    assert notification["payload"]["subscription"]["id"] == sub["id"]
    assert await close_code(old) == 4004
    assert not new.closed
    assert [s["id"] for s in (await list_subscriptions(client, token))["data"]] == [sub["id"]]
    assert mock.eventsub.snapshot()["open_sockets"] == 1
    await new.close()


async def test_until_the_new_welcome_events_go_to_the_old_socket(client, token):
    old, session_id, _ = await subscribed_socket(client, token)
    await control(client, "reconnect", session_id=session_id)
    await next_message(old)  # session_reconnect
    sent = await control(client, "trigger", type="channel.follow")
    message = await next_message(old)
    assert message["metadata"]["message_id"] == sent["sent"][0]["message_id"]
    await old.close()


async def test_the_client_may_close_the_old_socket_at_once(client, mock, token):
    old, session_id, _ = await subscribed_socket(client, token)
    await control(client, "reconnect", session_id=session_id)
    url = (await next_message(old))["payload"]["session"]["reconnect_url"]
    new = await client.session.ws_connect(url)
    await new.receive_json(timeout=5)
    await old.close()
    await asyncio.sleep(0.1)
    state = mock.eventsub.snapshot()
    assert state["open_sockets"] == 1
    assert [s["id"] for s in state["sessions"]] == [session_id]
    assert len(state["sessions"][0]["subscriptions"]) == 1
    await new.close()


async def test_an_ignored_reconnect_ends_the_session_with_4004(client, mock, token):
    mock.eventsub.reconnect_grace = 0.2
    old, session_id, _ = await subscribed_socket(client, token)
    url = (await control(client, "reconnect", session_id=session_id))["reconnect_urls"][session_id]
    assert await close_code(old) == 4004
    assert session_id not in mock.eventsub.sessions
    assert (await list_subscriptions(client, token))["data"][0]["status"] == \
        "websocket_disconnected"
    late = await client.session.ws_connect(url)
    assert await close_code(late) == 4007


async def test_a_reconnect_url_works_once(client, token):
    old, session_id, _ = await subscribed_socket(client, token)
    url = (await control(client, "reconnect", session_id=session_id))["reconnect_urls"][session_id]
    first = await client.session.ws_connect(url)
    assert (await first.receive_json(timeout=5))["payload"]["session"]["id"] == session_id
    second = await client.session.ws_connect(url)
    assert await close_code(second) == 4007
    assert not first.closed
    await first.close()
    await old.close()


# -- at-least-once delivery, revocation, drops, silence ----------------------------------


async def test_a_duplicate_keeps_its_message_id(client, mock, token):
    ws, session_id, _ = await subscribed_socket(client, token)
    sent = await control(client, "trigger", type="channel.follow", duplicate=True)
    first, second = await next_message(ws), await next_message(ws)
    assert first == second
    assert first["metadata"]["message_id"] == sent["sent"][0]["message_id"]
    await control(client, "resend", session_id=session_id)
    assert await next_message(ws) == first
    log = [e for e in mock.eventsub.sessions[session_id].log
           if e["message_type"] == "notification"]
    assert [e["duplicate"] for e in log] == [False, True, True]
    assert len({e["message_id"] for e in log}) == 1
    await ws.close()


async def test_a_revocation_says_why_and_ends_the_subscription(client, mock, token):
    ws, session_id, sub = await subscribed_socket(client, token)
    revoked = await control(client, "revoke", subscription_id=sub["id"], status="user_removed")
    assert revoked == {"revoked": [sub["id"]]}
    message = await next_message(ws)
    assert message["metadata"]["message_type"] == "revocation"
    assert message["metadata"]["subscription_type"] == "channel.follow"
    assert message["payload"]["subscription"]["id"] == sub["id"]
    assert message["payload"]["subscription"]["status"] == "user_removed"
    assert "event" not in message["payload"]
    assert (await control(client, "trigger", type="channel.follow"))["matched"] == 0
    assert (await list_subscriptions(client, token))["data"][0]["status"] == "user_removed"
    await ws.close()


@pytest.mark.parametrize("code", range(4000, 4008))
async def test_drop_closes_with_any_of_twitchs_codes(client, mock, token, code):
    ws, session_id, _ = await subscribed_socket(client, token)
    assert await control(client, "drop", session_id=session_id, code=code) == \
        {"dropped": [session_id]}
    assert await close_code(ws) == code
    assert session_id not in mock.eventsub.sessions
    assert (await list_subscriptions(client, token))["total_cost"] == 0


async def test_a_cut_connection_ends_without_a_close_frame(client, mock, token):
    ws, session_id, _ = await subscribed_socket(client, token)
    await control(client, "drop", session_id=session_id, cut=True)
    assert await close_code(ws) is None
    assert session_id not in mock.eventsub.sessions
    assert (await list_subscriptions(client, token))["data"][0]["status"] == \
        "websocket_network_error"


async def test_a_silenced_session_sends_nothing_at_all(client, mock, token):
    mock.eventsub.ping_interval = 0.2
    ws, session = await connect(client, keepalive=1, autoping=False)
    await subscribe(client, token, session["id"])
    await control(client, "silence", session_id=session["id"])
    sent = await control(client, "trigger", type="channel.follow")
    assert (sent["sent"], sent["undelivered"]) == ([], 1)
    received = []
    with pytest.raises(asyncio.TimeoutError):
        for _ in range(3):  # neither a keepalive, nor a ping, nor the notification
            received.append(await ws.receive(timeout=2.5))
    assert [m for m in received if m.type != aiohttp.WSMsgType.PING] == []
    assert not ws.closed
    await ws.close()
