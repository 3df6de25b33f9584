"""EventSub's state in the mock: WebSocket sessions, their subscriptions, and what was sent.

:class:`EventSubState` hangs off :class:`~proxy.mock_twitch.state.MockTwitch`
as ``mock.eventsub``. The socket handler (:mod:`.eventsub_socket`), the Helix
subscriptions endpoint (:mod:`.eventsub_helix`) and the control endpoints
(:mod:`.eventsub_control`) all act through it, so a test can also drive it
directly. Sessions outlive a connection only across a ``session_reconnect``:
the new connection takes the same session id and its subscriptions; any other
end of a connection ends the session, and its subscriptions are disabled with
the status Twitch gives them (listed by Get EventSub Subscriptions, never
delivered to again).

Every frame written to a session's sockets is recorded, in order, in
:attr:`Session.log` with a sequence number that increases across the whole
mock; a notification or revocation can be sent again unchanged (same
``message_id``), as Twitch's at-least-once delivery does.
"""

from __future__ import annotations

import asyncio
import collections
import json
import secrets
from collections.abc import Callable
from typing import Any

from yarl import URL

from .eventsub_messages import (
    CLOSE_STATUSES,
    keepalive_message,
    notification_message,
    reconnect_message,
    revocation_message,
    timestamp,
    welcome_message,
)
from .eventsub_records import Connection, Session, Subscription

__all__ = [
    "KEEPALIVE_CEILING",
    "KEEPALIVE_FLOOR",
    "MAX_SUBSCRIPTIONS_PER_TRANSPORT",
    "MAX_TOTAL_COST",
    "MAX_TRANSPORTS",
    "PING_INTERVAL",
    "RECONNECT_GRACE",
    "EventSubState",
    "ws_url",
]

KEEPALIVE_FLOOR = 10  # Twitch's bounds for keepalive_timeout_seconds
KEEPALIVE_CEILING = 600
RECONNECT_GRACE = 30.0  # seconds the old socket stays open after session_reconnect
# Twitch does not document how often it pings; the mock pings this often and
# closes with 4002 when the previous ping is still unanswered.
PING_INTERVAL = 10.0
MAX_TRANSPORTS = 3  # WebSocket connections with subscriptions per (client id, user)
MAX_SUBSCRIPTIONS_PER_TRANSPORT = 300
MAX_TOTAL_COST = 10

_RESENDABLE = 1000  # notifications and revocations kept per session for resending
_ENDED_KEPT = 1000  # disabled subscriptions kept for Get EventSub Subscriptions
_ENDED_SESSIONS_KEPT = 100  # ended sessions whose logs a test can still read


