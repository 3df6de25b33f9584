"""proxy.upstream.eventsub: the welcome, silence, notifications, duplicates and close codes.

The protocol's edge cases run against a scripted EventSub server: a real
aiohttp WebSocket server on a real port whose frames each test sends by hand
(:class:`ScriptedTwitch`). It records every frame the client sends, and every
test ends by checking there was no data frame and no ping (Twitch closes with
4001 on any). The reconnect hand-over is in ``test_eventsub_reconnect.py``,
the same against the mock Twitch in ``test_eventsub_mock.py``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
from collections.abc import Callable

import aiohttp
import pytest
from aiohttp import web

from proxy.upstream.eventsub import EventSubMessage, EventSubSocket, SessionEnded

#: A guard against hanging tests, never a timing assertion.
WAIT = 10.0

_ids = itertools.count(1)


def frame(message_type: str, payload: dict, message_id: str | None = None, **metadata) -> dict:
    return {"metadata": {"message_id": message_id or f"m-{next(_ids)}",
                         "message_type": message_type,
                         "message_timestamp": "2026-12-01T03:00:00.123456789Z", **metadata},
            "payload": payload}


def welcome(session_id: str = "session-1", keepalive: int = 30) -> dict:
    return frame("session_welcome", {"session": {
        "id": session_id, "status": "connected", "connected_at": "2026-12-01T03:00:00Z",
        "keepalive_timeout_seconds": keepalive, "reconnect_url": None, "recovery_url": None}})


def reconnect(url: str, session_id: str = "session-1") -> dict:
    return frame("session_reconnect", {"session": {
        "id": session_id, "status": "reconnecting", "connected_at": "2026-12-01T03:00:00Z",
        "keepalive_timeout_seconds": None, "reconnect_url": url, "recovery_url": None}})


SUBSCRIPTION = {"id": "sub-1", "status": "enabled", "type": "channel.follow", "version": "2",
                "condition": {"broadcaster_user_id": "1", "moderator_user_id": "1"},
                "transport": {"method": "websocket", "session_id": "session-1"},
                "created_at": "2026-12-01T03:00:00Z", "cost": 0}


def notification(message_id: str) -> dict:
    return frame("notification", {"subscription": SUBSCRIPTION,
                                  "event": {"user_login": f"follower-{message_id}"}},
                 message_id, subscription_type="channel.follow", subscription_version="2")


def revocation(message_id: str) -> dict:
    return frame("revocation", {"subscription": {**SUBSCRIPTION,
                                                 "status": "authorization_revoked"}},
                 message_id, subscription_type="channel.follow", subscription_version="2")


def keepalive() -> dict:
    return frame("session_keepalive", {})


class ServerSocket:
    """The server's end of one connection; ``inbound`` holds whatever the client sent."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        self.ws = ws
        self.query = dict(request.query)
        self.request = request
        self.inbound: list[aiohttp.WSMessage] = []
        self.pongs: list[bytes] = []
        self.closed = asyncio.Event()

    async def send(self, *frames: dict) -> None:
        for item in frames:
            await self.ws.send_json(item)

    async def close(self, code: int) -> None:
        await self.ws.close(code=code, message=b"closing")

    def abort(self) -> None:
        """Drop the TCP connection without a close frame."""
        assert self.request.transport is not None
        self.request.transport.abort()

    async def wait_closed(self) -> int | None:
        await asyncio.wait_for(self.closed.wait(), WAIT)
        return self.ws.close_code


class ScriptedTwitch:
    """An EventSub server at ``/ws`` whose connections tests script frame by frame."""

    def __init__(self) -> None:
        self.app = web.Application()
        self.app.router.add_get("/ws", self._handle)
        self.server = None  # the running TestServer, set by the fixture
        self.sockets: list[ServerSocket] = []
        self._accepted: asyncio.Queue[ServerSocket] = asyncio.Queue()

    def url(self, path: str = "/ws") -> str:
        return str(self.server.make_url(path).with_scheme("ws"))

    async def accept(self) -> ServerSocket:
        return await asyncio.wait_for(self._accepted.get(), WAIT)

    async def _handle(self, request: web.Request) -> web.WebSocketResponse:
        # autoping off: the test sees the client's pongs, and any ping it sent.
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        conn = ServerSocket(ws, request)
        self.sockets.append(conn)
        self._accepted.put_nowait(conn)
        try:
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.PONG:
                    conn.pongs.append(msg.data)
                else:
                    conn.inbound.append(msg)
        finally:
            conn.closed.set()
        return ws


@pytest.fixture
async def twitch(aiohttp_server):
    """The scripted server; afterwards, no connection may have had a frame from the client."""
    scripted = ScriptedTwitch()
    scripted.server = await aiohttp_server(scripted.app)
    yield scripted
    assert [conn.inbound for conn in scripted.sockets] == [[] for _ in scripted.sockets]


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def make_socket(http, twitch):
    """EventSubSocket factory on the scripted server; every one is closed afterwards."""
    made: list[EventSubSocket] = []

    def make(**options) -> EventSubSocket:
        options.setdefault("keepalive_margin", 1.0)
        made.append(EventSubSocket(http, options.pop("url", twitch.url()), **options))
        return made[-1]

    yield make
    for eventsub in made:
        await eventsub.close()


class Collector:
    """Reads ``messages()`` in a task, as the relay will."""

    def __init__(self, eventsub: EventSubSocket) -> None:
        self.messages: list[EventSubMessage] = []
        self.ended: SessionEnded | None = None
        self._changed = asyncio.Event()
        self.task = asyncio.create_task(self._run(eventsub))

    async def _run(self, eventsub: EventSubSocket) -> None:
        try:
            async for message in eventsub.messages():
                self.messages.append(message)
                self._changed.set()
        except SessionEnded as ended:
            self.ended = ended
        finally:
            self._changed.set()

    @property
    def ids(self) -> list[str]:
        return [message.message_id for message in self.messages]

    async def until(self, condition: Callable[[], bool]) -> None:
        async def wait() -> None:
            while not condition():
                assert not self.task.done(), f"the session ended: {self.ended!r}"
                self._changed.clear()
                await self._changed.wait()
        await asyncio.wait_for(wait(), WAIT)

    async def count(self, n: int) -> None:
        await self.until(lambda: len(self.messages) >= n)

    async def end(self) -> SessionEnded:
        await asyncio.wait_for(self.task, WAIT)
        assert self.ended is not None
        return self.ended


async def connected(make_socket, twitch, *, keepalive: int = 30, session_id: str = "session-1",
                    **options) -> tuple[EventSubSocket, ServerSocket]:
    eventsub = make_socket(**options)
    connecting = asyncio.create_task(eventsub.connect())
    conn = await twitch.accept()
    await conn.send(welcome(session_id, keepalive))
    assert await asyncio.wait_for(connecting, WAIT) == session_id
    return eventsub, conn


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
