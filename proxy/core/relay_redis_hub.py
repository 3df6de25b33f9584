"""Live events across every process on one Redis: one Twitch socket per grant, fanned out.

:class:`RedisRelay` offers what :class:`~proxy.core.relay.Relay` offers to
``GET /eventsub`` (attach, detach, aclose), for processes that share a Redis
(several workers, several dynos). Each process (its Redis bookkeeping in
:mod:`.relay_redis_lease`, the leader's side in :mod:`.relay_redis_leader`):

- counts its widgets' subscriptions per grant in the hash ``wants:<grant>``
  (field ``<process>|<key>``) and renews its heartbeat ``alive:<process>``
  every ``renew`` seconds, so the wants of a process that died are ignored
  (and removed) once its heartbeat expires;
- while it has widgets for a grant, tries to take the grant's lease
  (``SET NX PX lease``); the holder renews it with a compare-and-renew (a
  lease it lost is never renewed) and runs the grant's
  :class:`~proxy.core.relay_redis_leader.Leader`: one Twitch session whose
  subscriptions are the union of every live process's wants;
- reads every grant's pub/sub channel (one ``PSUBSCRIBE`` per process) and
  delivers each entry, encoded to an SSE frame once, to its own widgets that
  want it, at most once (entry ids only grow);
- answers a ``Last-Event-ID`` from the grant's stream, whichever process
  added it, or with a ``gap`` when the id is no longer there.

Failover: a leader that dies leaves its ``led`` mark behind; whoever takes
the lease after it lapses starts with a ``gap`` (Twitch does not replay what
it sent meanwhile). A leader that stops on purpose hands over: it releases
the lease, removes its mark and says so on the channel, so the next one
takes over at once and without a ``gap``. When the pub/sub connection fails,
each widget catches up from the stream once Redis answers again, or gets a
``gap`` if Redis lost it (a restart).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import redis.asyncio
import redis.exceptions

from .relay_catalog import SubscriptionKey
from .relay_redis import Entry, RelayKeys, key_token, stream_id
from .relay_redis_leader import Leader
from .relay_redis_lease import CONTROL_ID, Coordination
from .relay_services import EventSubConnection, RelaySettings, SubscriptionApi
from .relay_stream import Outbox, encode_frame

__all__ = ["RedisRelay"]

log = logging.getLogger(__name__)

_REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)

#: A stream entry as redis-py returns it: id and fields (bytes: the client does not decode).
_StreamEntry = Any


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _newest_id(client: redis.asyncio.Redis, stream: str) -> str | None:
    """The id of the stream's last entry (None: the stream is empty or gone)."""
    newest = cast("list[_StreamEntry]", await client.xrevrange(stream, count=1))
    return _text(newest[0][0]) if newest else None


@dataclass(eq=False)
class _Widget:
    tokens: frozenset[str]
    #: The id of the last entry it has (or that it was attached after).
    after: tuple[int, int] = (0, 0)
    live: bool = False
    held: list[tuple[tuple[int, int], str, Entry]] = field(default_factory=list)


@dataclass(eq=False)
class _Grant:
    grant_id: str
    user_id: str
    widgets: dict[Outbox, _Widget] = field(default_factory=dict)
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    leader: Leader | None = None
    busy: asyncio.Lock = field(default_factory=asyncio.Lock)


