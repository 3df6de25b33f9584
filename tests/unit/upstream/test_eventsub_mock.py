"""proxy.upstream.eventsub against the mock Twitch's EventSub WebSocket, over real sockets.

The mock (:mod:`proxy.mock_twitch`) behaves like Twitch: it pings and closes
with 4002 on a missing pong, closes with 4001 on any frame from the client,
4003 on an unused connection, and follows ``session_reconnect`` with the 4004
grace. Subscriptions are created over its Helix with a user token, as the
relay will. Its keepalive floor is lowered to 1 s so that silence is quick to
reach; nothing here asserts how long anything took.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from proxy.mock_twitch import DEFAULT_USER_ID, MockTwitch, create_mock_app
from proxy.upstream.eventsub import EventSubSocket
from tests.unit.upstream.test_eventsub_support import WAIT, Collector

CLIENT_ID = "mock-client-id"
FOLLOW = {"type": "channel.follow", "version": "2",
          "condition": {"broadcaster_user_id": DEFAULT_USER_ID,
                        "moderator_user_id": DEFAULT_USER_ID}}


@pytest.fixture
def state() -> MockTwitch:
    state = MockTwitch()
    state.eventsub.keepalive_floor = 1
    state.eventsub.ping_interval = 0.2  # many pings: every one must be answered
    return state


@pytest.fixture
async def server(aiohttp_server, state):
    return await aiohttp_server(create_mock_app(state=state))


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def token(state) -> str:
    return state.issue_tokens(DEFAULT_USER_ID, ["moderator:read:followers"])["access_token"]


@pytest.fixture
async def eventsub(http, server):
    socket = EventSubSocket(http, str(server.make_url("/ws").with_scheme("ws")),
                            keepalive_timeout=5, keepalive_margin=1.0)
    yield socket
    await socket.close()


async def subscribe(http, server, token, session_id) -> dict:
    """Create a channel.follow subscription on the session, as the relay will."""
    body = {**FOLLOW, "transport": {"method": "websocket", "session_id": session_id}}
    async with http.post(server.make_url("/helix/eventsub/subscriptions"), json=body,
                         headers={"Authorization": f"Bearer {token}",
                                  "Client-Id": CLIENT_ID}) as response:
        assert response.status == 202, await response.text()
        return (await response.json())["data"][0]


async def control(http, server, name, **body) -> dict:
    async with http.post(server.make_url(f"/_mock/eventsub/{name}"), json=body) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def sent_notification_ids(http, server, session_id) -> list[str]:
    """The message ids of every notification the mock sent on the session."""
    async with http.get(server.make_url("/_mock/eventsub/messages"),
                        params={"session_id": session_id,
                                "message_type": "notification"}) as response:
        return [entry["message_id"] for entry in (await response.json())["messages"]]


async def subscribed(eventsub, http, server, token) -> tuple[str, Collector]:
    session_id = await eventsub.connect()
    subscription = await subscribe(http, server, token, session_id)
    assert subscription["transport"]["session_id"] == session_id
    return session_id, Collector(eventsub)


async def test_a_triggered_follow_arrives(eventsub, http, server, state, token):
    session_id, reader = await subscribed(eventsub, http, server, token)
    assert session_id in state.eventsub.sessions
    sent = await control(http, server, "trigger", type="channel.follow",
                         event={"user_login": "newfollower"})
    await reader.count(1)
    (message,) = reader.messages
    assert message.message_id == sent["sent"][0]["message_id"]
    assert message.message_type == "notification"
    assert message.subscription["type"] == "channel.follow"
    assert message.event is not None and message.event["user_login"] == "newfollower"


async def test_resent_notifications_delivered_once(eventsub, http, server, token):
    session_id, reader = await subscribed(eventsub, http, server, token)
    await control(http, server, "trigger", type="channel.follow", count=3, duplicate=True)
    await control(http, server, "resend", session_id=session_id)
    await control(http, server, "trigger", type="channel.follow")
    await reader.count(4)
    sent = await sent_notification_ids(http, server, session_id)
    assert len(sent) == 8
    assert reader.ids == list(dict.fromkeys(sent))
    assert eventsub.stats.duplicates_dropped == 4


async def test_reconnect_mid_stream_loses_and_duplicates_nothing(eventsub, http, server, token):
    session_id, reader = await subscribed(eventsub, http, server, token)

    async def trigger_steadily() -> None:
        for _ in range(30):
            await control(http, server, "trigger", type="channel.follow")
            await asyncio.sleep(0.01)

    triggers = asyncio.create_task(trigger_steadily())
    await reader.count(5)
    urls = await control(http, server, "reconnect", session_id=session_id)
    assert list(urls["reconnect_urls"]) == [session_id]
    await asyncio.wait_for(triggers, WAIT)
    await reader.count(30)
    sent = await sent_notification_ids(http, server, eventsub.session_id)
    assert len(set(sent)) == 30
    assert sorted(reader.ids) == sorted(set(sent))
    assert len(reader.ids) == 30
    assert eventsub.stats.reconnects == {"session_reconnect": 1}
    # The subscription carried over: no resubscribe, and events still flow.
    await control(http, server, "trigger", type="channel.follow")
    await reader.count(31)
    assert not reader.task.done()


async def test_revocation_arrives(eventsub, http, server, token):
    _, reader = await subscribed(eventsub, http, server, token)
    await control(http, server, "revoke", type="channel.follow", status="user_removed")
    await reader.count(1)
    (message,) = reader.messages
    assert (message.message_type, message.event) == ("revocation", None)
    assert message.subscription["status"] == "user_removed"


async def test_silence_is_a_dead_connection(http, server, token):
    eventsub = EventSubSocket(http, str(server.make_url("/ws").with_scheme("ws")),
                              keepalive_timeout=1, keepalive_margin=0.5)
    try:
        session_id, reader = await subscribed(eventsub, http, server, token)
        await control(http, server, "silence", session_id=session_id)
        ended = await reader.end()
        assert (ended.reason, ended.close_code, ended.retry) == ("keepalive_timeout", None, True)
    finally:
        await eventsub.close()


async def test_keepalives_keep_a_quiet_session(http, server, token):
    eventsub = EventSubSocket(http, str(server.make_url("/ws").with_scheme("ws")),
                              keepalive_timeout=1, keepalive_margin=1.0)
    try:
        _, reader = await subscribed(eventsub, http, server, token)
        await asyncio.sleep(4)  # only keepalives and pings, several keepalive windows
        assert not reader.task.done(), reader.ended
        await control(http, server, "trigger", type="channel.follow")
        await reader.count(1)
    finally:
        await eventsub.close()


@pytest.mark.parametrize("code", [4000, 4005, 4006])
async def test_dropped_with_a_close_code(eventsub, http, server, token, code):
    session_id, reader = await subscribed(eventsub, http, server, token)
    await control(http, server, "drop", session_id=session_id, code=code)
    ended = await reader.end()
    assert (ended.reason, ended.close_code, ended.retry) == ("closed", code, True)


async def test_cut_connection_is_a_network_loss(eventsub, http, server, token):
    session_id, reader = await subscribed(eventsub, http, server, token)
    await control(http, server, "drop", session_id=session_id, cut=True)
    ended = await reader.end()
    assert (ended.reason, ended.close_code, ended.retry) == ("network", None, True)


async def test_an_unused_connection_is_closed_4003(http, server):
    eventsub = EventSubSocket(http, str(server.make_url("/ws").with_scheme("ws")),
                              keepalive_timeout=1, keepalive_margin=5.0)
    try:
        await eventsub.connect()
        ended = await Collector(eventsub).end()
        assert (ended.reason, ended.close_code) == ("closed", 4003)
        assert "only if subscriptions are still wanted" in str(ended)
    finally:
        await eventsub.close()
