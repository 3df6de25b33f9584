"""Shared GETs (SharedGets) and the TTL cache of Helix answers, over real HTTP; plus the
SharedGets edge cases a server cannot produce on demand.
"""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.config import load_config
from proxy.upstream.shared_gets import SharedAnswer, SharedGets, cache_ttl
from proxy.web.app import create_app
from tests.helpers import bearer, login, proxy_config_flags

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
