"""proxy.mock_twitch.oauth over real HTTP: the code flow, the token grants, validate and revoke."""

from __future__ import annotations

import re

import pytest

from proxy.mock_twitch import DEFAULT_USER_ID
from tests.unit.mock_twitch.twitch_calls import (
    CLIENT_ID,
    CLIENT_SECRET,
    REDIRECT_URI,
    SCOPES,
    authorize,
    callback_query,
    exchange,
    post_token,
    refresh,
    validate,
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
