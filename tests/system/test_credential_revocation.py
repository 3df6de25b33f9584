"""The credential model attacked after a revocation (see credential_attacks.py).

Revocation is final: no old key, alias or access token comes back, and refusals last.
"""

from __future__ import annotations

import asyncio

import pytest

from proxy.web.keys import grants_key
from tests.helpers import bearer, grant_of_key, login
from tests.system.credential_attacks import (
    VICTIM,
    expiry_of_alias,
    login_and_adopt,
    pair,
    secrets_in,
)


@pytest.mark.parametrize("config_flags", [{"auth.replay_window": 300}])
async def test_revoke_then_relogin_revives_no_old_refresh_token(proxy, mock):
    first = await login(proxy)
    rt0 = first["refresh_token"]
    # An old widget refreshes once (rt0 is now a rotated alias) and uses the new pair.
    refreshed = await (await proxy.post("/refresh", json={"refresh_token": rt0})).json()
    rt1 = refreshed["refresh_token"]
    used = await proxy.get("/helix/users", headers=pair(refreshed["access_token"], rt1))
    assert used.status == 200

    revoked = await proxy.post("/revoke?twitch=true", headers=bearer(first["proxy_key"]))
    assert revoked.status == 200
    second = await login(proxy)

    for old in (rt0, rt1):
        answer = await proxy.post("/refresh", json={"refresh_token": old})
        assert answer.status in (400, 401), old
        assert secrets_in(await answer.text(), second["access_token"],
                          second["refresh_token"]) == []
        helix = await proxy.get("/helix/users", headers=pair("whatever", old))
        assert helix.status == 401
        assert secrets_in(dict(helix.headers), second["access_token"],
                          second["refresh_token"]) == []


async def test_disconnect_on_twitch_then_relogin_revives_no_alias(proxy, mock):
    first, widget = await login_and_adopt(proxy)
    mock.revoke_refresh_tokens(VICTIM)  # the user disconnects the app on Twitch
    dead = await proxy.get("/helix/users", headers=bearer(first["proxy_key"]))
    assert dead.status == 401
    assert (await dead.json())["error"] == "reauthorization_required"

    second = await login(proxy)
    # The key is the user's own and survives the new login; the old pair does not.
    assert (await proxy.get("/helix/users", headers=bearer(first["proxy_key"]))).status == 200
    again = await proxy.get("/helix/users", headers=widget)
    assert again.status == 401
    assert "X-Access-Token" not in again.headers
    refresh = await proxy.post("/refresh", json={"refresh_token": first["refresh_token"]})
    assert refresh.status != 200
    assert secrets_in(await refresh.text(), second["refresh_token"]) == []


async def test_revoke_with_twitch_revokes_every_key_of_the_grant(proxy, mock):
    lost = (await login(proxy))["proxy_key"]  # a key the user no longer holds
    held = (await login(proxy))["proxy_key"]
    answer = await proxy.post("/revoke?twitch=true", headers=bearer(held))
    assert (await answer.json()) == {"revoked": True, "twitch_revoked": True,
                                     "keys_revoked": 2}
    fresh = (await login(proxy))["proxy_key"]
    for key in (lost, held):
        again = await proxy.get("/helix/users", headers=bearer(key))
        assert (await again.json())["error"] == "invalid_proxy_key"
    assert (await proxy.get("/helix/users", headers=bearer(fresh))).status == 200


async def test_a_revoked_key_stays_revoked_after_a_new_login(proxy, mock):
    kept = (await login(proxy))["proxy_key"]
    revoked = (await login(proxy))["proxy_key"]
    assert (await proxy.post("/revoke", headers=bearer(revoked))).status == 200
    await login(proxy)
    assert (await proxy.get("/helix/users", headers=bearer(kept))).status == 200
    again = await proxy.get("/helix/users", headers=bearer(revoked))
    assert (await again.json())["error"] == "invalid_proxy_key"


async def test_keys_wait_out_a_disconnect_and_work_again_after_a_login(proxy, mock):
    key = (await login(proxy))["proxy_key"]
    mock.revoke_refresh_tokens(VICTIM)  # a password change, or "Disconnect" on Twitch
    mock.expire_access_tokens()
    waiting = await proxy.get("/helix/users", headers=bearer(key))
    assert (await waiting.json())["error"] == "reauthorization_required"
    await login(proxy)
    assert (await proxy.get("/helix/users", headers=bearer(key))).status == 200


