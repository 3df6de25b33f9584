"""Live events across every process on one Redis: one Twitch socket per grant, fanned out.

:class:`RedisRelay` offers what :class:`~proxy.core.relay.local.Relay` offers to
``GET /eventsub`` (attach, detach, aclose), for processes that share a Redis
(several workers, several dynos). Each process (its Redis bookkeeping in
:mod:`.redis_lease`, the leader's side in :mod:`.redis_leader`):

- counts its widgets' subscriptions per grant in the hash ``wants:<grant>``
  (field ``<process>|<key>``) and renews its heartbeat ``alive:<process>``
  every ``renew`` seconds, so the wants of a process that died are ignored
  (and removed) once its heartbeat expires;
- while it has widgets for a grant, tries to take the grant's lease
  (``SET NX PX lease``); the holder renews it with a compare-and-renew (a
  lease it lost is never renewed) and runs the grant's
  :class:`~proxy.core.relay.redis_leader.Leader`: one Twitch session whose
  subscriptions are the union of every live process's wants;
- reads every grant's pub/sub channel (one ``PSUBSCRIBE`` per process) and
  delivers each entry, encoded to an SSE frame once, to its own widgets that
  want it, at most once (entry ids only grow);
- answers a ``Last-Event-ID`` from the grant's stream, whichever process
  added it, or with a ``gap`` when the id is no longer there.

Failover: a leader that dies leaves its ``led`` mark behind; whoever takes
the lease after it lapses starts with a ``gap`` (Twitch does not replay what
it sent meanwhile). A leader that stops on purpose (SIGTERM) hands over:
it releases the lease and removes its mark, keeps its session open until the
next leader says its own is subscribed, then closes it and says so; the next
leader publishes what only it received (see :mod:`.redis_leader`), so
nothing is lost or doubled. When the pub/sub connection fails, each widget
catches up from the stream once Redis answers again, or gets a ``gap`` if
Redis lost it (a restart).

Every process reads every grant's channel (one pattern subscription), even
grants it has no widget for: simple, and cheap for one streamer's proxy; a
per-grant ``SUBSCRIBE`` would scale to many streamers.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import secrets
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio

from .backend import REDIS_ERRORS, Entry, RelayKeys, key_token, stream_id, text_of
from .catalog import SubscriptionKey
from .redis_leader import Leader, fingerprint
from .redis_lease import CONTROL_ID, Coordination
from .redis_widgets import WidgetCursor
from .settings import (
    ChannelState,
    EventSubConnection,
    NoObserver,
    RelayObserver,
    RelaySettings,
    SubscriptionApi,
    gap_cause,
)
from .stream import Outbox, encode_frame

__all__ = ["RedisRelay"]

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Grant:
    grant_id: str
    user_id: str
    widgets: dict[Outbox, WidgetCursor] = field(default_factory=dict)
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    leader: Leader | None = None
    busy: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: Wants are written one at a time: two writes on two connections land in either
    #: order, and an older count landing last kept a subscription nobody wanted.
    writing: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: While handing the grant over: set when the next leader's session is ready.
    successor_ready: asyncio.Event | None = None


class RedisRelay:
    """Live events for the widgets of this process, coordinated through Redis."""

    def __init__(self, *, client: redis.asyncio.Redis, prefix: str, api: SubscriptionApi,
                 open_socket: Callable[[], EventSubConnection], login_url: str,
                 settings: RelaySettings, lease: float = 30.0, renew: float = 10.0,
                 observer: RelayObserver | None = None) -> None:
        self.process_id = secrets.token_hex(8)
        self.settings = settings
        self._client = client
        self._keys = RelayKeys(f"{prefix}eventsub:")
        self._api = api
        self._open_socket = open_socket
        self._login_url = login_url
        self._coordination = Coordination(client, self._keys, self.process_id, lease=lease)
        self._renew = renew
        #: The longest a hand-over waits for the next leader (then it just stops).
        self._handover_wait = min(5.0, lease)
        self._grants: dict[str, _Grant] = {}
        self._owners: dict[Outbox, _Grant] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._observer = observer or NoObserver()
        self._observer.watch(self.state)

    def state(self) -> list[ChannelState]:
        """Each grant with streams here: the session if this process leads it, the streams."""
        return [grant.leader.state(len(grant.widgets)) if grant.leader is not None
                else ChannelState(grant.grant_id, 0, 0, 0, len(grant.widgets))
                for grant in self._grants.values()]

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
        widget = WidgetCursor(outbox, frozenset(key_token(key) for key in outbox.keys))
        grant.widgets[outbox] = widget
        grant.counts.update(widget.tokens)
        self._owners[outbox] = grant
        self._spawn(self._join(grant, widget, last_event_id))
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

    async def _join(self, grant: _Grant, widget: WidgetCursor,
                    last_event_id: str | None) -> None:
        try:
            await self._publish_wants(grant)
        finally:
            delivered, gap = await widget.join(self._client,
                                               self._keys.events(grant.grant_id),
                                               last_event_id, max_age=self.settings.buffer_age)
            self._observer.delivered(delivered)
            if gap is not None:
                self._observer.gap_sent(gap_cause(gap), 1)

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
                        self._on_message(text_of(message["channel"]), text_of(message["data"]))
            except REDIS_ERRORS as exc:
                if not failed:
                    log.warning("eventsub: lost Redis pub/sub (%s); retrying",
                                type(exc).__name__)
                failed = True
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(*REDIS_ERRORS):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _catch_up(self, grant: _Grant) -> None:
        """What the widgets missed while the channel was down, or a ``gap``."""
        stream = self._keys.events(grant.grant_id)
        for widget in list(grant.widgets.values()):
            delivered = await widget.catch_up(self._client, stream)
            if delivered is None:
                self._observer.gap_sent("store_unavailable", 1)
            else:
                self._observer.delivered(delivered)
        if grant.leader is not None or grant.widgets:
            await self._publish_wants(grant)

    def _on_message(self, channel: str, data: str) -> None:
        grant = self._grants.get(self._keys.grant_of_channel(channel))
        if grant is None:
            return
        event_id, _, text = data.partition(" ")
        entry = Entry.decode(text)
        if event_id == CONTROL_ID:
            self._on_control(grant, entry.event)
            return
        position = stream_id(event_id)
        if position is None:
            return
        if grant.leader is not None and grant.leader.holding:
            grant.leader.seen.add(fingerprint(entry))  # the old leader published it
        frame = encode_frame(entry.event, entry.data, event_id=event_id)  # once for all
        streams = sum(widget.offer(position, event_id, entry, frame)
                      for widget in grant.widgets.values())
        if entry.event == "gap":
            self._observer.gap_sent(gap_cause(str(entry.data.get("reason"))), streams)
        elif streams:
            self._observer.delivered(streams)

    def _on_control(self, grant: _Grant, word: str) -> None:
        if word == "wants":
            self._spawn(self._lead_or_sync(grant))
        elif word == "handover":
            self._spawn(self._lead_or_sync(grant, handover=True))
        elif word == "released":
            self._spawn(self._lead_or_sync(grant))
        elif word == "ready" and grant.successor_ready is not None:
            grant.successor_ready.set()
        elif word == "stepped_down" and grant.leader is not None:
            grant.leader.predecessor_gone.set()

    # -- wants and the lease -------------------------------------------------------------

    async def _publish_wants(self, grant: _Grant) -> None:
        """Write this process's wants for ``grant``, then have the leader (or us) act."""
        async with grant.writing:
            await self._coordination.write_wants(grant.grant_id, grant.counts)
        await self._lead_or_sync(grant)

    async def _lead_or_sync(self, grant: _Grant, *, handover: bool = False) -> None:
        """Lead ``grant`` if nobody does and we have widgets; as leader, follow the wants.

        After a ``handover`` the new session overlaps the old one (see
        :meth:`_take_over`).
        """
        if self._closing:
            return
        async with grant.busy:
            if grant.leader is not None and grant.leader.channel.ended is not None:
                # It stopped for good (a grant needing a login): the next widget starts over.
                await self._step_down(grant, grant.leader.channel.ended)
            if grant.leader is None:
                if not grant.widgets:
                    return
                taken, died = await self._coordination.take_lease(grant.grant_id)
                if not taken:
                    return
                grant.leader = self._new_leader(grant, holding=handover and not died)
                if grant.leader.holding:
                    self._spawn(self._take_over(grant, grant.leader))
                log.info("eventsub grant=%s: this process leads its Twitch session%s",
                         grant.grant_id, " (the previous leader died)" if died else "")
                grant.leader.sync(await self._coordination.union(grant.grant_id))
                if died:
                    grant.leader.announce_gap(
                        "leader_lost", "The process holding the connection to Twitch "
                        "stopped; events until another took over were missed.")
            else:
                grant.leader.sync(await self._coordination.union(grant.grant_id))

    def _new_leader(self, grant: _Grant, *, holding: bool) -> Leader:
        return Leader(grant.grant_id, grant.user_id, client=self._client, keys=self._keys,
                      api=self._api, open_socket=self._open_socket, login_url=self._login_url,
                      settings=self.settings, on_idle=self._leader_idle, holding=holding,
                      observer=self._observer)

    async def _take_over(self, grant: _Grant, leader: Leader) -> None:
        """A hand-over: say when our session is ready, publish once the old one is gone."""
        try:
            async with asyncio.timeout(self._handover_wait):
                # The channel has no hook for "every subscription created": poll it.
                while not leader.subscribed():  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
            await self._coordination.control(grant.grant_id, "ready")
            async with asyncio.timeout(self._handover_wait):
                await leader.predecessor_gone.wait()
        except TimeoutError:
            log.warning("eventsub grant=%s: the hand-over did not complete in time",
                        grant.grant_id)
        finally:
            leader.release()

    async def _hand_over(self, grant: _Grant) -> None:
        """Stopping: let another process with widgets connect before our session closes."""
        leader = grant.leader
        if leader is None:
            return
        grant.successor_ready = ready = asyncio.Event()
        try:
            if not await self._coordination.union(grant.grant_id):
                await self._step_down(grant, "shutdown")  # nobody else needs it
                return
            await self._coordination.release_lease(grant.grant_id)
            async with asyncio.timeout(self._handover_wait):
                await ready.wait()
        except (TimeoutError, *REDIS_ERRORS):
            log.warning("eventsub grant=%s: no process took the session over in time",
                        grant.grant_id)
        grant.leader = None
        await leader.close("shutdown")
        log.info("eventsub grant=%s: this process no longer leads (shutdown, handed over)",
                 grant.grant_id)
        with contextlib.suppress(*REDIS_ERRORS):
            await self._coordination.control(grant.grant_id, "stepped_down")

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
            with contextlib.suppress(*REDIS_ERRORS):
                await self._coordination.release_lease(grant.grant_id, word="released")
        log.info("eventsub grant=%s: this process no longer leads (%s)", grant.grant_id,
                 reason)

    async def _tick(self) -> None:
        """Every ``renew`` seconds: heartbeat, wants, leases (renewed or taken)."""
        while not self._closing:
            await asyncio.sleep(self._renew)
            for grant in list(self._grants.values()):
                try:
                    await self._renew_grant(grant)
                except REDIS_ERRORS as exc:
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
        grants = list(self._grants.values())
        for grant in grants:
            with contextlib.suppress(*REDIS_ERRORS):
                await self._coordination.forget(grant.grant_id, list(grant.counts))
        # The channels are still read meanwhile: the next leader says when it is ready.
        await asyncio.gather(*(self._hand_over(grant) for grant in grants))
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(*REDIS_ERRORS):
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
        if isinstance(exc, REDIS_ERRORS):
            log.warning("eventsub: Redis unavailable (%s)", type(exc).__name__)
        elif exc is not None:
            log.error("eventsub: unexpected error", exc_info=exc)
