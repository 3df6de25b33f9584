"""The proxy's client of Twitch's EventSub WebSocket: one session, followed until it ends.

:class:`EventSubSocket` opens ``<url>?keepalive_timeout_seconds=N`` with
aiohttp's WebSocket client on the ``ClientSession`` it is given, waits for the
``session_welcome`` (:meth:`~EventSubSocket.connect` returns its session id,
the one subscriptions are created with) and then yields every
``notification`` and ``revocation`` (:meth:`~EventSubSocket.messages`) until
the session dies, which it reports by raising
:class:`~proxy.upstream.eventsub_messages.SessionEnded`. What Twitch's
EventSub WebSocket reference asks of a client is handled here:

- the client never sends a data frame (Twitch closes with 4001 on any) nor a
  ping of its own; aiohttp answers Twitch's pings, and every socket is read
  all the time (one reader task each), so a slow caller never delays a pong
  (frames wait for it in memory: the caller should keep reading);
- silence: any frame resets the timer; none for longer than the keepalive
  timeout the welcome announced, plus a margin, is a dead connection;
- ``session_reconnect``: connect to its ``reconnect_url`` as given, keep
  reading the old socket until the new one's welcome, then switch; the old
  socket is still read for ``drain_seconds`` (frames already in flight) and
  then closed. Subscriptions carry over, so nothing is resubscribed; message
  ids are deduplicated across both sockets, so nothing is lost or doubled;
- ``session_keepalive`` only resets the timer; duplicates of a message id
  (Twitch delivers at least once) are dropped, with a bounded memory;
- close codes 4000-4007 become :class:`SessionEnded` with the next step
  (:data:`~proxy.upstream.eventsub_messages.CLOSE_CODES`).

Each WebSocket (opened up to its welcome, read by its own task, closed) is a
:class:`~proxy.upstream.eventsub_link.Link`; this module makes a session of them.

A session that ended can be connected again with :meth:`connect`: always to
the base URL, as a fresh session whose subscriptions must be created again.
:attr:`EventSubSocket.stats` counts reconnects by reason and duplicates
dropped, and a :class:`SocketObserver` (the app's metrics) is told of both.
The log gets one line per change of state (connected, reconnecting,
reconnected, ended with its reason and close code, closed by the proxy); it
names the session id and never a URL's query (Twitch's reconnect URLs carry a
challenge).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import NoReturn, Protocol

import aiohttp
from yarl import URL

from .eventsub_link import ENDING, Link, close_link, log_url, open_link, start_reader
from .eventsub_messages import (
    EventSubMessage,
    EventSubStats,
    Frame,
    MalformedFrame,
    RecentIds,
    SessionEnded,
    parse_frame,
    parse_session,
    session_closed,
)

__all__ = ["EventSubMessage", "EventSubSocket", "EventSubStats", "SessionEnded",
           "SocketObserver"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Switch:
    """Queued when a reconnect's new socket was welcomed (or failed)."""

    link: Link | None
    failure: SessionEnded | None = None


class _Stop:
    """Queued when a session is torn down: ``messages()`` returns."""


_Item = tuple[Link, aiohttp.WSMessage] | _Switch | _Stop


class SocketObserver(Protocol):
    """What a socket tells whoever measures it (the app's ``EventSubMetrics``)."""

    def duplicate_dropped(self) -> None:
        """A message Twitch sent again was dropped."""

    def reconnected(self, reason: str) -> None:
        """A new session: ``session_reconnect`` followed, or connected again after ``reason``."""