@pytest.mark.parametrize("config_flags", [{"auth.replay_window": 1.0}])
async def test_a_rotated_token_expires_after_the_window_on_helix_too(proxy, mock):
    first = await login(proxy)
    rt0 = first["refresh_token"]
    assert (await proxy.post("/refresh", json={"refresh_token": rt0})).status == 200
    inside = await proxy.get("/helix/users", headers=pair("whatever", rt0))
    assert inside.status == 200  # replayed inside the window...
    await asyncio.sleep(1.2)
    after = await proxy.get("/helix/users", headers=pair("whatever", rt0))
    assert after.status == 401  # ...and never promoted to a lasting alias
    assert (await proxy.post("/refresh", json={"refresh_token": rt0})).status != 200


async def test_grants_delete_ends_every_alias(proxy, mock):
    first, widget = await login_and_adopt(proxy)
    grant = await grant_of_key(proxy, first["proxy_key"])
    assert await proxy.app[grants_key].delete(grant.grant_id)
    calls = mock.calls["token:refresh_token"]
    assert (await proxy.get("/helix/users", headers=widget)).status == 401
    assert mock.calls["token:refresh_token"] == calls  # refused here, not proven afresh


async def test_an_ended_chains_live_refresh_token_is_refused_for_good(proxy, mock):
    first = await login(proxy)
    revoked = await proxy.post("/revoke?twitch=true", headers=bearer(first["proxy_key"]))
    assert revoked.status == 200
    # Twitch may still honour it (a re-login does not revoke it there), so the
    # proxy keeps refusing it itself, without an expiry.
    assert expiry_of_alias(proxy, first["refresh_token"]) == (True, None)


@pytest.mark.parametrize("config_flags", [{"auth.replay_window": 1.0}])
async def test_a_spent_token_after_its_window_is_401_without_asking_twitch(proxy, mock):
    first = await login(proxy)
    assert (await proxy.post("/refresh", json={"refresh_token": first["refresh_token"]})).status \
        == 200
    await asyncio.sleep(1.2)
    calls = mock.calls["token:refresh_token"]
    for _ in range(3):
        answer = await proxy.post("/refresh", json={"refresh_token": first["refresh_token"]})
        assert answer.status == 401
        assert (await answer.json())["error"] == "reauthorization_required"
    assert mock.calls["token:refresh_token"] == calls
    indexed, expiry = expiry_of_alias(proxy, first["refresh_token"])
    assert indexed and expiry is not None  # forgotten after a while, not kept forever


async def test_revoke_with_twitch_revokes_the_chains_earlier_access_tokens(proxy, mock):
    first = await login(proxy)
    refreshed = await (await proxy.post(
        "/refresh", json={"refresh_token": first["refresh_token"]})).json()
    earlier = first["access_token"]
    assert (await proxy.get("/helix/users", headers=bearer(earlier))).status == 200
    answer = await proxy.post("/revoke?twitch=true", headers=bearer(first["proxy_key"]))
    assert answer.status == 200
    for token in (earlier, refreshed["access_token"]):
        assert (await proxy.get("/helix/users", headers=bearer(token))).status == 401


@pytest.mark.parametrize("config_flags", [{
    "twitch.allowed_scopes": ("user:read:email", "chat:read")}])
async def test_revoke_after_a_wider_login_takes_the_old_chains_access_token(proxy, mock):
    first = await login(proxy)
    await login(proxy, scope="user:read:email chat:read")  # a new chain
    answer = await proxy.post("/revoke?twitch=true", headers=bearer(first["proxy_key"]))
    assert answer.status == 200
    assert (await proxy.get("/helix/users", headers=bearer(first["access_token"]))).status == 401


async def test_access_tokens_the_grant_cannot_remember_are_revoked_at_once(proxy, mock):
    from proxy.core.grant_records import MAX_EARLIER_ACCESS_TOKENS
    first = await login(proxy)
    kept = await (await proxy.post(
        "/refresh", json={"refresh_token": first["refresh_token"]})).json()
    current = kept
    for _ in range(MAX_EARLIER_ACCESS_TOKENS + 1):  # push `kept` out of the grant's memory
        current = await (await proxy.post(
            "/refresh", json={"refresh_token": current["refresh_token"]})).json()
    assert (await proxy.get("/helix/users", headers=bearer(kept["access_token"]))).status == 401
    answer = await proxy.post("/revoke?twitch=true", headers=bearer(first["proxy_key"]))
    assert answer.status == 200
    assert (await proxy.get("/helix/users", headers=bearer(current["access_token"]))).status \
        == 401
