"""Waiting for Twitch's rate limit instead of spending calls that will get 429.

Helix answers every call with ``Ratelimit-Remaining`` and ``Ratelimit-Reset``
(Unix seconds when the bucket is full again). Twitch keeps one bucket per
client id for app tokens and one per client id per user for user tokens
(Twitch's rate-limit guide), so :class:`RateLimitGate` keeps the last word Twitch said per
bucket name: ``user:<id>`` (or ``grant:<id>`` when the user is unknown),
``app``, and ``token:<hash>`` for passed-through tokens.

Only an empty bucket is remembered (a dict entry per empty bucket, dropped on
the next answer that shows points again, and at most :data:`MAX_EMPTY_BUCKETS`
of them: past that, those whose reset has passed are swept), so the hot path
costs one header lookup and junk tokens cannot grow it without bound. A
request for an empty bucket sleeps until ``Ratelimit-Reset`` when that is at
most ``max_wait`` seconds away; otherwise it is answered at once with 429 and
``Retry-After``, and Twitch is not called.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

from ..errors import BucketEmpty

__all__ = ["MAX_EMPTY_BUCKETS", "RateLimitGate"]

#: Empty buckets remembered before expired ones are swept (and, if all are
#: current, the soonest to reset are forgotten: they only cost a 429 later).
MAX_EMPTY_BUCKETS = 10_000


class RateLimitGate:
    """Per-bucket "wait until reset" for Helix; see the module docstring."""

    def __init__(self, *, max_wait: float) -> None:
        self.max_wait = max_wait
        #: bucket name -> Unix time its points come back, for empty buckets only.
        self._empty_until: dict[str, float] = {}

    async def wait_turn(self, bucket: str) -> None:
        """Return when ``bucket`` may call Twitch; raise RateLimited past the bound."""
        reset = self._empty_until.get(bucket)
        if reset is None:
            return
        delay = reset - time.time()
        if delay <= 0:
            self._empty_until.pop(bucket, None)
            return
        if delay > self.max_wait:
            raise BucketEmpty(reset)
        await asyncio.sleep(delay)
        # The bucket is full again; the next answer says how it really stands.
        if self._empty_until.get(bucket) == reset:
            del self._empty_until[bucket]

    def observe(self, bucket: str, status: int, headers: Mapping[str, str]) -> None:
        """Remember what an answer from Twitch says about ``bucket``."""
        remaining = headers.get("Ratelimit-Remaining")
        if remaining is None and status != 429:
            return  # not a Helix answer (a gateway error page): says nothing
        if status == 429 or remaining == "0":
            try:
                reset = float(headers["Ratelimit-Reset"])
            except (KeyError, ValueError):
                reset = time.time() + 1.0  # Twitch did not say: back off a second
            if len(self._empty_until) >= MAX_EMPTY_BUCKETS and bucket not in self._empty_until:
                self._sweep()
            self._empty_until[bucket] = reset
        elif self._empty_until:
            self._empty_until.pop(bucket, None)

    def __len__(self) -> int:
        """How many empty buckets are remembered."""
        return len(self._empty_until)

    def _sweep(self) -> None:
        now = time.time()
        for name in [name for name, reset in self._empty_until.items() if reset <= now]:
            del self._empty_until[name]
        if len(self._empty_until) >= MAX_EMPTY_BUCKETS:
            soonest = sorted(self._empty_until, key=self._empty_until.__getitem__)
            for name in soonest[: MAX_EMPTY_BUCKETS // 2]:
                del self._empty_until[name]
