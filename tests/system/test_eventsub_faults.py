"""/eventsub when Twitch misbehaves: reconnects, silence, drops, revocations, tokens.

The mock Twitch's control endpoints make it do what Twitch does on a bad day;
the widgets are real HTTP streams from a real proxy server.
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

config_flags, eventsub_options, proxy = (support.config_flags, support.eventsub_options,
                                         support.proxy)

pytestmark = pytest.mark.timeout(120)


async def _session_ids(twitch_server) -> list[str]:
    state = await mock_state(twitch_server)
    return [session["id"] for session in state["sessions"] if session["subscriptions"]]


async def _subscribed_on_a_new_session(twitch_server, old: list[str]) -> list[str]:
    found: list[str] = []

    async def check() -> bool:
        found[:] = [sid for sid in await _session_ids(twitch_server) if sid not in old]
        return bool(found)
    await settle(check)
    return found


async def _ready(twitch_server, count: int = 1) -> None:
    async def check() -> bool:
        return len(await subscriptions_at_twitch(twitch_server)) == count
    await settle(check)


async def test_session_reconnect_mid_stream_loses_and_doubles_nothing(proxy, twitch_server,
                                                                      mock):
    key = (await grant_key(proxy))["proxy_key"]
    widget = await open_widget(proxy, "channel.follow:2", key=key)
    await _ready(twitch_server)
    await control(twitch_server, "trigger", type="channel.follow", count=5)
    urls = await control(twitch_server, "reconnect", user_id=ME)
    assert len(urls["reconnect_urls"]) == 1
    await control(twitch_server, "trigger", type="channel.follow", count=5)
    # At-least-once delivery: a resend of the last message keeps its message_id.
    (session_id,) = await _session_ids(twitch_server)
    await control(twitch_server, "resend", session_id=session_id)
    await control(twitch_server, "trigger", type="channel.follow", count=5)
    events = await widget.events(15)
    assert [event.event for event in events] == ["channel.follow"] * 15  # no gap
    assert len({event.data["user_id"] for event in events}) == 15  # none twice
    assert len({event.id for event in events}) == 15
    assert calls(mock, "helix:POST /eventsub/subscriptions") == 1  # no resubscribe
    await control(twitch_server, "trigger", type="channel.follow")
    assert (await widget.next()).event == "channel.follow"  # nothing else was queued


async def test_keepalive_silence_means_reconnect_resubscribe_and_a_gap(proxy, twitch_server,
                                                                       mock):
    await control(twitch_server, "timing", keepalive_floor=1)
    key = (await grant_key(proxy))["proxy_key"]
    widget = await open_widget(proxy, "channel.follow:2", "channel.subscribe:1", key=key)
    await _ready(twitch_server, 2)
    old = await _session_ids(twitch_server)
    await control(twitch_server, "silence", user_id=ME)
    gap = await widget.next(seconds=60)
    assert gap.event == "gap" and gap.data["reason"] == "keepalive_timeout"
    assert gap.data["subscription_types"] == ["channel.follow:2", "channel.subscribe:1"]
    await _subscribed_on_a_new_session(twitch_server, old)
    await _ready(twitch_server, 2)
    assert calls(mock, "helix:POST /eventsub/subscriptions") == 4
    await control(twitch_server, "trigger", type="channel.subscribe")
    assert (await widget.next()).event == "channel.subscribe"


@pytest.mark.parametrize("code", [4000, 4005, None])
async def test_a_dropped_session_is_reconnected_and_resubscribed(proxy, twitch_server, code):
    key = (await grant_key(proxy))["proxy_key"]
    widget = await open_widget(proxy, "channel.follow:2", key=key)
    await _ready(twitch_server)
    old = await _session_ids(twitch_server)
    if code is None:
        await control(twitch_server, "drop", user_id=ME, cut=True)  # no close frame
    else:
        await control(twitch_server, "drop", user_id=ME, code=code)
    gap = await widget.next()
    assert gap.event == "gap" and gap.data["close_code"] == code
    await _subscribed_on_a_new_session(twitch_server, old)
    await control(twitch_server, "trigger", type="channel.follow", event={"user_name": "back"})
    assert (await widget.next()).data["user_name"] == "back"
    assert (await mock_state(twitch_server))["open_sockets_by_user"] == {ME: 1}


async def test_a_revocation_reaches_the_widget_with_twitchs_status(proxy, twitch_server):
    key = (await grant_key(proxy))["proxy_key"]
    widget = await open_widget(proxy, "channel.follow:2", "channel.subscribe:1", key=key)
    await _ready(twitch_server, 2)
    await control(twitch_server, "revoke", type="channel.subscribe", status="user_removed")
    revoked = await widget.next()
    assert revoked.event == "revoked" and revoked.data["status"] == "user_removed"
    assert revoked.data["subscription_type"] == "channel.subscribe" and revoked.id
    await control(twitch_server, "trigger", type="channel.follow")
    assert (await widget.next()).event == "channel.follow"  # the other one still works


async def test_an_expired_token_while_subscribing_costs_one_refresh(proxy, twitch_server,
                                                                    mock):
    key = (await grant_key(proxy))["proxy_key"]
    mock.expire_access_tokens(ME)  # the proxy still thinks its token is good for hours
    streams = await asyncio.gather(*(
        open_widget(proxy, kind, key=key)
        for kind in ("channel.follow:2", "channel.subscribe:1", "stream.online:1")))
    await _ready(twitch_server, 3)
    assert calls(mock, "token:refresh_token") == 1
    await control(twitch_server, "trigger", type="stream.online")
    assert (await streams[2].next()).event == "stream.online"


async def test_a_grant_that_needs_a_login_tells_the_widget_where(proxy, twitch_server, mock):
    key = (await grant_key(proxy))["proxy_key"]
    mock.expire_access_tokens(ME)
    mock.revoke_refresh_tokens(ME)  # the user disconnected the app at Twitch
    widget = await open_widget(proxy, "channel.follow:2", key=key)
    event = await widget.next()
    assert event.event == "reauthorization_required"
    assert event.data["login_url"].endswith("/login")
    assert await widget.ended()
    again = await proxy.get("/eventsub", params={"type": "channel.follow:2"},
                            headers={"Authorization": f"Bearer {key}"})
    assert again.status == 401
    assert (await again.json())["error"] == "reauthorization_required"
    assert (await mock_state(twitch_server))["open_sockets"] == 0
