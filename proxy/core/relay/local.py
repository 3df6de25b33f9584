"""The live-events relay: one EventSub session per grant, fanned out to every widget.

Widgets (alert boxes, goal bars, chat overlays) ask the relay for EventSub
subscriptions instead of each opening its own WebSocket to Twitch, which
would count against Twitch's per-user limits (3 sockets, ``max_total_cost``
10, 300 subscriptions a socket) and need every widget to handle reconnects,
keepalives and token refreshes. :class:`Relay` keeps one
:class:`~proxy.core.relay.channel.GrantChannel` per grant, opened when the
first widget of that grant attaches and closed ``grace`` seconds after the
last one leaves; the channel shares subscriptions among widgets and talks to
Twitch (see :mod:`proxy.core.relay.channel`).

The pieces, one module each:

- :mod:`.catalog`: the subscription types a widget may ask for, their
  conditions (defaulting to the grant's user) and Twitch's cost rule;
- :mod:`.stream`: frames encoded once, the resume buffer, outboxes;
- :mod:`.subscriptions`: creating and deleting subscriptions through Helix
  with the grant's token (refreshed as for ``/helix``);
- :mod:`.channel`: one grant's subscriptions and widgets;
- :mod:`.sockets`: one grant's EventSub sockets, opened with backoff;
- :mod:`.settings`: the settings, the service protocols it is handed
  and the observer that measures it.

The relay is handed its services (the subscriptions API, a factory of
EventSub sockets) and never reads an application; ``proxy.web.routes.eventsub``
turns HTTP requests into :meth:`Relay.attach` and :meth:`Relay.detach`.
Each widget stream's start and end is logged (at DEBUG; at INFO when the
relay ended it: too slow, the session ended, a new login needed, shutdown).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from .catalog import SubscriptionKey
from .channel import GrantChannel
from .settings import (
    ChannelState,
    EventSubConnection,
    RelayObserver,
    RelaySettings,
    SubscriptionApi,
)
from .stream import Outbox

__all__ = ["Relay", "RelaySettings"]

log = logging.getLogger(__name__)

#: Why a widget's stream ended when the widget itself went: not worth an INFO line.
_WIDGET_WENT = frozenset(("left", "disconnected"))


class Relay:
    """Every grant's :class:`GrantChannel`, created on demand; see the module docstring."""

    def __init__(self, *, api: SubscriptionApi, open_socket: Callable[[], EventSubConnection],
                 login_url: str, settings: RelaySettings | None = None,
                 observer: RelayObserver | None = None) -> None:
        self._api = api
        self._open_socket = open_socket
        self._login_url = login_url
        self.settings = settings or RelaySettings()
        self._channels: dict[str, GrantChannel] = {}
        self._owners: dict[Outbox, GrantChannel] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._observer = observer
        if observer is not None:
            observer.watch(self.state)

    def attach(self, grant_id: str, user_id: str, keys: Sequence[SubscriptionKey],
               last_event_id: str | None = None) -> Outbox:
        """A widget of ``grant_id`` starts listening to ``keys``: its outbox.

        What it missed since ``last_event_id`` is queued first (or a ``gap``
        event when that is no longer known); subscriptions nobody had yet are
        created in the background, and their refusals arrive as ``error`` events.
        """
        channel = self._channels.get(grant_id)
        if channel is None or channel.ended is not None:
            channel = GrantChannel(grant_id, user_id, api=self._api,
                                   open_socket=self._open_socket, login_url=self._login_url,
                                   settings=self.settings, on_idle=self._idle,
                                   observer=self._observer)
            self._channels[grant_id] = channel
        outbox = Outbox(keys, limit=self.settings.outbox_limit)
        self._owners[outbox] = channel
        channel.join(outbox, last_event_id)
        log.debug("eventsub grant=%s widget stream started (%s; %d stream(s))", grant_id,
                  ", ".join(sorted(key.name for key in outbox.keys)), len(channel.outboxes))
        return outbox

    def detach(self, outbox: Outbox) -> None:
        """The widget's stream ended (it left, or the relay ended it)."""
        channel = self._owners.pop(outbox, None)
        if channel is None:
            outbox.close("left")
            return
        reason = outbox.reason or "left"
        channel.leave(outbox)
        log.log(logging.DEBUG if reason in _WIDGET_WENT else logging.INFO,
                "eventsub grant=%s widget stream ended (%s; %d stream(s) left)",
                channel.grant_id, reason, len(channel.outboxes))
        if channel.ended is not None and not channel.outboxes \
                and self._channels.get(channel.grant_id) is channel:
            del self._channels[channel.grant_id]

    def channel(self, grant_id: str) -> GrantChannel | None:
        """The grant's channel, if one is open (for status and tests)."""
        return self._channels.get(grant_id)

    def __len__(self) -> int:
        return len(self._channels)

    def state(self) -> list[ChannelState]:
        """Every open channel's state, for the metrics."""
        return [channel.state() for channel in self._channels.values()]

    async def aclose(self) -> None:
        """Close every channel: widgets' streams end, sockets close."""
        channels = list(self._channels.values())
        self._channels.clear()
        await asyncio.gather(*(channel.close("shutdown") for channel in channels),
                             *self._closing, return_exceptions=True)

    def _idle(self, channel: GrantChannel) -> None:
        """A channel's grace period passed without widgets: close it."""
        if self._channels.get(channel.grant_id) is channel:
            del self._channels[channel.grant_id]
        log.info("eventsub grant=%s: no widget for the grace period; closing",
                 channel.grant_id)
        task = asyncio.ensure_future(channel.close("idle"))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
