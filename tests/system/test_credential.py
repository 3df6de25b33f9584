"""The credential model, tried as an attacker would: every credential the proxy
honours is one Twitch and the user still honour.

Over real HTTP against the mock Twitch. Each test names what an attacker holds
and asserts what it must not give them.
"""

from __future__ import annotations

import asyncio

import pytest
from yarl import URL

from proxy.core.credential import Credential, bearer_token, proxy_key_in
from proxy.web.keys import grants_key, store_key
from tests.helpers import login

VICTIM = "141981764"  # twitchdev, the mock's signed-in user


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def pair(access_token: str, refresh_token: str) -> dict[str, str]:
    """An old widget's headers: its Twitch pair."""
    return {**bearer(access_token), "X-Refresh-Token": refresh_token}


async def login_and_adopt(proxy) -> tuple[dict, dict[str, str]]:
    """Log in, and use the login's pair once as an old widget would (its refresh token is
    then an alias of the chain); the login's answer and the widget's headers."""
    first = await login(proxy)
    widget = pair(first["access_token"], first["refresh_token"])
    assert (await proxy.get("/helix/users", headers=widget)).status == 200
    return first, widget


async def stored(proxy, prefix: str) -> list[str]:
    return await proxy.app[store_key].keys(prefix)


async def grant_of_key(proxy, key: str):
    grants = proxy.app[grants_key]
    record = await grants.key_record(key)
    return await grants.get(record.grant_id)


def secrets_in(body: object, *tokens: str) -> list[str]:
    text = str(body)
    return [token for token in tokens if token and token in text]


# -- an old widget's pair: proven before stored ------------------------------------------


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


# -- revocation is final ----------------------------------------------------------------


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


# -- answers are per caller ---------------------------------------------------------------


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


# -- abuse bounded ------------------------------------------------------------------------


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


