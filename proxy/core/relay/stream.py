"""What widgets receive: Server-Sent Events frames encoded once, the resume buffer, outboxes.

Every event is encoded to bytes once (:func:`encode_frame`) and the same bytes
object is handed to every widget that wants it: fanning out costs a deque
append per widget, not a JSON dump. Each widget has an :class:`Outbox` that its
stream handler drains, writing whatever has piled up in one write.

A grant's events are numbered in a :class:`ResumeBuffer` that keeps the last
``max_events`` of them for at most ``max_age`` seconds. Event ids read
``<epoch>-<seq>``: the epoch is random per buffer, so an id from another
buffer (an earlier process, a grant's channel that was closed and opened
again) is recognised as unknown instead of being mistaken for a position in
this one. :meth:`ResumeBuffer.since` answers a ``Last-Event-ID`` with the
events after it, or None when some of them are gone (the widget gets a typed
``gap`` event instead of a silent hole).
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from .catalog import SubscriptionKey

__all__ = ["BufferedEvent", "EventLog", "Outbox", "ResumeBuffer", "encode_frame"]


def encode_frame(event: str, data: dict[str, Any], *, event_id: str | None = None,
                 retry_ms: int | None = None) -> bytes:
    """One SSE frame: ``id``, ``event``, a single ``data`` line (JSON has no line breaks)."""
    parts = []
    if event_id is not None:
        parts.append(f"id: {event_id}\n")
    parts.append(f"event: {event}\n")
    if retry_ms is not None:
        parts.append(f"retry: {retry_ms}\n")
    parts.append("data: ")
    parts.append(json.dumps(data, separators=(",", ":"), ensure_ascii=False))
    parts.append("\n\n")
    return "".join(parts).encode()


@dataclass(frozen=True, slots=True)
class BufferedEvent:
    """One numbered event of a grant, as every widget gets it."""

    seq: int
    at: float
    #: The subscriptions it concerns; None for every widget of the grant.
    keys: frozenset[SubscriptionKey] | None
    frame: bytes

    def wanted_by(self, keys: frozenset[SubscriptionKey]) -> bool:
        """Whether a widget subscribed to ``keys`` gets this event."""
        return self.keys is None or not self.keys.isdisjoint(keys)


#: An event id's sequence: ASCII digits only (``str.isdigit`` also takes ``²`` and ``١``).
_SEQUENCE = re.compile(r"[0-9]{1,18}")


class EventLog(Protocol):
    """Where a grant's channel records what it sends: :class:`ResumeBuffer` in one process;
    on Redis, the leader's log that publishes each event instead."""

    @property
    def last_id(self) -> str: ...

    def append(self, keys: frozenset[SubscriptionKey] | None, event: str,
               data: dict[str, Any]) -> BufferedEvent: ...

    def since(self, last_event_id: str) -> list[BufferedEvent] | None: ...


class ResumeBuffer:
    """The last events of one grant, for ``Last-Event-ID``; see the module docstring."""

    def __init__(self, *, max_events: int = 200, max_age: float = 600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.epoch = secrets.token_hex(4)
        self._max_events = max(0, max_events)
        self._max_age = max_age
        self._clock = clock
        self._events: collections.deque[BufferedEvent] = collections.deque()
        self._seq = 0
        #: The highest sequence number no longer kept (0: nothing dropped yet).
        self._dropped_upto = 0

    @property
    def last_id(self) -> str:
        """The id of the newest event (``<epoch>-0`` before the first)."""
        return f"{self.epoch}-{self._seq}"

    def append(self, keys: frozenset[SubscriptionKey] | None, event: str,
               data: dict[str, Any]) -> BufferedEvent:
        """Number, encode and keep one event; returns it with its frame."""
        self._seq += 1
        now = self._clock()
        buffered = BufferedEvent(self._seq, now, keys,
                                 encode_frame(event, data, event_id=f"{self.epoch}-{self._seq}"))
        self._events.append(buffered)
        self._prune(now)
        return buffered

    def since(self, last_event_id: str) -> list[BufferedEvent] | None:
        """The events after ``last_event_id``; None if it is not this buffer's or too old."""
        epoch, _, seq_text = last_event_id.strip().partition("-")
        if epoch != self.epoch or not _SEQUENCE.fullmatch(seq_text):
            return None
        seq = int(seq_text)
        if seq > self._seq:
            return None
        self._prune(self._clock())
        if seq < self._dropped_upto:
            return None
        return [event for event in self._events if event.seq > seq]

    def _prune(self, now: float) -> None:
        events = self._events
        while events and (len(events) > self._max_events or now - events[0].at > self._max_age):
            self._dropped_upto = events.popleft().seq


class Outbox:
    """One widget's queue of frames, drained by its stream handler.

    ``put`` never blocks the relay: a widget that lets more than ``limit``
    frames pile up (a stalled connection) is closed, and may resume with its
    ``Last-Event-ID``.
    """

    __slots__ = ("_frames", "_limit", "_waiter", "closed", "keys", "reason")

    def __init__(self, keys: Iterable[SubscriptionKey], *, limit: int = 1000) -> None:
        self.keys = frozenset(keys)
        self._frames: collections.deque[bytes] = collections.deque()
        self._limit = limit
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.reason: str | None = None

    def put(self, frame: bytes) -> None:
        """Queue ``frame`` (shared bytes, never copied)."""
        if self.closed:
            return
        self._frames.append(frame)
        if len(self._frames) > self._limit:
            self._frames.clear()
            self.close("too_slow")
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self, reason: str) -> None:
        """End the stream once what is queued has been written."""
        if self.closed:
            return
        self.closed = True
        self.reason = reason
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pending(self) -> int:
        """How many frames wait to be written."""
        return len(self._frames)

    async def take(self) -> bytes | None:
        """Everything queued, as one bytes object; None once closed and drained."""
        while not self._frames:
            if self.closed:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        frames = self._frames
        if len(frames) == 1:
            return frames.popleft()
        joined = b"".join(frames)
        frames.clear()
        return joined
