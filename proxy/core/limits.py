"""Abuse limits: what keeps a public proxy from being flooded or used as a relay.

- **Rate limits per client address** (token buckets): ``/login``, ``/callback``
  and ``POST /refresh`` each have a bucket per address; presenting an unknown
  proxy key spends from a bucket of its own, so guessing keys is slow. An empty
  bucket answers 429 ``rate_limited`` with ``Retry-After``.
- **Concurrency**: upstream work (``/helix/*``, ``/refresh``, ``/callback``) in
  flight at once is capped in total (beyond: 503 ``overloaded``, because the
  proxy is the one at its limit, not the caller) and per grant (beyond: 429
  ``rate_limited``, because one widget is sending too much at once). A request
  finding no free slot waits up to ``limits.concurrency_wait`` seconds for one.
- **Sizes**: header lines and header count are capped by aiohttp's parser
  (:func:`proxy.web.middleware.abuse.handler_args`), the bodies of the small form endpoints by
  ``limits.max_form_body``; Helix bodies by ``helix.max_body``.
- **Allowlist**: ``helix.allow`` (``"GET /users"``, ``"* /channels/*"``)
  refuses other Helix calls with 403 before any credential is looked at.

Limits count per client *network* (:func:`rate_limit_key`) of the client
address the caller passes in (the web layer's
:func:`proxy.web.forwarded.client_address`: the peer, or the platform router's
``X-Forwarded-For`` when ``server.trust_forwarded`` is on): an IPv4 address
whole, an IPv6 address by its /64 (what one host or one home is given), an
IPv4-mapped IPv6 address (``::ffff:a.b.c.d``) as its IPv4 address. Code other
than the middleware that should count against a per-address limit calls
:meth:`AbuseGuard.spend`.

All state lives in one :class:`AbuseGuard` per app; the web layer's
:mod:`proxy.web.middleware.abuse` applies it to each route as
:mod:`proxy.web.app` declares, and ``/helix`` takes its upstream slots itself.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from ..config import LimitsConfig
from ..errors import Forbidden, Overloaded, RateLimited

__all__ = [
    "ACCEPTED_TOKEN_TTL",
    "MAX_TRACKED_ADDRESSES",
    "AbuseGuard",
    "ConcurrencyLimit",
    "RateBucket",
    "RateLimiter",
    "TokenBucket",
    "rate_limit_key",
    "retry_after",
]

#: Seconds a bare token Twitch accepted is let through without spending from
#: the unknown-credential budget (it is checked by Twitch on every call anyway).
ACCEPTED_TOKEN_TTL = 600.0

#: The per-address rate limits, by name (:meth:`AbuseGuard.spend`).
RateBucket = Literal["login", "callback", "refresh", "eventsub"]

#: Buckets kept per limiter before idle (full) ones are dropped; bounds memory
#: when many addresses pass by.
MAX_TRACKED_ADDRESSES = 10_000

#: Bits of an IPv6 address that name one client network: a /64 is one LAN,
#: usually one home or one server, and it alone picks the other 64 bits.
IPV6_CLIENT_PREFIX = 64


class TokenBucket:
    """``capacity`` tokens, refilled at ``rate`` per second."""

    __slots__ = ("capacity", "rate", "tokens", "stamp")

    def __init__(self, capacity: float, rate: float, now: float) -> None:
        self.capacity = capacity
        self.rate = rate
        self.tokens = capacity
        self.stamp = now

    def _refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self, now: float) -> float:
        """Spend one token; 0 when there was one, else seconds until there is."""
        self._refill(now)
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate

    def wait(self, now: float) -> float:
        """Seconds until a token is available, spending nothing."""
        self._refill(now)
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate

    def full(self, now: float) -> bool:
        """True when the bucket is back to capacity (its owner has gone quiet)."""
        self._refill(now)
        return self.tokens >= self.capacity


def rate_limit_key(address: str) -> str:
    """The network ``address`` is counted under: IPv4 whole, IPv6 by its /64.

    One IPv6 host can usually pick any address in its /64, so counting per
    address would give it as many buckets as it likes. An IPv4-mapped address
    (how a dual-stack socket reports an IPv4 client) counts as that IPv4
    address. What does not parse (no peer address) is counted as it is.
    """
    if ":" not in address:
        return address  # IPv4, the common case: no parsing on the hot path
    try:
        ip = ipaddress.IPv6Address(address)
    except ValueError:
        return address
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    host_bits = 128 - IPV6_CLIENT_PREFIX
    network = ipaddress.IPv6Address(int(ip) >> host_bits << host_bits)
    return f"{network}/{IPV6_CLIENT_PREFIX}"


class RateLimiter:
    """One token bucket per client network (:func:`rate_limit_key`): ``per_minute`` a
    minute, burst ``per_minute``."""

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    @property
    def enabled(self) -> bool:
        """A rate of 0 turns the limit off."""
        return self.per_minute > 0

    def __len__(self) -> int:
        """How many buckets are held (at most :data:`MAX_TRACKED_ADDRESSES`)."""
        return len(self._buckets)

    def _bucket(self, key: str, now: float) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_TRACKED_ADDRESSES:
                self._prune(now)
            bucket = TokenBucket(self.per_minute, self.per_minute / 60.0, now)
            self._buckets[key] = bucket
        return bucket

    def _prune(self, now: float) -> None:
        """Make room: drop the full buckets, then, if all are in use, the fuller half.

        Never by age: one network filling the table with new buckets (a /48
        holds 65536 /64s) would push its own empty bucket out and start over.
        A new bucket has spent one token, so a flood's buckets are among the
        fullest and go first; the emptiest, the ones holding someone back, stay.
        """
        for key in [k for k, b in self._buckets.items() if b.full(now)]:
            del self._buckets[key]
        if len(self._buckets) >= MAX_TRACKED_ADDRESSES:
            # A stable sort: among equals the oldest are kept, so a flood cannot tie its way out.
            emptiest_first = sorted(self._buckets, key=lambda k: self._buckets[k].tokens)
            for key in emptiest_first[MAX_TRACKED_ADDRESSES // 2:]:
                del self._buckets[key]

    def take(self, address: str) -> float:
        """Spend one request of ``address``'s network; seconds to wait (0: allowed)."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        return self._bucket(rate_limit_key(address), now).take(now)

    def wait(self, address: str) -> float:
        """Seconds ``address``'s network must wait, spending nothing (0: allowed)."""
        if not self.enabled or not self._buckets:
            return 0.0
        bucket = self._buckets.get(rate_limit_key(address))
        return 0.0 if bucket is None else bucket.wait(self._clock())


