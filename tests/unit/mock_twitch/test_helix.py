"""proxy.mock_twitch.helix over real HTTP: 401 kinds, users, streams, scopes, chat, rate limits."""

from __future__ import annotations

import time

import pytest

from proxy.mock_twitch import DEFAULT_USER_ID
from tests.unit.mock_twitch.twitch_calls import CLIENT_ID, SCOPES, helix_headers


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"Client-Id": CLIENT_ID}, "OAuth token is missing"),
        ({"Client-Id": CLIENT_ID, "Authorization": "Bearer "}, "OAuth token is missing"),
        (helix_headers("unknown"), "Invalid OAuth token"),
        ("mismatch", "Client ID and OAuth token do not match"),
        ("expired", "Invalid OAuth token"),
    ],
)
async def test_helix_401_kinds(client, mock, user_token, headers, message):
    if headers == "mismatch":
        headers = helix_headers(user_token, client_id="another-client")
    elif headers == "expired":
        mock.expire_access_tokens()
        headers = helix_headers(user_token)

    response = await client.get("/helix/users", headers=headers)

    assert response.status == 401
    assert await response.json() == {"error": "Unauthorized", "status": 401, "message": message}
    assert "WWW-Authenticate" not in response.headers
    assert "Ratelimit-Limit" in response.headers


async def test_helix_users(client, mock, user_token, app_token):
    mock.add_user("2", "second", "Second")

    response = await client.get("/helix/users", headers=helix_headers(user_token))
    assert response.status == 200
    (me,) = (await response.json())["data"]
    assert me["id"] == DEFAULT_USER_ID and me["display_name"] == "TwitchDev"
    assert set(me) == {
        "id", "login", "display_name", "type", "broadcaster_type", "description",
        "profile_image_url", "offline_image_url", "view_count", "created_at",
    }  # fmt: skip
    assert response.headers["Set-Cookie"].startswith("twitch_mock=1")

    response = await client.get(
        "/helix/users?login=second&id=141981764&id=404", headers=helix_headers(app_token)
    )
    assert [user["login"] for user in (await response.json())["data"]] == ["second", "twitchdev"]

    response = await client.get("/helix/users", headers=helix_headers(app_token))
    assert response.status == 400
    assert (await response.json())["error"] == "Bad Request"


async def test_helix_records_requests(client, mock, user_token):
    await client.get("/helix/users?login=a%2Bb", headers=helix_headers(user_token))

    (recorded,) = mock.helix_requests
    assert (recorded.method, recorded.path, recorded.query_string) == (
        "GET",
        "/users",
        "login=a%2Bb",
    )
    assert recorded.query["login"] == "a+b"
    assert recorded.headers["client-id"] == CLIENT_ID
    assert mock.calls["helix:GET /users"] == 1


async def test_helix_streams_and_pagination(client, mock, app_token):
    mock.add_user("2", "second")
    mock.add_user("3", "third")
    mock.set_live(DEFAULT_USER_ID, title="Building", viewer_count=10)
    mock.set_live("2", viewer_count=20)
    headers = helix_headers(app_token)

    response = await client.get("/helix/streams?first=1", headers=headers)
    page = await response.json()
    assert [s["user_login"] for s in page["data"]] == ["second"]
    response = await client.get(
        "/helix/streams",
        params={"first": 1, "after": page["pagination"]["cursor"]},
        headers=headers,
    )
    page = await response.json()
    assert [s["title"] for s in page["data"]] == ["Building"]
    assert page["pagination"] == {}
    assert page["data"][0]["type"] == "live" and page["data"][0]["viewer_count"] == 10

    response = await client.get("/helix/streams?user_login=third&user_id=2", headers=headers)
    assert [s["user_id"] for s in (await response.json())["data"]] == ["2"]
    mock.set_offline("2")
    response = await client.get("/helix/streams?user_id=2", headers=headers)
    assert await response.json() == {"data": [], "pagination": {}}


async def test_helix_missing_scope(client, mock, app_token):
    unscoped = mock.issue_tokens(DEFAULT_USER_ID, ["user:write:chat"])["access_token"]
    scoped = mock.issue_tokens(DEFAULT_USER_ID, SCOPES)["access_token"]
    url = f"/helix/subscriptions?broadcaster_id={DEFAULT_USER_ID}"

    for token in (unscoped, app_token):
        response = await client.get(url, headers=helix_headers(token))
        assert response.status == 401
        assert await response.json() == {
            "error": "Unauthorized",
            "status": 401,
            "message": "Missing scope: channel:read:subscriptions",
        }
    response = await client.get(url, headers=helix_headers(scoped))
    assert response.status == 200
    assert (await response.json())["total"] == 0


async def test_helix_chat_messages(client, mock, user_token):
    headers = helix_headers(user_token)
    message = {"broadcaster_id": "2", "sender_id": DEFAULT_USER_ID, "message": "hi"}

    response = await client.post("/helix/chat/messages", json=message, headers=headers)
    assert response.status == 200
    (sent,) = (await response.json())["data"]
    assert sent["is_sent"] is True and sent["message_id"]
    assert mock.sent_chat_messages == [message]

    response = await client.post(
        "/helix/chat/messages",
        data=b"{not json",
        headers={**headers, "Content-Type": "application/json"},
    )
    assert response.status == 400
    assert (await response.json())["error"] == "Bad Request"


async def test_helix_methods_and_unknown_paths(client, user_token, app_token):
    response = await client.patch(
        f"/helix/channels?broadcaster_id={DEFAULT_USER_ID}",
        json={"title": "t"},
        headers=helix_headers(user_token),
    )
    assert response.status == 204
    response = await client.delete(
        "/helix/moderation/bans?user_id=9", headers=helix_headers(user_token)
    )
    assert response.status == 204
    response = await client.delete(
        "/helix/moderation/bans?user_id=9", headers=helix_headers(app_token)
    )
    assert response.status == 401

    response = await client.get("/helix/nothing/here", headers=helix_headers(app_token))
    assert response.status == 404
    assert await response.json() == {"error": "Not Found", "status": 404, "message": ""}


async def test_helix_rate_limit(client, mock, user_token, app_token):
    mock.ratelimit_limit = 2
    headers = helix_headers(user_token)

    remaining = []
    for _ in range(3):
        response = await client.get("/helix/users", headers=headers)
        remaining.append((response.status, response.headers["Ratelimit-Remaining"]))
    assert remaining == [(200, "1"), (200, "0"), (429, "0")]
    assert (await response.json())["error"] == "Too Many Requests"
    assert response.headers["Ratelimit-Limit"] == "2"
    assert 0 < int(response.headers["Ratelimit-Reset"]) - time.time() <= 61

    # App tokens have their own bucket; every bucket refills after the window.
    response = await client.get("/helix/users?id=1", headers=helix_headers(app_token))
    assert response.status == 200
    mock.advance(61)
    assert (await client.get("/helix/users", headers=headers)).status == 200
