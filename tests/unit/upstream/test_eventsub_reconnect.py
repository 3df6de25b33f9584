"""proxy.upstream.eventsub: following ``session_reconnect`` loses and duplicates nothing.

Twitch's reference: on ``session_reconnect`` connect to ``reconnect_url`` as
given, keep the old socket until the new one's welcome, do not resubscribe.
Frames arrive on both sockets around the switch, and Twitch may resend on the
new one what it sent on the old: each message id must come out exactly once.
A session that ended is connected again, fresh, on the base URL. Runs
against the scripted server of ``test_eventsub_support.py``.
"""

from __future__ import annotations

import asyncio
import logging

from tests.unit.upstream import test_eventsub_support as scripted
from tests.unit.upstream.test_eventsub_support import (
    WAIT,
    Collector,
    closed_port,
    connected,
    keepalive,
    notification,
    reconnect,
    welcome,
)

# The scripted server and its client, as fixtures of this module too.
http, twitch, make_socket = scripted.http, scripted.twitch, scripted.make_socket

CHALLENGE = "c2VjcmV0LWNoYWxsZW5nZQ"


def reconnect_url(twitch, path: str = "/ws") -> str:
    """Twitch's reconnect URLs carry a challenge and an id in the query."""
    return f"{twitch.url(path)}?challenge={CHALLENGE}&id=edge-2"


async def test_reconnect_interleaved_loses_and_duplicates_nothing(make_socket, twitch, caplog):
    caplog.set_level(logging.INFO, "proxy.upstream.eventsub")
    eventsub, old = await connected(make_socket, twitch, drain_seconds=2.0)
    reader = Collector(eventsub)
    await old.send(notification("n1"))
    await reader.count(1)

    await old.send(reconnect(reconnect_url(twitch)))
    new = await twitch.accept()
    assert new.query == {"challenge": CHALLENGE, "id": "edge-2"}  # used as given
    # Before the new welcome, the old socket still delivers.
    await old.send(notification("n2"), keepalive(), notification("n3"))
    await reader.count(3)
    assert eventsub.session_id == "session-1"

    await new.send(welcome("session-1"))
    # Twitch resends on the new socket what it was unsure of, and frames
    # already in flight on the old one arrive after the switch.
    await new.send(notification("n3"), notification("n4"))
    await old.send(notification("n4"), notification("n5"))  # n5 only on the old socket
    await new.send(notification("n6"))
    await reader.count(6)
    await new.send(notification("n7"))
    await reader.count(7)

    assert sorted(reader.ids) == ["n1", "n2", "n3", "n4", "n5", "n6", "n7"]
    assert len(reader.ids) == len(set(reader.ids))
    assert reader.ids[:3] == ["n1", "n2", "n3"]
    assert eventsub.stats.duplicates_dropped == 2
    assert eventsub.stats.reconnects == {"session_reconnect": 1}
    assert eventsub.stats.sessions_ended == {}
    # The client closes the old socket once drained; the new one stays.
    assert await old.wait_closed() == 1000
    assert not new.closed.is_set()
    assert not reader.task.done()

    lines = [r.getMessage() for r in caplog.records if r.name == "proxy.upstream.eventsub"]
    assert any("reconnecting" in line for line in lines)
    assert any("reconnected" in line for line in lines)
    assert CHALLENGE not in caplog.text
    assert "edge-2" not in caplog.text


async def test_reconnect_twice_in_a_row(make_socket, twitch):
    eventsub, first = await connected(make_socket, twitch, drain_seconds=0.1)
    reader = Collector(eventsub)
    await first.send(reconnect(reconnect_url(twitch)))
    second = await twitch.accept()
    await second.send(welcome("session-1"), notification("a"))
    await reader.count(1)
    await second.send(reconnect(reconnect_url(twitch)))
    third = await twitch.accept()
    await third.send(welcome("session-1"), notification("b"))
    await reader.count(2)
    assert reader.ids == ["a", "b"]
    assert await first.wait_closed() == 1000
    assert await second.wait_closed() == 1000
    assert eventsub.stats.reconnects == {"session_reconnect": 2}


async def test_old_socket_closed_before_the_new_welcome(make_socket, twitch):
    # Twitch closes the old socket with 4004 after its grace time; the
    # session lives on if the new socket is welcomed.
    eventsub, old = await connected(make_socket, twitch)
    reader = Collector(eventsub)
    await old.send(reconnect(reconnect_url(twitch)))
    new = await twitch.accept()
    await old.send(notification("last-on-old"))
    await reader.count(1)
    await old.close(4004)
    await new.send(welcome("session-1"), notification("first-on-new"))
    await reader.count(2)
    assert reader.ids == ["last-on-old", "first-on-new"]
    assert not reader.task.done()


async def test_session_id_follows_the_new_welcome(make_socket, twitch):
    eventsub, old = await connected(make_socket, twitch)
    reader = Collector(eventsub)
    await old.send(reconnect(reconnect_url(twitch)))
    new = await twitch.accept()
    await new.send(welcome("session-9"), notification("x"))
    await reader.count(1)
    assert eventsub.session_id == "session-9"