@dataclass
class _Slot:
    semaphore: asyncio.Semaphore
    users: int = 0  # holders and waiters; the slot is dropped at 0
    held: int = 0


class ConcurrencyLimit:
    """At most ``limit`` holders per name; a newcomer waits up to ``wait`` seconds.

    One ``asyncio.Semaphore`` per name, created on first use and dropped when
    nobody holds or waits for it, so idle grants cost nothing. A short wait
    smooths a burst (twenty widget copies loading at once) instead of failing
    it; a long one would only hold connections open, so beyond it: refused.
    """

    def __init__(self, limit: int, *, wait: float) -> None:
        self.limit = limit
        self.wait = wait
        self._slots: dict[str, _Slot] = {}

    def in_flight(self, name: str) -> int:
        """How many holders ``name`` has now."""
        slot = self._slots.get(name)
        return 0 if slot is None else slot.held

    async def acquire(self, name: str) -> bool:
        """Take a slot for ``name``; False when none came free within ``wait``."""
        slot = self._slots.get(name)
        if slot is None:
            slot = self._slots[name] = _Slot(asyncio.Semaphore(self.limit))
        slot.users += 1
        try:
            if slot.semaphore.locked():
                if self.wait <= 0:
                    raise TimeoutError
                async with asyncio.timeout(self.wait):
                    await slot.semaphore.acquire()
            else:
                await slot.semaphore.acquire()
        except TimeoutError:
            self._drop(name, slot)
            return False
        except BaseException:
            self._drop(name, slot)
            raise
        slot.held += 1
        return True

    def release(self, name: str) -> None:
        """Give back a slot of ``name``."""
        slot = self._slots[name]
        slot.held -= 1
        slot.semaphore.release()
        self._drop(name, slot)

    def _drop(self, name: str, slot: _Slot) -> None:
        slot.users -= 1
        if slot.users == 0:
            del self._slots[name]