class RedisRelay:
    """Live events for the widgets of this process, coordinated through Redis."""

    def __init__(self, *, client: redis.asyncio.Redis, prefix: str, api: SubscriptionApi,
                 open_socket: Callable[[], EventSubConnection], login_url: str,
                 settings: RelaySettings, lease: float = 30.0, renew: float = 10.0) -> None:
        self.process_id = secrets.token_hex(8)
        self.settings = settings
        self._client = client
        self._keys = RelayKeys(f"{prefix}eventsub:")
        self._api = api
        self._open_socket = open_socket
        self._login_url = login_url
        self._coordination = Coordination(client, self._keys, self.process_id, lease=lease)
        self._renew = renew
        self._grants: dict[str, _Grant] = {}
        self._owners: dict[Outbox, _Grant] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False

    def start(self) -> None:
        """Start reading the channels and renewing leases (in the running loop)."""
        self._spawn(self._listen())
        self._spawn(self._tick())

    # -- widgets -----------------------------------------------------------------------

    def attach(self, grant_id: str, user_id: str, keys: Sequence[SubscriptionKey],
               last_event_id: str | None = None) -> Outbox:
        """A widget starts listening: its outbox, filled once it has caught up."""
        grant = self._grants.get(grant_id)
        if grant is None:
            grant = self._grants[grant_id] = _Grant(grant_id, user_id)
        outbox = Outbox(keys, limit=self.settings.outbox_limit)
        widget = _Widget(frozenset(key_token(key) for key in outbox.keys))
        grant.widgets[outbox] = widget
        grant.counts.update(widget.tokens)
        self._owners[outbox] = grant
        self._spawn(self._join(grant, outbox, widget, last_event_id))
        return outbox

    def detach(self, outbox: Outbox) -> None:
        """The widget's stream ended."""
        outbox.close("left")
        grant = self._owners.pop(outbox, None)
        if grant is None:
            return
        widget = grant.widgets.pop(outbox, None)
        if widget is not None:
            grant.counts.subtract(widget.tokens)
            if not self._closing:
                self._spawn(self._publish_wants(grant))

    async def _join(self, grant: _Grant, outbox: Outbox, widget: _Widget,
                    last_event_id: str | None) -> None:
        try:
            await self._publish_wants(grant)
            stream = self._keys.events(grant.grant_id)
            position = stream_id(last_event_id) if last_event_id else None
            if last_event_id and (position is None or not await self._resumable(
                    stream, last_event_id, position)):
                outbox.put(encode_frame("gap", {
                    "reason": "resume_unavailable",
                    "message": "Events since your Last-Event-ID are no longer kept; some "
                               "may have been missed."},
                    event_id=await _newest_id(self._client, stream)))
                position = None
            if position is not None:
                widget.after = position
                await self._replay(stream, grant, outbox, widget, last_event_id or "")
            # Otherwise it gets what was published since it was attached (held meanwhile).
        except _REDIS_ERRORS:
            outbox.put(encode_frame("gap", {
                "reason": "store_unavailable",
                "message": "The token store (Redis) is unreachable; events may be missed."}))
        widget.live = True
        held, widget.held = widget.held, []
        for position, event_id, entry in held:
            self._deliver(outbox, widget, position, event_id, entry)

    async def _resumable(self, stream: str, last_event_id: str,
                         position: tuple[int, int]) -> bool:
        """Whether ``last_event_id`` is still in the stream and young enough."""
        if time.time() * 1000 - position[0] > self.settings.buffer_age * 1000:
            return False
        return bool(await self._client.xrange(stream, min=last_event_id, max=last_event_id))

    async def _replay(self, stream: str, grant: _Grant, outbox: Outbox, widget: _Widget,
                      after: str) -> None:
        entries = cast("list[_StreamEntry]",
                       await self._client.xrange(stream, min="(" + after, max="+"))
        for raw_id, fields in entries:
            event_id = _text(raw_id)
            position = stream_id(event_id)
            if position is not None:
                self._deliver(outbox, widget, position, event_id,
                              Entry.decode(fields[b"m"]))

    def _deliver(self, outbox: Outbox, widget: _Widget, position: tuple[int, int],
                 event_id: str, entry: Entry, frame: bytes | None = None) -> None:
        if position <= widget.after or not entry.wanted_by(widget.tokens):
            return
        widget.after = position
        if entry.event == "end":
            outbox.close(str(entry.data.get("reason", "ended")))
            return
        outbox.put(frame or encode_frame(entry.event, entry.data, event_id=event_id))

    # -- the channels ------------------------------------------------------------------

    async def _listen(self) -> None:
        """Read every grant's channel; after a failure, catch up from the streams."""
        failed = False
        while not self._closing:
            pubsub = self._client.pubsub()
            try:
                await pubsub.psubscribe(self._keys.channel_pattern())
                if failed:
                    log.info("eventsub: Redis answers again; catching up")
                    for grant in list(self._grants.values()):
                        await self._catch_up(grant)
                    failed = False
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True,
                                                       timeout=1.0)
                    if message is not None:
                        self._on_message(_text(message["channel"]), _text(message["data"]))
            except _REDIS_ERRORS as exc:
                if not failed:
                    log.warning("eventsub: lost Redis pub/sub (%s); retrying",
                                type(exc).__name__)
                failed = True
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(*_REDIS_ERRORS):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _catch_up(self, grant: _Grant) -> None:
        """What the widgets missed while the channel was down, or a ``gap``."""
        stream = self._keys.events(grant.grant_id)
        for outbox, widget in list(grant.widgets.items()):
            if not widget.live:
                continue
            after = f"{widget.after[0]}-{widget.after[1]}"
            if widget.after == (0, 0) or await self._client.xrange(stream, min=after,
                                                                    max=after):
                await self._replay(stream, grant, outbox, widget, after)
            else:
                outbox.put(encode_frame("gap", {
                    "reason": "store_unavailable",
                    "message": "The token store (Redis) lost the recent events; some may "
                               "have been missed."},
                    event_id=await _newest_id(self._client, stream)))
        if grant.leader is not None or grant.widgets:
            await self._publish_wants(grant)

    def _on_message(self, channel: str, data: str) -> None:
        grant = self._grants.get(self._keys.grant_of_channel(channel))
        if grant is None:
            return
        event_id, _, text = data.partition(" ")
        entry = Entry.decode(text)
        if event_id == CONTROL_ID:
            if entry.event in ("wants", "handover"):
                self._spawn(self._lead_or_sync(grant))
            return
        position = stream_id(event_id)
        if position is None:
            return
        frame = encode_frame(entry.event, entry.data, event_id=event_id)  # once for all
        for outbox, widget in grant.widgets.items():
            if widget.live:
                self._deliver(outbox, widget, position, event_id, entry, frame)
            elif entry.wanted_by(widget.tokens):
                widget.held.append((position, event_id, entry))

    # -- wants and the lease -------------------------------------------------------------

    async def _publish_wants(self, grant: _Grant) -> None:
        """Write this process's wants for ``grant``, then have the leader (or us) act."""
        await self._coordination.write_wants(grant.grant_id, grant.counts)
        await self._lead_or_sync(grant)

    async def _lead_or_sync(self, grant: _Grant) -> None:
        """Lead ``grant`` if nobody does and we have widgets; as leader, follow the wants."""
        if self._closing:
            return
        async with grant.busy:
            if grant.leader is None:
                if not grant.widgets:
                    return
                taken, died = await self._coordination.take_lease(grant.grant_id)
                if not taken:
                    return
                grant.leader = self._new_leader(grant)
                log.info("eventsub grant=%s: this process leads its Twitch session%s",
                         grant.grant_id, " (the previous leader died)" if died else "")
                grant.leader.sync(await self._coordination.union(grant.grant_id))
                if died:
                    grant.leader.announce_gap(
                        "leader_lost", "The process holding the connection to Twitch "
                        "stopped; events until another took over were missed.")
            else:
                grant.leader.sync(await self._coordination.union(grant.grant_id))

    def _new_leader(self, grant: _Grant) -> Leader:
        return Leader(grant.grant_id, grant.user_id, client=self._client, keys=self._keys,
                      api=self._api, open_socket=self._open_socket, login_url=self._login_url,
                      settings=self.settings, on_idle=self._leader_idle)

    def _leader_idle(self, leader: Leader) -> None:
        grant = self._grants.get(leader.grant_id)
        if grant is not None and grant.leader is leader:
            self._spawn(self._step_down(grant, "idle"))

    async def _step_down(self, grant: _Grant, reason: str, *, lost: bool = False) -> None:
        """Close the session and release the lease and the mark.

        A lease that was ``lost`` (Redis forgot it, and another process took it)
        is not released; the new leader does not know events were missed while
        the session moved, so this one says so.
        """
        leader, grant.leader = grant.leader, None
        if leader is None:
            return
        if lost:
            leader.announce_gap("lease_lost", "The connection to Twitch moved to another "
                                "process; events in between may have been missed.")
        await leader.close(reason)
        if not lost:
            with contextlib.suppress(*_REDIS_ERRORS):
                await self._coordination.release_lease(grant.grant_id)
        log.info("eventsub grant=%s: this process no longer leads (%s)", grant.grant_id,
                 reason)

    async def _tick(self) -> None:
        """Every ``renew`` seconds: heartbeat, wants, leases (renewed or taken)."""
        while not self._closing:
            await asyncio.sleep(self._renew)
            for grant in list(self._grants.values()):
                try:
                    await self._renew_grant(grant)
                except _REDIS_ERRORS as exc:
                    log.warning("eventsub grant=%s: Redis unavailable (%s)", grant.grant_id,
                                type(exc).__name__)

    async def _renew_grant(self, grant: _Grant) -> None:
        if grant.leader is not None:
            if not await self._coordination.renew_lease(grant.grant_id):
                log.warning("eventsub grant=%s: lease lost to another process", grant.grant_id)
                await self._step_down(grant, "lease_lost", lost=True)
        if grant.widgets or grant.counts:
            await self._publish_wants(grant)
        elif grant.leader is None and self._grants.get(grant.grant_id) is grant:
            del self._grants[grant.grant_id]

    async def aclose(self) -> None:
        """End this process's streams; hand over the sessions it leads; forget its wants."""
        if self._closing:
            return
        self._closing = True
        for outbox in list(self._owners):
            outbox.close("shutdown")
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for grant in list(self._grants.values()):
            with contextlib.suppress(*_REDIS_ERRORS):
                await self._coordination.forget(grant.grant_id, list(grant.counts))
            await self._step_down(grant, "shutdown")
        with contextlib.suppress(*_REDIS_ERRORS):
            await self._coordination.stop()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, _REDIS_ERRORS):
            log.warning("eventsub: Redis unavailable (%s)", type(exc).__name__)
        elif exc is not None:
            log.error("eventsub: unexpected error", exc_info=exc)
