"""bench/: the benchmark's parts still import and work (the benchmark itself is not run here).

The fake Twitch and the reference forwarder are served for real and a few
requests go through them, so a change that breaks the benchmark fails CI.
"""

from __future__ import annotations

import asyncio
import os
import re

from bench import loadgen, run, upstream
from bench.eventsub_redis import redis_url
from bench.processes import redis_answers
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


# -- python -m bench eventsub ------------------------------------------------------------


def _follow_frame(serial: int, seq: int) -> bytes:
    """A follow as the relay frames it (the proxy's own encoder), numbered like the mock's."""
    from proxy.core.relay.stream import encode_frame

    return encode_frame("channel.follow", {
        "user_id": str(900_000_000 + serial), "user_login": f"mockviewer{serial}",
        "followed_at": "2026-12-01T03:41:36.782655954Z", "subscription_type": "channel.follow",
        "subscription_version": "2"}, event_id=f"e-{seq}")


async def test_eventsub_check_reports_duplicated_lost_and_reordered(aiohttp_server):
    """The benchmark's reader and exactly-once check, against streams that get it wrong."""
    from aiohttp import web

    from bench.eventsub_widgets import WidgetFleet, check_deliveries
    from proxy.core.relay.stream import encode_frame

    streams = iter([[1, 2, 2, 3], [1, 3], [2, 1, 3], [1, 2, 3]])

    async def eventsub(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"retry: 3000\n: connected\n\n")
        for seq, serial in enumerate(next(streams), 1):
            await response.write(b": ping\r\n\r\n")  # aiohttp-sse's heartbeat, CRLFs
            frame = _follow_frame(serial, seq)
            await response.write(frame[:40])  # frames split across chunks are put together
            await response.write(frame[40:])
        await response.write(encode_frame("gap", {"reason": "reconnect"}, event_id="e-9"))
        await asyncio.sleep(30)
        return response

    app = web.Application()
    app.router.add_get("/eventsub", eventsub)
    server = await aiohttp_server(app)
    fleet = WidgetFleet("127.0.0.1", server.port, "tpk_not-a-real-key")
    await fleet.open(4)
    try:
        await fleet.drained(2, 5.0)
        await asyncio.sleep(0.1)
        serials = [widget.serials for widget in fleet.widgets]
        assert sorted(serials) == sorted([[1, 2, 2, 3], [1, 3], [2, 1, 3], [1, 2, 3]])
        assert all(widget.controls == {"gap": 1} for widget in fleet.widgets)
        assert len(fleet.latencies) == 12
        delivery = check_deliveries(serials, sent=3)
        assert (delivery.lost, delivery.duplicated, delivery.out_of_order) == (1, 1, 1)
        assert not delivery.exactly_once
        assert "duplicated 1" in delivery.text()
        assert check_deliveries([[1, 2, 3], [1, 2, 3]], sent=3).exactly_once
    finally:
        fleet.close()


def test_eventsub_section_is_replaced_not_repeated(tmp_path):
    from bench.results import EVENTSUB_START, write_section

    path = tmp_path / "results.md"
    path.write_text("# Benchmark results\n\nwrk table\n")
    write_section(path, "## Live events\n\nfirst run")
    write_section(path, "## Live events\n\nsecond run")
    text = path.read_text()
    assert text.count(EVENTSUB_START) == 1
    assert "wrk table" in text and "second run" in text and "first run" not in text


def test_eventsub_quick_run(tmp_path):
    """``python -m bench eventsub --quick``: real mock and proxy processes, a few seconds."""
    import subprocess
    import sys

    from bench.processes import ROOT

    output = tmp_path / "results.md"
    done = subprocess.run([sys.executable, "-m", "bench", "eventsub", "--quick", "--output",
                           str(output)], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = output.read_text()
    assert "`python -m bench eventsub --quick`" in text
    # The naive widgets: only 3 sockets of one user may hold subscriptions at Twitch.
    assert "| 6 widgets, each its own Twitch socket (naive) | 6 | 6 | 3 | 3 x 429 | 0 |" in text
    assert "| 6 widgets through the proxy | 6 SSE streams | 1 | 1 | none | 0 |" in text
    assert "KB per idle stream" in text
    for widgets in (2, 5):
        row = next(line for line in text.splitlines() if line.startswith(f"| {widgets} | 10 |"))
        assert "| yes |" in row, row
    assert "lost 0, duplicated 0, out of order 0" in text
    assert "NOT EXACTLY ONCE" not in done.stdout
    # 10 widgets over 2 gunicorn workers on Redis, when one answers (always under CI).
    if os.environ.get("CI") or redis_answers(redis_url()):
        row = next(line for line in text.splitlines() if line.startswith("| 10 over 2 (5 / 5) |"))
        assert "| 1: yes; 2: yes |" in row, row
        assert re.search(r"\| 1 \(\d+ samples\) \|", row), row
    else:
        assert "Not measured: no Redis answered" in text


async def test_widgets_spread_evenly_over_the_processes_that_accept_them(aiohttp_server):
    """``open_spread`` keeps each process's share, whichever process the kernel picked."""
    from aiohttp import web

    from bench.eventsub_widgets import WidgetFleet, by_worker

    # The first five streams all land on one process, then they alternate.
    accepted = iter(["a" * 16] * 5 + ["a" * 16, "b" * 16] * 10)

    async def eventsub(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "X-Request-Id": next(accepted) + "0" * 16})
        await response.prepare(request)
        await response.write(b": connected\n\n")
        await asyncio.sleep(30)
        return response

    app = web.Application()
    app.router.add_get("/eventsub", eventsub)
    server = await aiohttp_server(app)
    fleet = WidgetFleet("127.0.0.1", server.port, "tpk_not-a-real-key")
    try:
        await fleet.open_spread(6, 2)
        groups = by_worker(fleet.widgets)
        assert sorted(groups) == ["a" * 16, "b" * 16]
        assert [len(group) for group in groups.values()] == [3, 3]
        assert not any(widget.closed for widget in fleet.widgets)
    finally:
        fleet.close()
