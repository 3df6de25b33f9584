"""proxy.web.routes.helix without a proxy key: an old widget's Twitch pair, a bare Twitch token,
and the app token, against the mock Twitch over real HTTP.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers import bearer

# -- credential mode 2: an old widget's Twitch pair ----------------------------------


async def test_old_pair_keeps_working_across_several_expiries(proxy, mock):
    # The widget's fields hold the pair it got once; it can never save a new one.
    pair = mock.issue_tokens("141981764", ["user:read:email"])
    headers = {"Authorization": f"Bearer {pair['access_token']}",
               "X-Refresh-Token": pair["refresh_token"]}
    seen = set()
    for round_ in range(3):
        response = await proxy.get("/helix/users", headers=headers)
        assert response.status == 200, round_
        assert (await response.json())["data"][0]["login"] == "twitchdev"
        seen.add(response.headers["X-Access-Token"])
        assert response.headers["X-Refresh-Token"]
        assert "x-access-token" in response.headers["Access-Control-Expose-Headers"].lower() \
            if "Access-Control-Expose-Headers" in response.headers else True
        mock.expire_access_tokens()
        await asyncio.sleep(0)
    # Round 1 proves the unknown pair at Twitch (one refresh); rounds 2 and 3
    # each needed one because the token expired.
    assert mock.calls["token:refresh_token"] == 3
    assert len(seen) == 3
    # The pair's access token and the proven one: once each, when it was adopted.
    assert mock.calls["validate"] == 2


async def test_old_pair_current_tokens_exposed_to_browsers(proxy, mock):
    pair = mock.issue_tokens("141981764", ["user:read:email"])
    response = await proxy.get("/helix/users", headers={
        "Authorization": f"Bearer {pair['access_token']}",
        "X-Refresh-Token": pair["refresh_token"], "Origin": "null"})
    exposed = response.headers["Access-Control-Expose-Headers"].lower()
    assert "x-access-token" in exposed and "x-refresh-token" in exposed


async def test_bare_twitch_token_passed_through_and_401_as_is(proxy, mock):
    token = mock.issue_tokens("141981764", [])["access_token"]
    ok = await proxy.get("/helix/users", headers=bearer(token))
    assert ok.status == 200
    assert mock.helix_requests[-1].headers["Authorization"] == f"Bearer {token}"
    mock.expire_access_tokens()
    expired = await proxy.get("/helix/users", headers=bearer(token))
    assert expired.status == 401
    assert (await expired.json())["message"] == "Invalid OAuth token"
    assert mock.calls["token:refresh_token"] == 0


# -- credential mode 3: the app token ------------------------------------------------


async def test_no_authorization_without_app_token_is_400(proxy, mock):
    response = await proxy.get("/helix/users?login=twitchdev")
    assert response.status == 400
    assert mock.calls["token:client_credentials"] == 0


@pytest.mark.parametrize("config_flags", [{"helix.app_token": True}])
async def test_app_token_minted_once_and_reminted_on_401(proxy, mock):
    responses = await asyncio.gather(*(proxy.get("/helix/users?login=twitchdev")
                                       for _ in range(20)))
    assert [r.status for r in responses] == [200] * 20
    assert mock.calls["token:client_credentials"] == 1
    mock.expire_app_tokens()
    responses = await asyncio.gather(*(proxy.get("/helix/users?login=twitchdev")
                                       for _ in range(20)))
    assert [r.status for r in responses] == [200] * 20
    assert mock.calls["token:client_credentials"] == 2
