"""proxy.upstream.ratelimit: an empty Helix bucket is waited for, not hammered."""

from __future__ import annotations

import time

import pytest
from aiohttp import web

from proxy.config import load_config
from proxy.web.app import create_app
from tests.helpers import bearer, login, proxy_config_flags


@pytest.fixture
async def key(proxy):
    return (await login(proxy))["proxy_key"]


async def test_empty_bucket_answered_429_without_calling_twitch(proxy, mock, key):
    mock.ratelimit_limit = 2
    mock.reset_ratelimits()
    for _ in range(2):
        assert (await proxy.get("/helix/users", headers=bearer(key))).status == 200
    calls = mock.calls["helix:GET /users"]
    for _ in range(5):
        response = await proxy.get("/helix/users", headers=bearer(key))
        assert response.status == 429
        assert (await response.json())["error"] == "rate_limited"
        # Twitch's reset is a minute away, beyond helix.ratelimit_wait.
        assert 5 < int(response.headers["Retry-After"]) <= 61
        assert response.headers["Ratelimit-Remaining"] == "0"
    assert mock.calls["helix:GET /users"] == calls


@pytest.mark.parametrize("config_flags", [{"helix.app_token": True}])
async def test_app_token_bucket_is_separate(proxy, mock, key):
    mock.ratelimit_limit = 1
    mock.reset_ratelimits()
    assert (await proxy.get("/helix/users", headers=bearer(key))).status == 200
    assert (await proxy.get("/helix/users", headers=bearer(key))).status == 429
    response = await proxy.get("/helix/users?login=twitchdev")  # the app token
    assert response.status == 200


@pytest.fixture
async def upstream(aiohttp_server):
    """A Helix stand-in whose bucket is empty until ``reset`` (a real server)."""
    state: dict = {"calls": [], "reset": 0.0}

    async def users(request: web.Request) -> web.Response:
        now = time.time()
        state["calls"].append(now)
        if len(state["calls"]) > 1 and now < state["reset"]:
            return web.json_response({"status": 429}, status=429, headers={
                "Ratelimit-Remaining": "0", "Ratelimit-Reset": str(state["reset"])})
        remaining = "0" if len(state["calls"]) == 1 else "5"
        return web.json_response({"data": []}, headers={
            "Ratelimit-Remaining": remaining, "Ratelimit-Reset": str(state["reset"])})

    app = web.Application()
    app.router.add_get("/helix/users", users)
    server = await aiohttp_server(app)
    state["url"] = str(server.make_url("/helix"))
    return state


async def client_for(aiohttp_client, twitch_server, upstream, tmp_path, **flags):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    all_flags = {**proxy_config_flags(str(twitch_server.make_url("")).rstrip("/")),
                 "twitch.helix_url": upstream["url"], "store.url": "memory://", **flags}
    return await aiohttp_client(create_app(load_config(path=empty, environ={}, flags=all_flags)))


async def test_request_waits_for_reset_within_the_bound(aiohttp_client, twitch_server,
                                                        upstream, tmp_path):
    client = await client_for(aiohttp_client, twitch_server, upstream, tmp_path)
    upstream["reset"] = time.time() + 1.0  # the first answer empties the bucket
    assert (await client.get("/helix/users", headers=bearer("t"))).status == 200
    response = await client.get("/helix/users", headers=bearer("t"))
    assert response.status == 200
    # The second call reached "Twitch" only once the bucket was full again.
    assert len(upstream["calls"]) == 2
    assert upstream["calls"][1] >= upstream["reset"]


async def test_other_buckets_do_not_wait(aiohttp_client, twitch_server, upstream, tmp_path):
    client = await client_for(aiohttp_client, twitch_server, upstream, tmp_path,
                              **{"helix.ratelimit_wait": 0})
    upstream["reset"] = time.time() + 30
    assert (await client.get("/helix/users", headers=bearer("one"))).status == 200
    assert (await client.get("/helix/users", headers=bearer("one"))).status == 429
    assert len(upstream["calls"]) == 1
    # A different token is a different bucket: it still goes to Twitch.
    await client.get("/helix/users", headers=bearer("two"))
    assert len(upstream["calls"]) == 2


async def test_twitch_429_without_headers_backs_off(aiohttp_client, twitch_server, tmp_path,
                                                    aiohttp_server):
    calls = []

    async def users(request: web.Request) -> web.Response:
        calls.append(1)
        return web.json_response({"status": 429}, status=429)

    app = web.Application()
    app.router.add_get("/helix/users", users)
    server = await aiohttp_server(app)
    client = await client_for(aiohttp_client, twitch_server,
                              {"url": str(server.make_url("/helix"))}, tmp_path,
                              **{"helix.ratelimit_wait": 0})
    assert (await client.get("/helix/users", headers=bearer("t"))).status == 429
    assert (await client.get("/helix/users", headers=bearer("t"))).status == 429
    assert len(calls) == 1


def test_empty_buckets_of_junk_tokens_stay_bounded(monkeypatch):
    # Every junk bare token is a bucket of its own; Twitch saying "0 left" for
    # each must not grow the gate without bound.
    from proxy.upstream import ratelimit
    monkeypatch.setattr(ratelimit, "MAX_EMPTY_BUCKETS", 10)
    gate = ratelimit.RateLimitGate(max_wait=1.0)
    soon = str(time.time() + 60)
    for number in range(50):
        gate.observe(f"token:{number}", 429, {"Ratelimit-Remaining": "0",
                                               "Ratelimit-Reset": soon})
        assert len(gate) <= 10
    past = str(time.time() - 1)
    gate = ratelimit.RateLimitGate(max_wait=1.0)
    for number in range(10):
        gate.observe(f"token:old{number}", 429, {"Ratelimit-Reset": past})
    gate.observe("user:1", 429, {"Ratelimit-Reset": soon})
    assert len(gate) == 1  # the expired ones were swept, the current one kept