async def test_reconnect_url_refused(make_socket, twitch):
    eventsub, old = await connected(make_socket, twitch)
    reader = Collector(eventsub)
    await old.send(notification("before"),
                   reconnect(f"ws://127.0.0.1:{closed_port()}/ws?challenge={CHALLENGE}"))
    ended = await reader.end()
    assert (ended.reason, ended.close_code, ended.retry) == ("reconnect_failed", None, True)
    assert reader.ids == ["before"]
    assert CHALLENGE not in str(ended)
    assert await old.wait_closed() == 1000  # the old socket is let go as well
    assert eventsub.session_id is None
    assert eventsub.stats.sessions_ended == {"reconnect_failed": 1}


async def test_reconnect_url_not_a_websocket(make_socket, twitch):
    eventsub, old = await connected(make_socket, twitch)
    reader = Collector(eventsub)
    await old.send(reconnect(reconnect_url(twitch, "/gone")))
    ended = await reader.end()
    assert (ended.reason, ended.retry) == ("reconnect_failed", True)


async def test_reconnect_refused_with_4007(make_socket, twitch):
    eventsub, old = await connected(make_socket, twitch)
    reader = Collector(eventsub)
    await old.send(reconnect(reconnect_url(twitch)))
    new = await twitch.accept()
    await old.send(notification("meanwhile"))
    await reader.count(1)
    await new.close(4007)
    ended = await reader.end()
    assert (ended.reason, ended.close_code, ended.retry) == ("reconnect_failed", 4007, True)
    assert "fresh connection to the base URL" in str(ended)
    assert eventsub.stats.sessions_ended == {"reconnect_failed_4007": 1}

    # The caller's next step: connect() again, which goes to the base URL.
    connecting = asyncio.create_task(eventsub.connect())
    fresh = await twitch.accept()
    assert fresh.query == {"keepalive_timeout_seconds": "30"}
    await fresh.send(welcome("session-2"))
    assert await asyncio.wait_for(connecting, WAIT) == "session-2"
    assert eventsub.stats.reconnects == {"reconnect_failed_4007": 1}


async def test_reconnect_without_a_welcome(make_socket, twitch):
    eventsub, old = await connected(make_socket, twitch, connect_timeout=1.0)
    reader = Collector(eventsub)
    await old.send(reconnect(reconnect_url(twitch)))
    new = await twitch.accept()
    ended = await reader.end()
    assert (ended.reason, ended.close_code, ended.retry) == ("reconnect_failed", None, True)
    assert await new.wait_closed() is not None  # the client hung up on it
    assert await old.wait_closed() == 1000


async def test_close_during_a_reconnect_closes_both_sockets(make_socket, twitch):
    eventsub, old = await connected(make_socket, twitch)
    reader = Collector(eventsub)
    await old.send(reconnect(reconnect_url(twitch)))
    new = await twitch.accept()
    await old.send(notification("seen"))
    await reader.count(1)
    await eventsub.close()
    assert await old.wait_closed() == 1000
    assert await new.wait_closed() is not None
    await asyncio.wait_for(reader.task, WAIT)
    assert reader.ended is None


async def test_close_while_the_old_socket_drains(make_socket, twitch):
    # The drain outlasts the test's patience: close() must end it, not wait for it.
    eventsub, old = await connected(make_socket, twitch, drain_seconds=3600)
    reader = Collector(eventsub)
    await old.send(reconnect(reconnect_url(twitch)))
    new = await twitch.accept()
    await new.send(welcome("session-1"), notification("on-new"))
    await reader.count(1)
    await old.send(notification("on-old"))
    await reader.count(2)
    await eventsub.close()
    assert await old.wait_closed() == 1000
    assert await new.wait_closed() == 1000


# -- the caller's reconnect, after the session ended ----------------------------------


async def test_connect_again_after_the_end_is_a_fresh_session(make_socket, twitch):
    eventsub, conn = await connected(make_socket, twitch, keepalive_timeout=10)
    await conn.close(4007)
    assert (await Collector(eventsub).end()).close_code == 4007
    connecting = asyncio.create_task(eventsub.connect())
    again = await twitch.accept()
    assert again.query == {"keepalive_timeout_seconds": "10"}  # the base URL again
    await again.send(welcome("session-2"))
    assert await asyncio.wait_for(connecting, WAIT) == "session-2"
    reader = Collector(eventsub)
    await again.send(notification("fresh"))
    await reader.count(1)
    assert eventsub.stats.connects == 2
    assert eventsub.stats.reconnects == {"closed_4007": 1}


async def test_the_client_never_sends_a_frame(make_socket, twitch):
    # Twitch closes with 4001 on any frame but a pong; the fixture checks every
    # test's sockets, this one walks a whole session through on purpose.
    eventsub, old = await connected(make_socket, twitch, drain_seconds=0.1)
    reader = Collector(eventsub)
    await old.ws.ping(b"1")
    await old.send(notification("a"), keepalive(), reconnect(reconnect_url(twitch)))
    new = await twitch.accept()
    await new.send(welcome("session-1"), notification("b"))
    await new.ws.ping(b"2")
    await reader.count(2)
    await old.wait_closed()

    async def ponged() -> None:  # before the close, which discards what comes after it
        while not new.pongs:
            await asyncio.sleep(0.01)
    await asyncio.wait_for(ponged(), WAIT)
    await new.close(4000)
    assert (await reader.end()).close_code == 4000
    assert (old.inbound, new.inbound) == ([], [])
    assert (old.pongs, new.pongs) == ([b"1"], [b"2"])