class EventSubSocket:
    """One EventSub WebSocket session with Twitch, on the caller's ``ClientSession``.

    ``url`` is the base URL (``wss://eventsub.wss.twitch.tv/ws`` or the
    mock's); ``keepalive_timeout`` (Twitch accepts 10-600) is asked for in the
    URL, and the welcome's answer is what the silence timer uses, plus
    ``keepalive_margin`` seconds. ``connect_timeout`` bounds each connection
    up to its welcome, on :meth:`connect` and when following a reconnect.
    ``remembered_ids`` bounds the memory used to drop duplicates. ``observer``
    is told of duplicates and reconnects as they happen.
    """

    def __init__(self, session: aiohttp.ClientSession, url: str, *, keepalive_timeout: int = 30,
                 connect_timeout: float = 10.0, keepalive_margin: float = 5.0,
                 drain_seconds: float = 1.0, remembered_ids: int = 1000,
                 observer: SocketObserver | None = None) -> None:
        self._session = session
        self._url = URL(url).update_query(keepalive_timeout_seconds=keepalive_timeout)
        self._keepalive_timeout = keepalive_timeout
        self._connect_timeout = connect_timeout
        self._margin = keepalive_margin
        self._drain_seconds = drain_seconds
        self._recent = RecentIds(remembered_ids)
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._current: Link | None = None
        self._draining: set[Link] = set()  # old sockets of a reconnect, read a little longer
        self._pending: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._last_end: SessionEnded | None = None
        self.stats = EventSubStats()
        self._observer = observer

    @property
    def session_id(self) -> str | None:
        """The id of the live session (for ``transport.session_id``), else None."""
        return self._current.session_id if self._current is not None else None

    async def connect(self) -> str:
        """Open a session on the base URL and return its id once Twitch welcomed it.

        Raises :class:`SessionEnded` (``"connect_failed"``) when the socket
        cannot be opened, closes, or brings no welcome within
        ``connect_timeout``. A session still open is closed first.
        """
        await self._teardown()
        self._queue = asyncio.Queue()
        if self._last_end is not None:
            self._count_reconnect(self._last_end.key)
            self._last_end = None
        self.stats.connects += 1
        try:
            link = await self._open(self._url, context="connecting")
        except SessionEnded as ended:
            self._ended(ended)
            self._queue.put_nowait(_Stop())
            raise
        self._start_reader(link)
        self._current = link
        log.info("eventsub session %s connected to %s (keepalive %ss)",
                 link.session_id, log_url(self._url), link.keepalive)
        return link.session_id

    async def messages(self) -> AsyncIterator[EventSubMessage]:
        """Yield notifications and revocations until the session ends.

        Each message id is yielded at most once. A ``session_reconnect`` is
        followed without a gap; anything that ends the session closes the
        sockets and raises :class:`SessionEnded`; :meth:`close` ends it
        without one. Called when no session is open, it returns at once.
        """
        if self.stats.connects == 0:
            raise RuntimeError("EventSubSocket.messages() before connect()")
        while True:
            try:
                item = await asyncio.wait_for(self._queue.get(), self._silence_left())
            except TimeoutError:
                await self._fail(SessionEnded(
                    "keepalive_timeout", None, True,
                    "no frame from Twitch for longer than the keepalive timeout: "
                    "reconnect with backoff and resubscribe"))
            if isinstance(item, _Stop):
                return
            if isinstance(item, _Switch):
                await self._switch(item)
                continue
            link, msg = item
            if link is not self._current and link not in self._draining:
                continue  # a socket of a session already torn down
            if msg.type in ENDING:
                await self._socket_ended(link, msg)
                continue
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue  # Twitch sends text frames only
            link.last_frame = asyncio.get_running_loop().time()
            message = self._handle_text(link, msg.data)
            if message is not None:
                yield message

    async def close(self) -> None:
        """Close every socket and stop reading; the session ends (no exception)."""
        if self._current is not None:
            log.info("eventsub session %s closed by the proxy", self._current.session_id)
        await self._teardown()

    # -- opening ----------------------------------------------------------------

    async def _open(self, url: URL, *, context: str) -> Link:
        link = await open_link(self._session, url, connect_timeout=self._connect_timeout,
                               default_keepalive=self._keepalive_timeout, context=context)
        self._recent.add(link.welcome_id)
        return link

    def _start_reader(self, link: Link) -> None:
        start_reader(link, self._queue_frame)

    def _queue_frame(self, link: Link, msg: aiohttp.WSMessage) -> None:
        self._queue.put_nowait((link, msg))

    # -- the session_reconnect hand-over ------------------------------------------

    def _follow_reconnect(self, link: Link, frame: Frame) -> None:
        try:
            reconnect_url = parse_session(frame).reconnect_url
        except MalformedFrame:
            reconnect_url = None
        if link is not self._current or self._pending is not None:
            return  # already following one; Twitch sends one per socket
        if reconnect_url is None:
            self.stats.malformed_frames += 1
            log.warning("eventsub session %s: session_reconnect without reconnect_url",
                        link.session_id)
            return
        log.info("eventsub session %s reconnecting to %s at Twitch's request",
                 link.session_id, log_url(reconnect_url))
        self._pending = asyncio.create_task(self._reconnect(URL(reconnect_url, encoded=True)),
                                            name="eventsub-reconnect")

    async def _reconnect(self, url: URL) -> None:
        """Open the reconnect URL as given; queue the switch, or the failure."""
        try:
            link = await self._open(url, context="following session_reconnect")
        except SessionEnded as ended:
            failure = SessionEnded("reconnect_failed", ended.close_code, True, str(ended))
            self._queue.put_nowait(_Switch(None, failure))
            return
        # Queued before the new reader starts, so the switch precedes its frames.
        self._queue.put_nowait(_Switch(link))
        self._start_reader(link)

    async def _switch(self, switch: _Switch) -> None:
        self._pending = None
        if switch.link is None:
            assert switch.failure is not None
            await self._fail(switch.failure)
            return
        old, self._current = self._current, switch.link
        self._count_reconnect("session_reconnect")
        log.info("eventsub session %s reconnected (was %s)", switch.link.session_id,
                 old.session_id if old is not None else None)
        if old is not None:
            self._draining.add(old)
            task = asyncio.create_task(self._retire(old), name="eventsub-retire")
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def _retire(self, old: Link) -> None:
        """Keep reading the old socket briefly (frames in flight), then close it."""
        await asyncio.sleep(self._drain_seconds)
        self._draining.discard(old)
        await close_link(old)

    # -- frames -------------------------------------------------------------------

    def _handle_text(self, link: Link, text: str) -> EventSubMessage | None:
        try:
            frame = parse_frame(text)
            if frame.message_type in ("notification", "revocation"):
                message = frame.to_message()
                if not self._recent.add(frame.message_id):
                    self.stats.duplicates_dropped += 1
                    if self._observer is not None:
                        self._observer.duplicate_dropped()
                    return None
                self.stats.messages_delivered += 1
                return message
            if frame.message_type == "session_reconnect":
                self._follow_reconnect(link, frame)
        except MalformedFrame as exc:
            self.stats.malformed_frames += 1
            log.warning("eventsub session %s: ignored %s", link.session_id, exc)
        # session_keepalive only resets the timer; unknown types are ignored.
        return None

    async def _socket_ended(self, link: Link, msg: aiohttp.WSMessage) -> None:
        """A socket closed: the session ends unless it was the old one of a hand-over."""
        if link is not self._current:
            return  # a retired socket (Twitch closes it, 4004 at worst)
        if self._pending is not None:
            # The old socket went first; the new one may still be welcomed.
            log.info("eventsub session %s: old socket closed (%s) while reconnecting",
                     link.session_id, link.ws.close_code)
            return
        code = link.ws.close_code
        if msg.type is aiohttp.WSMsgType.CLOSE and isinstance(msg.data, int):
            code = msg.data
        await self._fail(session_closed("closed", code))

    # -- ending ---------------------------------------------------------------------

    def _silence_left(self) -> float | None:
        if self._pending is not None or self._current is None:
            return None  # the reconnect is bounded by connect_timeout
        deadline = self._current.last_frame + self._current.keepalive + self._margin
        return max(0.0, deadline - asyncio.get_running_loop().time())

    def _count_reconnect(self, reason: str) -> None:
        self.stats.reconnects[reason] += 1
        if self._observer is not None:
            self._observer.reconnected(reason)

    def _ended(self, ended: SessionEnded) -> None:
        self._last_end = ended
        self.stats.sessions_ended[ended.key] += 1
        level = logging.ERROR if ended.close_code == 4001 else logging.WARNING
        log.log(level, "eventsub session %s ended: %s (close code %s, retry %s): %s",
                self.session_id, ended.reason, ended.close_code, ended.retry, ended)

    async def _fail(self, ended: SessionEnded) -> NoReturn:
        self._ended(ended)
        await self._teardown()
        raise ended

    async def _teardown(self) -> None:
        """Stop every task and close every socket of this session."""
        # Forgotten first: whatever their readers still queue is then ignored.
        links = [self._current, *self._draining]
        tasks = [t for t in (self._pending, *self._retiring) if t is not None]
        self._pending = self._current = None
        self._draining.clear()
        self._retiring.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while not self._queue.empty():  # a new socket welcomed but not switched to yet
            item = self._queue.get_nowait()
            if isinstance(item, _Switch):
                links.append(item.link)
        for link in links:
            if link is not None:
                await close_link(link)
        self._queue.put_nowait(_Stop())