class EventSubState:
    """Every EventSub session and subscription, and the knobs a test turns.

    ``keepalive_floor`` (Twitch: 10) and ``reconnect_grace`` (Twitch: 30 s)
    can be lowered so tests run fast; ``ping_interval`` sets how often sockets
    are pinged. ``clock`` gives the time for timestamps (the mock's clock).
    """

    def __init__(self, clock: Callable[[], float],
                 names: Callable[[str], tuple[str, str]]) -> None:
        self.clock = clock
        self.names = names  # user id -> (login, display name), for event bodies
        self.keepalive_floor = KEEPALIVE_FLOOR
        self.reconnect_grace = RECONNECT_GRACE
        self.ping_interval = PING_INTERVAL
        self.max_total_cost = MAX_TOTAL_COST
        self.sessions: dict[str, Session] = {}
        self.ended_sessions: collections.OrderedDict[str, Session] = collections.OrderedDict()
        self.ended_subscriptions: collections.deque[Subscription] = collections.deque(
            maxlen=_ENDED_KEPT)
        self.sequence = 0  # of every frame sent, across sessions
        self.serial = 0  # of every notification, numbering sample events
        self._reconnects: dict[str, Session] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def now(self) -> str:
        """The current time as Twitch's EventSub timestamp."""
        return timestamp(self.clock())

    def keepalive_for(self, requested: int | None) -> int:
        """The keepalive a session gets: the requested one clamped to Twitch's bounds."""
        wanted = KEEPALIVE_FLOOR if requested is None else requested  # Twitch's default: 10
        return max(self.keepalive_floor, min(KEEPALIVE_CEILING, wanted))

    # -- sessions -----------------------------------------------------------

    async def open_session(self, conn: Connection, keepalive: int) -> Session:
        """A new session on ``conn``; sends its ``session_welcome``."""
        session = Session(id=secrets.token_urlsafe(24), keepalive=keepalive,
                          connected_at=self.now(), connection=conn)
        self.sessions[session.id] = session
        await self._welcome(session, conn)
        return session

    async def resume(self, reconnect_id: str, conn: Connection) -> Session | None:
        """Move a session to ``conn`` after a reconnect; None if the id is not valid (4007)."""
        session = self._reconnects.pop(reconnect_id, None)
        if session is None or session.ended:
            return None
        session.reconnect_id = None
        if session.connection is not None:
            session.retiring.append(session.connection)
        session.connection = conn
        await self._welcome(session, conn)
        return session

    async def _welcome(self, session: Session, conn: Connection) -> None:
        message = welcome_message(session.id, session.connected_at, session.keepalive,
                                  self.now())
        await self._write(session, conn, message)

    def find_session(self, session_id: str) -> Session | None:
        """A live session, or one of the last ended ones (for its log)."""
        return self.sessions.get(session_id) or self.ended_sessions.get(session_id)

    def bound_sessions(self, client_id: str, user_id: str) -> list[Session]:
        """The (client id, user)'s live sessions that hold subscriptions (its transports)."""
        return [session for session in self.sessions.values()
                if session.owner == (client_id, user_id) and session.subscriptions]

    def subscriptions_of(self, client_id: str, user_id: str) -> list[Subscription]:
        """The (client id, user)'s subscriptions: enabled ones first, then disabled ones."""
        enabled = [sub for session in self.sessions.values()
                   if session.owner == (client_id, user_id)
                   for sub in session.subscriptions.values()]
        ended = [sub for sub in self.ended_subscriptions
                 if (sub.client_id, sub.user_id) == (client_id, user_id)]
        return enabled + ended

    def connection_gone(self, session: Session, conn: Connection) -> None:
        """A connection's handler has finished: end the session unless it moved on."""
        code = conn.close_code if conn.close_code is not None else conn.ws.close_code
        self._settle(session, conn, code)

    async def close_connection(self, session: Session, conn: Connection, code: int) -> None:
        """Close one of the session's sockets with ``code``; the session's fate is settled
        first, so once the client sees the close the mock's state already shows it."""
        self._settle(session, conn, code)
        await conn.close(code)

    def _settle(self, session: Session, conn: Connection, code: int | None) -> None:
        if conn in session.retiring:
            session.retiring.remove(conn)
            return
        if session.connection is not conn:
            return
        if session.reconnect_id is not None:
            session.connection = None  # the reconnect grace decides
            return
        self.end_session(session, CLOSE_STATUSES.get(code or 0, "websocket_disconnected"))

    def end_session(self, session: Session, status: str) -> None:
        """The session is over: its subscriptions are disabled with ``status``."""
        if session.ended:
            return
        session.ended = True
        self.sessions.pop(session.id, None)
        self.ended_sessions[session.id] = session
        while len(self.ended_sessions) > _ENDED_SESSIONS_KEPT:
            self.ended_sessions.popitem(last=False)
        if session.reconnect_id is not None:
            self._reconnects.pop(session.reconnect_id, None)
        ended_at = self.now()
        for sub in session.subscriptions.values():
            sub.status, sub.disconnected_at = status, ended_at
            self.ended_subscriptions.append(sub)
        session.subscriptions.clear()

    # -- writing frames -----------------------------------------------------

    async def _write(self, session: Session, conn: Connection, message: dict[str, Any], *,
                     duplicate: bool = False) -> bool:
        """Send one frame on ``conn`` and record it in the session's log."""
        text = json.dumps(message)
        if not await conn.send_text(text):
            return False
        metadata = message["metadata"]
        self.sequence += 1
        entry: dict[str, Any] = {"sequence": self.sequence, **metadata, "duplicate": duplicate}
        if metadata["message_type"] in ("notification", "revocation"):
            entry["subscription_id"] = message["payload"]["subscription"]["id"]
            session.sent[metadata["message_id"]] = text
            while len(session.sent) > _RESENDABLE:
                session.sent.popitem(last=False)
        session.log.append(entry)
        return True

    async def deliver(self, session: Session, message: dict[str, Any]) -> bool:
        """Send a message on the session's current connection; False if nothing took it."""
        if session.connection is None:
            return False
        return await self._write(session, session.connection, message)

    async def notify(self, sub: Subscription, event: dict[str, Any]) -> dict[str, Any] | None:
        """A ``notification`` for an enabled ``sub``; its log entry, or None if not sent."""
        session = self.sessions.get(sub.session_id)
        if session is None or session.subscriptions.get(sub.id) is not sub:
            return None
        if not await self.deliver(session, notification_message(sub.helix(), event, self.now())):
            return None
        return session.log[-1]

    async def send_keepalive(self, session: Session) -> None:
        """A ``session_keepalive`` on the current connection."""
        await self.deliver(session, keepalive_message(self.now()))

    async def resend(self, session: Session, message_id: str | None = None) -> str | None:
        """Send a notification or revocation again, unchanged; the last one by default."""
        if not session.sent or session.connection is None:
            return None
        if message_id is None:
            message_id = next(reversed(session.sent))
        text = session.sent.get(message_id)
        if text is None:
            return None
        sent = await self._write(session, session.connection, json.loads(text), duplicate=True)
        return message_id if sent else None

    async def revoke(self, sub: Subscription, status: str) -> bool:
        """Revoke a subscription: it is disabled and a ``revocation`` says why."""
        session = self.sessions.get(sub.session_id)
        if session is None or session.subscriptions.pop(sub.id, None) is None:
            return False
        sub.status = status
        self.ended_subscriptions.append(sub)
        return await self.deliver(session, revocation_message(sub.helix(), self.now()))

    # -- reconnects and drops ----------------------------------------------

    async def reconnect(self, session: Session) -> str | None:
        """Send ``session_reconnect``; return the reconnect URL (None without a connection)."""
        conn = session.connection
        if conn is None or not conn.open:
            return None
        if session.reconnect_id is not None:
            self._reconnects.pop(session.reconnect_id, None)  # only the newest URL works
        reconnect_id = secrets.token_urlsafe(24)
        session.reconnect_id = reconnect_id
        self._reconnects[reconnect_id] = session
        url = str(conn.url.with_query(reconnect_id=reconnect_id))
        await self._write(session, conn,
                          reconnect_message(session.id, session.connected_at, url, self.now()))
        self._spawn(self._reconnect_grace(session, conn, reconnect_id))
        return url

    async def _reconnect_grace(self, session: Session, conn: Connection,
                               reconnect_id: str) -> None:
        """After the grace the old socket is closed with 4004; unused, the session ends."""
        await asyncio.sleep(self.reconnect_grace)
        if session.reconnect_id == reconnect_id:  # never reconnected
            session.reconnect_id = None
            self._reconnects.pop(reconnect_id, None)
        if session.connection is None or session.connection is conn:
            self.end_session(session, "websocket_disconnected")
        await conn.close(4004)

    async def drop(self, session: Session, code: int | None) -> None:
        """End the session by closing its sockets with ``code``, or (None) cutting them."""
        conns = session.connections()
        if code is None:
            self.end_session(session, "websocket_network_error")
            for conn in conns:
                conn.cut()
            return
        self.end_session(session, CLOSE_STATUSES.get(code, "websocket_disconnected"))
        for conn in conns:
            await conn.close(code)

    def _spawn(self, work: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close_all(self) -> None:
        """Close every socket (1001, going away) and stop the grace timers: the mock stops."""
        for task in list(self._tasks):
            task.cancel()
        for session in list(self.sessions.values()):
            for conn in session.connections():
                await conn.close(1001, "server shutting down")
            self.end_session(session, "websocket_disconnected")

    # -- what a test looks at ------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Open sockets per user, sessions with their subscriptions and costs, the knobs."""
        sockets_by_user: collections.Counter[str] = collections.Counter()
        unbound = 0
        sessions = []
        for session in self.sessions.values():
            open_sockets = len(session.connections())
            if session.owner is None:
                unbound += open_sockets
            else:
                sockets_by_user[session.owner[1]] += open_sockets
            subs = [sub.helix() for sub in session.subscriptions.values()]
            sessions.append({
                "id": session.id,
                "client_id": session.owner[0] if session.owner else None,
                "user_id": session.owner[1] if session.owner else None,
                "keepalive_timeout_seconds": session.keepalive,
                "connected_at": session.connected_at,
                "open_sockets": open_sockets,
                "reconnecting": session.reconnect_id is not None,
                "silent": any(conn.silent for conn in session.connections()),
                "subscriptions": subs,
                "total_cost": sum(sub["cost"] for sub in subs),
            })
        return {
            "open_sockets": sum(len(s.connections()) for s in self.sessions.values()),
            "open_sockets_by_user": dict(sockets_by_user),
            "unbound_sockets": unbound,
            "sessions": sessions,
            "disabled_subscriptions": [sub.helix() for sub in self.ended_subscriptions],
            "timing": {"keepalive_floor": self.keepalive_floor,
                       "reconnect_grace": self.reconnect_grace,
                       "ping_interval": self.ping_interval},
        }


def ws_url(base: URL) -> str:
    """The EventSub WebSocket URL of a mock served at ``base`` (``ws://host:port/ws``)."""
    scheme = "wss" if base.scheme == "https" else "ws"
    return str(base.with_scheme(scheme).with_path("/ws").with_query(None))
