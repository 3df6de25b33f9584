"""What a grant's channel is handed: its settings and the two services it reaches Twitch by.

:class:`EventSubConnection` is what :class:`~proxy.upstream.eventsub.EventSubSocket`
offers (one session with Twitch's EventSub WebSocket), :class:`SubscriptionApi`
what :class:`~proxy.core.relay_twitch.HelixSubscriptions` offers (creating and
deleting subscriptions through Helix). Both are protocols so that the channel
takes whatever it is given and never builds a service itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from ..upstream.eventsub import EventSubMessage
from .relay_catalog import SubscriptionKey
from .relay_twitch import CreatedSubscription

__all__ = ["EventSubConnection", "RelaySettings", "SubscriptionApi"]


class EventSubConnection(Protocol):
    """What the channel needs of a socket (:class:`~proxy.upstream.eventsub.EventSubSocket`)."""

    async def connect(self) -> str: ...

    def messages(self) -> AsyncIterator[EventSubMessage]: ...

    async def close(self) -> None: ...


class SubscriptionApi(Protocol):
    """What the channel needs of Twitch's subscriptions API (:mod:`.relay_twitch`)."""

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
