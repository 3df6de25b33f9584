"""proxy.core.grants: the grant store on a real store (memory and an SQLite file).

Grants round-trip encrypted and are replaced only by compare-and-swap; the index
beside them (the user index, refresh-token aliases and proxy-key records) is
sealed with the store's key and bound to each entry's name, so an entry written
without the key, or copied under another name, opens nothing.
"""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
from cryptography.fernet import Fernet

from proxy.config.secret import Secret
from proxy.core.grant_records import NEEDS_REAUTH, Grant
from proxy.core.grants import GrantStore
from proxy.core.sealed_index import token_hash
from proxy.errors import DecryptionFailed
from proxy.store import open_store
from proxy.store.crypto import FernetCipher

ACCESS, REFRESH = "at-SECRET-access-0123456789", "rt-SECRET-refresh-0123456789"


def cipher() -> FernetCipher:
    return FernetCipher([Secret(Fernet.generate_key().decode())])


@pytest.fixture(params=["memory", "sqlite"])
async def store(request, tmp_path):
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/grants.sqlite3"
    store = await open_store(url, prefix="t:")
    yield store
    await store.close()


@pytest.fixture
def grants(store) -> GrantStore:
    return GrantStore(store, cipher())


def new_grant(user_id: str = "1001", **changes) -> Grant:
    grant = Grant.new(user_id=user_id, login=f"user{user_id}", scopes=("user:read:email",),
                      access_token=ACCESS, refresh_token=REFRESH, expires_at=time.time() + 14000)
    return dataclasses.replace(grant, **changes)


async def everything_stored(store) -> bytes:
    """Every name and value in the store, as one blob to search for secrets."""
    names = await store.keys("")
    return b"\n".join([name.encode() for name in names]
                      + [await store.get(name) or b"" for name in names])


async def test_a_grant_round_trips_and_is_stored_encrypted(grants, store):
    grant = new_grant()

    loaded = await grants.create(grant)

    assert await grants.get(grant.grant_id) == grant
    assert (await grants.load(grant.grant_id)).raw == loaded.raw
    assert await store.get(f"grant:{grant.grant_id}") == loaded.raw
    blob = await everything_stored(store)
    assert ACCESS.encode() not in blob and REFRESH.encode() not in blob
    assert await grants.all_ids() == [grant.grant_id]
    assert await grants.get("no-such-grant") is None


async def test_replace_is_a_compare_and_swap_against_the_bytes_read(grants):
    loaded = await grants.create(new_grant())
    first = dataclasses.replace(loaded.grant, access_token="at-first")
    second = dataclasses.replace(loaded.grant, access_token="at-second")

    assert await grants.replace(loaded, first) is not None
    assert await grants.replace(loaded, second) is None  # read before the first write

    assert (await grants.get(loaded.grant.grant_id)).access_token == "at-first"


async def test_update_with_runs_the_edit_again_on_what_another_writer_stored(grants):
    grant = new_grant()
    await grants.create(grant)
    seen: list[str] = []

    async def edit(current: Grant) -> Grant:
        seen.append(current.login)
        if len(seen) == 1:  # another writer gets in between this read and our write
            await grants.update(grant.grant_id, login="renamed")
        return dataclasses.replace(current, access_token="at-edited")

    result = await grants.update_with(grant.grant_id, edit)

    assert seen == ["user1001", "renamed"]
    stored = await grants.get(grant.grant_id)
    assert stored == result
    assert (stored.login, stored.access_token) == ("renamed", "at-edited")
    assert await grants.update_with("no-such-grant", edit) is None


async def test_the_user_index_is_claimed_once_and_only_by_claim_user(grants):
    grant = new_grant()
    await grants.create(grant)
    assert await grants.grant_of_user("1001") is None  # creating a grant claims nothing

    assert await grants.claim_user("1001", grant.grant_id) is True
    assert await grants.claim_user("1001", "g_other") is False

    assert await grants.grant_of_user("1001") == grant.grant_id


async def test_creating_a_grant_makes_its_refresh_token_the_chains_current_alias(grants):
    grant = new_grant()
    await grants.create(grant)

    ref = await grants.find_refresh_token(REFRESH)

    assert (ref.grant_id, ref.kind, ref.chain, ref.until) == (
        grant.grant_id, "current", grant.chain, None)
    assert ref.opens(grant)
    assert not ref.opens(dataclasses.replace(grant, state=NEEDS_REAUTH))
    assert not ref.opens(dataclasses.replace(grant, chain="c-other"))
    assert await grants.find_refresh_token("rt-never-shown") is None


async def test_a_rotated_alias_opens_its_grant_only_inside_its_window(grants):
    grant = new_grant()
    await grants.create(grant)

    await grants.index_refresh_token("rt-rotated", grant.grant_id, "rotated",
                                     chain=grant.chain, window=30)
    ref = await grants.find_refresh_token("rt-rotated")

    assert ref.kind == "rotated" and ref.until is not None
    assert ref.opens(grant, now=ref.until - 1)
    assert not ref.opens(grant, now=ref.until + 1)
    await grants.forget_refresh_token("rt-rotated")
    assert await grants.find_refresh_token("rt-rotated") is None


async def test_end_aliases_keeps_the_live_chains_and_never_forgets_a_current_token(grants, store):
    grant = new_grant()
    await grants.create(grant)
    await grants.index_refresh_token("rt-new-chain", grant.grant_id, "current", chain="c-new")
    await grants.index_refresh_token("rt-other-grant", "g_other", "current", chain="c0")

    assert await grants.end_aliases(grant.grant_id, keep_chain="c-new") == 1

    ended = await grants.find_refresh_token(REFRESH)
    assert ended is not None  # kept, as a refusal
    assert not ended.opens(dataclasses.replace(grant, chain="c-new"))
    assert (await grants.find_refresh_token("rt-new-chain")).chain == "c-new"
    assert await grants.find_refresh_token("rt-other-grant") is not None


