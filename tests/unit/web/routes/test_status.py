"""proxy.web.routes.status: GET /status and POST /revoke, against the mock Twitch over real HTTP."""

from __future__ import annotations

import json

import pytest

from tests.helpers import bearer, grant_of_key, login

SCOPES = "user:read:email user:write:chat"


@pytest.fixture
def config_flags():
    return {"twitch.scopes": tuple(SCOPES.split())}


@pytest.fixture
async def key(proxy):
    """A proxy key from a real login."""
    return (await login(proxy))["proxy_key"]




async def test_status_json(proxy, mock, key):
    response = await proxy.get("/status", headers=bearer(key))
    assert response.status == 200
    status = await response.json()
    assert status["login"] == "twitchdev" and status["state"] == "active"
    assert status["scopes"] == SCOPES.split()
    assert 14000 < status["expires_in"] <= 14124
    assert key not in json.dumps(status)
    grant = await grant_of_key(proxy, key)
    assert grant.access_token not in json.dumps(status)


async def test_revoke_with_twitch(proxy, mock, key):
    grant = await grant_of_key(proxy, key)
    response = await proxy.post("/revoke?twitch=true", headers=bearer(key))
    assert response.status == 200
    assert (await response.json())["twitch_revoked"] is True
    assert mock.live_access_token(grant.access_token) is None
    assert (await proxy.get("/status", headers=bearer(key))).status == 401


async def test_status_and_revoke_want_a_proxy_key_in_the_header(proxy, mock):
    twitch_token = mock.issue_tokens("141981764", [])["access_token"]
    for headers in ({"Accept": "application/json"}, bearer(twitch_token)):
        status = await proxy.get("/status", headers=headers)
        assert status.status == 400
        assert (await status.json())["error"] == "invalid_request"
    revoke = await proxy.post("/revoke")
    assert revoke.status == 400 and (await revoke.json())["error"] == "invalid_request"
    for call in (proxy.get("/status", headers=bearer("tpk_unknown")),
                 proxy.post("/revoke", headers=bearer("tpk_unknown"))):
        answer = await call
        assert answer.status == 401
        assert (await answer.json())["error"] == "invalid_proxy_key"
    assert mock.calls["revoke"] == 0


async def test_status_is_never_cached_and_says_where_to_log_in_again(proxy, mock, key):
    answer = await proxy.get("/status", headers=bearer(key))
    assert answer.headers["Cache-Control"] == "no-store"
    assert "login_url" not in await answer.json()

    mock.revoke_refresh_tokens()  # the user disconnected the app on Twitch
    mock.expire_access_tokens()
    assert (await proxy.get("/helix/users", headers=bearer(key))).status == 401

    status = await (await proxy.get("/status", headers=bearer(key))).json()
    assert status["state"] == "needs_reauth"
    assert status["login_url"].endswith("/login")


async def test_revoke_without_twitch_ends_only_the_presented_key(proxy, mock, key):
    other = (await login(proxy))["proxy_key"]  # a second widget of the same user
    grant = await grant_of_key(proxy, key)
    revoked_at_twitch = mock.calls["revoke"]  # the second login's spare tokens

    answer = await proxy.post("/revoke", headers=bearer(key))

    assert answer.status == 200
    assert await answer.json() == {"revoked": True, "twitch_revoked": False}
    assert (await proxy.get("/status", headers=bearer(key))).status == 401
    assert (await proxy.get("/status", headers=bearer(other))).status == 200
    assert mock.live_access_token(grant.access_token) is not None
    assert mock.calls["revoke"] == revoked_at_twitch


async def test_revoke_with_twitch_counts_every_key_it_ended(proxy, mock, key):
    other = (await login(proxy))["proxy_key"]

    answer = await proxy.post("/revoke?twitch=true", headers=bearer(other))

    assert (await answer.json())["keys_revoked"] == 2
    for each in (key, other):
        assert (await proxy.get("/status", headers=bearer(each))).status == 401
