"""The credential model attacked with Twitch pairs and bare tokens (see credential_attacks.py).

An old widget's pair is proven before anything is stored, answers are per caller, and junk
pairs or tokens are bounded.
"""

from __future__ import annotations

import asyncio

import pytest

from proxy.web.keys import grants_key
from tests.helpers import bearer, grant_of_key, login
from tests.system.credential_attacks import (
    VICTIM,
    login_and_adopt,
    pair,
    secrets_in,
    stored,
)


async def test_invented_refresh_token_stores_nothing_and_captures_no_later_login(proxy, mock):
    # The attacker holds a valid access token of the victim and invents a refresh token.
    victim_access = mock.issue_tokens(VICTIM, ["user:read:email"])["access_token"]
    response = await proxy.get("/helix/users", headers=pair(victim_access, "attacker-chosen-rt"))
    assert response.status == 401
    assert (await response.json())["error"] == "reauthorization_required"
    assert await stored(proxy, "grant:") == []
    assert await stored(proxy, "rt:") == []
    assert await stored(proxy, "user:") == []

    # The victim logs in later; the invented token must not open their grant.
    victim = await login(proxy)
    answer = await proxy.post("/refresh", json={"refresh_token": "attacker-chosen-rt"})
    assert answer.status != 200
    assert secrets_in(await answer.text(), victim["access_token"], victim["refresh_token"]) == []
    again = await proxy.get("/helix/users", headers=pair(victim_access, "attacker-chosen-rt"))
    assert again.status == 401
    assert "X-Access-Token" not in again.headers


async def test_pair_from_another_app_is_refused_without_a_refresh(proxy, mock):
    other = mock.mint_user_tokens("someone-elses-app", VICTIM, ["user:read:email"])
    response = await proxy.get("/helix/users",
                               headers=pair(other["access_token"], other["refresh_token"]))
    assert response.status == 401
    assert (await response.json())["error"] == "invalid_token"
    assert mock.calls["token:refresh_token"] == 0
    assert await stored(proxy, "grant:") == []


async def test_pair_of_two_users_is_refused_and_the_new_tokens_revoked(proxy, mock):
    mock.add_user("666", "attacker")
    victim_access = mock.issue_tokens(VICTIM, [])["access_token"]
    attacker = mock.issue_tokens("666", [])
    response = await proxy.get("/helix/users",
                               headers=pair(victim_access, attacker["refresh_token"]))
    assert response.status == 401
    assert (await response.json())["error"] == "invalid_token"
    assert await stored(proxy, "grant:") == []
    # The refresh at Twitch happened (that is the proof); what it gave is revoked.
    assert mock.calls["revoke"] >= 1
    assert not any(t.user_id == "666" for t in mock.refresh_tokens.values())


async def test_a_proven_pair_never_repoints_the_users_login_grant(proxy, mock):
    victim = await login(proxy)
    login_grant = await grant_of_key(proxy, victim["proxy_key"])
    # A genuine pair of the same user from another authorization (the old tool's).
    old_tool = mock.issue_tokens(VICTIM, ["user:read:email"])
    adopted = await proxy.get("/helix/users",
                              headers=pair(old_tool["access_token"], old_tool["refresh_token"]))
    assert adopted.status == 200
    grants = proxy.app[grants_key]
    assert await grants.grant_of_user(VICTIM) == login_grant.grant_id
    assert len(await stored(proxy, "grant:")) == 2  # its own chain, its own grant

    # The victim logs in again: their tokens go to their grant, never the adopted one.
    relogin = await login(proxy)
    with_pair = await proxy.get("/helix/users",
                                headers=pair(old_tool["access_token"], old_tool["refresh_token"]))
    assert with_pair.status == 200
    assert secrets_in(dict(with_pair.headers), relogin["access_token"],
                      relogin["refresh_token"]) == []


async def test_a_bare_access_token_is_passed_through_and_never_stored(proxy, mock):
    bare = mock.mint_user_tokens(mock.client_id, VICTIM, [], with_refresh_token=False)
    assert "refresh_token" not in bare
    response = await proxy.get("/helix/users", headers=bearer(bare["access_token"]))
    assert response.status == 200
    assert await stored(proxy, "grant:") == []


async def test_a_shared_get_never_hands_an_old_widgets_tokens_to_a_key_caller(proxy, mock):
    first, widget = await login_and_adopt(proxy)
    mock.helix_delay = 0.3
    seen = len(mock.helix_requests)
    leader = asyncio.ensure_future(proxy.get("/helix/users", headers=widget))
    while len(mock.helix_requests) == seen:
        await asyncio.sleep(0.005)
    follower = await proxy.get("/helix/users", headers=bearer(first["proxy_key"]))
    assert follower.status == 200
    assert "X-Access-Token" not in follower.headers
    assert "X-Refresh-Token" not in follower.headers
    assert (await leader).headers["X-Refresh-Token"]


