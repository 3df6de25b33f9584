"""proxy.core.grant_cache: the grant cache in one process and across processes, over real HTTP.

Two app instances on one SQLite file (or one Redis) stand for two processes:
each has its own in-process cache and they share nothing but the store.
"""

from __future__ import annotations

import asyncio
import secrets

import pytest
from aiohttp import web
from cryptography.fernet import Fernet

from proxy.config import load_config
from proxy.core.grant_cache import GENERATION_KEY
from proxy.web.app import create_app
from proxy.web.keys import grant_cache_key, store_key
from tests.helpers import bearer, login, proxy_config_flags

#: Long enough that the background poll never runs during a test: tests call
#: check_generation() (what the poll does) themselves, at a known moment.
NO_POLL = {"store.cache_poll": 3600}



class CountingGets:
    """Counts the store reads an app makes."""

    def __init__(self, app: web.Application) -> None:
        self.count = 0
        store = app[store_key]
        original = store.get

        async def get(key: str) -> bytes | None:
            self.count += 1
            return await original(key)

        store.get = get  # type: ignore[method-assign]


# -- the grant cache in one process ------------------------------------------------------


@pytest.mark.parametrize("config_flags", [NO_POLL])
@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_repeated_requests_make_no_store_round_trip(proxy, mock):
    key = (await login(proxy))["proxy_key"]
    assert (await proxy.get("/helix/users", headers=bearer(key))).status == 200
    reads = CountingGets(proxy.app)
    for _ in range(5):
        assert (await proxy.get("/helix/users", headers=bearer(key))).status == 200
    assert reads.count == 0
    assert mock.calls["helix:GET /users"] == 6


@pytest.mark.parametrize("config_flags", [{"store.cache_poll": 0}])
async def test_cache_poll_zero_reads_the_store_every_time(proxy, mock):
    key = (await login(proxy))["proxy_key"]
    reads = CountingGets(proxy.app)
    for _ in range(3):
        assert (await proxy.get("/helix/users", headers=bearer(key))).status == 200
    assert reads.count >= 6  # key record and grant, each time


@pytest.mark.parametrize("config_flags", [NO_POLL])
@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_replayed_refresh_token_answered_from_memory(proxy, mock):
    tokens = await login(proxy)
    first = await (await proxy.post("/refresh", json={"refresh_token": tokens["refresh_token"]}))\
        .json()
    # Widget copies still holding the rotated token: one store lookup, then memory.
    assert (await proxy.post("/refresh", json={"refresh_token": tokens["refresh_token"]})) \
        .status == 200
    reads = CountingGets(proxy.app)
    for _ in range(5):
        response = await proxy.post("/refresh", json={"refresh_token": tokens["refresh_token"]})
        assert (await response.json())["refresh_token"] == first["refresh_token"]
    assert reads.count == 0
    assert mock.calls["token:refresh_token"] == 1


@pytest.mark.parametrize("config_flags", [NO_POLL])
async def test_old_widget_pair_cached_after_adoption(proxy, mock):
    tokens = mock.issue_tokens("141981764", ["user:read:email"])
    headers = {**bearer(tokens["access_token"]), "X-Refresh-Token": tokens["refresh_token"]}
    for _ in range(2):  # the first adopts, the second re-reads the adopted index
        assert (await proxy.get("/helix/users", headers=headers)).status == 200
    reads = CountingGets(proxy.app)
    response = await proxy.get("/helix/users", headers=headers)
    assert response.status == 200
    assert reads.count == 0
    assert response.headers["X-Refresh-Token"]  # the grant's pair still comes back


@pytest.mark.parametrize("config_flags", [NO_POLL])
async def test_revocation_in_this_process_applies_at_once(proxy, mock):
    key = (await login(proxy))["proxy_key"]
    assert (await proxy.get("/helix/users", headers=bearer(key))).status == 200
    assert (await proxy.post("/revoke", headers=bearer(key))).status == 200
    response = await proxy.get("/helix/users", headers=bearer(key))
    assert response.status == 401
    assert (await response.json())["error"] == "invalid_proxy_key"


# -- two processes sharing one store ------------------------------------------------------


@pytest.fixture(params=["sqlite", "redis"])
def shared_store_flags(request, tmp_path):
    """Store flags two app instances share: one SQLite file, or one Redis prefix."""
    if request.param == "sqlite":
        return {"store.url": f"sqlite:///{tmp_path}/shared.sqlite3"}
    url = request.getfixturevalue("redis_url")
    return {"store.url": url, "store.prefix": f"test-cache-{secrets.token_hex(4)}:",
            "store.encryption_key": Fernet.generate_key().decode()}


@pytest.fixture
async def two_proxies(aiohttp_client, twitch_server, shared_store_flags, tmp_path):
    """Two proxies, each with its own grant cache, on one store."""
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    flags = {**proxy_config_flags(str(twitch_server.make_url("")).rstrip("/")),
             **shared_store_flags, **NO_POLL}
    first = await aiohttp_client(create_app(load_config(path=empty, environ={}, flags=flags)))
    second = await aiohttp_client(create_app(load_config(path=empty, environ={}, flags=flags)))
    return first, second


