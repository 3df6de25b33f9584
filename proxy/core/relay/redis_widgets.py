"""One widget's place in its grant's Redis stream: what it has, and what it still needs.

A :class:`WidgetCursor` follows one widget stream of
:class:`~proxy.core.relay.redis_hub.RedisRelay`. Entry ids only grow, so the
cursor keeps the id of the last entry the widget got and never hands it an
entry twice, whether the entry arrives through pub/sub or is read back from
the stream (a ``Last-Event-ID`` resume, a catch-up after the pub/sub
connection failed). While it joins, what pub/sub brings is held, then
delivered after what the stream replayed. An id the stream no longer has
(trimmed, too old, or lost in a Redis restart) is answered with a ``gap``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, cast

import redis.asyncio

from .backend import REDIS_ERRORS, Entry, stream_id, text_of
from .stream import Outbox, encode_frame

__all__ = ["WidgetCursor", "newest_id"]

Position = tuple[int, int]


async def newest_id(client: redis.asyncio.Redis, stream: str) -> str | None:
    """The id of the stream's last entry (None: the stream is empty or gone)."""
    newest = cast("list[Any]", await client.xrevrange(stream, count=1))
    return text_of(newest[0][0]) if newest else None


@dataclass(eq=False)
class WidgetCursor:
    """One widget stream and the last entry it got; see the module docstring."""

    outbox: Outbox
    tokens: frozenset[str]
    after: Position = (0, 0)
    live: bool = False
    held: list[tuple[Position, str, Entry]] = field(default_factory=list)

    def offer(self, position: Position, event_id: str, entry: Entry,
              frame: bytes | None = None) -> bool:
        """An entry from pub/sub (``frame``: its SSE frame, encoded once for every widget).

        True if it was queued to the widget now (not held, skipped or ignored).
        """
        if self.live:
            return self.deliver(position, event_id, entry, frame)
        if entry.wanted_by(self.tokens):
            self.held.append((position, event_id, entry))
        return False

    def deliver(self, position: Position, event_id: str, entry: Entry,
                frame: bytes | None = None, *, resuming: bool = False) -> bool:
        """Queue ``entry`` unless the widget has it or does not want it; True if queued.

        ``resuming``: the entry is older than this stream (a ``Last-Event-ID`` replay). An
        ``end`` among those ended an earlier stream, not this one: the grant was checked
        when this stream opened (a new login may have come since).
        """
        if position <= self.after or not entry.wanted_by(self.tokens):
            return False
        self.after = position
        if entry.event == "end":
            if not resuming:
                self.outbox.close(str(entry.data.get("reason", "ended")))
            return False
        self.outbox.put(frame or encode_frame(entry.event, entry.data, event_id=event_id))
        return True

    async def join(self, client: redis.asyncio.Redis, stream: str, last_event_id: str | None,
                   *, max_age: float) -> tuple[int, str | None]:
        """Replay from ``last_event_id`` (or say it cannot), then go live.

        Returns how many entries it delivered and the reason of the ``gap`` it
        was sent, if it was sent one.
        """
        delivered = 0
        gap: str | None = None
        try:
            position = stream_id(last_event_id) if last_event_id else None
            kept = position is not None and (
                time.time() * 1000 - position[0] <= max_age * 1000
                and await client.xrange(stream, min=f"{position[0]}-{position[1]}",
                                        max=f"{position[0]}-{position[1]}"))
            if last_event_id and not kept:
                self.outbox.put(encode_frame("gap", {
                    "reason": "resume_unavailable",
                    "message": "Events since your Last-Event-ID are no longer kept; some "
                               "may have been missed."},
                    event_id=await newest_id(client, stream)))
                gap, position = "resume_unavailable", None
            if position is not None:
                self.after = position
                delivered += await self.replay(client, stream, resuming=True)
            # Otherwise it gets what was published since it was attached (held meanwhile).
        except REDIS_ERRORS:
            gap = "store_unavailable"
            self.outbox.put(encode_frame("gap", {
                "reason": "store_unavailable",
                "message": "The token store (Redis) is unreachable; events may be missed."}))
        self.live = True
        held, self.held = self.held, []
        for position, event_id, entry in held:
            delivered += self.deliver(position, event_id, entry)
        return delivered, gap

    async def replay(self, client: redis.asyncio.Redis, stream: str, *,
                     resuming: bool = False) -> int:
        """Deliver the stream's entries after the last one the widget got; how many."""
        delivered = 0
        after = f"{self.after[0]}-{self.after[1]}"
        entries = cast("list[Any]", await client.xrange(stream, min="(" + after, max="+"))
        for raw_id, fields in entries:
            event_id = text_of(raw_id)
            position = stream_id(event_id)
            if position is not None:
                delivered += self.deliver(position, event_id, Entry.decode(fields[b"m"]),
                                          resuming=resuming)
        return delivered

    async def catch_up(self, client: redis.asyncio.Redis, stream: str) -> int | None:
        """After pub/sub failed: how many entries the widget missed and got, or None
        and a ``gap`` if Redis lost them."""
        if not self.live:
            return 0  # its join reads the stream itself
        after = f"{self.after[0]}-{self.after[1]}"
        if self.after == (0, 0) or await client.xrange(stream, min=after, max=after):
            return await self.replay(client, stream)
        self.outbox.put(encode_frame("gap", {
            "reason": "store_unavailable",
            "message": "The token store (Redis) lost the recent events; some may have been "
                       "missed."}, event_id=await newest_id(client, stream)))
        return None
