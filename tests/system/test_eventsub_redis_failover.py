"""Live events on Redis when the leader goes: SIGKILL, SIGTERM, and a grant needing a login.

Two real ``python -m proxy`` processes share the real Redis with a 2 s lease
(test_eventsub_redis_support.py); the leader is whichever process said it took
the lease. The mock Twitch counts the sockets the proxies hold.
"""

from __future__ import annotations

import asyncio
import signal

import pytest

from tests.processes import browser_login
from tests.system import test_eventsub_redis_support as support
from tests.system.test_eventsub_redis_support import (
    Cluster,
    Follows,
    ProxyProcess,
    leads,
    open_stream,
    sockets_at_twitch,
    trigger,
    wait_for,
)
from tests.system.test_eventsub_support import ME, Widget

cluster, session = support.cluster, support.session

pytestmark = pytest.mark.timeout(90)


async def _subscribed_once(cluster: Cluster) -> list[str]:
    """Wait for one enabled subscription on one socket; the live session ids."""
    async def subscribed() -> bool:
        state = await cluster.state()
        subs = [sub for s in state["sessions"] for sub in s["subscriptions"]]
        return len(subs) == 1 and state["open_sockets"] == 1
    await wait_for(subscribed)
    return [s["id"] for s in (await cluster.state())["sessions"] if s["subscriptions"]]


async def _follows(widget: Widget, count: int) -> list[str]:
    events = [await widget.next(10) for _ in range(count)]
    assert [event.event for event in events] == ["channel.follow"] * count, events
    return [event.data["user_name"] for event in events]


async def _spread(cluster: Cluster, session) -> tuple[ProxyProcess, ProxyProcess,
                                                      list[Widget], list[Widget]]:
    """Two processes, two widgets on each, every widget live: (leader, follower, widgets...)."""
    first, second = await cluster.start(2, session)
    key = cluster.key = (await browser_login(session, first.base))["proxy_key"]
    on_first = [await open_stream(session, cluster, first, key, "channel.follow:2")
                for _ in range(2)]
    on_second = [await open_stream(session, cluster, second, key, "channel.follow:2")
                 for _ in range(2)]
    await _subscribed_once(cluster)
    await trigger(cluster, ["before"])
    for widget in on_first + on_second:
        assert await _follows(widget, 1) == ["before"]
    assert [leads(first), leads(second)].count(True) == 1, cluster.outputs()
    if leads(first):
        return first, second, on_first, on_second
    return second, first, on_second, on_first


async def test_a_killed_leader_is_replaced_and_its_widgets_elsewhere_get_a_gap(
        cluster, session):
    leader, follower, orphans, survivors = await _spread(cluster, session)
    old_sessions = await _subscribed_once(cluster)
    sockets: list[int] = []

    async def watch() -> None:
        while True:
            sockets.append(await sockets_at_twitch(cluster))
            await asyncio.sleep(0.02)

    watcher = asyncio.ensure_future(watch())
    try:
        leader.process.send_signal(signal.SIGKILL)
        assert await leader.process.wait() == -signal.SIGKILL
        for widget in survivors:
            gap = await widget.next(15)
            assert (gap.event, gap.data["reason"]) == ("gap", "leader_lost"), gap
            assert gap.data["subscription_types"] == ["channel.follow:2"]
            assert gap.id
        new_sessions = await _subscribed_once(cluster)
    finally:
        watcher.cancel()
    assert leads(follower), follower.output()
    assert "previous leader died" in follower.output()
    assert set(new_sessions).isdisjoint(old_sessions)  # a new Twitch session
    assert max(sockets) == 1  # never two sockets for the grant
    # A widget of the dead process reconnects to the survivor with its Last-Event-ID:
    # it gets the same gap from the stream, then live events.
    back = await open_stream(session, cluster, follower, cluster.key, "channel.follow:2",
                             resume_from=orphans[0].last_id)
    gap = await back.next(10)
    assert (gap.event, gap.data["reason"]) == ("gap", "leader_lost")
    await trigger(cluster, ["after"])
    for widget in [*survivors, back]:
        assert await _follows(widget, 1) == ["after"]


async def test_a_leader_stopped_with_sigterm_hands_over_without_losing_an_event(
        cluster, session):
    leader, follower, leaving, staying = await _spread(cluster, session)
    sockets: list[int] = []

    async def count_sockets() -> None:
        sockets.append(await sockets_at_twitch(cluster))

    # A follow every 20 ms, whichever sessions hold the subscription meanwhile.
    follows = Follows(cluster, "during", after_each=count_sockets)
    try:
        await asyncio.sleep(0.2)
        leader.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(leader.process.wait(), 30) == 0, leader.output()
        await _subscribed_once(cluster)  # the old session is gone, the new one subscribed
        await asyncio.sleep(0.2)
    finally:
        names = await follows.stop()
    assert "no longer leads (shutdown, handed over)" in leader.output()
    assert leads(follower), follower.output()
    assert "previous leader died" not in follower.output()
    for widget in leaving:
        assert await widget.ended(10)
    # Every follow reached every widget still open, once, in order, and no gap.
    for widget in staying:
        assert await _follows(widget, len(names)) == names
    assert max(sockets) <= 2  # the two sessions overlap for a moment (Twitch allows 3)
    assert await sockets_at_twitch(cluster) == 1
    await trigger(cluster, ["after"])
    for widget in staying:
        assert await _follows(widget, 1) == ["after"]


async def test_a_grant_needing_a_login_ends_streams_everywhere_and_a_new_login_leads_again(
        cluster, session, mock):
    first, second = await cluster.start(2, session)
    key = (await browser_login(session, first.base))["proxy_key"]
    widgets = [await open_stream(session, cluster, proxy, key, "channel.follow:2")
               for proxy in (first, second)]
    await _subscribed_once(cluster)
    mock.expire_access_tokens(ME)
    mock.revoke_refresh_tokens(ME)  # the user disconnected the app at Twitch
    # A new subscription needs the grant's token: the leader finds it dead.
    widgets.append(await open_stream(session, cluster, second, key, "channel.subscribe:1"))
    for widget in widgets:
        event = await widget.next(15)
        assert event.event == "reauthorization_required", event
        assert event.data["login_url"].endswith("/login")
        assert await widget.ended(10)

    key = (await browser_login(session, second.base))["proxy_key"]
    again = await open_stream(session, cluster, first, key, "channel.follow:2")
    await _subscribed_once(cluster)
    await trigger(cluster, ["again"])
    assert await _follows(again, 1) == ["again"]
