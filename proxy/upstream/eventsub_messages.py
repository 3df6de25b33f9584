"""What Twitch's EventSub WebSocket says, as data: its frames, its close codes, its end.

Twitch's EventSub WebSocket reference defines every frame as JSON
``{"metadata": {"message_id", "message_type", "message_timestamp", ...},
"payload": {...}}``. This module parses those frames (:func:`parse_frame`,
:func:`parse_session`), classifies the close codes 4000-4007 into the next
step a caller should take (:func:`session_closed`), remembers recent message
ids so that an at-least-once resend is delivered once (:class:`RecentIds`),
and holds the types callers see: :class:`EventSubMessage` (a notification or
a revocation), :class:`SessionEnded` (the session is over) and
:class:`EventSubStats` (the counters a socket keeps).

Nothing here does I/O; :mod:`proxy.upstream.eventsub` owns the sockets.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CLOSE_CODES",
    "CloseCode",
    "EventSubMessage",
    "EventSubStats",
    "Frame",
    "MalformedFrame",
    "RecentIds",
    "SessionEnded",
    "SessionInfo",
    "parse_frame",
    "parse_session",
    "session_closed",
]


@dataclass(frozen=True, slots=True)
class EventSubMessage:
    """A ``notification`` or a ``revocation`` Twitch delivered on the session.

    ``subscription`` is Twitch's ``payload.subscription`` (id, type, version,
    status, condition, ...); ``event`` is ``payload.event`` for a
    notification and None for a revocation (whose ``subscription.status``
    says why: ``authorization_revoked``, ``user_removed``, ``version_removed``).
    """

    message_id: str
    message_type: str
    message_timestamp: str
    subscription: dict[str, Any]
    event: dict[str, Any] | None


class SessionEnded(Exception):
    """The Twitch session is over; its subscriptions are gone (Twitch does not replay).

    ``reason`` is one of ``"keepalive_timeout"`` (no frame for longer than the
    keepalive timeout), ``"closed"`` (Twitch closed with ``close_code``),
    ``"network"`` (the connection broke, or closed without one of Twitch's
    codes), ``"reconnect_failed"`` (a ``session_reconnect`` could not be
    followed) or ``"connect_failed"`` (no welcome: refused, timed out, or
    closed before it; ``close_code`` is set if Twitch sent one).

    ``retry`` says whether connecting again to the base URL, with backoff, and
    creating the subscriptions again is the right next step. The message says
    what the close code means and what to do; it never holds a URL or token.
    """

    def __init__(self, reason: str, close_code: int | None, retry: bool, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.close_code = close_code
        self.retry = retry

    @property
    def key(self) -> str:
        """``reason``, with the close code when there is one (``"closed_4005"``): a label."""
        return self.reason if self.close_code is None else f"{self.reason}_{self.close_code}"

    def __repr__(self) -> str:
        return (f"SessionEnded(reason={self.reason!r}, close_code={self.close_code!r}, "
                f"retry={self.retry!r})")


@dataclass(frozen=True, slots=True)
class CloseCode:
    """What one of Twitch's close codes means and what to do next."""

    name: str
    retry: bool
    advice: str


#: Twitch's close codes (EventSub WebSocket reference, "Close message").
#: Every one ends the session and its subscriptions; where retry is True the
#: next step is a new connection to the base URL (never the reconnect URL)
#: with backoff, and the subscriptions created again.
CLOSE_CODES: dict[int, CloseCode] = {
    4000: CloseCode("internal server error", True,
                    "a problem on Twitch's side: reconnect with backoff and resubscribe"),
    # Twitch closes on any data frame from the client; this client sends none,
    # so 4001 means a bug here (or something between us and Twitch).
    4001: CloseCode("client sent inbound traffic", True,
                    "Twitch saw a data frame from this client, which is a bug here: "
                    "reconnect and resubscribe"),
    4002: CloseCode("client failed ping-pong", True,
                    "a ping went unanswered (the reader stalled or the network did): "
                    "reconnect with backoff and resubscribe"),
    # Only the caller knows whether subscriptions are still wanted: a
    # connection nobody subscribes on is closed again after the welcome's
    # keepalive window, so reconnecting without subscribing loops.
    4003: CloseCode("connection unused", True,
                    "no subscription was created within the welcome's keepalive window: "
                    "connect again only if subscriptions are still wanted, and create them "
                    "right after the welcome"),
    4004: CloseCode("reconnect grace time expired", True,
                    "a session_reconnect was not completed within 30 seconds: "
                    "reconnect with backoff and resubscribe"),
    4005: CloseCode("network timeout", True,
                    "a transient network timeout: reconnect with backoff and resubscribe"),
    4006: CloseCode("network error", True,
                    "a transient network error: reconnect with backoff and resubscribe"),
    # The reconnect URL was refused: start over on the base URL, not on any
    # reconnect URL seen before.
    4007: CloseCode("invalid reconnect", True,
                    "the reconnect URL was refused: make a fresh connection to the base URL "
                    "and resubscribe"),
}