# -- scopes: a ceiling, and no silent narrowing ------------------------------------------


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
    narrow = await proxy.get("/callback", params=(await _authorized(proxy)).query,
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


async def _authorized(proxy) -> URL:
    from tests.helpers import authorize
    return await authorize(proxy)


# -- one place each -----------------------------------------------------------------------


@pytest.mark.parametrize(("header", "token"), [
    ("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("BEARER abc", "abc"),
    ("Bearer", None), ("Bearer ", None), ("Basic abc", None), ("", None), ("abc", None),
])
def test_bearer_token(header, token):
    assert bearer_token(header) == token


def test_proxy_key_in():
    assert proxy_key_in("Bearer tpk_x") == "tpk_x"
    assert proxy_key_in("Bearer twitch-token") is None
    assert proxy_key_in("Basic tpk_x") is None


def test_buckets_are_named_once():
    from proxy.core.grants import Grant
    grant = Grant.new(user_id="1", login="a", scopes=(), access_token="a", refresh_token="r",
                      expires_at=0)
    assert Credential("key", "a", grant).bucket == "user:1"
    assert Credential("app", "a").bucket == "app"
    bare = Credential("passthrough", "secret-token").bucket
    assert bare.startswith("token:") and "secret-token" not in bare


@pytest.mark.parametrize("config_flags", [{
    "twitch.allowed_scopes": ("user:read:email", "chat:read")}])
async def test_the_narrowing_page_says_nothing_changed(proxy, mock):
    await login(proxy, scope="user:read:email chat:read")
    page = await proxy.get("/callback", params=(await _authorized(proxy)).query,
                           headers={"Accept": "text/html"})
    assert page.status == 409
    text = await page.text()
    assert "would take permissions away" in text
    assert "chat:read" in text


# -- refusals that last ---------------------------------------------------------------------


def _expiry_of_alias(proxy, refresh_token: str) -> tuple[bool, float | None]:
    """(indexed?, expiry) of a refresh token's alias in the memory store."""
    from proxy.core.grants import token_hash
    store = proxy.app[store_key]
    entry = store._data.get(f"{store._prefix}rt:{token_hash(refresh_token)}")
    return (entry is not None, entry[1] if entry else None)


async def test_an_ended_chains_live_refresh_token_is_refused_for_good(proxy, mock):
    first = await login(proxy)
    revoked = await proxy.post("/revoke?twitch=true", headers=bearer(first["proxy_key"]))
    assert revoked.status == 200
    # Twitch may still honour it (a re-login does not revoke it there), so the
    # proxy keeps refusing it itself, without an expiry.
    assert _expiry_of_alias(proxy, first["refresh_token"]) == (True, None)


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
    indexed, expiry = _expiry_of_alias(proxy, first["refresh_token"])
    assert indexed and expiry is not None  # forgotten after a while, not kept forever


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


# -- the store's index: nothing forged opens anything ---------------------------------------


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_index_entries_written_without_the_key_open_nothing(proxy, mock):
    import json

    from proxy.core.grants import token_hash
    victim = await login(proxy)
    grant = await grant_of_key(proxy, victim["proxy_key"])
    store = proxy.app[store_key]
    # Someone who can write to the store but has no encryption key forges a
    # key record, an alias of the victim's chain and the victim's user index.
    forged_key = "tpk_forged-by-someone-with-store-access"
    await store.put(f"key:{token_hash(forged_key)}", json.dumps(
        {"key_id": "x", "grant_id": grant.grant_id, "created_at": 0}).encode())
    await store.put(f"rt:{token_hash('forged-rt')}", json.dumps(
        {"grant_id": grant.grant_id, "kind": "adopted", "chain": grant.chain,
         "until": None}).encode())
    await proxy.app[grants_key].check_generation()  # as another process's write would
    assert (await proxy.get("/helix/users", headers=bearer(forged_key))).status == 401
    refresh = await proxy.post("/refresh", json={"refresh_token": "forged-rt"})
    assert refresh.status != 200
    assert secrets_in(await refresh.text(), grant.access_token, grant.refresh_token) == []
    helix = await proxy.get("/helix/users", headers=pair("x", "forged-rt"))
    assert helix.status == 401 and "X-Access-Token" not in helix.headers
    # The victim's own key still works.
    assert (await proxy.get("/helix/users", headers=bearer(victim["proxy_key"]))).status == 200


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_a_sealed_entry_copied_under_another_name_opens_nothing(proxy, mock):
    from proxy.core.grants import token_hash
    victim = await login(proxy)
    store = proxy.app[store_key]
    # Copy the victim's sealed key record and refresh-token alias under names
    # of the attacker's choosing (no key needed for that).
    record = await store.get(f"key:{token_hash(victim['proxy_key'])}")
    alias = await store.get(f"rt:{token_hash(victim['refresh_token'])}")
    await store.put(f"key:{token_hash('tpk_chosen')}", record)
    await store.put(f"rt:{token_hash('chosen-rt')}", alias)
    await store.put("user:666", await store.get(f"user:{VICTIM}"))
    await proxy.app[grants_key].check_generation()
    assert (await proxy.get("/helix/users", headers=bearer("tpk_chosen"))).status == 401
    refresh = await proxy.post("/refresh", json={"refresh_token": "chosen-rt"})
    assert refresh.status != 200
    assert secrets_in(await refresh.text(), victim["access_token"]) == []
    assert await proxy.app[grants_key].grant_of_user("666") is None


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_an_older_versions_clear_index_waits_for_reencrypt(
        aiohttp_client, proxy_config, mock, caplog):
    import io
    import json

    from proxy.admin import grants_reencrypt
    from proxy.core.grants import Grant, GrantStore, token_hash
    from proxy.store import open_store
    from proxy.web.app import cipher_for, create_app
    # A store as the version before sealing left it: index values in clear.
    store = await open_store(proxy_config.store.url, prefix=proxy_config.store.prefix)
    grants = GrantStore(store, cipher_for(proxy_config))
    tokens = mock.issue_tokens(VICTIM, ["user:read:email"])
    grant = Grant.new(user_id=VICTIM, login="twitchdev", scopes=("user:read:email",),
                      access_token=tokens["access_token"], refresh_token=tokens["refresh_token"],
                      expires_at=10**10)
    await grants.create(grant)
    key = "tpk_from-an-older-version"
    await store.put(f"key:{token_hash(key)}", json.dumps(
        {"key_id": "k", "grant_id": grant.grant_id, "created_at": 0}).encode())
    await store.put(f"user:{VICTIM}", grant.grant_id.encode())
    await store.close()

    # Not sealed at start-up (anyone with write access could plant such an
    # entry): it opens nothing, and the log says what to run.
    proxy = await aiohttp_client(create_app(proxy_config))
    assert (await proxy.get("/helix/users", headers=bearer(key))).status == 401
    assert "run `twitch-proxy grants reencrypt` once" in caplog.text
    # The operator runs it: the entries are sealed and work.
    await grants_reencrypt(None, proxy_config, io.StringIO())
    await proxy.app[grants_key].check_generation()
    assert (await proxy.get("/helix/users", headers=bearer(key))).status == 200
    assert await proxy.app[grants_key].grant_of_user(VICTIM) == grant.grant_id


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
    from proxy.core.grants import MAX_EARLIER_ACCESS_TOKENS
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


async def test_a_user_index_naming_another_users_grant_gets_nothing(proxy, mock):
    from proxy.core.grants import Grant
    mock.add_user("5550001", "victim")
    tokens = mock.issue_tokens("5550001", ["user:read:email"])
    victim = Grant.new(user_id="5550001", login="victim", scopes=("user:read:email",),
                       access_token=tokens["access_token"],
                       refresh_token=tokens["refresh_token"], expires_at=10**10)
    grants = proxy.app[grants_key]
    await grants.create(victim)
    # However the index came to name it (a bug, a restored backup): the
    # signed-in user's login must not be handed the victim's grant.
    name = f"user:{VICTIM}"
    await proxy.app[store_key].put(name, grants._seal(name, victim.grant_id))
    await grants.check_generation()
    back = await _authorized(proxy)
    answer = await proxy.get("/callback", params=back.query,
                             headers={"Accept": "application/json"})
    assert answer.status == 502
    assert secrets_in(await answer.text(), tokens["access_token"], tokens["refresh_token"]) == []
    stored = await grants.get(victim.grant_id)
    assert stored.access_token == tokens["access_token"] and stored.user_id == "5550001"


@pytest.mark.parametrize("config_flags", [{"limits.invalid_keys_per_minute": 3}])
async def test_a_bare_token_twitch_stops_accepting_spends_again(proxy, mock):
    token = mock.issue_tokens(VICTIM, [])["access_token"]
    assert (await proxy.get("/helix/users", headers=bearer(token))).status == 200
    mock.revoke(token)
    statuses = [(await proxy.get("/helix/users", headers=bearer(token))).status
                for _ in range(5)]
    assert statuses == [401, 401, 401, 429, 429]


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_the_start_up_scan_of_the_index_runs_until_it_finds_it_sealed(proxy, mock):
    await login(proxy)
    grants = proxy.app[grants_key]
    store = proxy.app[store_key]
    scanned: list[str] = []
    keys = store.keys

    async def counting_keys(prefix: str) -> list[str]:
        scanned.append(prefix)
        return await keys(prefix)

    store.keys = counting_keys
    assert await grants.unsealed_entries() == 0  # the app's start found it sealed already
    assert scanned == []
    await store.delete("index:checked")  # deleting the marker only brings the scan back
    assert await grants.unsealed_entries() == 0
    assert scanned == ["key:", "rt:", "user:"]
