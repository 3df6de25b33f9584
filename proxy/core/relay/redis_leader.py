"""The leader's side of a grant on Redis: one Twitch session, its events published once.

The process holding a grant's lease runs a :class:`Leader`: the same
:class:`~proxy.core.relay.channel.GrantChannel` as the one-process relay, but
its "widgets" are one :class:`_WantOutbox` per subscription that some widget on
some process wants (the union of the wants in Redis), and its buffer is a
:class:`_PublishingBuffer`. Whatever the channel would hand its widgets
(events, ``gap``, ``revoked``, ``error``, ``reauthorization_required``) is
added to the grant's stream and published on its channel, in the order the
channel produced it, by one publisher task; streams the channel ends
(``session_ended``, ``reauthorization_required``) become ``end`` messages.

When Redis fails, what could not be published is dropped, and a ``gap``
takes its place as soon as Redis answers again.

A leader taking over from one that is stopping (a hand-over) starts
``holding``: its session and the old one overlap, and Twitch sends the events
of that moment to both. It keeps its own entries back and notes the
:func:`fingerprint` of every entry the old leader publishes meanwhile; once
the old leader says it stepped down, it publishes what it kept except what
the old one already did (:meth:`Leader.release`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis.asyncio

from .backend import REDIS_ERRORS, Entry, RelayKeys, key_token
from .catalog import SubscriptionKey
from .channel import GrantChannel
from .settings import (
    ChannelState,
    EventSubConnection,
    NoObserver,
    RelayObserver,
    RelaySettings,
    SubscriptionApi,
)
from .stream import BufferedEvent, Outbox

__all__ = ["Leader", "fingerprint"]

log = logging.getLogger(__name__)

# KEYS[1] = stream, KEYS[2] = channel; ARGV = max length, message, ms to keep
# the stream after its last entry. One atomic step, so the stream's order is
# the channel's order.
_ADD_AND_PUBLISH = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'm', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PUBLISH', KEYS[2], id .. ' ' .. ARGV[2])
return id
"""

#: Streams the channel ends for these reasons end on every process too.
_ENDING = frozenset(("session_ended", "reauthorization_required"))
#: Seconds between attempts to reach Redis again.
_RETRY = 0.5


def fingerprint(entry: Entry) -> str:
    """What makes two copies of one Twitch event equal across two sessions."""
    return json.dumps([entry.event, entry.data], sort_keys=True, separators=(",", ":"))


#: Queued to end holding, behind what was queued before it.
_RELEASE = Entry("release", {}, None)


class _PublishingBuffer:
    """Stands in for the channel's resume buffer: queues each event for publishing."""

    def __init__(self, queue: asyncio.Queue[Entry]) -> None:
        self._queue = queue
        self._seq = 0

    @property
    def last_id(self) -> str:
        return ""

    def append(self, keys: frozenset[SubscriptionKey] | None, event: str,
               data: dict[str, Any]) -> BufferedEvent:
        self._seq += 1
        self._queue.put_nowait(Entry.of(event, data, keys))
        # An empty frame: the want-outboxes know it is published already.
        return BufferedEvent(self._seq, time.monotonic(), keys, b"")

    def since(self, last_event_id: str) -> list[BufferedEvent] | None:
        return None  # widgets resume from the Redis stream, never from the leader


class _WantOutbox(Outbox):
    """One subscription some widget somewhere wants, as the channel's listener."""

    __slots__ = ("_leader", "key")

    def __init__(self, key: SubscriptionKey, leader: Leader) -> None:
        super().__init__((key,))
        self.key = key
        self._leader = leader

    def put(self, frame: bytes) -> None:
        if frame:  # a frame for the askers only (a refusal): publish it to them
            event, data = _parse_frame(frame)
            self._leader.queue.put_nowait(Entry.of(event, data, (self.key,)))

    def close(self, reason: str) -> None:
        if not self.closed and reason in _ENDING:
            self._leader.queue.put_nowait(Entry("end", {"reason": reason},
                                                frozenset((key_token(self.key),))))
        super().close(reason)


class _SessionObserver(NoObserver):
    """The leader's channel reports what Twitch sent and its reconnects, nothing more.

    Its "widgets" are want-outboxes: deliveries and gaps are counted by each
    process for its own widget streams instead.
    """

    def __init__(self, observer: RelayObserver) -> None:
        self._observer = observer

    def message_received(self, message_type: str) -> None:
        self._observer.message_received(message_type)

    def reconnected(self, reason: str) -> None:
        self._observer.reconnected(reason)


def _parse_frame(frame: bytes) -> tuple[str, dict[str, Any]]:
    """The event name and data of a frame :func:`~.stream.encode_frame` made."""
    event, data = "message", "{}"
    for line in frame.decode().split("\n"):
        if line.startswith("event: "):
            event = line[len("event: "):]
        elif line.startswith("data: "):
            data = line[len("data: "):]
    return event, dict(json.loads(data))