class AbuseGuard:
    """Every limit of one app (see the module docstring)."""

    def __init__(self, limits: LimitsConfig, helix_allow: tuple[str, ...] = (), *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.rates: dict[RateBucket, RateLimiter] = {
            "login": RateLimiter(limits.login_per_minute, clock=clock),
            "callback": RateLimiter(limits.login_per_minute, clock=clock),
            "refresh": RateLimiter(limits.refresh_per_minute, clock=clock),
            "eventsub": RateLimiter(limits.eventsub_per_minute, clock=clock),
        }
        self.invalid_keys = RateLimiter(limits.invalid_keys_per_minute, clock=clock)
        self.total = ConcurrencyLimit(limits.concurrent_total, wait=limits.concurrency_wait)
        self.per_grant = ConcurrencyLimit(limits.concurrent_per_grant,
                                          wait=limits.concurrency_wait)
        self.helix_allow = tuple(_parse_pattern(p) for p in helix_allow)
        self._clock = clock
        #: sha256 of bare Twitch tokens Twitch accepted lately -> until when (clock).
        self._accepted_tokens: dict[str, float] = {}

    def check_bare_token(self, token_digest: str, address: str) -> None:
        """Spend from the caller's unknown-credential budget for a bare token not seen working.

        A bare token is passed through to Twitch, so junk ones would cost a
        call each: an unknown one spends before its call (concurrent junk
        cannot overtake the limit), one Twitch accepted lately is free.
        """
        now = self._clock()
        if self._accepted_tokens.get(token_digest, 0.0) > now:
            return
        wait = self.invalid_keys.take(address)
        if wait:
            raise RateLimited("Too many unknown tokens from your address.",
                              retry_after=retry_after(wait))

    def bare_token_answered(self, token_digest: str, *, accepted: bool) -> None:
        """Remember for :data:`ACCEPTED_TOKEN_TTL` whether Twitch accepted this bare token."""
        if not accepted:
            self._accepted_tokens.pop(token_digest, None)
            return
        now = self._clock()
        if len(self._accepted_tokens) >= MAX_TRACKED_ADDRESSES:
            for digest in [d for d, until in self._accepted_tokens.items() if until <= now]:
                del self._accepted_tokens[digest]
            if len(self._accepted_tokens) >= MAX_TRACKED_ADDRESSES:
                self._accepted_tokens.clear()
        self._accepted_tokens[token_digest] = now + ACCEPTED_TOKEN_TTL

    def helix_allowed(self, method: str, path: str) -> bool:
        """Whether ``METHOD /path`` (path after ``/helix``) passes ``helix.allow``."""
        if not self.helix_allow:
            return True
        return any((m == "*" or m == method.upper()) and fnmatch.fnmatchcase(path, p)
                   for m, p in self.helix_allow)

    def check_helix_allowed(self, method: str, path: str) -> None:
        """403 unless ``helix.allow`` lets ``METHOD /path`` (path after ``/helix/``) through."""
        if not self.helix_allowed(method, "/" + path):
            raise Forbidden("This proxy does not forward that Helix call.",
                            method=method, path="/helix/" + path)

    def spend(self, bucket: RateBucket, address: str) -> None:
        """Spend one request of the network of ``address`` (the client's) from ``bucket``.

        Raises :class:`RateLimited` (429 with ``Retry-After``) when it is empty.
        The middleware spends for ``/login``, ``/callback`` and ``POST /refresh``;
        other code calls this when its work counts against one of those
        limits (an old widget's pair adopted on /helix costs a /refresh).
        """
        wait = self.rates[bucket].take(address)
        if wait:
            raise RateLimited("Too many requests from your address; slow down.",
                              retry_after=retry_after(wait))

    async def take_total_slot(self) -> None:
        """One slot of the total concurrency, or :class:`Overloaded`; give it back with
        ``total.release("")``. A plain coroutine, not a context manager: hot path."""
        if not await self.total.acquire(""):
            raise Overloaded("The proxy is at its limit of requests to Twitch; retry shortly.")

    async def acquire_upstream(self, bucket: str) -> None:
        """One slot of the total and one of ``bucket``'s concurrency, for one Helix call.

        Taken around the upstream call itself, not the whole request: widget
        copies waiting on a shared GET cost Twitch nothing and hold no slot.
        Give them back with :meth:`release_upstream`.
        """
        await self.take_total_slot()
        if not await self.per_grant.acquire(bucket):
            self.total.release("")
            raise RateLimited("Too many requests in flight for this grant.", retry_after=1)

    def release_upstream(self, bucket: str) -> None:
        """Give back what :meth:`acquire_upstream` took."""
        self.per_grant.release(bucket)
        self.total.release("")


def _parse_pattern(pattern: str) -> tuple[str, str]:
    method, _, path = pattern.partition(" ")
    return method.upper(), path.strip()


def retry_after(seconds: float) -> int:
    """Whole seconds for ``Retry-After``: at least 1."""
    return max(1, math.ceil(seconds))
