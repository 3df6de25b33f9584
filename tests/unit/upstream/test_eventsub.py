"""proxy.upstream.eventsub: the welcome, silence, notifications, duplicates and close codes.

The protocol's edge cases run against the scripted EventSub server of
``test_eventsub_support.py``, whose frames each test sends by hand; every
test ends by checking the client sent no data frame and no ping (Twitch
closes with 4001 on any). The reconnect hand-over is in
``test_eventsub_reconnect.py``, the same against the mock Twitch in
``test_eventsub_mock.py``.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from proxy.upstream.eventsub import EventSubMessage, SessionEnded
from tests.unit.upstream import test_eventsub_support as support
from tests.unit.upstream.test_eventsub_support import (
    SUBSCRIPTION,
    WAIT,
    Collector,
    closed_port,
    connected,
    frame,
    keepalive,
    notification,
    revocation,
)

# The scripted server and its client, as fixtures of this module.
http, twitch, make_socket = support.http, support.twitch, support.make_socket


# -- the welcome ---------------------------------------------------------------------


async def test_connect_returns_the_welcome_session_id(make_socket, twitch):
    eventsub, conn = await connected(make_socket, twitch, keepalive_timeout=25,
                                     session_id="AQoQexAWVYKSTIu4ec_2VAxyuhAB")
    assert eventsub.session_id == "AQoQexAWVYKSTIu4ec_2VAxyuhAB"
    assert conn.query == {"keepalive_timeout_seconds": "25"}
    assert eventsub.stats.connects == 1


async def test_pings_answered_while_nobody_reads_messages(make_socket, twitch):
    _, conn = await connected(make_socket, twitch)
    await conn.ws.ping(b"are you there")
    async def ponged() -> None:
        while not conn.pongs:
            await asyncio.sleep(0.01)
    await asyncio.wait_for(ponged(), WAIT)
    assert conn.pongs == [b"are you there"]


@pytest.mark.parametrize("script", ["refused", "not_websocket", "silent", "closes", "keepalive"])
async def test_connect_failures(make_socket, twitch, script):
    url = {"refused": f"ws://127.0.0.1:{closed_port()}/ws",
           "not_websocket": twitch.url("/nothing-here")}.get(script, twitch.url())
    eventsub = make_socket(url=url, connect_timeout=1.0)
    connecting = asyncio.create_task(eventsub.connect())
    if script in ("silent", "closes", "keepalive"):
        conn = await twitch.accept()
        if script == "closes":
            await conn.close(4000)
        elif script == "keepalive":
            await conn.send(keepalive())
    with pytest.raises(SessionEnded) as ended:
        await asyncio.wait_for(connecting, WAIT)
    assert ended.value.reason == "connect_failed"
    assert ended.value.retry is True
    assert ended.value.close_code == (4000 if script == "closes" else None)
    assert eventsub.session_id is None
    assert eventsub.stats.sessions_ended == {
        "connect_failed_4000" if script == "closes" else "connect_failed": 1}
    if script in ("silent", "keepalive"):
        assert await conn.wait_closed() is not None  # the client hung up


# -- messages ------------------------------------------------------------------------


async def test_notifications_and_revocations_yielded_keepalives_not(make_socket, twitch):
    eventsub, conn = await connected(make_socket, twitch)
    reader = Collector(eventsub)
    await conn.send(keepalive(), notification("n-1"), keepalive(), revocation("r-1"))
    await reader.count(2)
    follow, revoked = reader.messages
    assert follow == EventSubMessage(
        message_id="n-1", message_type="notification",
        message_timestamp="2026-12-01T03:00:00.123456789Z", subscription=SUBSCRIPTION,
        event={"user_login": "follower-n-1"})
    assert (revoked.message_type, revoked.event) == ("revocation", None)
    assert revoked.subscription["status"] == "authorization_revoked"
    assert eventsub.stats.messages_delivered == 2


async def test_duplicate_message_ids_dropped(make_socket, twitch):
    eventsub, conn = await connected(make_socket, twitch)
    reader = Collector(eventsub)
    await conn.send(notification("a"), notification("a"), notification("b"),
                    notification("a"), notification("b"), notification("c"))
    await reader.count(3)
    await conn.send(notification("end"))
    await reader.count(4)
    assert reader.ids == ["a", "b", "c", "end"]
    assert eventsub.stats.duplicates_dropped == 3


async def test_duplicate_memory_is_bounded(make_socket, twitch):
    eventsub, conn = await connected(make_socket, twitch, remembered_ids=2)
    reader = Collector(eventsub)
    # The welcome's id was remembered too, and forgotten after "a" and "b".
    await conn.send(notification("a"), notification("b"), notification("b"),
                    notification("c"), notification("a"))
    await reader.count(4)
    assert reader.ids == ["a", "b", "c", "a"]
    assert eventsub.stats.duplicates_dropped == 1


async def test_malformed_frames_ignored(make_socket, twitch):
    eventsub, conn = await connected(make_socket, twitch)
    reader = Collector(eventsub)
    await conn.ws.send_str("not json")
    await conn.ws.send_bytes(b"\x00")
    await conn.send({"payload": {}}, frame("notification", {"event": {}}, "no-subscription"),
                    frame("session_reconnect", {"session": {"id": "session-1"}}),
                    frame("something_new", {}), notification("after"))
    await reader.count(1)
    assert reader.ids == ["after"]
    assert eventsub.stats.malformed_frames == 4


# -- silence -------------------------------------------------------------------------


async def test_keepalives_reset_the_silence_timer(make_socket, twitch):
    # keepalive 1 s + margin 1 s; a frame every 0.25 s for three times that long.
    eventsub, conn = await connected(make_socket, twitch, keepalive=1, keepalive_margin=1.0)
    reader = Collector(eventsub)
    for _ in range(24):
        await asyncio.sleep(0.25)
        await conn.send(keepalive())
    await conn.send(notification("still-alive"))
    await reader.count(1)
    assert not reader.task.done()
    ended = await reader.end()  # then silence
    assert (ended.reason, ended.close_code, ended.retry) == ("keepalive_timeout", None, True)


async def test_notifications_reset_the_silence_timer_too(make_socket, twitch):
    eventsub, conn = await connected(make_socket, twitch, keepalive=1, keepalive_margin=1.0)
    reader = Collector(eventsub)
    for n in range(12):
        await asyncio.sleep(0.25)
        await conn.send(notification(f"n-{n}"))
    await reader.count(12)
    assert not reader.task.done()


async def test_silence_past_keepalive_ends_the_session(make_socket, twitch):
    eventsub, conn = await connected(make_socket, twitch, keepalive=1, keepalive_margin=0.2)
    ended = await Collector(eventsub).end()
    assert (ended.reason, ended.close_code, ended.retry) == ("keepalive_timeout", None, True)
    assert eventsub.session_id is None
    assert await conn.wait_closed() == 1000  # the client closed the dead socket
    assert eventsub.stats.sessions_ended == {"keepalive_timeout": 1}


# -- close codes ---------------------------------------------------------------------

#: Twitch's close codes, what the exception must say, and whether to retry.
CLOSE_CODES = {
    4000: (True, "internal server error"),
    4001: (True, "bug here"),
    4002: (True, "ping"),
    4003: (True, "only if subscriptions are still wanted"),
    4004: (True, "30 seconds"),
    4005: (True, "network timeout"),
    4006: (True, "network error"),
    4007: (True, "fresh connection to the base URL"),
}


@pytest.mark.parametrize("code", sorted(CLOSE_CODES))
async def test_close_codes_classified(make_socket, twitch, code, caplog):
    eventsub, conn = await connected(make_socket, twitch)
    reader = Collector(eventsub)
    await conn.send(notification("before"))
    await reader.count(1)
    await conn.close(code)
    ended = await reader.end()
    retry, says = CLOSE_CODES[code]
    assert (ended.reason, ended.close_code, ended.retry) == ("closed", code, retry)
    assert says in str(ended)
    assert eventsub.stats.sessions_ended == {f"closed_{code}": 1}
    # 4001 means this client sent a frame: a bug, logged as an error.
    levels = {r.levelno for r in caplog.records if "ended" in r.getMessage()}
    assert levels == {logging.ERROR if code == 4001 else logging.WARNING}


@pytest.mark.parametrize("how", ["close_1000", "close_1011", "abort"])
async def test_other_closes_are_network_losses(make_socket, twitch, how):
    eventsub, conn = await connected(make_socket, twitch)
    reader = Collector(eventsub)
    if how == "abort":
        conn.abort()
    else:
        await conn.close(int(how.removeprefix("close_")))
    ended = await reader.end()
    assert (ended.reason, ended.close_code, ended.retry) == ("network", None, True)


async def test_close_ends_quietly(make_socket, twitch):
    eventsub, conn = await connected(make_socket, twitch)
    reader = Collector(eventsub)
    await eventsub.close()
    assert await conn.wait_closed() == 1000
    assert eventsub.session_id is None
    await asyncio.wait_for(reader.task, WAIT)  # messages() returned
    assert reader.ended is None
    assert eventsub.stats.sessions_ended == {}
