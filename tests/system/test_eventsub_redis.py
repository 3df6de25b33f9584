"""Live events across real processes on one Redis: one Twitch socket, every event once.

Two and three ``python -m proxy`` processes share the real Redis; widgets are
spread over them; the mock Twitch counts the sockets the proxies open (see
test_eventsub_redis_support.py). Also the refusal: several workers on SQLite
answer 501 ``eventsub_needs_redis``.
"""

from __future__ import annotations

import asyncio
import re

import aiohttp
import pytest
import redis.asyncio

from proxy.core.relay.backend import NEEDS_REDIS
from tests.processes import browser_login, free_port, mock_environ, start_proxy, stop, wait_ready
from tests.system import test_eventsub_redis_support as support
from tests.system.test_eventsub_redis_support import (
    Cluster,
    Follows,
    leads,
    open_stream,
    sockets_at_twitch,
    trigger,
    wait_for,
)
from tests.system.test_eventsub_support import Widget

cluster, session = support.cluster, support.session

pytestmark = pytest.mark.timeout(90)


async def _one_subscription(cluster: Cluster) -> None:
    async def subscribed() -> bool:
        state = await cluster.state()
        subs = [sub for s in state["sessions"] for sub in s["subscriptions"]]
        return len(subs) == 1 and state["open_sockets"] == 1
    await wait_for(subscribed)


async def _metric(session: aiohttp.ClientSession, proxy, name: str) -> float:
    """The sum of a metric's samples on ``proxy``'s ``/metrics`` (scraped from this host)."""
    async with session.get(proxy.base / "metrics") as answer:
        assert answer.status == 200
        text = await answer.text()
    pattern = re.compile(rf"^\w*{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", re.MULTILINE)
    return sum(float(value) for value in pattern.findall(text))


async def _names(widget: Widget, count: int) -> list[str]:
    events = []
    try:
        for _ in range(count):
            events.append(await widget.next(10))
    except TimeoutError:
        raise AssertionError(f"only {len(events)} of {count} events: {events}") from None
    assert [event.event for event in events] == ["channel.follow"] * count, events
    return [event.data["user_name"] for event in events]


@pytest.mark.parametrize("processes", [2, 3])
async def test_one_twitch_socket_and_every_event_once_to_widgets_on_every_process(
        cluster, session, processes):
    proxies = await cluster.start(processes, session)
    key = (await browser_login(session, proxies[0].base))["proxy_key"]
    widgets = [await open_stream(session, cluster, proxies[n % processes], key,
                                 "channel.follow:2") for n in range(2 * processes)]
    await _one_subscription(cluster)
    names = [f"viewer{n}" for n in range(12)]
    sockets: list[int] = []

    async def watch() -> None:
        while True:
            sockets.append(await sockets_at_twitch(cluster))
            await asyncio.sleep(0.02)

    watcher = asyncio.ensure_future(watch())
    try:
        await trigger(cluster, names)
        received = await asyncio.gather(*(_names(widget, len(names)) for widget in widgets))
    finally:
        watcher.cancel()
    assert received == [names] * len(widgets), cluster.outputs()
    assert set(sockets) == {1}  # one socket for the grant, whichever process holds it
    assert sum(leads(proxy) for proxy in proxies) == 1
    # Exactly once: the next thing on every stream is the next notification.
    await trigger(cluster, ["last"])
    assert await asyncio.gather(*(_names(widget, 1) for widget in widgets)) == \
        [["last"]] * len(widgets)
    ids = [event_id for widget in widgets if (event_id := widget.last_id)]
    assert len(set(ids)) == 1  # the same resumable id on every process
    # Each process reports its own streams and deliveries, the leader the socket.
    assert [await _metric(session, p, "eventsub_widget_streams") for p in proxies] == \
        [2] * processes
    assert sum([await _metric(session, p, "eventsub_sockets") for p in proxies]) == 1
    assert sum([await _metric(session, p, "eventsub_subscriptions") for p in proxies]) == 1
    assert sum([await _metric(session, p, "eventsub_deliveries_total") for p in proxies]) == \
        (len(names) + 1) * len(widgets)
    assert sum([await _metric(session, p, "eventsub_messages_total") for p in proxies]) == \
        len(names) + 1


