"""/eventsub against the mock Twitch: fan-out, sharing, resume, limits and refusals.

Real HTTP streams from a real proxy server, a real EventSub WebSocket and the
real subscriptions API of the mock (see test_eventsub_support.py).
"""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers import calls
from tests.system import test_eventsub_support as support
from tests.system.test_eventsub_support import (
    ME,
    control,
    grant_key,
    mock_state,
    open_widget,
    settle,
    subscriptions_at_twitch,
)

# The suite's fixtures (a module's own fixtures override conftest's).
config_flags, eventsub_options, proxy = (support.config_flags, support.eventsub_options,
                                         support.proxy)

#: Live events work the same on the one-process stores (tickets live in the store).
pytestmark = [pytest.mark.timeout(120),
              pytest.mark.parametrize("store_url", ["memory", "sqlite"], indirect=True)]


async def _subscribed(twitch_server, count: int) -> None:
    async def check() -> bool:
        return len(await subscriptions_at_twitch(twitch_server)) == count
    await settle(check)


async def test_every_widget_gets_each_notification_exactly_once(proxy, twitch_server):
    key = (await grant_key(proxy))["proxy_key"]
    follow = [await open_widget(proxy, "channel.follow:2", key=key) for _ in range(3)]
    both = await open_widget(proxy, "channel.follow:2", "channel.subscribe:1", key=key)
    await _subscribed(twitch_server, 2)
    sent = await control(twitch_server, "trigger", type="channel.follow",
                         event={"user_name": "Ada"})
    assert len(sent["sent"]) == 1
    await control(twitch_server, "trigger", type="channel.subscribe", event={"tier": "2000"})
    for widget in follow:
        (event,) = await widget.events(1)
        assert event.event == "channel.follow"
        assert event.data["user_name"] == "Ada" and event.data["broadcaster_user_id"] == ME
        assert (event.data["subscription_type"], event.data["subscription_version"]) == (
            "channel.follow", "2")
        assert event.id
    first, second = await both.events(2)
    assert (first.event, second.event) == ("channel.follow", "channel.subscribe")
    assert second.data["tier"] == "2000"
    # Exactly once: the next thing on each stream is the next notification.
    await control(twitch_server, "trigger", type="channel.follow", event={"user_name": "Bob"})
    for widget in (*follow, both):
        assert (await widget.next()).data["user_name"] == "Bob"
    assert both.retry == 1500


async def test_fifty_widgets_cost_twitch_one_subscription_and_one_socket(proxy, twitch_server,
                                                                         mock):
    key = (await grant_key(proxy))["proxy_key"]
    streams = await asyncio.gather(*(open_widget(proxy, "channel.follow:2", key=key)
                                     for _ in range(50)))
    await _subscribed(twitch_server, 1)
    await asyncio.sleep(0.2)  # any further create would have happened by now
    assert calls(mock, "helix:POST /eventsub/subscriptions") == 1
    state = await mock_state(twitch_server)
    assert state["open_sockets_by_user"] == {ME: 1}
    await control(twitch_server, "trigger", type="channel.follow")
    received = await asyncio.gather(*(widget.next() for widget in streams))
    assert {event.id for event in received} == {received[0].id}
    assert all(event.event == "channel.follow" for event in received)


async def test_the_session_closes_a_grace_period_after_the_last_widget(proxy, twitch_server,
                                                                       mock):
    key = (await grant_key(proxy))["proxy_key"]
    follow = await open_widget(proxy, "channel.follow:2", key=key)
    both = await open_widget(proxy, "channel.follow:2", "channel.subscribe:1", key=key)
    await _subscribed(twitch_server, 2)
    both.close()
    await _subscribed(twitch_server, 1)  # channel.subscribe deleted, the other kept
    assert calls(mock, "helix:DELETE /eventsub/subscriptions") == 1
    follow.close()

    async def closed() -> bool:
        return (await mock_state(twitch_server))["open_sockets"] == 0
    await settle(closed)


async def test_last_event_id_resumes_and_an_unknown_one_gets_a_gap(proxy, twitch_server):
    key = (await grant_key(proxy))["proxy_key"]
    keeper = await open_widget(proxy, "channel.follow:2", key=key)  # keeps the session open
    widget = await open_widget(proxy, "channel.follow:2", key=key)
    await _subscribed(twitch_server, 1)
    await control(twitch_server, "trigger", type="channel.follow", event={"user_name": "one"})
    seen = await widget.next()
    widget.close()
    await control(twitch_server, "trigger", type="channel.follow", count=2)
    await keeper.events(3)
    resumed = await open_widget(proxy, "channel.follow:2", key=key, resume_from=seen.id)
    missed = await resumed.events(2)
    assert [event.event for event in missed] == ["channel.follow"] * 2
    assert missed[-1].id == keeper.last_id
    stale = await open_widget(proxy, "channel.follow:2", key=key,
                              resume_from="deadbeef-1")
    gap = await stale.next()
    assert gap.event == "gap" and gap.data["reason"] == "resume_unavailable"
    assert gap.id == keeper.last_id  # the widget's position is now current


async def test_the_last_event_id_query_parameter_resumes_a_new_event_source(proxy,
                                                                            twitch_server):
    key = (await grant_key(proxy))["proxy_key"]
    keeper = await open_widget(proxy, "channel.follow:2", key=key)
    await _subscribed(twitch_server, 1)
    await control(twitch_server, "trigger", type="channel.follow", count=2)
    first, _ = await keeper.events(2)
    resumed = await open_widget(proxy, "channel.follow:2", key=key, last_event_id=first.id)
    assert (await resumed.next()).id == keeper.last_id


async def test_cost_over_twitchs_limit_is_an_error_event_not_a_call(proxy, twitch_server, mock):
    key = (await grant_key(proxy))["proxy_key"]
    # Raids from other channels cost 1 each; Twitch allows a total cost of 10.
    paid = [await open_widget(proxy, "channel.raid:1", key=key,
                              from_broadcaster_user_id=str(1000 + n)) for n in range(10)]
    await _subscribed(twitch_server, 10)
    over = await open_widget(proxy, "channel.raid:1", key=key, from_broadcaster_user_id="999")
    error = await over.next()
    assert error.event == "error" and error.data["error"] == "cost_exceeded"
    assert error.data["condition"] == {"from_broadcaster_user_id": "999"}
    assert calls(mock, "helix:POST /eventsub/subscriptions") == 10
    assert len(paid) == 10


async def test_twitch_refusing_a_subscription_is_an_error_event_with_its_answer(
        proxy, twitch_server):
    key = (await grant_key(proxy))["proxy_key"]
    # The login did not ask for bits:read, which channel.cheer needs.
    widget = await open_widget(proxy, "channel.cheer:1", key=key)
    error = await widget.next()
    assert error.event == "error"
    assert error.data["error"] == "twitch_refused" and error.data["status"] == 403
    assert error.data["message"] == "subscription missing proper authorization"
    assert error.data["subscription_type"] == "channel.cheer"
