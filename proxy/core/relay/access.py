"""Open live-event streams keep their right to exist: revoking a key or a grant ends them.

A stream is authenticated once, when it opens; this register re-checks every open
stream's proxy key about once a second (one cached look-up per distinct key, however
many streams share it). A key revoked (``POST /revoke``, ``?twitch=true``, the admin
command line, in this process or another: the grant cache sees other processes'
changes within ``store.cache_poll``) ends its streams with an ``access_revoked``
event; a grant Twitch no longer accepts ends them with ``reauthorization_required``
and the login URL. Either way the widget's ``EventSource`` gets a final event it can
show, and the stream ends instead of relaying a revoked user's events.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable

from ..grant_records import ACTIVE, Grant
from .stream import Outbox, encode_frame

__all__ = ["StreamAccess"]

log = logging.getLogger(__name__)

#: Seconds between two checks of every open stream's key.
RECHECK_SECONDS = 1.0


class StreamAccess:
    """The open streams by proxy key, and the task that ends those no longer allowed."""

    def __init__(self, lookup: Callable[[str], Awaitable[Grant | None]], *, login_url: str,
                 interval: float = RECHECK_SECONDS) -> None:
        self._lookup = lookup
        self._login_url = login_url
        self._interval = interval
        self._by_key: dict[str, set[Outbox]] = collections.defaultdict(set)
        self._grant_of: dict[Outbox, str] = {}
        self._gone: dict[Outbox, Callable[[], bool]] = {}
        self._per_grant: collections.Counter[str] = collections.Counter()
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:  # never the keys
        return f"StreamAccess(keys={len(self._by_key)})"

    def streams_of(self, grant_id: str) -> int:
        """How many open streams of ``grant_id`` this process holds."""
        return self._per_grant[grant_id]

    def add(self, key: str, grant_id: str, outbox: Outbox, *,
            gone: Callable[[], bool] | None = None) -> None:
        """Watch ``outbox``, opened with ``key`` for ``grant_id``.

        ``gone`` says whether the widget's connection is closed: a widget that left is
        noticed at the next check, not at the next write (which may be a heartbeat away),
        so it stops counting against the grant's streams within about a second.
        """
        self._by_key[key].add(outbox)
        if gone is not None:
            self._gone[outbox] = gone
        self._grant_of[outbox] = grant_id
        self._per_grant[grant_id] += 1

    def discard(self, key: str, outbox: Outbox) -> None:
        """Stop watching ``outbox`` (its stream ended)."""
        outboxes = self._by_key.get(key)
        if outboxes is not None:
            outboxes.discard(outbox)
            if not outboxes:
                del self._by_key[key]
        self._forget(outbox)

    def _forget(self, outbox: Outbox) -> None:
        self._gone.pop(outbox, None)
        grant_id = self._grant_of.pop(outbox, None)
        if grant_id is not None:
            self._per_grant[grant_id] -= 1
            if self._per_grant[grant_id] <= 0:
                del self._per_grant[grant_id]

    def start(self) -> None:
        """Start re-checking (at start-up, in the running loop)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="eventsub-stream-access")

    async def aclose(self) -> None:
        """Stop re-checking."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def check(self) -> int:
        """Re-check every key once; returns how many streams were ended for it.

        Streams whose widget went away are closed too (not counted: nothing was revoked).
        """
        for outbox, gone in list(self._gone.items()):
            if gone():
                outbox.close("disconnected")
        ended = 0
        for key in list(self._by_key):
            try:
                grant = await self._lookup(key)
            except Exception:  # the store is unreachable: check again next time
                log.warning("could not re-check open event streams; will retry")
                return ended
            if grant is None:
                frame = encode_frame("access_revoked", {
                    "error": "invalid_proxy_key",
                    "message": "This proxy key was revoked: the stream ends."})
            elif grant.state != ACTIVE:
                frame = encode_frame("reauthorization_required", {
                    "error": "reauthorization_required",
                    "message": "Twitch no longer accepts this grant: log in again.",
                    "login_url": self._login_url})
            else:
                continue
            for outbox in self._by_key.pop(key, set()):
                outbox.put(frame)
                outbox.close("access_ended")
                self._forget(outbox)
                ended += 1
        return ended

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            ended = await self.check()
            if ended:
                log.info("eventsub ended %d stream(s) whose key or grant was revoked", ended)
