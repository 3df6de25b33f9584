"""What a grant's channel is handed: its settings and the two services it reaches Twitch by.

:class:`EventSubConnection` is what :class:`~proxy.upstream.eventsub.EventSubSocket`
offers (one session with Twitch's EventSub WebSocket), :class:`SubscriptionApi`
what :class:`~proxy.core.relay.subscriptions.HelixSubscriptions` offers (creating and
deleting subscriptions through Helix). Both are protocols so that the channel
takes whatever it is given and never builds a service itself. A
:class:`RelayObserver` (the app's :class:`~proxy.telemetry.eventsub_metrics.EventSubMetrics`)
is told what happens, and reads each channel's :class:`ChannelState` when scraped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from ...upstream.eventsub import EventSubMessage
from .catalog import SubscriptionKey
from .subscriptions import CreatedSubscription

__all__ = ["GAP_CAUSES", "ChannelState", "EventSubConnection", "NoObserver", "RelayObserver",
           "RelaySettings", "SubscriptionApi", "gap_cause"]


class EventSubConnection(Protocol):
    """What the channel needs of a socket (:class:`~proxy.upstream.eventsub.EventSubSocket`)."""

    async def connect(self) -> str: ...

    def messages(self) -> AsyncIterator[EventSubMessage]: ...

    async def close(self) -> None: ...


class SubscriptionApi(Protocol):
    """What the channel needs of Twitch's subscriptions API (:mod:`.subscriptions`)."""

    async def create(self, grant_id: str, key: SubscriptionKey,
                     session_id: str) -> CreatedSubscription: ...

    async def delete(self, grant_id: str, subscription_id: str) -> None: ...


@dataclass(frozen=True, slots=True)
class RelaySettings:
    """The relay's knobs; defaults are Twitch's limits and the documented behaviour."""

    grace: float = 60.0
    buffer_events: int = 200
    buffer_age: float = 600.0
    per_socket: int = 300
    max_sockets: int = 3
    max_total_cost: int = 10
    outbox_limit: int = 1000
    backoff_initial: float = 0.5
    backoff_max: float = 30.0


@dataclass(frozen=True, slots=True)
class ChannelState:
    """One grant's channel as the metrics show it (subscriptions Twitch created)."""

    grant_id: str
    sockets: int
    subscriptions: int
    cost: int
    streams: int


class RelayObserver(Protocol):
    """What the relay tells whoever measures it; the hooks are called where things happen."""

    def watch(self, read: Callable[[], Iterable[ChannelState]]) -> None:
        """Read every open channel's state with ``read`` whenever it is asked for."""

    def message_received(self, message_type: str) -> None:
        """A notification or revocation arrived from Twitch."""

    def delivered(self, deliveries: int) -> None:
        """``deliveries`` event frames were queued to widget streams."""

    def reconnected(self, reason: str) -> None:
        """A session ended (``SessionEnded.key``) and a new one will be opened."""

    def gap_sent(self, cause: str, streams: int) -> None:
        """A ``gap`` event went to ``streams`` widget streams."""


#: Why widgets were sent a ``gap``, as counted: a Twitch session lost (whatever ended it), a
#: ``Last-Event-ID`` no longer kept, Redis unreachable, or the leading process gone.
GAP_CAUSES = ("session_lost", "resume_unavailable", "store_unavailable", "leader_lost")


def gap_cause(reason: str) -> str:
    """The counted cause (one of :data:`GAP_CAUSES`) of a ``gap`` event's ``reason``."""
    if reason in GAP_CAUSES:
        return reason
    return "leader_lost" if reason == "lease_lost" else "session_lost"


class NoObserver:
    """A :class:`RelayObserver` that measures nothing (the relay's default)."""

    def watch(self, read: Callable[[], Iterable[ChannelState]]) -> None:
        """Nothing is read."""

    def message_received(self, message_type: str) -> None:
        """Not counted."""

    def delivered(self, deliveries: int) -> None:
        """Not counted."""

    def reconnected(self, reason: str) -> None:
        """Not counted."""

    def gap_sent(self, cause: str, streams: int) -> None:
        """Not counted."""