class Leader:
    """A grant's Twitch session while this process holds its lease."""

    def __init__(self, grant_id: str, user_id: str, *, client: redis.asyncio.Redis,
                 keys: RelayKeys, api: SubscriptionApi,
                 open_socket: Callable[[], EventSubConnection], login_url: str,
                 settings: RelaySettings, on_idle: Callable[[Leader], None],
                 holding: bool = False, observer: RelayObserver | None = None) -> None:
        self.grant_id = grant_id
        self.queue: asyncio.Queue[Entry] = asyncio.Queue()
        #: Taking over from a leader still connected: see the module docstring.
        self.holding = holding
        #: Fingerprints of what the old leader published while this one held.
        self.seen: set[str] = set()
        #: Set when the old leader says it stepped down.
        self.predecessor_gone = asyncio.Event()
        self._held: list[Entry] = []
        self._client = client
        self._keys = keys
        self._settings = settings
        self._wants: dict[SubscriptionKey, _WantOutbox] = {}
        self.channel = GrantChannel(grant_id, user_id, api=api, open_socket=open_socket,
                                    login_url=login_url, settings=settings,
                                    on_idle=lambda _: on_idle(self),
                                    observer=_SessionObserver(observer or NoObserver()),
                                    log=_PublishingBuffer(self.queue))
        self._add_and_publish = client.register_script(_ADD_AND_PUBLISH)
        self._publisher = asyncio.ensure_future(self._publish())

    @property
    def wanted(self) -> frozenset[SubscriptionKey]:
        return frozenset(self._wants)

    def state(self, streams: int) -> ChannelState:
        """The session's sockets, subscriptions and cost, with this process's streams."""
        state = self.channel.state()
        return ChannelState(self.grant_id, state.sockets, state.subscriptions, state.cost,
                            streams)

    def subscribed(self) -> bool:
        """Whether Twitch has created every subscription wanted (the session is ready)."""
        subscriptions = self.channel.subscriptions
        return bool(subscriptions) and all(twitch_id is not None
                                           for twitch_id in subscriptions.values())

    def release(self) -> None:
        """Stop holding: publish what was kept, but what the old leader published."""
        if self.holding:
            self.queue.put_nowait(_RELEASE)

    def announce_gap(self, reason: str, message: str) -> None:
        """Tell every widget of the grant that events were missed (a leader died)."""
        if self._wants:
            self.queue.put_nowait(Entry.of("gap", {
                "reason": reason, "close_code": None,
                "subscription_types": sorted({key.name for key in self._wants}),
                "message": message}, self._wants))

    def sync(self, wanted: Iterable[SubscriptionKey]) -> None:
        """Make the session's subscriptions the union every process wants."""
        wanted = set(wanted)
        for key in wanted - set(self._wants):
            outbox = _WantOutbox(key, self)
            self._wants[key] = outbox
            self.channel.join(outbox, None)
        for key in set(self._wants) - wanted:
            self.channel.leave(self._wants.pop(key))

    async def close(self, reason: str) -> None:
        """Close the session; what is queued (or held) is still published (briefly)."""
        self.release()
        await self.channel.close(reason)
        try:
            async with asyncio.timeout(2.0):
                await self.queue.join()
        except TimeoutError:
            pass
        self._publisher.cancel()
        await asyncio.gather(self._publisher, return_exceptions=True)

    async def _publish(self) -> None:
        """Publish queued entries in order (see :meth:`_publish_or_gap`)."""
        while True:
            entry = await self.queue.get()
            try:
                if entry is _RELEASE:
                    held, self._held, self.holding = self._held, [], False
                    for kept in held:
                        if fingerprint(kept) not in self.seen:
                            await self._publish_or_gap(kept)
                    self.seen.clear()
                elif self.holding:
                    self._held.append(entry)
                else:
                    await self._publish_or_gap(entry)
            finally:
                self.queue.task_done()

    async def _publish_or_gap(self, entry: Entry) -> None:
        """Publish ``entry``; if Redis fails, a ``gap`` in its place once Redis answers.

        The entry is not sent again: its ``XADD`` may have run before the
        connection broke, and a widget must never get an event twice.
        """
        try:
            await self._add(entry)
            return
        except REDIS_ERRORS as exc:
            log.warning("eventsub grant=%s: Redis unavailable, events are being missed (%s)",
                        self.grant_id, type(exc).__name__)
        gap = Entry("gap", {
            "reason": "store_unavailable", "close_code": None,
            "subscription_types": sorted({key.name for key in self._wants}),
            "message": "The token store (Redis) was unreachable; events in between were "
                       "missed."}, None)
        while True:
            await asyncio.sleep(_RETRY)
            try:
                await self._add(gap)
            except REDIS_ERRORS:
                continue
            log.info("eventsub grant=%s: Redis answers again; widgets were told what they "
                     "missed", self.grant_id)
            return

    async def _add(self, entry: Entry) -> None:
        """Add ``entry`` to the grant's stream and publish it (one script)."""
        settings = self._settings
        await self._add_and_publish(
            keys=[self._keys.events(self.grant_id), self._keys.channel(self.grant_id)],
            args=[settings.buffer_events, entry.encode(),
                  max(1, int(settings.buffer_age * 1000))])
