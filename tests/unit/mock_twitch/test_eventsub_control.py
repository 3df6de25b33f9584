"""The mock's /_mock/eventsub/ control endpoints: events on demand, the state view, the knobs."""

from __future__ import annotations

import pytest
from yarl import URL

from proxy.mock_twitch import DEFAULT_USER_ID, DEFAULT_USER_LOGIN, ws_url
from tests.unit.mock_twitch.test_eventsub import (
    FOLLOW,
    client,  # noqa: F401 - fixtures shared with the socket tests
    connect,
    control,
    mock,  # noqa: F401
    next_message,
    subscribe,
    subscribed_socket,
    token,  # noqa: F401
)

OTHER_USER = "12826"
OWN = {"broadcaster_user_id": DEFAULT_USER_ID}
KIT_TYPES = [
    (FOLLOW, {"user_id", "user_login", "user_name", "broadcaster_user_id",
              "broadcaster_user_login", "broadcaster_user_name", "followed_at"}),
    ({"type": "channel.subscribe", "version": "1", "condition": OWN},
     {"user_id", "user_login", "user_name", "broadcaster_user_id", "broadcaster_user_login",
      "broadcaster_user_name", "tier", "is_gift"}),
    ({"type": "channel.cheer", "version": "1", "condition": OWN},
     {"is_anonymous", "user_id", "user_login", "user_name", "broadcaster_user_id",
      "broadcaster_user_login", "broadcaster_user_name", "message", "bits"}),
    ({"type": "channel.raid", "version": "1",
      "condition": {"to_broadcaster_user_id": DEFAULT_USER_ID}},
     {"from_broadcaster_user_id", "from_broadcaster_user_login", "from_broadcaster_user_name",
      "to_broadcaster_user_id", "to_broadcaster_user_login", "to_broadcaster_user_name",
      "viewers"}),
    ({"type": "channel.channel_points_custom_reward_redemption.add", "version": "1",
      "condition": OWN},
     {"id", "broadcaster_user_id", "broadcaster_user_login", "broadcaster_user_name",
      "user_id", "user_login", "user_name", "user_input", "status", "reward", "redeemed_at"}),
    ({"type": "channel.chat.message", "version": "1",
      "condition": {**OWN, "user_id": DEFAULT_USER_ID}},
     {"broadcaster_user_id", "broadcaster_user_login", "broadcaster_user_name",
      "chatter_user_id", "chatter_user_login", "chatter_user_name", "message_id", "message",
      "color", "badges", "message_type", "cheer", "reply", "channel_points_custom_reward_id",
      "source_broadcaster_user_id", "source_broadcaster_user_login",
      "source_broadcaster_user_name", "source_message_id", "source_badges"}),
]


@pytest.mark.parametrize(("spec", "fields"), KIT_TYPES, ids=[s["type"] for s, _ in KIT_TYPES])
async def test_trigger_sends_a_realistic_notification(client, token, spec, fields):  # noqa: F811
    ws, session_id, sub = await subscribed_socket(client, token, spec=spec)
    sent = await control(client, "trigger", type=spec["type"])
    assert sent["matched"] == 1
    message = await next_message(ws)
    metadata = message["metadata"]
    assert metadata["message_type"] == "notification"
    assert (metadata["subscription_type"], metadata["subscription_version"]) == \
        (spec["type"], spec["version"])
    assert metadata["message_id"] == sent["sent"][0]["message_id"]
    assert metadata["message_timestamp"].endswith("Z")
    assert message["payload"]["subscription"] == sub
    event = message["payload"]["event"]
    assert set(event) == fields
    channel = event.get("broadcaster_user_login", event.get("to_broadcaster_user_login"))
    assert channel == DEFAULT_USER_LOGIN
    await ws.close()


async def test_trigger_count_overrides_and_an_increasing_sequence(client, mock, token):  # noqa: F811
    ws, session_id, _ = await subscribed_socket(client, token)
    sent = await control(client, "trigger", type="channel.follow", count=3,
                         event={"user_login": "fan"})
    sequences = [entry["sequence"] for entry in sent["sent"]]
    assert sequences == sorted(sequences) and len(set(sequences)) == 3
    events = [(await next_message(ws))["payload"]["event"] for _ in range(3)]
    assert [e["user_login"] for e in events] == ["fan"] * 3
    assert len({e["user_id"] for e in events}) == 3  # three different followers
    logged = await client.get("/_mock/eventsub/messages",
                              params={"session_id": session_id, "message_type": "notification"})
    entries = (await logged.json())["messages"]
    assert [e["message_id"] for e in entries] == [e["message_id"] for e in sent["sent"]]
    assert [e["sequence"] for e in entries] == sequences
    await ws.close()