async def test_proxy_keys_are_stored_by_their_hash_and_revoked_by_value_or_id(grants, store):
    grant = new_grant()
    await grants.create(grant)

    key, record = await grants.create_key(grant.grant_id)
    other, other_record = await grants.create_key(grant.grant_id)

    assert key.startswith("tpk_") and key != other
    assert await grants.key_record(key) == record and record.grant_id == grant.grant_id
    assert await store.get(f"key:{token_hash(key)}") is not None
    assert key.encode() not in await everything_stored(store)
    assert sorted(r.key_id for _, r in await grants.keys_of(grant.grant_id)) == sorted(
        [record.key_id, other_record.key_id])

    assert await grants.revoke_key(key) is True
    assert await grants.key_record(key) is None
    assert await grants.revoke_key_id(other_record.key_id) is True
    assert await grants.key_record(other) is None
    assert await grants.revoke_key_id(other_record.key_id) is False


async def test_revoke_keys_of_revokes_one_grants_keys_and_counts_them(grants):
    mine, theirs = new_grant("1001"), new_grant("1002")
    for grant in (mine, theirs):
        await grants.create(grant)
    keys = [(await grants.create_key(mine.grant_id))[0] for _ in range(3)]
    kept, _ = await grants.create_key(theirs.grant_id)

    assert await grants.revoke_keys_of(mine.grant_id) == 3

    assert [await grants.key_record(key) for key in keys] == [None, None, None]
    assert (await grants.key_record(kept)).grant_id == theirs.grant_id


async def test_an_index_entry_copied_under_another_name_opens_nothing(grants, store):
    victim, attacker = new_grant("1001"), new_grant("1002")
    for grant in (victim, attacker):
        await grants.create(grant)
    await grants.claim_user("1001", victim.grant_id)
    victim_key, _ = await grants.create_key(victim.grant_id)
    attacker_key, _ = await grants.create_key(attacker.grant_id)

    # Whoever can write to the store copies sealed entries of the victim
    # under names they hold: their own key, their own user id, their token.
    copies = {
        f"key:{token_hash(attacker_key)}": f"key:{token_hash(victim_key)}",
        "user:1002": "user:1001",
        f"rt:{token_hash('rt-attacker')}": f"rt:{token_hash(REFRESH)}",
    }
    for target, source in copies.items():
        await store.put(target, await store.get(source))

    assert await grants.key_record(attacker_key) is None
    assert await grants.grant_of_user("1002") is None
    assert await grants.find_refresh_token("rt-attacker") is None
    assert (await grants.key_record(victim_key)).grant_id == victim.grant_id


async def test_an_index_entry_written_without_the_key_opens_nothing(grants, store):
    grant = new_grant()
    await grants.create(grant)
    key = "tpk_" + "x" * 43
    clear = {
        f"key:{token_hash(key)}": {"key_id": "k1", "grant_id": grant.grant_id,
                                   "created_at": 0.0},
        f"rt:{token_hash('rt-planted')}": {"grant_id": grant.grant_id, "kind": "current",
                                           "chain": grant.chain, "until": None},
    }
    for name, value in clear.items():
        await store.put(name, json.dumps(value).encode())
    await store.put("user:1001", grant.grant_id.encode())
    # Sealed, but with another store's key.
    await store.put("user:1003", GrantStore(store, cipher())._seal("user:1003", grant.grant_id))

    assert await grants.key_record(key) is None
    assert await grants.find_refresh_token("rt-planted") is None
    assert await grants.grant_of_user("1001") is None
    assert await grants.grant_of_user("1003") is None
    assert await grants.unsealed_entries() == 4
    assert await grants.claim_user("1001", grant.grant_id) is True  # a forged entry names none


async def test_seal_index_seals_entries_in_clear_only_when_asked(grants, store):
    grant = new_grant()
    await grants.create(grant)
    await store.put("user:1001", grant.grant_id.encode())  # as a version before sealing

    assert await grants.seal_index() == 1  # the alias create() wrote: sealed anew
    assert await grants.grant_of_user("1001") is None
    assert await grants.seal_index(seal_clear=True) == 2

    assert await grants.grant_of_user("1001") == grant.grant_id
    assert await grants.unsealed_entries() == 0


async def test_delete_removes_the_grant_its_user_index_and_its_keys(grants):
    grant = new_grant()
    await grants.create(grant)
    await grants.claim_user("1001", grant.grant_id)
    key, _ = await grants.create_key(grant.grant_id)

    assert await grants.delete(grant.grant_id) is True

    assert await grants.get(grant.grant_id) is None
    assert await grants.grant_of_user("1001") is None
    assert await grants.key_record(key) is None
    assert not (await grants.find_refresh_token(REFRESH)).opens(None)
    assert await grants.delete(grant.grant_id) is False


async def test_another_key_cannot_read_the_grants(grants, store):
    await grants.check_cipher()  # an empty store passes
    await grants.create(new_grant())

    await grants.check_cipher()
    with pytest.raises(DecryptionFailed):
        await GrantStore(store, cipher()).check_cipher()


async def test_a_login_state_is_used_up_by_exactly_one_caller(grants):
    await grants.put_state("st-1", {"scopes": ["user:read:email"]}, ttl=60)

    assert await grants.peek_state("st-1") == {"scopes": ["user:read:email"]}
    assert await grants.consume_state("st-1") is True
    assert await grants.consume_state("st-1") is False
    assert await grants.peek_state("st-1") is None
