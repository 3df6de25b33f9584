"""The credential model attacked through the store's index (see credential_attacks.py).

With write access to the store but not its key, nothing forged or copied opens anything.
"""

from __future__ import annotations

import pytest

from proxy.web.keys import grants_key, store_key
from tests.helpers import bearer, grant_of_key, login
from tests.system.credential_attacks import (
    VICTIM,
    authorized_callback,
    pair,
    secrets_in,
)


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_index_entries_written_without_the_key_open_nothing(proxy, mock):
    import json

    from proxy.core.sealed_index import token_hash
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
    from proxy.core.sealed_index import token_hash
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
    from proxy.core.grant_records import Grant
    from proxy.core.grants import GrantStore
    from proxy.core.sealed_index import token_hash
    from proxy.services import cipher_for
    from proxy.store import open_store
    from proxy.web.app import create_app
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


async def test_a_user_index_naming_another_users_grant_gets_nothing(proxy, mock):
    from proxy.core.grant_records import Grant
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
    back = await authorized_callback(proxy)
    answer = await proxy.get("/callback", params=back.query,
                             headers={"Accept": "application/json"})
    assert answer.status == 502
    assert secrets_in(await answer.text(), tokens["access_token"], tokens["refresh_token"]) == []
    stored = await grants.get(victim.grant_id)
    assert stored.access_token == tokens["access_token"] and stored.user_id == "5550001"


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
