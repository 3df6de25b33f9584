"""A grant's EventSub sockets: one opened when a subscription needs room, with backoff.

A :class:`SocketPool` holds one grant's :class:`SocketLink` objects (an
EventSub session and the subscriptions placed on it). :meth:`SocketPool.with_room`
answers a socket with room for one more subscription (Twitch allows
``per_socket`` on each), connecting a new one when none has room; connections
are made one at a time. When sessions keep dying young the next connection
waits, with exponential backoff and jitter (``backoff_initial`` doubling up to
``backoff_max``); a session that lived :data:`HEALTHY_SESSION` seconds resets
the backoff. The channel (:mod:`proxy.core.relay.channel`) decides what the
sockets carry; this module only opens and closes them.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ...upstream.eventsub import SessionEnded
from .catalog import SubscriptionKey
from .settings import EventSubConnection, RelaySettings

__all__ = ["HEALTHY_SESSION", "SocketLink", "SocketPool"]

log = logging.getLogger("proxy.core.relay.channel")

#: A session that lived this long before it died was healthy: backoff starts over.
HEALTHY_SESSION = 60.0


@dataclass(eq=False)
class SocketLink:
    """One EventSub socket and the subscriptions placed on it."""

    socket: EventSubConnection
    session_id: str
    opened_at: float
    keys: set[SubscriptionKey] = field(default_factory=set)
    dead: bool = False


class SocketPool:
    """One grant's EventSub sockets; see the module docstring."""

    def __init__(self, grant_id: str, open_socket: Callable[[], EventSubConnection],
                 settings: RelaySettings) -> None:
        self.grant_id = grant_id
        self.links: list[SocketLink] = []
        self._open_socket = open_socket
        self._settings = settings
        self._connecting = asyncio.Lock()
        self._drops = 0

    def __len__(self) -> int:
        return len(self.links)

    async def with_room(self, still_wanted: Callable[[], bool]) -> tuple[SocketLink | None, bool]:
        """A socket with room for one more subscription, and whether it was just opened.

        None when ``still_wanted()`` turns false while waiting (the caller no
        longer needs one). A socket just opened must be read by the caller.
        """
        settings = self._settings
        async with self._connecting:
            for link in self.links:
                if not link.dead and len(link.keys) < settings.per_socket:
                    return link, False
            while still_wanted():
                if self._drops:
                    delay = min(settings.backoff_max,
                                settings.backoff_initial * 2 ** (self._drops - 1))
                    await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                    if not still_wanted():
                        return None, False
                socket = self._open_socket()
                try:
                    session_id = await socket.connect()
                except SessionEnded as ended:
                    self._drops += 1
                    log.warning("eventsub grant=%s could not connect (%s); retrying",
                                self.grant_id, ended.reason)
                    await socket.close()
                    continue
                link = SocketLink(socket, session_id, time.monotonic())
                self.links.append(link)
                log.info("eventsub grant=%s session %s open (%d socket(s))", self.grant_id,
                         session_id, len(self.links))
                return link, True
        return None, False

    async def close(self, link: SocketLink) -> None:
        """Close ``link`` on purpose (its session dies, and its subscriptions)."""
        link.dead = True
        if link in self.links:
            self.links.remove(link)
        await link.socket.close()

    async def ended(self, link: SocketLink) -> bool:
        """Twitch's session on ``link`` ended: forget it; False if it was closed here."""
        if link.dead:
            return False
        await self.close(link)
        lived = time.monotonic() - link.opened_at
        self._drops = 0 if lived >= HEALTHY_SESSION else self._drops + 1
        return True

    def close_all(self) -> list[SocketLink]:
        """Mark every socket closed and hand them over to be closed."""
        links, self.links = self.links, []
        for link in links:
            link.dead = True
        return links
