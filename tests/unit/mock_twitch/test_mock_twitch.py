"""Tests for proxy.mock_twitch, over real HTTP: the mock must behave like Twitch."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp import web

from proxy.mock_twitch import (
    DEFAULT_USER_ID,
    MockTwitch,
    create_mock_app,
    mock_twitch_key,
)

CLIENT_ID = "mock-client-id"
CLIENT_SECRET = "mock-client-secret"
REDIRECT_URI = "http://localhost:3000/callback"
SCOPES = ["channel:read:subscriptions", "user:write:chat"]
REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def mock():
    return MockTwitch()


@pytest.fixture
async def client(aiohttp_client, mock):
    return await aiohttp_client(create_mock_app(state=mock))


def helix_headers(access_token, client_id=CLIENT_ID):
    return {"Authorization": f"Bearer {access_token}", "Client-Id": client_id}


async def authorize(client, **extra):
    params = {
        "response_type": "code",
        "client_id": CLIENT_ID,
        "redirect_uri": REDIRECT_URI,
        "scope": " ".join(SCOPES),
        "state": "st/ate+1",
        **extra,
    }
    response = await client.get("/oauth2/authorize", params=params, allow_redirects=False)
    return response


def callback_query(response):
    assert response.status == 302
    location = urlsplit(response.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT_URI
    return {name: values[0] for name, values in parse_qs(location.query).items()}


async def post_token(client, **fields):
    form = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, **fields}
    response = await client.post("/oauth2/token", data=form)
    return response.status, await response.json()


async def refresh(client, refresh_token):
    return await post_token(client, grant_type="refresh_token", refresh_token=refresh_token)


async def validate(client, access_token, scheme="OAuth"):
    response = await client.get(
        "/oauth2/validate", headers={"Authorization": f"{scheme} {access_token}"}
    )
    return response.status, await response.json()


async def exchange(client, code, redirect_uri=REDIRECT_URI):
    return await post_token(
        client, grant_type="authorization_code", code=code, redirect_uri=redirect_uri
    )


# -- authorization code flow ---------------------------------------------------


async def test_code_flow_redirects_and_exchanges(client, mock):
    query = callback_query(await authorize(client))
    assert query["state"] == "st/ate+1"
    assert query["scope"] == " ".join(SCOPES)

    status, body = await exchange(client, query["code"])

    assert status == 200
    assert set(body) == {"access_token", "expires_in", "refresh_token", "scope", "token_type"}
    assert body["expires_in"] == 14124
    assert body["scope"] == SCOPES
    assert body["token_type"] == "bearer"
    assert re.fullmatch(r"[a-z0-9]{30}", body["access_token"])
    assert "/" in body["refresh_token"] and "%" in body["refresh_token"]
    assert mock.calls["authorize"] == 1
    assert mock.calls["token"] == mock.calls["token:authorization_code"] == 1
    status, info = await validate(client, body["access_token"])
    assert (info["login"], info["user_id"]) == ("twitchdev", DEFAULT_USER_ID)


async def test_code_is_single_use(client):
    code = callback_query(await authorize(client))["code"]
    assert (await exchange(client, code))[0] == 200

    assert await exchange(client, code) == (
        400,
        {"status": 400, "message": "Invalid authorization code"},
    )


async def test_code_exchange_needs_the_same_redirect_uri(client):
    code = callback_query(await authorize(client))["code"]

    status, body = await exchange(client, code, redirect_uri=REDIRECT_URI + "/")

    assert (status, body["message"]) == (
        400,
        "Parameter redirect_uri does not match registered URI",
    )
    assert (await exchange(client, code))[0] == 200


async def test_code_expires_after_ten_minutes(client, mock):
    code = callback_query(await authorize(client))["code"]
    mock.advance(601)

    assert (await exchange(client, code))[1]["message"] == "Invalid authorization code"


async def test_authorize_refuses_unknown_client_and_reports_denial(client, mock):
    response = await authorize(client, client_id="someone-else")
    assert response.status == 400
    assert await response.json() == {"status": 400, "message": "invalid client"}

    query = callback_query(await authorize(client, deny="1"))
    assert query == {
        "error": "access_denied",
        "error_description": "The user denied you access",
        "state": "st/ate+1",
    }


async def test_registered_redirect_uris_are_enforced(client, mock):
    mock.registered_redirect_uris = {"http://localhost:3000/other"}

    response = await authorize(client)

    assert response.status == 400


# -- consent page (auto_approve=False) ------------------------------------------


class FormFields(HTMLParser):
    """Collects the hidden inputs and the submit buttons of the consent form."""

    def __init__(self):
        super().__init__()
        self.hidden, self.buttons, self.action = {}, {}, None
        self._button = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form":
            self.action = (attrs["method"], attrs["action"])
        elif tag == "input" and attrs.get("type") == "hidden":
            self.hidden[attrs["name"]] = attrs["value"]
        elif tag == "button":
            self._button = attrs

    def handle_data(self, data):
        if self._button is not None and data.strip():
            self.buttons[data.strip()] = (self._button["name"], self._button["value"])
            self._button = None


@pytest.fixture
async def consent_client(aiohttp_client):
    return await aiohttp_client(create_mock_app(auto_approve=False))


async def consent_form(consent_client):
    response = await authorize(consent_client)
    assert response.status == 200
    assert response.content_type == "text/html"
    assert response.headers["Content-Security-Policy"].startswith("default-src 'none'")
    page = await response.text()
    assert "<script" not in page and "src=" not in page and "<link" not in page
    assert '<html lang="en">' in page
    assert "Mock Widget App" in page and "TwitchDev" in page
    assert all(f"<code>{scope}</code>" in page for scope in SCOPES)
    form = FormFields()
    form.feed(page)
    assert form.action == ("post", "/oauth2/authorize")
    return form


@pytest.mark.parametrize("button", ["Authorize", "Cancel"])
async def test_consent_page_buttons(consent_client, button):
    form = await consent_form(consent_client)
    name, value = form.buttons[button]

    response = await consent_client.post(
        "/oauth2/authorize", data={**form.hidden, name: value}, allow_redirects=False
    )

    query = callback_query(response)
    assert query["state"] == "st/ate+1"
    if button == "Authorize":
        assert query["scope"] == " ".join(SCOPES)
        assert (await exchange(consent_client, query["code"]))[0] == 200
    else:
        assert query["error"] == "access_denied"
        assert "code" not in query


# -- refresh -------------------------------------------------------------------


async def test_refresh_rotates_and_old_refresh_token_is_spent(client, mock):
    first = mock.issue_tokens(DEFAULT_USER_ID, SCOPES)

    status, second = await refresh(client, first["refresh_token"])

    assert status == 200
    assert second["access_token"] != first["access_token"]
    assert second["refresh_token"] != first["refresh_token"]
    assert second["scope"] == SCOPES and second["expires_in"] == 14124
    # The old access token lives on until it expires, like on Twitch.
    assert (await validate(client, first["access_token"]))[0] == 200
    assert await refresh(client, first["refresh_token"]) == (
        400,
        {"status": 400, "message": "Invalid refresh token"},
    )
    assert mock.refresh_reuses == 1
    assert (await refresh(client, second["refresh_token"]))[0] == 200
    assert mock.calls["token:refresh_token"] == 3


async def test_refresh_token_must_be_url_encoded_in_the_form(client, mock):
    tokens = mock.issue_tokens(DEFAULT_USER_ID, SCOPES)
    raw_body = (
        f"client_id={CLIENT_ID}&client_secret={CLIENT_SECRET}"
        f"&grant_type=refresh_token&refresh_token={tokens['refresh_token']}"
    )

    response = await client.post(
        "/oauth2/token",
        data=raw_body,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )

    assert response.status == 400
    assert (await response.json())["message"] == "Invalid refresh token"
    assert (await refresh(client, tokens["refresh_token"]))[0] == 200


async def test_unknown_refresh_token_is_refused(client, mock):
    assert await refresh(client, "nope") == (
        400,
        {"status": 400, "message": "Invalid refresh token"},
    )
    assert mock.refresh_reuses == 0


# -- client_credentials and client checks ------------------------------------------


async def test_client_credentials_gives_an_app_token(client):
    status, body = await post_token(client, grant_type="client_credentials")

    assert status == 200
    assert body == {
        "access_token": body["access_token"],
        "expires_in": 5011271,
        "token_type": "bearer",
    }
    status, info = await validate(client, body["access_token"])
    assert status == 200
    assert info == {"client_id": CLIENT_ID, "scopes": None, "expires_in": info["expires_in"]}
    assert 5011270 <= info["expires_in"] <= 5011271


@pytest.mark.parametrize(
    ("fields", "status", "message"),
    [
        ({"client_id": "other"}, 400, "invalid client"),
        ({"client_secret": "wrong"}, 403, "invalid client secret"),
        ({"grant_type": "password"}, 400, "invalid grant type"),
    ],
)
async def test_token_refusals(client, fields, status, message):
    form = {"grant_type": "client_credentials", **fields}

    assert await post_token(client, **form) == (status, {"status": status, "message": message})


async def test_token_wants_a_form_not_json(client, mock):
    response = await client.post(
        "/oauth2/token",
        json={
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "grant_type": "client_credentials",
        },
    )

    assert response.status == 400
    assert await response.json() == {"status": 400, "message": "missing client id"}
    assert mock.calls["token"] == 1


# -- validate and revoke ---------------------------------------------------------


async def test_validate_user_token(client, mock):
    tokens = mock.issue_tokens(DEFAULT_USER_ID, SCOPES)
    mock.advance(100)

    for scheme in ("OAuth", "Bearer"):
        status, info = await validate(client, tokens["access_token"], scheme)
        assert status == 200
        assert info == {
            "client_id": CLIENT_ID,
            "login": "twitchdev",
            "scopes": SCOPES,
            "user_id": DEFAULT_USER_ID,
            "expires_in": info["expires_in"],
        }
        assert 14020 <= info["expires_in"] <= 14024
    assert mock.calls["validate"] == 2


async def test_validate_refusals(client, mock):
    tokens = mock.issue_tokens(DEFAULT_USER_ID, [])

    response = await client.get("/oauth2/validate")
    assert response.status == 401
    assert await response.json() == {"status": 401, "message": "missing authorization token"}
    assert await validate(client, "nope") == (
        401,
        {"status": 401, "message": "invalid access token"},
    )
    assert mock.expire_access_tokens() == 1
    assert (await validate(client, tokens["access_token"]))[0] == 401


async def test_revoke_access_and_refresh_tokens(client, mock):
    tokens = mock.issue_tokens(DEFAULT_USER_ID, SCOPES)
    other = mock.issue_tokens(DEFAULT_USER_ID, SCOPES)

    response = await client.post(
        "/oauth2/revoke", data={"client_id": CLIENT_ID, "token": tokens["access_token"]}
    )
    assert response.status == 200
    assert await response.read() == b""
    assert (await validate(client, tokens["access_token"]))[0] == 401
    assert (await refresh(client, tokens["refresh_token"]))[0] == 200

    # Revoking a refresh token takes the access token minted with it along.
    response = await client.post(
        "/oauth2/revoke", data={"client_id": CLIENT_ID, "token": other["refresh_token"]}
    )
    assert response.status == 200
    assert (await refresh(client, other["refresh_token"]))[0] == 400
    assert (await validate(client, other["access_token"]))[0] == 401


async def test_revoke_refusals(client, mock):
    response = await client.post("/oauth2/revoke", data={"client_id": CLIENT_ID, "token": "x"})
    assert (response.status, await response.json()) == (
        400,
        {"status": 400, "message": "Invalid token"},
    )
    response = await client.post("/oauth2/revoke", data={"client_id": "other", "token": "x"})
    assert (response.status, await response.json()) == (
        404,
        {"status": 404, "message": "client does not exist"},
    )
    assert mock.calls["revoke"] == 2


async def test_expire_and_revoke_knobs_count_what_they_touch(client, mock):
    mock.add_user("2", "second")
    kept = mock.issue_tokens("2", [])
    tokens = mock.issue_tokens(DEFAULT_USER_ID, [])
    mock.issue_tokens(DEFAULT_USER_ID, [])
    await post_token(client, grant_type="client_credentials")

    assert mock.expire_access_tokens(DEFAULT_USER_ID) == 2
    assert mock.expire_access_tokens(DEFAULT_USER_ID) == 0
    assert mock.expire_app_tokens() == 1
    assert mock.revoke_refresh_tokens(DEFAULT_USER_ID) == 2
    assert (await refresh(client, tokens["refresh_token"]))[0] == 400
    assert (await validate(client, kept["access_token"]))[0] == 200
    assert mock.revoke_refresh_tokens() == 1
    # A password change kills the access tokens too.
    assert (await validate(client, kept["access_token"]))[0] == 401


# -- helix -------------------------------------------------------------------------


@pytest.fixture
def user_token(mock):
    return mock.issue_tokens(DEFAULT_USER_ID, SCOPES)["access_token"]


@pytest.fixture
async def app_token(client):
    return (await post_token(client, grant_type="client_credentials"))[1]["access_token"]


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


async def wait_for(condition):
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never became true")


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


# -- control endpoints ------------------------------------------------------------


async def control(client, name, body=None):
    response = await client.post(f"/_mock/{name}", json=body)
    assert response.status == 200, await response.text()
    return await response.json()


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


async def test_app_exposes_its_state(mock):
    app = create_mock_app(state=mock)

    assert app[mock_twitch_key] is mock
    assert create_mock_app(client_id="x")[mock_twitch_key].client_id == "x"


async def test_runs_standalone():
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy.mock_twitch",
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO_ROOT,
    )
    try:
        url = (await asyncio.wait_for(process.stdout.readline(), 10)).decode().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{url}/_mock/calls") as response,
        ):
            assert await response.json() == {}
    finally:
        process.terminate()
        await process.wait()
