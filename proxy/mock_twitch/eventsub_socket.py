"""The mock's EventSub WebSocket server: ``GET /ws``, as ``wss://eventsub.wss.twitch.tv/ws``.

``/ws?keepalive_timeout_seconds=N`` opens a session (N clamped to 10..600, or
to the lowered floor a test set) and sends ``session_welcome``;
``/ws?reconnect_id=...`` is the ``reconnect_url`` of a ``session_reconnect``
and resumes that session (a used, stale or unknown one is closed with 4007).
While a connection is open the mock, like Twitch:

- pings it every ``ping_interval`` seconds and closes with 4002 when the
  previous ping is still unanswered;
- sends ``session_keepalive`` once nothing else was sent for the keepalive
  time (so the gap between two frames is at most about that long: a client
  must allow some slack before it calls the connection dead);
- closes with 4003 when the session has no subscription one keepalive
  window after the welcome;
- closes with 4001 on any inbound data frame (clients never send any);
- answers the client's own pings.

A silenced connection (see :mod:`.eventsub_control`) writes nothing at all
and ignores what arrives: a link that died without a close.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import WSMsgType, web

from .eventsub_records import Connection, Session
from .eventsub_state import EventSubState

__all__ = ["EventSubSocketEndpoint"]

_DATA_FRAMES = (WSMsgType.TEXT, WSMsgType.BINARY)


def _requested_keepalive(request: web.Request) -> int | None:
    """``keepalive_timeout_seconds``: a number (any, Twitch clamps it) or absent."""
    raw = request.query.get("keepalive_timeout_seconds")
    if raw is None:
        return None
    try:
        return round(float(raw))
    except (ValueError, OverflowError):
        raise web.HTTPBadRequest(text="keepalive_timeout_seconds must be a number") from None


class EventSubSocketEndpoint:
    """The ``/ws`` handler, over one :class:`EventSubState`."""

    def __init__(self, state: EventSubState) -> None:
        self._state = state

    def routes(self) -> list[web.RouteDef]:
        """The route to add to the mock's app."""
        return [web.get("/ws", self.websocket)]

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        """One EventSub connection, from the welcome to the close."""
        state = self._state
        keepalive = state.keepalive_for(_requested_keepalive(request))
        # Pings and pongs are the mock's business: it pings, and watches the pongs.
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        conn = Connection(ws, request)
        reconnect_id = request.query.get("reconnect_id")
        session: Session | None
        if reconnect_id is None:
            session = await state.open_session(conn, keepalive)
        else:
            session = await state.resume(reconnect_id, conn)
            if session is None:
                await conn.close(4007)
                return ws
        pacer = asyncio.create_task(self._pace(session, conn, fresh=reconnect_id is None))
        try:
            await self._read(session, conn)
        finally:
            pacer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pacer
            state.connection_gone(session, conn)
        return ws

    async def _read(self, session: Session, conn: Connection) -> None:
        """Read until the socket closes: answer pings, note pongs, refuse data (4001)."""
        ws = conn.ws
        while True:
            message = await ws.receive()
            if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED,
                                WSMsgType.ERROR):
                return
            if conn.silent:
                continue
            if message.type == WSMsgType.PING:
                with contextlib.suppress(ConnectionError):
                    await ws.pong(message.data)
            elif message.type == WSMsgType.PONG:
                conn.awaiting_pong = False
            elif message.type in _DATA_FRAMES:
                await self._state.close_connection(session, conn, 4001)

    async def _pace(self, session: Session, conn: Connection, *, fresh: bool) -> None:
        """The server's side of the clock: pings, keepalives and the unused-session close."""
        state = self._state
        loop = asyncio.get_running_loop()
        welcomed = loop.time()
        next_ping = welcomed + state.ping_interval
        while conn.open and not session.ended:
            await asyncio.sleep(min(0.25, session.keepalive / 20, state.ping_interval / 4))
            now = loop.time()
            if conn.silent:
                next_ping = now + state.ping_interval
                continue
            if fresh and not session.ever_subscribed and now - welcomed >= session.keepalive:
                await state.close_connection(session, conn, 4003)
                return
            if now >= next_ping:
                if conn.awaiting_pong:
                    await state.close_connection(session, conn, 4002)
                    return
                conn.awaiting_pong = True
                with contextlib.suppress(ConnectionError):
                    await conn.ws.ping()
                next_ping = now + state.ping_interval
            if session.connection is conn and now - conn.last_sent >= session.keepalive:
                await state.send_keepalive(session)
