"""The records of the mock's EventSub: subscriptions, connections and sessions.

:class:`Subscription` renders itself in Twitch's shape; :class:`Connection`
wraps one accepted WebSocket (write a frame, close with a code, cut the TCP
connection); :class:`Session` is what a session id stands for, across the
connections a ``session_reconnect`` moves it over.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .eventsub_messages import CLOSE_REASONS

__all__ = ["LOG_LENGTH", "Connection", "Session", "Subscription"]

LOG_LENGTH = 5000  # frames remembered per session (keepalives included)


@dataclass
class Subscription:
    """One WebSocket subscription, as Create EventSub Subscription made it."""

    id: str
    type: str
    version: str
    condition: dict[str, str]
    session_id: str
    client_id: str
    user_id: str
    cost: int
    created_at: str
    connected_at: str
    status: str = "enabled"
    disconnected_at: str | None = None

    def helix(self) -> dict[str, Any]:
        """The subscription in Twitch's shape (Helix bodies and message payloads)."""
        transport: dict[str, Any] = {"method": "websocket", "session_id": self.session_id,
                                     "connected_at": self.connected_at}
        if self.disconnected_at is not None:
            transport["disconnected_at"] = self.disconnected_at
        return {"id": self.id, "status": self.status, "type": self.type,
                "version": self.version, "condition": dict(self.condition),
                "created_at": self.created_at, "transport": transport, "cost": self.cost}


class Connection:
    """One accepted WebSocket: the response to write to and the TCP transport under it."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        self.ws = ws
        self._transport = request.transport
        # Where a reconnect_url points: this endpoint as the client reached it.
        scheme = "wss" if request.secure else "ws"
        self.url = request.url.with_scheme(scheme).with_query(None)
        self.last_sent = asyncio.get_running_loop().time()
        self.awaiting_pong = False
        self.silent = False  # a dead link: nothing is written, not even pings
        self.close_code: int | None = None

    @property
    def open(self) -> bool:
        """Whether frames can still be written."""
        return not self.ws.closed and self.close_code is None

    async def send_text(self, text: str) -> bool:
        """Write one text frame; False when the socket is closed or silenced."""
        if not self.open or self.silent:
            return False
        try:
            await self.ws.send_str(text)
        except ConnectionError:
            return False
        self.last_sent = asyncio.get_running_loop().time()
        return True

    async def close(self, code: int, reason: str | None = None) -> None:
        """Close with ``code`` (the reason defaults to Twitch's for that code)."""
        if self.close_code is not None or self.ws.closed:
            return
        self.close_code = code
        message = (reason if reason is not None else CLOSE_REASONS.get(code, "")).encode()
        with contextlib.suppress(ConnectionError):
            await self.ws.close(code=code, message=message)

    def cut(self) -> None:
        """Drop the TCP connection without a close frame, as a network failure would."""
        self.close_code = 4006
        if self._transport is not None:
            self._transport.abort()


@dataclass
class Session:
    """One EventSub session: its id, its connection(s), subscriptions and sent frames."""

    id: str
    keepalive: int
    connected_at: str
    connection: Connection | None
    # Set by the first subscription: the (client id, user id) whose session this is.
    owner: tuple[str, str] | None = None
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    ever_subscribed: bool = False
    # Connections replaced by a reconnect, open until the client or the grace closes them.
    retiring: list[Connection] = field(default_factory=list)
    reconnect_id: str | None = None
    ended: bool = False
    log: collections.deque[dict[str, Any]] = field(
        default_factory=lambda: collections.deque(maxlen=LOG_LENGTH))
    sent: collections.OrderedDict[str, str] = field(default_factory=collections.OrderedDict)

    def connections(self) -> list[Connection]:
        """Every open connection of the session (the current one first)."""
        current = [self.connection] if self.connection is not None else []
        return [conn for conn in current + self.retiring if conn.open]
