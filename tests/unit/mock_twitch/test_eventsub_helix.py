"""The mock's /helix/eventsub/subscriptions: Twitch's bodies, scopes, costs and limits."""

from __future__ import annotations

import pytest

from proxy.mock_twitch import DEFAULT_USER_ID
from tests.unit.mock_twitch.test_eventsub import (
    ALL_SCOPES,
    FOLLOW,
    client,  # noqa: F401 - fixtures shared with the socket tests
    connect,
    control,
    helix_headers,
    list_subscriptions,
    mock,  # noqa: F401
    subscribe,
    subscribed_socket,
    token,  # noqa: F401
    until,
)

OTHER_USER = "12826"


def raid_into(channel):
    return {"type": "channel.raid", "version": "1",
            "condition": {"to_broadcaster_user_id": channel}}


async def test_create_answers_202_with_twitchs_body(client, token):  # noqa: F811
    ws, session = await connect(client)
    status, body = await subscribe(client, token, session["id"])
    assert status == 202
    assert set(body) == {"data", "total", "total_cost", "max_total_cost"}
    (sub,) = body["data"]
    assert sub["status"] == "enabled"
    assert (sub["type"], sub["version"], sub["condition"]) == \
        ("channel.follow", "2", FOLLOW["condition"])
    assert sub["transport"]["method"] == "websocket"
    assert sub["transport"]["session_id"] == session["id"]
    assert sub["transport"]["connected_at"] == session["connected_at"]
    assert sub["created_at"].endswith("Z")
    assert (sub["cost"], body["total"], body["total_cost"], body["max_total_cost"]) == \
        (0, 1, 0, 10)
    await ws.close()


async def test_get_lists_and_filters_and_delete_removes(client, token):  # noqa: F811
    ws, session = await connect(client)
    _, follow = await subscribe(client, token, session["id"])
    _, raid = await subscribe(client, token, session["id"], raid_into(OTHER_USER))
    listed = await list_subscriptions(client, token)
    assert [s["id"] for s in listed["data"]] == [follow["data"][0]["id"], raid["data"][0]["id"]]
    assert (listed["total"], listed["total_cost"], listed["pagination"]) == (2, 1, {})
    only_raids = await list_subscriptions(client, token, type="channel.raid")
    assert [s["id"] for s in only_raids["data"]] == [raid["data"][0]["id"]]
    response = await client.delete("/helix/eventsub/subscriptions",
                                   params={"id": raid["data"][0]["id"]},
                                   headers=helix_headers(token))
    assert response.status == 204
    assert (await list_subscriptions(client, token))["total_cost"] == 0
    response = await client.delete("/helix/eventsub/subscriptions",
                                   params={"id": raid["data"][0]["id"]},
                                   headers=helix_headers(token))
    assert response.status == 404
    await ws.close()


async def test_an_expired_token_is_401_and_refresh_helps(client, mock, token):  # noqa: F811
    ws, session = await connect(client)
    mock.expire_access_tokens()
    status, body = await subscribe(client, token, session["id"])
    assert (status, body["message"]) == (401, "Invalid OAuth token")
    fresh = mock.issue_tokens(DEFAULT_USER_ID, ALL_SCOPES)["access_token"]
    assert (await subscribe(client, fresh, session["id"]))[0] == 202
    await ws.close()


async def test_an_app_token_cannot_use_a_websocket(client):  # noqa: F811
    ws, session = await connect(client)
    response = await client.post("/oauth2/token", data={
        "client_id": "mock-client-id", "client_secret": "mock-client-secret",
        "grant_type": "client_credentials"})
    app_token = (await response.json())["access_token"]
    status, body = await subscribe(client, app_token, session["id"])
    assert (status, body["message"]) == (400, "invalid transport and auth combination")
    await ws.close()


@pytest.mark.parametrize(("change", "message"), [
    ({"version": "1"}, "The combination of values in the type and version fields is not valid"),
    ({"type": "channel.nothing"}, "The combination of values in the type and version fields"),
    ({"condition": {"broadcaster_user_id": DEFAULT_USER_ID}}, "moderator_user_id"),
    ({"condition": {**FOLLOW["condition"], "user_id": "1"}}, "condition.user_id"),
    ({"condition": "everything"}, "condition"),
    ({"transport": {"method": "webhook", "callback": "https://example.com"}},
     "invalid transport and auth combination"),
    ({"transport": {"method": "websocket", "session_id": "gone"}},
     "websocket transport session does not exist or has already disconnected"),
])
async def test_bad_requests_are_400(client, token, change, message):  # noqa: F811
    ws, session = await connect(client)
    status, body = await subscribe(client, token, session["id"], {**FOLLOW, **change})
    assert status == 400
    assert message in body["message"]
    await ws.close()


async def test_a_raid_needs_exactly_one_side(client, token):  # noqa: F811
    ws, session = await connect(client)
    both = {"from_broadcaster_user_id": "1", "to_broadcaster_user_id": "2"}
    for condition in (both, {}):
        spec = {"type": "channel.raid", "version": "1", "condition": condition}
        assert (await subscribe(client, token, session["id"], spec))[0] == 400
    await ws.close()


