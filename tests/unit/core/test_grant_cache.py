"""proxy.core.grant_cache: the grant cache, shared GETs and the TTL cache, over real HTTP.

Two app instances on one SQLite file (or one Redis) stand for two processes:
each has its own in-process cache and they share nothing but the store.
"""

from __future__ import annotations

import asyncio
import secrets

import pytest
from aiohttp import web
from cryptography.fernet import Fernet
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.config import load_config
from proxy.core.grant_cache import GENERATION_KEY, SharedAnswer, SharedGets, cache_ttl
from proxy.web.app import create_app
from proxy.web.keys import grant_cache_key, store_key
from tests.helpers import login, proxy_config_flags

#: Long enough that the background poll never runs during a test: tests call
#: check_generation() (what the poll does) themselves, at a known moment.
NO_POLL = {"store.cache_poll": 3600}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


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


# -- shared GETs ----------------------------------------------------------------------------


@pytest.fixture
async def key(proxy):
    return (await login(proxy))["proxy_key"]


async def test_identical_concurrent_gets_share_one_upstream_call(proxy, mock, key):
    mock.helix_delay = 0.2
    responses = await asyncio.gather(*(
        proxy.get("/helix/users?login=twitchdev", headers=bearer(key)) for _ in range(20)))
    bodies = {await r.read() for r in responses}
    assert [r.status for r in responses] == [200] * 20
    assert len(bodies) == 1
    assert mock.calls["helix:GET /users"] == 1
    for response in responses:  # each copy is a whole, well-formed answer
        assert response.headers["Ratelimit-Remaining"]
        assert "Set-Cookie" not in response.headers


_TWO_ORIGINS = {"cors.allow_origins": "https://a.example,https://b.example"}


@pytest.mark.parametrize(("config_flags", "upstream_calls"), [
    (_TWO_ORIGINS, 2),  # shared while in flight; the late request calls again
    ({**_TWO_ORIGINS, "helix.cache": {"/users": 10}}, 1),  # the late one is served from cache
], ids=["shared", "cached"])
async def test_shared_copies_carry_their_own_request_headers(proxy, mock, key, upstream_calls):
    """The leader's answer is sent with its own CORS and request id: copies must not be."""
    mock.helix_delay = 0.2
    origins = ["https://a.example", "https://b.example"] * 3
    ids = [f"request-{n:04d}" for n in range(6)]
    responses = await asyncio.gather(*(
        proxy.get("/helix/users", headers={**bearer(key), "Origin": origin, "X-Request-Id": id_})
        for origin, id_ in zip(origins, ids, strict=True)))
    mock.helix_delay = 0
    responses.append(await proxy.get("/helix/users", headers={
        **bearer(key), "Origin": "https://b.example", "X-Request-Id": "request-late"}))
    origins.append("https://b.example")
    ids.append("request-late")
    assert mock.calls["helix:GET /users"] == upstream_calls
    for response, origin, id_ in zip(responses, origins, ids, strict=True):
        assert response.status == 200
        assert response.headers["Access-Control-Allow-Origin"] == origin
        assert response.headers.getall("X-Request-Id") == [id_]


async def test_different_urls_or_encodings_are_not_shared(proxy, mock, key):
    mock.helix_delay = 0.2
    await asyncio.gather(
        proxy.get("/helix/users?login=twitchdev", headers=bearer(key)),
        proxy.get("/helix/users", headers=bearer(key)),
        proxy.get("/helix/users", headers={**bearer(key), "Accept-Encoding": "identity"}),
    )
    assert mock.calls["helix:GET /users"] == 3


async def test_posts_are_never_shared(proxy, mock, key):
    mock.helix_delay = 0.2
    body = b'{"broadcaster_id": "141981764", "sender_id": "141981764", "message": "hi"}'
    headers = {**bearer(key), "Content-Type": "application/json"}
    responses = await asyncio.gather(*(
        proxy.post("/helix/chat/messages", data=body, headers=headers) for _ in range(3)))
    assert mock.calls["helix:POST /chat/messages"] == 3
    assert len({r.status for r in responses}) == 1


async def test_no_ttl_cache_unless_configured(proxy, mock, key):
    for _ in range(2):
        assert (await proxy.get("/helix/streams", headers=bearer(key))).status == 200
    assert mock.calls["helix:GET /streams"] == 2