def session_closed(reason: str, close_code: int | None, *, context: str = "") -> SessionEnded:
    """The :class:`SessionEnded` for a socket that closed with ``close_code``.

    One of Twitch's codes is classified by :data:`CLOSE_CODES`; any other
    close (none, 1000, 1006, ...) is a network loss, worth a retry, and its
    code is only told in the message.
    """
    known = CLOSE_CODES.get(close_code) if close_code is not None else None
    prefix = f"{context}: " if context else ""
    if known is None:
        code_text = f" (close code {close_code})" if close_code is not None else ""
        reason = "network" if reason == "closed" else reason
        return SessionEnded(
            reason, None, True,
            f"{prefix}the connection to Twitch was lost{code_text}: "
            "reconnect with backoff and resubscribe")
    return SessionEnded(reason, close_code, known.retry,
                        f"{prefix}Twitch closed the session with {close_code} "
                        f"({known.name}): {known.advice}")


class MalformedFrame(ValueError):
    """A frame that is not Twitch's ``{"metadata": ..., "payload": ...}`` JSON."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One parsed frame: its metadata and its payload object."""

    message_id: str
    message_type: str
    message_timestamp: str
    payload: dict[str, Any]

    def to_message(self) -> EventSubMessage:
        """The :class:`EventSubMessage` of a notification or revocation frame."""
        subscription = self.payload.get("subscription")
        if not isinstance(subscription, dict):
            raise MalformedFrame(f"{self.message_type} without payload.subscription")
        event = self.payload.get("event") if self.message_type == "notification" else None
        if self.message_type == "notification" and not isinstance(event, dict):
            raise MalformedFrame("notification without payload.event")
        return EventSubMessage(self.message_id, self.message_type, self.message_timestamp,
                               subscription, event)


def parse_frame(text: str) -> Frame:
    """Parse a text frame, or raise :class:`MalformedFrame` (which never quotes it)."""
    try:
        data = json.loads(text)
    except ValueError:
        raise MalformedFrame("a frame that is not JSON") from None
    metadata = data.get("metadata") if isinstance(data, dict) else None
    if not isinstance(metadata, dict):
        raise MalformedFrame("a frame without metadata")
    message_id = metadata.get("message_id")
    message_type = metadata.get("message_type")
    if not isinstance(message_id, str) or not message_id or not isinstance(message_type, str):
        raise MalformedFrame("a frame without message_id or message_type")
    timestamp = metadata.get("message_timestamp")
    payload = data.get("payload")
    return Frame(message_id, message_type, timestamp if isinstance(timestamp, str) else "",
                 payload if isinstance(payload, dict) else {})


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """``payload.session`` of a ``session_welcome`` or ``session_reconnect``."""

    id: str
    status: str
    keepalive_timeout_seconds: int | None
    reconnect_url: str | None


def parse_session(frame: Frame) -> SessionInfo:
    """The session a welcome or reconnect frame describes."""
    session = frame.payload.get("session")
    if not isinstance(session, dict) or not isinstance(session.get("id"), str):
        raise MalformedFrame(f"{frame.message_type} without payload.session.id")
    keepalive = session.get("keepalive_timeout_seconds")
    if isinstance(keepalive, bool) or not isinstance(keepalive, int) or keepalive <= 0:
        keepalive = None
    reconnect_url = session.get("reconnect_url")
    status = session.get("status")
    return SessionInfo(session["id"], status if isinstance(status, str) else "", keepalive,
                       reconnect_url if isinstance(reconnect_url, str) and reconnect_url
                       else None)


class RecentIds:
    """The last ``capacity`` message ids seen, oldest forgotten first.

    Twitch delivers at least once and a resend keeps its ``message_id``;
    resends come soon after the original, so a bounded memory suffices.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        self._ids: dict[str, None] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, message_id: str) -> bool:
        """Remember ``message_id``; False if it was already remembered."""
        if message_id in self._ids:
            return False
        self._ids[message_id] = None
        if len(self._ids) > self._capacity:
            del self._ids[next(iter(self._ids))]
        return True


@dataclass(slots=True)
class EventSubStats:
    """An :class:`~proxy.upstream.eventsub.EventSubSocket`'s counters, for metrics to read.

    ``reconnects`` is keyed by why: ``"session_reconnect"`` for a reconnect
    Twitch asked for (followed inside the session), else the reason the
    previous session ended (``"keepalive_timeout"``, ``"closed_4005"``,
    ``"network"``, ...) when the same socket is connected again.
    ``sessions_ended`` uses the same keys for every :class:`SessionEnded`.
    """

    connects: int = 0
    reconnects: Counter[str] = field(default_factory=Counter)
    sessions_ended: Counter[str] = field(default_factory=Counter)
    messages_delivered: int = 0
    duplicates_dropped: int = 0
    malformed_frames: int = 0