async def test_trigger_picks_one_user_or_one_session(client, mock, token):  # noqa: F811
    mock.add_user(OTHER_USER, "otheruser")
    other_token = mock.issue_tokens(OTHER_USER, [])["access_token"]
    raid = {"type": "channel.raid", "version": "1",
            "condition": {"to_broadcaster_user_id": OTHER_USER}}
    ours, our_session, _ = await subscribed_socket(client, token, spec=raid)
    theirs, their_session, _ = await subscribed_socket(client, other_token, spec=raid)
    assert (await control(client, "trigger", type="channel.raid"))["matched"] == 2
    only = await control(client, "trigger", type="channel.raid", user_id=DEFAULT_USER_ID)
    assert [s["session_id"] for s in only["sent"]] == [our_session]
    one = await control(client, "trigger", type="channel.raid", session_id=their_session)
    assert [s["session_id"] for s in one["sent"]] == [their_session]
    # One raid, two sessions subscribed alike: the same event, two messages.
    first, second = await next_message(ours), await next_message(theirs)
    assert first["payload"]["event"] == second["payload"]["event"]
    assert first["metadata"]["message_id"] != second["metadata"]["message_id"]
    await ours.close()
    await theirs.close()


async def test_the_state_view_counts_sockets_per_user_and_costs(client, mock, token):  # noqa: F811
    unused, _ = await connect(client)
    ws, session_id, _ = await subscribed_socket(client, token)
    await subscribe(client, token, session_id, {"type": "channel.raid", "version": "1",
                                                "condition": {"to_broadcaster_user_id": "7"}})
    response = await client.get("/_mock/eventsub/state")
    state = await response.json()
    assert state["open_sockets"] == 2
    assert state["open_sockets_by_user"] == {DEFAULT_USER_ID: 1}
    assert state["unbound_sockets"] == 1
    (ours,) = [s for s in state["sessions"] if s["id"] == session_id]
    assert (ours["user_id"], ours["client_id"]) == (DEFAULT_USER_ID, "mock-client-id")
    assert [s["cost"] for s in ours["subscriptions"]] == [0, 1]
    assert ours["total_cost"] == 1
    assert state["timing"] == {"keepalive_floor": 1, "reconnect_grace": 30.0,
                               "ping_interval": 10.0}
    await unused.close()
    await ws.close()


async def test_reconnect_all_sessions(client, token):  # noqa: F811
    first, first_id, _ = await subscribed_socket(client, token)
    second, second_id, _ = await subscribed_socket(client, token)
    urls = (await control(client, "reconnect"))["reconnect_urls"]
    assert set(urls) == {first_id, second_id}
    for ws in (first, second):
        assert (await next_message(ws))["metadata"]["message_type"] == "session_reconnect"
        await ws.close()


async def test_timing_knobs_and_their_bounds(client, mock):  # noqa: F811
    assert await control(client, "timing", keepalive_floor=2, reconnect_grace=0.5,
                         ping_interval=1) == \
        {"keepalive_floor": 2, "reconnect_grace": 0.5, "ping_interval": 1.0}
    ws, session = await connect(client, keepalive=1)
    assert session["keepalive_timeout_seconds"] == 2
    await ws.close()
    for bad in ({"keepalive_floor": 0}, {"keepalive_floor": 11}, {"reconnect_grace": -1},
                {"ping_interval": "often"}):
        response = await client.post("/_mock/eventsub/timing", json=bad)
        assert response.status == 400
        assert "error" in await response.json()


@pytest.mark.parametrize(("name", "body", "status"), [
    ("trigger", {}, 400),
    ("trigger", {"type": "channel.follow", "count": 0}, 400),
    ("trigger", {"type": "channel.follow", "event": []}, 400),
    ("drop", {"session_id": "nobody", "code": 4000}, 404),
    ("drop", {"code": "4000"}, 400),
    ("revoke", {"status": "bored"}, 400),
    ("resend", {}, 400),
    ("resend", {"session_id": "nobody"}, 404),
    ("reconnect", {"session_id": "nobody"}, 404),
    ("silence", {"user_id": 5}, 400),
])
async def test_bad_control_bodies(client, name, body, status):  # noqa: F811
    response = await client.post(f"/_mock/eventsub/{name}", json=body)
    assert response.status == status
    assert "error" in await response.json()


async def test_a_resend_needs_something_sent(client, token):  # noqa: F811
    ws, session_id, _ = await subscribed_socket(client, token)
    response = await client.post("/_mock/eventsub/resend", json={"session_id": session_id})
    assert response.status == 404
    await ws.close()


def test_ws_url_points_at_the_mocks_own_server():
    assert ws_url(URL("http://127.0.0.1:8081")) == "ws://127.0.0.1:8081/ws"
    assert ws_url(URL("https://mock.example/x?y=1")) == \
        "wss://mock.example/ws"