@pytest.mark.parametrize("config_flags", [{"helix.cache": {"/streams": 10}}])
async def test_configured_path_cached_per_grant(proxy, mock, key):
    for _ in range(3):
        assert (await proxy.get("/helix/streams", headers=bearer(key))).status == 200
    assert mock.calls["helix:GET /streams"] == 1
    for _ in range(2):  # another path is not cached
        await proxy.get("/helix/users", headers=bearer(key))
    assert mock.calls["helix:GET /users"] == 2
    # Another credential (a bare token) does not see this grant's answer.
    token = mock.issue_tokens("141981764", [])["access_token"]
    assert (await proxy.get("/helix/streams", headers=bearer(token))).status == 200
    assert mock.calls["helix:GET /streams"] == 2


@pytest.fixture
async def upstream(aiohttp_server):
    """A Helix stand-in whose Cache-Control each test sets; counts calls."""
    state = {"calls": 0, "cache_control": None}

    async def streams(request: web.Request) -> web.Response:
        state["calls"] += 1
        headers = {"Ratelimit-Remaining": "700", "Ratelimit-Reset": "0"}
        if state["cache_control"]:
            headers["Cache-Control"] = state["cache_control"]
        return web.json_response({"data": [], "n": state["calls"]}, headers=headers)

    app = web.Application()
    app.router.add_get("/helix/streams", streams)
    server = await aiohttp_server(app)
    state["url"] = str(server.make_url("/helix"))
    return state


@pytest.mark.parametrize("cache_control,calls", [(None, 1), ("no-store", 3), ("no-cache", 3),
                                                 ("max-age=0", 3), ("public, max-age=60", 1)])
async def test_twitch_cache_control_honoured(aiohttp_client, twitch_server, upstream, tmp_path,
                                             cache_control, calls):
    upstream["cache_control"] = cache_control
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    flags = {**proxy_config_flags(str(twitch_server.make_url("")).rstrip("/")),
             "twitch.helix_url": upstream["url"], "store.url": "memory://",
             "helix.cache": {"/streams": 10}}
    client = await aiohttp_client(create_app(load_config(path=empty, environ={}, flags=flags)))
    for _ in range(3):
        assert (await client.get("/helix/streams", headers=bearer("bare-token"))).status == 200
    assert upstream["calls"] == calls


def test_cache_ttl_takes_the_lower_bound():
    assert cache_ttl(10, {}) == 10
    assert cache_ttl(10, {"Cache-Control": "max-age=3"}) == 3
    assert cache_ttl(10, {"Cache-Control": "max-age=30"}) == 10
    assert cache_ttl(10, {"Cache-Control": "private, no-store"}) == 0
    assert cache_ttl(10, {"Cache-Control": "max-age=junk"}) == 10


def test_helix_cache_config_from_text_and_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("helix:\n  cache:\n    /streams: 10\n")
    base = {"twitch.client_id": "a", "twitch.client_secret": "b", "store.url": "memory://"}
    assert load_config(path=path, environ={}, flags=base).helix.cache == {"/streams": 10.0}
    flags = {**base, "helix.cache": "/streams=5,/users=1"}
    config = load_config(path=path, environ={}, flags=flags)  # flags win over the file
    assert config.helix.cache == {"/streams": 5.0, "/users": 1.0}
    from proxy.config import ConfigError
    with pytest.raises(ConfigError, match="helix.cache"):
        load_config(path=path, environ={}, flags={**base, "helix.cache": "streams=-1"})


# -- SharedGets edge cases a server cannot produce on demand ----------------------------------


def _answer(body: bytes) -> SharedAnswer:
    return SharedAnswer(200, CIMultiDictProxy(CIMultiDict()), body)


async def test_cancelled_leader_hands_the_call_to_a_follower():
    shared = SharedGets({})
    started = asyncio.Event()
    calls = []

    async def hangs():
        calls.append("leader")
        started.set()
        await asyncio.sleep(3600)

    async def answers():
        calls.append("follower")
        return _answer(b"ok")

    leader = asyncio.ensure_future(shared.fetch("k", "/users", hangs))
    await started.wait()
    follower = asyncio.ensure_future(shared.fetch("k", "/users", answers))
    await asyncio.sleep(0)
    leader.cancel()
    answer, from_cache = await follower
    assert (answer.body, from_cache) == (b"ok", False)
    assert calls == ["leader", "follower"]
    with pytest.raises(asyncio.CancelledError):
        await leader


async def test_leaders_error_reaches_every_follower_once():
    shared = SharedGets({})
    release = asyncio.Event()
    calls = []

    async def fails():
        calls.append(1)
        await release.wait()
        raise RuntimeError("upstream broke")

    waiting = [asyncio.ensure_future(shared.fetch("k", "/users", fails)) for _ in range(5)]
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert calls == [1]
    # The flight is over: the next caller makes a new call.
    answer, _ = await shared.fetch("k", "/users", lambda: asyncio.sleep(0, _answer(b"x")))
    assert answer.body == b"x"


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