async def test_old_widget_followers_get_their_own_current_pair(proxy, mock):
    first, widget = await login_and_adopt(proxy)
    mock.helix_delay = 0.3
    seen = len(mock.helix_requests)
    # A proxy-key caller leads; old widgets of the same grant ask meanwhile.
    leader = asyncio.ensure_future(proxy.get("/helix/users", headers=bearer(first["proxy_key"])))
    while len(mock.helix_requests) == seen:
        await asyncio.sleep(0.005)
    answers = await asyncio.gather(*(proxy.get("/helix/users", headers=widget)
                                     for _ in range(3)))
    assert "X-Refresh-Token" not in (await leader).headers
    grant = await grant_of_key(proxy, first["proxy_key"])
    for answer in answers:
        assert answer.status == 200
        assert answer.headers["X-Access-Token"] == grant.access_token
        assert answer.headers["X-Refresh-Token"] == grant.refresh_token
        assert answer.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("config_flags", [{"helix.cache": {"/users": 30}}])
async def test_old_widget_answers_are_cached_like_everyone_elses(proxy, mock):
    first, widget = await login_and_adopt(proxy)
    before = len(mock.helix_requests)
    again = await proxy.get("/helix/users", headers=widget)
    assert again.status == 200
    assert len(mock.helix_requests) == before  # from the cache
    assert again.headers["X-Refresh-Token"]  # still with this caller's own pair


async def test_twitch_cannot_set_the_old_widget_headers(proxy, mock, monkeypatch):
    key = (await login(proxy))["proxy_key"]
    # Whatever Twitch (or someone between us and Twitch) answers, these two
    # header names only ever come from the proxy, for one caller.
    from proxy.web.routes import helix
    assert "x-access-token" in helix.DROPPED_RESPONSE_HEADERS
    assert "x-refresh-token" in helix.DROPPED_RESPONSE_HEADERS
    response = await proxy.get("/helix/users", headers=bearer(key))
    assert "X-Access-Token" not in response.headers


async def test_junk_pairs_store_nothing(proxy, mock):
    for number in range(5):
        response = await proxy.get("/helix/users",
                                   headers=pair(f"junk-at-{number}", f"junk-rt-{number}"))
        assert response.status == 401
    assert await stored(proxy, "grant:") == []
    assert await stored(proxy, "rt:") == []


@pytest.mark.parametrize("config_flags", [{"limits.refresh_per_minute": 3}])
async def test_proving_pairs_spends_the_refresh_rate_limit(proxy, mock):
    statuses = []
    for number in range(5):
        response = await proxy.get("/helix/users",
                                   headers=pair(f"junk-at-{number}", f"junk-rt-{number}"))
        statuses.append(response.status)
    assert statuses[:3] == [401, 401, 401]
    assert statuses[3:] == [429, 429]
    assert mock.calls["token:refresh_token"] == 3


@pytest.mark.parametrize("config_flags", [{"limits.invalid_keys_per_minute": 3}])
async def test_bare_tokens_twitch_refuses_are_rate_limited_per_address(proxy, mock):
    # Sent all at once: the budget is spent before the calls, not after.
    answers = await asyncio.gather(*(proxy.get("/helix/users", headers=bearer(f"junk-{n}"))
                                     for n in range(20)))
    statuses = sorted(answer.status for answer in answers)
    assert statuses == [401] * 3 + [429] * 17
    assert len(mock.helix_requests) == 3  # the refused ones cost Twitch nothing


@pytest.mark.parametrize("config_flags", [{"limits.invalid_keys_per_minute": 3}])
async def test_a_bare_token_twitch_accepts_spends_the_budget_once(proxy, mock):
    token = mock.issue_tokens(VICTIM, [])["access_token"]
    for _ in range(10):
        assert (await proxy.get("/helix/users", headers=bearer(token))).status == 200


@pytest.mark.parametrize("config_flags", [{"limits.invalid_keys_per_minute": 3}])
async def test_a_bare_token_twitch_stops_accepting_spends_again(proxy, mock):
    token = mock.issue_tokens(VICTIM, [])["access_token"]
    assert (await proxy.get("/helix/users", headers=bearer(token))).status == 200
    mock.revoke(token)
    statuses = [(await proxy.get("/helix/users", headers=bearer(token))).status
                for _ in range(5)]
    assert statuses == [401, 401, 401, 429, 429]
