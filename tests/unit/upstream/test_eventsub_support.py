"""The scripted EventSub server the ``test_eventsub*`` suites share (no tests of its own).

:class:`ScriptedTwitch` is a real aiohttp WebSocket server on a real port whose
frames each test sends by hand (the frame builders below make Twitch's
shapes). It records every frame the client sends; the ``twitch`` fixture
ends every test by checking there was no data frame and no ping (Twitch
closes with 4001 on any). :class:`Collector` reads ``messages()`` in a task,
as the relay does. A suite uses the fixtures by naming them at module level
(``http, twitch, make_socket = support.http, support.twitch, support.make_socket``).
"""

from __future__ import annotations

import asyncio
import itertools
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