@pytest.mark.parametrize(("spec", "scope"), [
    (FOLLOW, "moderator:read:followers"),
    ({"type": "channel.subscribe", "version": "1",
      "condition": {"broadcaster_user_id": DEFAULT_USER_ID}}, "channel:read:subscriptions"),
    ({"type": "channel.cheer", "version": "1",
      "condition": {"broadcaster_user_id": DEFAULT_USER_ID}}, "bits:read"),
    ({"type": "channel.channel_points_custom_reward_redemption.add", "version": "1",
      "condition": {"broadcaster_user_id": DEFAULT_USER_ID}}, "channel:manage:redemptions"),
    ({"type": "channel.chat.message", "version": "1",
      "condition": {"broadcaster_user_id": DEFAULT_USER_ID, "user_id": DEFAULT_USER_ID}},
     "user:read:chat"),
])
async def test_each_scoped_type_is_403_without_its_scope(client, mock, spec, scope):  # noqa: F811
    ws, session = await connect(client)
    others = [s for s in ALL_SCOPES if s != scope and not s.startswith("channel:read:red")]
    lacking = mock.issue_tokens(DEFAULT_USER_ID, others)["access_token"]
    status, body = await subscribe(client, lacking, session["id"], spec)
    assert (status, body["message"]) == (403, "subscription missing proper authorization")
    having = mock.issue_tokens(DEFAULT_USER_ID, [scope])["access_token"]
    assert (await subscribe(client, having, session["id"], spec))[0] == 202
    await ws.close()


async def test_a_scope_for_another_channel_is_403(client, token):  # noqa: F811
    ws, session = await connect(client)
    spec = {"type": "channel.cheer", "version": "1",
            "condition": {"broadcaster_user_id": OTHER_USER}}
    assert (await subscribe(client, token, session["id"], spec))[0] == 403
    await ws.close()


async def test_the_same_subscription_twice_on_a_session_is_409(client, token):  # noqa: F811
    ws, session = await connect(client)
    assert (await subscribe(client, token, session["id"]))[0] == 202
    status, body = await subscribe(client, token, session["id"])
    assert (status, body["message"]) == (409, "subscription already exists")
    other, other_session = await connect(client)
    assert (await subscribe(client, token, other_session["id"]))[0] == 202
    await ws.close()
    await other.close()


async def test_cost_is_0_for_the_users_channel_and_1_for_others(client, token):  # noqa: F811
    ws, session = await connect(client)
    _, own = await subscribe(client, token, session["id"], raid_into(DEFAULT_USER_ID))
    _, other = await subscribe(client, token, session["id"], raid_into(OTHER_USER))
    assert (own["data"][0]["cost"], other["data"][0]["cost"]) == (0, 1)
    assert other["total_cost"] == 1
    await ws.close()


async def test_max_total_cost_is_10(client, token):  # noqa: F811
    ws, session = await connect(client)
    for channel in range(1, 11):
        status, body = await subscribe(client, token, session["id"], raid_into(str(channel)))
        assert status == 202
    assert body["total_cost"] == 10
    status, body = await subscribe(client, token, session["id"], raid_into("11"))
    assert status == 429
    assert (await subscribe(client, token, session["id"], raid_into(DEFAULT_USER_ID)))[0] == 202
    await ws.close()


async def test_a_fourth_transport_is_429(client, mock, token):  # noqa: F811
    sockets = [(await subscribed_socket(client, token))[0] for _ in range(3)]
    ws, session = await connect(client)
    status, body = await subscribe(client, token, session["id"])
    assert (status, body["message"]) == (429, "websocket transports limit exceeded")
    mock.add_user(OTHER_USER, "otheruser")
    other_user = mock.issue_tokens(OTHER_USER, [])["access_token"]  # limits are per user
    assert (await subscribe(client, other_user, session["id"], raid_into(OTHER_USER)))[0] == 202
    await sockets[0].close()
    await until(lambda: len(mock.eventsub.bound_sessions("mock-client-id", DEFAULT_USER_ID)) == 2)
    fourth, fourth_session = await connect(client)
    assert (await subscribe(client, token, fourth_session["id"]))[0] == 202
    for each in (*sockets[1:], ws, fourth):
        await each.close()


async def test_300_subscriptions_per_connection(client, mock, token):  # noqa: F811
    ws, session = await connect(client)
    mock.eventsub.max_total_cost = 1000  # only the per-connection limit in play here
    for number in range(300):
        spec = {"type": "stream.online", "version": "1",
                "condition": {"broadcaster_user_id": str(number)}}
        assert (await subscribe(client, token, session["id"], spec))[0] == 202
    status, body = await subscribe(client, token, session["id"], raid_into(OTHER_USER))
    assert status == 429
    await ws.close()


async def test_a_session_of_another_user_is_400(client, mock, token):  # noqa: F811
    ws, session = await connect(client)
    assert (await subscribe(client, token, session["id"]))[0] == 202
    mock.add_user(OTHER_USER, "otheruser")
    other_user = mock.issue_tokens(OTHER_USER, [])["access_token"]
    status, _ = await subscribe(client, other_user, session["id"], raid_into(OTHER_USER))
    assert status == 400
    await ws.close()


async def test_a_subscription_dies_with_its_session(client, mock, token):  # noqa: F811
    ws, session_id, sub = await subscribed_socket(client, token)
    await ws.close()
    await until(lambda: session_id not in mock.eventsub.sessions)
    listed = await list_subscriptions(client, token)
    assert [(s["id"], s["status"]) for s in listed["data"]] == \
        [(sub["id"], "websocket_disconnected")]
    assert "disconnected_at" in listed["data"][0]["transport"]
    assert listed["total_cost"] == 0
    assert (await control(client, "trigger", type="channel.follow"))["matched"] == 0
    assert (await list_subscriptions(client, token, status="enabled"))["data"] == []
