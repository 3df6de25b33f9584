"""One grant's live events: its EventSub sockets, shared subscriptions and widgets.

A :class:`GrantChannel` holds, for one grant:

- the widgets listening (each an :class:`~proxy.core.relay.stream.Outbox`) and
  the grant's :class:`~proxy.core.relay.stream.EventLog` (the resume buffer in
  one process; on Redis, the leader's log that publishes each event);
- the subscriptions they want, one entry per (type, version, condition) with
  the widgets that want it: the first widget creates it at Twitch, the last
  one to leave deletes it ``grace`` seconds later (a reloading widget does not
  cost a delete and a create);
- its EventSub sockets (:class:`~proxy.core.relay.sockets.SocketPool`): one,
  unless more than ``per_socket`` subscriptions need another (at most
  ``max_sockets``, Twitch's limit per user). A socket is opened when a
  subscription needs one and created on right after its welcome (Twitch
  closes an unused connection with 4003).

Twitch's limits are kept here before Twitch enforces them: a subscription that
would take the grant past ``max_total_cost`` or past the sockets' capacity is
refused with an ``error`` event to the widgets that asked, without a call.

When a socket's session ends and :class:`~proxy.upstream.eventsub.SessionEnded`
says to retry, the widgets of its subscriptions get a ``gap`` event (Twitch
does not replay what it sent meanwhile) and every subscription still wanted
is created again on a new socket, with backoff when sessions keep dying
young. A session that must not be retried gets its widgets an ``error`` and
ends their streams. A grant Twitch no longer accepts ends everything with a
``reauthorization_required`` event carrying the login URL. The
:class:`~proxy.core.relay.settings.RelayObserver` is told of messages,
deliveries, gaps and reconnects as they happen, and reads :meth:`GrantChannel.state`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from ...errors import ProxyError, ReauthorizationRequired
from ...upstream.eventsub import EventSubMessage, SessionEnded
from .catalog import SubscriptionKey, subscription_cost
from .settings import (
    ChannelState,
    EventSubConnection,
    NoObserver,
    RelayObserver,
    RelaySettings,
    SubscriptionApi,
)
from .sockets import SocketLink, SocketPool
from .stream import EventLog, Outbox, ResumeBuffer, encode_frame
from .subscriptions import SubscriptionRefused

__all__ = ["GrantChannel"]

log = logging.getLogger(__name__)

@dataclass(eq=False)
class _Wanted:
    """One shared subscription and the widgets that want it."""

    key: SubscriptionKey
    cost: int
    keyset: frozenset[SubscriptionKey]
    listeners: set[Outbox] = field(default_factory=set)
    link: SocketLink | None = None
    twitch_id: str | None = None
    task: asyncio.Task[None] | None = None
    release: asyncio.TimerHandle | None = None


def _subscription_fields(key: SubscriptionKey) -> dict[str, Any]:
    return {"subscription_type": key.type, "subscription_version": key.version,
            "condition": key.condition_dict()}


class GrantChannel:
    """One grant's sockets, subscriptions and widgets; see the module docstring."""

    def __init__(self, grant_id: str, user_id: str, *, api: SubscriptionApi,
                 open_socket: Callable[[], EventSubConnection], login_url: str,
                 settings: RelaySettings, on_idle: Callable[[GrantChannel], None],
                 observer: RelayObserver | None = None, log: EventLog | None = None) -> None:
        self.grant_id = grant_id
        self.user_id = user_id
        self.buffer: EventLog = log or ResumeBuffer(max_events=settings.buffer_events,
                                                    max_age=settings.buffer_age)
        self.outboxes: set[Outbox] = set()
        #: None while working; why it stopped once it did (a new channel takes over).
        self.ended: str | None = None
        self._api = api
        self._login_url = login_url
        self._settings = settings
        self._on_idle = on_idle
        self._observer = observer or NoObserver()
        self._wanted: dict[SubscriptionKey, _Wanted] = {}
        self._by_twitch_id: dict[str, _Wanted] = {}
        self._sockets = SocketPool(grant_id, open_socket, settings)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._idle: asyncio.TimerHandle | None = None

    # -- widgets ---------------------------------------------------------------------

    def join(self, outbox: Outbox, last_event_id: str | None) -> None:
        """Add a widget: replay what it missed (or say it cannot), then want its keys."""
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if last_event_id:
            missed = self.buffer.since(last_event_id)
            if missed is None:
                outbox.put(encode_frame("gap", {
                    "reason": "resume_unavailable",
                    "message": "Events since your Last-Event-ID are no longer kept; some "
                               "may have been missed."}, event_id=self.buffer.last_id))
                self._observer.gap_sent("resume_unavailable", 1)
            else:
                replayed = [event for event in missed if event.wanted_by(outbox.keys)]
                for event in replayed:
                    outbox.put(event.frame)
                self._observer.delivered(len(replayed))
        self.outboxes.add(outbox)
        for key in outbox.keys:
            self._want(key, outbox)

    def leave(self, outbox: Outbox) -> None:
        """Remove a widget; what nobody wants any more goes after the grace period."""
        self.outboxes.discard(outbox)
        outbox.close("left")
        loop = asyncio.get_running_loop()
        for key in outbox.keys:
            wanted = self._wanted.get(key)
            if wanted is not None:
                wanted.listeners.discard(outbox)
                if not wanted.listeners and wanted.release is None:
                    wanted.release = loop.call_later(self._settings.grace, self._release,
                                                     wanted)
        if not self.outboxes and self._idle is None and self.ended is None:
            self._idle = loop.call_later(self._settings.grace, self._on_idle, self)

    @property
    def subscriptions(self) -> dict[SubscriptionKey, str | None]:
        """Each shared subscription and its Twitch id (None while being created)."""
        return {key: wanted.twitch_id for key, wanted in self._wanted.items()}

    @property
    def sockets(self) -> int:
        """How many EventSub sockets are open."""
        return len(self._sockets)

    def state(self) -> ChannelState:
        """Sockets, subscriptions created at Twitch and their cost, widget streams."""
        created = [wanted for wanted in self._wanted.values() if wanted.twitch_id is not None]
        return ChannelState(self.grant_id, len(self._sockets), len(created),
                            sum(wanted.cost for wanted in created), len(self.outboxes))

    async def close(self, reason: str = "closed") -> None:
        """Stop: every widget's stream ends, every socket closes (its subscriptions die)."""
        self.ended = self.ended or reason
        if self._idle is not None:
            self._idle.cancel()
        for wanted in self._wanted.values():
            if wanted.release is not None:
                wanted.release.cancel()
        self._wanted.clear()
        self._by_twitch_id.clear()
        for outbox in list(self.outboxes):
            outbox.close(reason)
        tasks = [task for task in self._tasks if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        links = self._sockets.close_all()
        await asyncio.gather(*(link.socket.close() for link in links), *tasks,
                             return_exceptions=True)

    # -- subscriptions -----------------------------------------------------------------

    def _want(self, key: SubscriptionKey, outbox: Outbox) -> None:
        wanted = self._wanted.get(key)
        if wanted is None:
            refusal = self._over_limit(key)
            if refusal is not None:
                code, message = refusal
                outbox.put(encode_frame("error", {"error": code, "status": None,
                                                  "message": message,
                                                  **_subscription_fields(key)}))
                return
            wanted = _Wanted(key, subscription_cost(key, self.user_id), frozenset((key,)))
            self._wanted[key] = wanted
            wanted.task = self._spawn(self._subscribe(wanted))
        if wanted.release is not None:
            wanted.release.cancel()
            wanted.release = None
        wanted.listeners.add(outbox)

    def _over_limit(self, key: SubscriptionKey) -> tuple[str, str] | None:
        settings = self._settings
        cost = subscription_cost(key, self.user_id)
        total = sum(wanted.cost for wanted in self._wanted.values())
        if cost and total + cost > settings.max_total_cost:
            return ("cost_exceeded",
                    f"This subscription would take the grant's EventSub cost to "
                    f"{total + cost}, over Twitch's max_total_cost of "
                    f"{settings.max_total_cost} (events of other channels cost 1 each).")
        if len(self._wanted) >= settings.per_socket * settings.max_sockets:
            return ("subscription_limit",
                    f"The grant already has {len(self._wanted)} subscriptions, Twitch's limit "
                    f"({settings.max_sockets} sockets of {settings.per_socket}).")
        return None

    async def _subscribe(self, wanted: _Wanted) -> None:
        """Create ``wanted`` at Twitch on a socket with room; again if the socket dies first."""
        try:
            while self._wanted.get(wanted.key) is wanted and self.ended is None:
                link = await self._link_with_room(wanted)
                if link is None:
                    return
                link.keys.add(wanted.key)
                wanted.link = link
                try:
                    created = await self._api.create(self.grant_id, wanted.key, link.session_id)
                except (SubscriptionRefused, ProxyError) as exc:
                    if isinstance(exc, ReauthorizationRequired):
                        await self._needs_reauth(exc)
                        return
                    if link.dead:
                        continue  # the session died meanwhile: try on the next one
                    status = exc.status
                    self._refused(wanted, "twitch_refused" if isinstance(
                        exc, SubscriptionRefused) else exc.code, status, exc.message)
                    return
                if link.dead:
                    continue
                if self._wanted.get(wanted.key) is not wanted or self.ended is not None:
                    self._spawn(self._delete(created.id))  # nobody wants it any more
                    return
                wanted.twitch_id = created.id
                self._by_twitch_id[created.id] = wanted
                return
        finally:
            wanted.task = None

    async def _link_with_room(self, wanted: _Wanted) -> SocketLink | None:
        """A socket with room for one more subscription, connecting one if needed."""
        link, opened = await self._sockets.with_room(
            lambda: self._wanted.get(wanted.key) is wanted and self.ended is None)
        if opened:
            assert link is not None
            self._spawn(self._read(link))
        return link

    def _refused(self, wanted: _Wanted, code: str, status: int | None, message: str) -> None:
        """Tell the widgets that asked for ``wanted`` why it failed, and forget it."""
        frame = encode_frame("error", {"error": code, "status": status, "message": message,
                                       **_subscription_fields(wanted.key)})
        for outbox in wanted.listeners:
            outbox.put(frame)
        self._forget(wanted)

    def _forget(self, wanted: _Wanted) -> None:
        if self._wanted.get(wanted.key) is wanted:
            del self._wanted[wanted.key]
        if wanted.release is not None:
            wanted.release.cancel()
            wanted.release = None
        if wanted.twitch_id is not None:
            self._by_twitch_id.pop(wanted.twitch_id, None)
        if wanted.link is not None:
            wanted.link.keys.discard(wanted.key)

    def _release(self, wanted: _Wanted) -> None:
        """The grace period passed with nobody wanting ``wanted``: delete it at Twitch."""
        wanted.release = None
        if wanted.listeners or self._wanted.get(wanted.key) is not wanted:
            return
        link, twitch_id = wanted.link, wanted.twitch_id
        self._forget(wanted)
        if link is not None and not link.keys and not link.dead:
            self._spawn(self._sockets.close(link))  # its session dies, and its subscriptions
        elif twitch_id is not None:
            self._spawn(self._delete(twitch_id))

    async def _delete(self, twitch_id: str) -> None:
        try:
            await self._api.delete(self.grant_id, twitch_id)
        except (SubscriptionRefused, ProxyError) as exc:
            log.warning("eventsub grant=%s could not delete a subscription (%s)",
                        self.grant_id, exc)

    # -- what Twitch sends ---------------------------------------------------------------

    async def _read(self, link: SocketLink) -> None:
        try:
            async for message in link.socket.messages():
                self._on_message(message)
            ended = SessionEnded("closed", None, True, "the session ended")
        except SessionEnded as exc:
            ended = exc
        await self._link_ended(link, ended)

    def _on_message(self, message: EventSubMessage) -> None:
        wanted = self._by_twitch_id.get(str(message.subscription.get("id")))
        if wanted is None:
            return  # a subscription deleted a moment ago
        key = wanted.key
        if message.message_type == "notification":
            data = dict(message.event or {})
            data["subscription_type"] = key.type
            data["subscription_version"] = key.version
            frame = self.buffer.append(wanted.keyset, key.type, data).frame
        elif message.message_type == "revocation":
            frame = self.buffer.append(wanted.keyset, "revoked", {
                "status": message.subscription.get("status"), **_subscription_fields(key),
            }).frame
            self._forget(wanted)
        else:
            return
        for outbox in wanted.listeners:
            outbox.put(frame)
        self._observer.message_received(message.message_type)
        self._observer.delivered(len(wanted.listeners))

    async def _link_ended(self, link: SocketLink, ended: SessionEnded) -> None:
        if not await self._sockets.ended(link):
            return  # closed here on purpose
        lost = [wanted for key in link.keys
                if (wanted := self._wanted.get(key)) is not None and wanted.link is link]
        log.warning("eventsub grant=%s session %s ended (%s, close code %s); %d "
                    "subscription(s) %s", self.grant_id, link.session_id, ended.reason,
                    ended.close_code, len(lost), "to create again" if ended.retry else "lost")
        for wanted in lost:
            if wanted.twitch_id is not None:
                self._by_twitch_id.pop(wanted.twitch_id, None)
            wanted.twitch_id, wanted.link = None, None
        for wanted in [wanted for wanted in lost if not wanted.listeners]:
            self._forget(wanted)  # only waiting for its grace period to end: let it go
        lost = [wanted for wanted in lost if wanted.listeners]
        if not lost or self.ended is not None:
            return
        listeners = set().union(*(wanted.listeners for wanted in lost))
        if not ended.retry:
            message = f"Twitch ended the event session ({ended.reason}); reconnect later."
            for wanted in lost:
                self._refused(wanted, "session_ended", None, message)
            for outbox in listeners:
                outbox.close("session_ended")
            return
        frame = self.buffer.append(frozenset(wanted.key for wanted in lost), "gap", {
            "reason": ended.reason, "close_code": ended.close_code,
            "subscription_types": sorted({wanted.key.name for wanted in lost}),
            "message": "The connection to Twitch was lost and is being restored; events "
                       "in between were missed.",
        }).frame
        for outbox in listeners:
            outbox.put(frame)
        self._observer.gap_sent("session_lost", len(listeners))
        self._observer.reconnected(ended.key)
        for wanted in lost:
            if wanted.task is None:
                wanted.task = self._spawn(self._subscribe(wanted))

    async def _needs_reauth(self, exc: ReauthorizationRequired) -> None:
        if self.ended is not None:
            return
        login_url = str(exc.extra.get("login_url") or self._login_url)
        frame = self.buffer.append(None, "reauthorization_required", {
            "login_url": login_url, "message": exc.message}).frame
        for outbox in self.outboxes:
            outbox.put(frame)
        log.warning("eventsub grant=%s needs a new login; its event session stops",
                    self.grant_id)
        await self.close("reauthorization_required")

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("eventsub grant=%s: unexpected error", self.grant_id,
                      exc_info=task.exception())
