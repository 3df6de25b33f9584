"""bench/: the benchmark's parts still import and work (the benchmark itself is not run here).

The fake Twitch and the reference forwarder are served for real and a few
requests go through them, so a change that breaks the benchmark fails CI.
"""

from __future__ import annotations

import asyncio

from bench import loadgen, run, upstream
from bench.reference import create_reference_app
from bench.upstream import HELIX_USERS_BODY, create_fake_twitch


async def test_reference_forwards_to_the_fake_twitch(aiohttp_server, aiohttp_client):
    fake = await aiohttp_server(create_fake_twitch())
    reference = await aiohttp_client(create_reference_app(str(fake.make_url("/helix"))))
    for _ in range(3):
        response = await reference.get("/helix/users?login=twitchdev",
                                       headers={"Authorization": "Bearer at-1"})
        assert response.status == 200
        assert await response.text() == HELIX_USERS_BODY
        assert response.headers["Ratelimit-Remaining"] == "799"
    state = fake.app[upstream.fake_twitch_key]
    assert state.calls["helix:GET /users"] == 3
    # Expired tokens get Twitch's 401, which the forwarder passes on as is.
    async with reference.session.post(fake.make_url("/_bench/expire")) as expired:
        assert expired.status == 200
    response = await reference.get("/helix/users", headers={"Authorization": "Bearer at-1"})
    assert response.status == 401
    assert (await response.json())["message"] == "Invalid OAuth token"


async def test_fake_token_endpoint_rotates(aiohttp_server, aiohttp_client):
    fake = await aiohttp_client(await aiohttp_server(create_fake_twitch()))
    response = await fake.post("/oauth2/token", data={"grant_type": "refresh_token",
                                                      "refresh_token": "rt-1"})
    pair = await response.json()
    assert pair["refresh_token"] != "rt-1" and pair["access_token"]


def test_results_rows_use_medians_of_pair_ratios():
    result = loadgen.WrkResult
    row = run.Row("x", [result(100, 1, 2, 100, 0), result(300, 1, 2, 300, 0),
                        result(200, 1, 4, 200, 0)],
                  [result(100, 1, 2, 100, 0), result(100, 1, 2, 100, 0),
                   result(100, 1, 2, 100, 0)])
    assert row.ratio == 2.0
    assert row.p99_ratio == 1.0
    assert "| x | 200 | 100 | **2.00** |" in row.markdown()


def test_lua_report_is_in_place():
    lua = loadgen.REPORT_LUA.read_text()
    assert "function done" in lua and "percentile(99)" in lua


async def test_old_tool_refreshes_through_the_fake_token_endpoint(aiohttp_server):
    from bench import old_tool

    fake = await aiohttp_server(create_fake_twitch())
    client = old_tool.create_old_tool(str(fake.make_url("/oauth2/token"))).test_client()
    assert client.get("/refresh").status_code == 405  # POST only
    # Flask's client blocks: it runs in a thread while this loop serves the fake.
    answer = await asyncio.to_thread(client.post, "/refresh", json={"refresh_token": "rt-1"})
    assert answer.status_code == 200
    assert answer.get_json()["refresh_token"] not in ("", "rt-1")
    assert fake.app[upstream.fake_twitch_key].calls["token:refresh_token"] == 1