async def test_last_event_id_resumes_on_another_process(cluster, session):
    first, second = await cluster.start(2, session)
    key = (await browser_login(session, first.base))["proxy_key"]
    # Keeps the subscription wanted while the other widget is away.
    keeper = await open_stream(session, cluster, second, key, "channel.follow:2")
    leaving = await open_stream(session, cluster, first, key, "channel.follow:2")
    await _one_subscription(cluster)
    await trigger(cluster, ["a", "b"])
    assert await _names(leaving, 2) == ["a", "b"]
    resume_from = leaving.last_id
    leaving.close()
    await trigger(cluster, ["c", "d"])
    assert await _names(keeper, 4) == ["a", "b", "c", "d"]

    back = await open_stream(session, cluster, second, key, "channel.follow:2",
                             resume_from=resume_from)
    assert await _names(back, 2) == ["c", "d"]
    await trigger(cluster, ["e"])
    assert await _names(back, 1) == ["e"]
    assert await _names(keeper, 1) == ["e"]

    # An id the stream no longer has (or never had) gets a gap, then live events.
    lost = await open_stream(session, cluster, first, key, "channel.follow:2",
                             resume_from="1-0")
    gap = await lost.next()
    assert (gap.event, gap.data["reason"]) == ("gap", "resume_unavailable")
    assert gap.id == back.last_id
    await trigger(cluster, ["f"])
    assert await _names(lost, 1) == ["f"]
    # The resume buffer is one capped stream per grant that expires once idle.
    client = redis.asyncio.Redis.from_url(cluster.redis_url)
    try:
        streams = [name async for name in client.scan_iter(
            match=f"{cluster.prefix}eventsub:events:*")]
        assert len(streams) == 1
        assert 0 < await client.pttl(streams[0]) <= 600_000  # eventsub.buffer_age
    finally:
        await client.aclose()


async def test_twitchs_session_reconnect_under_a_stream_loses_and_doubles_nothing(
        cluster, session):
    first, second = await cluster.start(2, session)
    key = (await browser_login(session, first.base))["proxy_key"]
    widgets = [await open_stream(session, cluster, proxy, key, "channel.follow:2")
               for proxy in (first, second)]
    await _one_subscription(cluster)
    follows = Follows(cluster, "n")
    try:
        await asyncio.sleep(0.2)
        moved = await cluster.control("reconnect")
        assert len(moved["reconnect_urls"]) == 1
        await asyncio.sleep(0.5)
    finally:
        names = await follows.stop()
    await _one_subscription(cluster)  # the old socket closed once the new one welcomed
    for widget in widgets:
        assert await _names(widget, len(names)) == names


async def test_gunicorn_workers_on_redis_share_one_twitch_socket(cluster, session):
    (proxy,) = await cluster.start(1, session, workers=2)
    key = (await browser_login(session, proxy.base))["proxy_key"]
    widgets: list[Widget] = []
    workers: set[str] = set()
    # The kernel spreads connections over the workers (the second may still be
    # starting): open streams until both have some.
    async with asyncio.timeout(30):
        while len(workers) < 2 or len(widgets) < 4:
            widget = await open_stream(session, cluster, proxy, key, "channel.follow:2")
            widgets.append(widget)
            # A request id starts with its process's own prefix.
            workers.add(widget.response.headers["X-Request-Id"][:16])
            await asyncio.sleep(0.05)
    await _one_subscription(cluster)
    names = [f"viewer{n}" for n in range(5)]
    await trigger(cluster, names)
    assert await asyncio.gather(*(_names(widget, len(names)) for widget in widgets)) == \
        [names] * len(widgets)
    assert await sockets_at_twitch(cluster) == 1


async def test_two_workers_on_sqlite_refuse_live_events_with_how_to_fix_it(
        twitch_server, tmp_path):
    mock_url = str(twitch_server.make_url("")).rstrip("/")
    port = free_port()
    env = mock_environ(mock_url, TOKEN_STORE_URL=f"sqlite:///{tmp_path}/tokens.sqlite3",
                       WEB_CONCURRENCY="2", PORT=str(port), HOST="127.0.0.1",
                       PUBLIC_URL=f"http://127.0.0.1:{port}")
    process = start_proxy(env, tmp_path)
    base = aiohttp.client.URL(f"http://127.0.0.1:{port}")
    try:
        async with aiohttp.ClientSession() as client:
            await wait_ready(client, base, process)
            for method, path in (("GET", "eventsub?type=channel.follow:2"),
                                 ("POST", "eventsub/tickets")):
                async with client.request(method, f"{base}/{path}",
                                          headers={"Authorization": "Bearer tpk_x"}) as answer:
                    assert answer.status == 501
                    body = await answer.json()
                    assert body == {"error": "eventsub_needs_redis", "message": NEEDS_REDIS}
            async with client.get(base / "healthz") as health:
                assert health.status == 200  # everything else works
    finally:
        code, output = stop(process)
    assert code == 0, output
    warnings = [line for line in output.splitlines() if "live events are off" in line]
    # Once per worker, as each builds its own app.
    assert 1 <= len(warnings) <= 2, output