async def test_key_revoked_in_one_process_is_refused_by_the_other(two_proxies, mock):
    first, second = two_proxies
    key = (await login(first))["proxy_key"]
    await second.app[grant_cache_key].check_generation()
    assert (await second.get("/helix/users", headers=bearer(key))).status == 200
    assert (await first.post("/revoke", headers=bearer(key))).status == 200
    # Until its next poll the other process still answers from its cache ...
    assert (await second.get("/helix/users", headers=bearer(key))).status == 200
    # ... and its next poll (every store.cache_poll seconds) drops it.
    await second.app[grant_cache_key].check_generation()
    response = await second.get("/helix/users", headers=bearer(key))
    assert response.status == 401
    assert (await response.json())["error"] == "invalid_proxy_key"


async def test_revoking_in_one_process_ends_an_old_pair_in_the_other(two_proxies, mock):
    first, second = two_proxies
    tokens = await login(first)
    widget = {**bearer(tokens["access_token"]), "X-Refresh-Token": tokens["refresh_token"]}
    await second.app[grant_cache_key].check_generation()
    assert (await second.get("/helix/users", headers=widget)).status == 200  # remembered
    revoked = await first.post("/revoke?twitch=true", headers=bearer(tokens["proxy_key"]))
    assert revoked.status == 200
    await login(first)  # a new chain: the old pair must not come back with it
    await second.app[grant_cache_key].check_generation()
    response = await second.get("/helix/users", headers=widget)
    assert response.status == 401
    assert "X-Access-Token" not in response.headers


async def test_rotation_in_one_process_is_used_by_the_other(two_proxies, mock):
    first, second = two_proxies
    key = (await login(first))["proxy_key"]
    assert (await second.get("/helix/users", headers=bearer(key))).status == 200
    old_token = mock.helix_requests[-1].headers["Authorization"]
    mock.expire_access_tokens()
    assert (await first.get("/helix/users", headers=bearer(key))).status == 200
    new_token = mock.helix_requests[-1].headers["Authorization"]
    assert new_token != old_token
    assert mock.calls["token:refresh_token"] == 1
    await second.app[grant_cache_key].check_generation()
    assert (await second.get("/helix/users", headers=bearer(key))).status == 200
    assert mock.helix_requests[-1].headers["Authorization"] == new_token
    assert mock.calls["token:refresh_token"] == 1


async def test_stale_cache_meeting_a_rotation_does_not_refresh_again(two_proxies, mock):
    first, second = two_proxies
    key = (await login(first))["proxy_key"]
    assert (await second.get("/helix/users", headers=bearer(key))).status == 200
    mock.expire_access_tokens()
    assert (await first.get("/helix/users", headers=bearer(key))).status == 200
    # The second process has not polled: its cached token gets a 401, and the
    # refresher's reload under the lock finds the first process's rotation.
    assert (await second.get("/helix/users", headers=bearer(key))).status == 200
    assert mock.calls["token:refresh_token"] == 1


@pytest.mark.parametrize("shared_store_flags", ["sqlite"], indirect=True)
async def test_background_poll_drops_the_cache(aiohttp_client, twitch_server, mock,
                                               shared_store_flags, tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    flags = {**proxy_config_flags(str(twitch_server.make_url("")).rstrip("/")),
             **shared_store_flags, "store.cache_poll": 0.05}
    first = await aiohttp_client(create_app(load_config(path=empty, environ={}, flags=flags)))
    second = await aiohttp_client(create_app(load_config(path=empty, environ={}, flags=flags)))
    key = (await login(first))["proxy_key"]
    assert (await second.get("/helix/users", headers=bearer(key))).status == 200
    assert (await first.post("/revoke", headers=bearer(key))).status == 200
    status = 200
    for _ in range(200):  # no timing asserted: only that the poll gets there
        status = (await second.get("/helix/users", headers=bearer(key))).status
        if status == 401:
            break
        await asyncio.sleep(0.05)
    assert status == 401


@pytest.mark.parametrize("config_flags", [NO_POLL])
async def test_unreadable_marker_turns_the_cache_off(proxy, mock):
    key = (await login(proxy))["proxy_key"]
    grants = proxy.app[grant_cache_key]
    assert (await proxy.get("/helix/users", headers=bearer(key))).status == 200
    store = proxy.app[store_key]
    original = store.get

    async def broken(name):
        if name == GENERATION_KEY:
            from proxy.errors import StoreUnavailable
            raise StoreUnavailable("down")
        return await original(name)

    store.get = broken
    await grants.check_generation()
    reads = CountingGets(proxy.app)
    assert (await proxy.get("/helix/users", headers=bearer(key))).status == 200
    assert reads.count >= 2  # read from the store, not from a cache nobody can vouch for


@pytest.mark.parametrize("config_flags", [{"store.cache_poll": 0.01}])
async def test_watcher_survives_an_unexpected_error(proxy, mock, caplog):
    key = (await login(proxy))["proxy_key"]
    grants = proxy.app[grant_cache_key]
    store = proxy.app[store_key]
    original = store.get
    failures = []

    async def flaky(name):
        if name == GENERATION_KEY and not failures:
            failures.append(name)
            raise RuntimeError("something unforeseen")
        return await original(name)

    store.get = flaky
    for _ in range(500):  # until the watcher has met the error and polled again
        await asyncio.sleep(0.01)
        if failures and grants._verified:
            break
    assert failures and grants._verified
    assert "checking the change marker failed" in caplog.text
    assert (await proxy.get("/helix/users", headers=bearer(key))).status == 200
