"""Single flight for Helix GETs, and their optional short TTL cache.

:class:`SharedGets` makes identical concurrent ``GET`` requests (same grant,
same URL, same ``Accept`` / ``Accept-Encoding``) share one upstream call: the
first caller makes it, reads the answer whole, and every caller gets a copy
(if the first caller is cancelled, a waiting one makes the call instead).
With ``helix.cache`` a path's 200 answers are also kept for a few seconds per
grant, bounded by Twitch's ``Cache-Control`` (``no-store``/``no-cache`` are not
kept; a lower ``max-age`` wins).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass

from multidict import CIMultiDict, CIMultiDictProxy

__all__ = ["MAX_CACHED_ANSWERS", "SharedAnswer", "SharedGets", "cache_ttl"]

#: Most answers kept by the TTL cache; beyond it expired ones are purged first,
#: then the oldest.
MAX_CACHED_ANSWERS = 10_000


@dataclass(frozen=True)
class SharedAnswer:
    """An upstream answer read whole, which any number of callers may copy.

    ``headers`` may be the leader's own response headers, which change while
    that response is sent (CORS, request id): :meth:`SharedGets.fetch` calls
    :meth:`frozen` before anyone else may see them.
    """

    status: int
    headers: CIMultiDict[str] | CIMultiDictProxy[str]
    body: bytes

    def frozen(self) -> SharedAnswer:
        """A copy whose headers nobody else holds."""
        return dataclasses.replace(self, headers=CIMultiDictProxy(CIMultiDict(self.headers)))


def cache_ttl(configured: float, headers: Mapping[str, str]) -> float:
    """Seconds an answer may be kept: ``configured``, lowered by Cache-Control."""
    control = headers.get("Cache-Control")
    if not control:
        return configured
    ttl = configured
    for directive in control.lower().split(","):
        name, _, value = directive.strip().partition("=")
        if name in ("no-store", "no-cache"):
            return 0.0
        if name in ("max-age", "s-maxage"):
            with contextlib.suppress(ValueError):
                ttl = min(ttl, float(value.strip().strip('"')))
    return max(ttl, 0.0)


class _LeaderGone(Exception):
    """The caller making a shared call was cancelled; a follower takes over."""


class SharedGets:
    """Single flight (and an optional TTL cache) for Helix GETs; see the module docstring."""

    def __init__(self, ttls: Mapping[str, float]) -> None:
        self._ttls = {path.rstrip("/") or "/": ttl for path, ttl in ttls.items() if ttl > 0}
        self._flights: dict[Hashable, asyncio.Future[SharedAnswer]] = {}
        #: Callers waiting on each flight: the leader's answer is only copied
        #: for them (or for the TTL cache), not on every request.
        self._followers: dict[Hashable, int] = {}
        self._kept: dict[Hashable, tuple[float, SharedAnswer]] = {}

    async def fetch(self, key: Hashable, path: str,
                    work: Callable[[], Awaitable[SharedAnswer]]) -> tuple[SharedAnswer, bool]:
        """The answer for ``key``, and whether it came from the TTL cache.

        ``path`` (``/streams``) picks the configured TTL; ``work`` makes the
        upstream call and is run once for all concurrent callers.
        """
        kept = self._kept.get(key)
        if kept is not None:
            if kept[0] > time.monotonic():
                return kept[1], True
            del self._kept[key]
        while (flight := self._flights.get(key)) is not None:
            self._followers[key] = self._followers.get(key, 0) + 1
            try:
                # shield: a follower hanging up must not cancel the leader's call.
                return await asyncio.shield(flight), False
            except _LeaderGone:
                continue  # the leader was cancelled: the next caller leads
            finally:
                self._followers[key] -= 1
                if not self._followers[key]:
                    del self._followers[key]
        # The first caller makes the call itself (no task per request: this is
        # the hot path) and hands its answer, or its error, to the followers.
        flight = asyncio.get_running_loop().create_future()
        self._flights[key] = flight
        try:
            answer = await work()
        except BaseException as exc:
            flight.set_exception(_LeaderGone() if isinstance(exc, asyncio.CancelledError)
                                 else exc)
            flight.exception()  # retrieved: no "never retrieved" warning without followers
            raise
        finally:
            del self._flights[key]
        configured = self._ttls.get(path)
        ttl = cache_ttl(configured, answer.headers) if configured and answer.status == 200 \
            else 0.0
        if ttl > 0 or key in self._followers:
            shared = answer.frozen()
            flight.set_result(shared)
            if ttl > 0:
                self._keep(key, time.monotonic() + ttl, shared)
        return answer, False

    def _keep(self, key: Hashable, expires: float, answer: SharedAnswer) -> None:
        if len(self._kept) >= MAX_CACHED_ANSWERS:
            now = time.monotonic()
            for old in [k for k, (until, _) in self._kept.items() if until <= now]:
                del self._kept[old]
            while len(self._kept) >= MAX_CACHED_ANSWERS:
                del self._kept[next(iter(self._kept))]
        self._kept[key] = (expires, answer)
