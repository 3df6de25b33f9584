"""The credential model attacked through logins (see credential_attacks.py).

A forced or repeated login neither narrows a grant nor hands an old pair a new chain, and
scopes stay under their ceiling.
"""

from __future__ import annotations

import asyncio

import pytest
from yarl import URL

from tests.helpers import bearer, grant_of_key, login
from tests.system.credential_attacks import (
    VICTIM,
    authorized_callback,
    login_and_adopt,
    secrets_in,
    stored,
)


async def test_a_login_that_adds_nothing_keeps_the_chain(proxy, mock):
    # Any page can send the user's browser through /login; with nothing new
    # to grant, Twitch skips its consent page. That must not end the chain
    # that old widgets hold a pair of.
    first, widget = await login_and_adopt(proxy)
    revokes = mock.calls["revoke"]
    second = await login(proxy)
    assert (await proxy.get("/helix/users", headers=widget)).status == 200
    assert second["refresh_token"] == first["refresh_token"]  # the kept chain's pair
    assert mock.calls["revoke"] == revokes + 2  # the login's unused tokens
    assert (await proxy.get("/helix/users", headers=bearer(second["proxy_key"]))).status == 200


@pytest.mark.parametrize("config_flags", [{
    "twitch.allowed_scopes": ("user:read:email", "chat:read")}])
async def test_a_wider_login_ends_the_old_chains_aliases(proxy, mock):
    first, widget = await login_and_adopt(proxy)
    await login(proxy, scope="user:read:email chat:read")
    assert (await proxy.get("/helix/users", headers=widget)).status == 401
    assert (await proxy.get("/helix/users", headers=bearer(first["proxy_key"]))).status == 200


@pytest.mark.parametrize("config_flags", [{
    "twitch.allowed_scopes": ("user:read:email", "chat:read")}])
async def test_an_old_pair_in_flight_during_a_login_never_gets_the_new_chain(proxy, mock):
    first, widget = await login_and_adopt(proxy)
    mock.helix_delay = 0.5
    seen = len(mock.helix_requests)
    in_flight = asyncio.ensure_future(proxy.get("/helix/users", headers=widget))
    while len(mock.helix_requests) == seen:
        await asyncio.sleep(0.005)
    second = await login(proxy, scope="user:read:email chat:read")  # a new chain
    answer = await in_flight
    assert secrets_in(dict(answer.headers), second["access_token"],
                      second["refresh_token"]) == []


async def test_scopes_beyond_the_login_are_revoked_and_not_stored(proxy, mock):
    start = await proxy.get("/login", allow_redirects=False)
    authorize = URL(start.headers["Location"])
    # The user edits Twitch's authorize URL to ask for more.
    edited = authorize.update_query(scope="user:read:email channel:manage:broadcast")
    async with proxy.session.get(edited, allow_redirects=False) as consent:
        back = URL(consent.headers["Location"])
    response = await proxy.get("/callback", params=back.query,
                               headers={"Accept": "application/json"})
    assert response.status == 403
    body = await response.json()
    assert body["error"] == "scopes_not_allowed"
    assert body["scopes"] == ["channel:manage:broadcast"]
    assert await stored(proxy, "grant:") == []
    assert mock.calls["revoke"] == 2
    assert not any(t.user_id == VICTIM for t in mock.refresh_tokens.values())


@pytest.mark.parametrize("config_flags", [{
    "twitch.allowed_scopes": ("user:read:email", "chat:read")}])
async def test_a_login_never_silently_narrows_an_existing_grant(proxy, mock):
    wide = await login(proxy, scope="user:read:email chat:read")
    before = await grant_of_key(proxy, wide["proxy_key"])
    # Any page can send the user's browser to /login (default scopes only),
    # and Twitch skips its consent page for scopes already granted.
    narrow = await proxy.get("/callback", params=(await authorized_callback(proxy)).query,
                             headers={"Accept": "application/json"})
    assert narrow.status == 409
    body = await narrow.json()
    assert body["error"] == "scopes_narrowed"
    assert body["missing_scopes"] == ["chat:read"]
    after = await grant_of_key(proxy, wide["proxy_key"])
    assert after.scopes == before.scopes
    assert after.access_token == before.access_token
    assert after.chain == before.chain
    assert (await proxy.get("/helix/users", headers=bearer(wide["proxy_key"]))).status == 200
    # A wider (or equal) login is fine and keeps the key.
    await login(proxy, scope="user:read:email chat:read")
    assert (await proxy.get("/helix/users", headers=bearer(wide["proxy_key"]))).status == 200


@pytest.mark.parametrize("config_flags", [{
    "twitch.allowed_scopes": ("user:read:email", "chat:read")}])
async def test_the_narrowing_page_says_nothing_changed(proxy, mock):
    await login(proxy, scope="user:read:email chat:read")
    page = await proxy.get("/callback", params=(await authorized_callback(proxy)).query,
                           headers={"Accept": "text/html"})
    assert page.status == 409
    text = await page.text()
    assert "would take permissions away" in text
    assert "chat:read" in text


async def test_a_login_keeps_a_chain_whose_access_token_only_expired(proxy, mock):
    first, widget = await login_and_adopt(proxy)
    mock.expire_access_tokens()  # hours later: expired, but the chain is fine
    await login(proxy)  # e.g. forced by a page the user visits
    assert (await proxy.get("/helix/users", headers=widget)).status == 200


async def test_a_login_replaces_a_chain_twitch_ended(proxy, mock):
    first, widget = await login_and_adopt(proxy)
    mock.revoke_refresh_tokens(VICTIM)  # a password change the proxy has not noticed yet
    second = await login(proxy)
    assert second["refresh_token"] != first["refresh_token"]
    assert (await proxy.get("/helix/users", headers=bearer(first["proxy_key"]))).status == 200
    assert (await proxy.get("/helix/users", headers=widget)).status == 401
