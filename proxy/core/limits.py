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
  (:func:`handler_args`), the bodies of the small form endpoints by
  ``limits.max_form_body``; Helix bodies by ``helix.max_body``.
- **Allowlist**: ``helix.allow`` (``"GET /users"``, ``"* /channels/*"``)
  refuses other Helix calls with 403 before any credential is looked at.

Limits count per client *network* (:func:`rate_limit_key`) of
:func:`proxy.forwarded.client_address` (the peer, or the platform router's
``X-Forwarded-For`` when ``server.trust_forwarded`` is on): an IPv4 address
whole, an IPv6 address by its /64 (what one host or one home is given), an
IPv4-mapped IPv6 address (``::ffff:a.b.c.d``) as its IPv4 address. Code other
than the middleware that should count against a per-address limit calls
:meth:`AbuseGuard.spend`.

All state lives in one :class:`AbuseGuard` per app, under ``app_keys.abuse_guard_key``;
the middleware :func:`abuse_middleware` applies it.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from typing import Any, Literal

from aiohttp import web
from aiohttp.typedefs import Handler

from ..config import Config, LimitsConfig
from ..errors import (
    Forbidden,
    InvalidProxyKey,
    InvalidRequest,
    Overloaded,
    PayloadTooLarge,
    RateLimited,
)
from ..web.forwarded import client_address
from ..web.keys import abuse_guard_key
from .credential import Credential, proxy_key_in

__all__ = [
    "AbuseGuard",
    "ConcurrencyLimit",
    "RateBucket",
    "RateLimiter",
    "TokenBucket",
    "abuse_middleware",
    "check_helix_allowed",
    "handler_args",
    "rate_limit_key",
    "acquire_upstream_slots",
    "release_upstream_slots",
    "setup_abuse",
]

#: Seconds a bare token Twitch accepted is let through without spending from
#: the unknown-credential budget (it is checked by Twitch on every call anyway).
ACCEPTED_TOKEN_TTL = 600.0

#: The per-address rate limits, by name (:meth:`AbuseGuard.spend`).
RateBucket = Literal["login", "callback", "refresh"]

#: Routes (by first path segment) rate limited per address, and their bucket.
RATE_LIMITED_ROUTES: dict[str, RateBucket] = {
    "login": "login", "callback": "callback", "refresh": "refresh"}

#: Routes whose bodies are small forms, capped by ``limits.max_form_body``.
FORM_ROUTES = frozenset({"refresh", "status", "revoke"})

#: Routes that call Twitch and so count against the total concurrency.
UPSTREAM_ROUTES = frozenset({"refresh", "callback"})

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
        }
        self.invalid_keys = RateLimiter(limits.invalid_keys_per_minute, clock=clock)
        self.total = ConcurrencyLimit(limits.concurrent_total, wait=limits.concurrency_wait)
        self.per_grant = ConcurrencyLimit(limits.concurrent_per_grant,
                                          wait=limits.concurrency_wait)
        self.helix_allow = tuple(_parse_pattern(p) for p in helix_allow)
        self._clock = clock
        #: sha256 of bare Twitch tokens Twitch accepted lately -> until when (clock).
        self._accepted_tokens: dict[str, float] = {}

    def check_bare_token(self, token_digest: str, request: web.Request) -> None:
        """Spend from the caller's unknown-credential budget for a bare token not seen working.

        A bare token is passed through to Twitch, so junk ones would cost a
        call each: an unknown one spends before its call (concurrent junk
        cannot overtake the limit), one Twitch accepted lately is free.
        """
        now = self._clock()
        if self._accepted_tokens.get(token_digest, 0.0) > now:
            return
        wait = self.invalid_keys.take(client_address(request))
        if wait:
            raise RateLimited("Too many unknown tokens from your address.",
                              retry_after=_retry_after(wait))

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

    def spend(self, bucket: RateBucket, request: web.Request) -> None:
        """Spend one request of the caller's network from ``bucket``.

        Raises :class:`RateLimited` (429 with ``Retry-After``) when it is empty.
        The middleware spends for ``/login``, ``/callback`` and ``POST /refresh``;
        other code calls this when its work counts against one of those
        limits (an old widget's pair adopted on /helix costs a /refresh).
        """
        wait = self.rates[bucket].take(client_address(request))
        if wait:
            raise RateLimited("Too many requests from your address; slow down.",
                              retry_after=_retry_after(wait))

    async def take_total_slot(self) -> None:
        """One slot of the total concurrency, or :class:`Overloaded`; give it back with
        ``total.release("")``. A plain coroutine, not a context manager: hot path."""
        if not await self.total.acquire(""):
            raise Overloaded("The proxy is at its limit of requests to Twitch; retry shortly.")


def _parse_pattern(pattern: str) -> tuple[str, str]:
    method, _, path = pattern.partition(" ")
    return method.upper(), path.strip()


def handler_args(limits: LimitsConfig) -> dict[str, Any]:
    """aiohttp server options that cap request line, header size and count.

    Passed as ``web.Application(handler_args=...)`` so every runner that serves
    the app (``run_app``, a test server, a worker) applies them.
    """
    return {
        "max_line_size": limits.max_header_line,
        "max_field_size": limits.max_header_line,
        "max_headers": limits.max_headers,
    }


def _retry_after(seconds: float) -> int:
    return max(1, math.ceil(seconds))


def _route_name(request: web.Request) -> str | None:
    """``login``, ``refresh``, ``helix``...: the route's path, without slashes or variables."""
    resource = request.match_info.route.resource
    if resource is None:
        return None
    return resource.canonical.strip("/").split("/", 1)[0] or None


def _presents_proxy_key(request: web.Request) -> bool:
    return proxy_key_in(request.headers.get("Authorization", "")) is not None or (
        request.path == "/status" and request.method == "POST")


def _check_form_body(request: web.Request, limit: int) -> None:
    """Refuse a form body that is too large or cannot be parsed, before it is read."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"The body is larger than {limit} bytes.")
    if request.content_type.startswith("multipart/"):
        header = Message()
        header["Content-Type"] = request.headers.get("Content-Type", "")
        if not header.get_param("boundary"):
            # aiohttp's form parser would fail with a bare ValueError (a 500).
            raise InvalidRequest("A multipart body needs a boundary in its Content-Type.")


@web.middleware
async def abuse_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Apply rate, size and concurrency limits before the handler runs."""
    guard = request.app[abuse_guard_key]
    route = _route_name(request)
    address = client_address(request)

    bucket = RATE_LIMITED_ROUTES.get(route or "")
    # A CORS preflight (OPTIONS) is the browser asking, not a login or a refresh:
    # counting it would halve the rate an old widget's POST /refresh gets.
    if bucket is not None and request.method != "OPTIONS":
        guard.spend(bucket, request)
    if _presents_proxy_key(request):
        wait = guard.invalid_keys.wait(address)
        if wait:
            raise RateLimited("Too many unknown proxy keys from your address.",
                              retry_after=_retry_after(wait))
    if route in FORM_ROUTES and request.method == "POST":
        _check_form_body(request, guard.limits.max_form_body)

    try:
        if route in UPSTREAM_ROUTES:  # /helix counts its upstream calls itself
            await guard.take_total_slot()
            try:
                response = await handler(request)
            finally:
                guard.total.release("")
        else:
            response = await handler(request)
    except InvalidProxyKey:
        guard.invalid_keys.take(address)
        raise
    if response.status == 401 and route == "status" and request.method == "POST":
        guard.invalid_keys.take(address)  # the status page shows the refusal itself
    return response


async def acquire_upstream_slots(request: web.Request, credential: Credential) -> str:
    """One slot of the total and one of the grant's concurrency, for one Helix call.

    Taken around the upstream call itself, not the whole request: widget
    copies waiting on a shared GET cost Twitch nothing and hold no slot.
    Returns the grant's name for :func:`release_upstream_slots`.
    """
    guard = request.app[abuse_guard_key]
    await guard.take_total_slot()
    name = credential.bucket
    if not await guard.per_grant.acquire(name):
        guard.total.release("")
        raise RateLimited("Too many requests in flight for this grant.", retry_after=1)
    return name


def release_upstream_slots(request: web.Request, name: str) -> None:
    """Give back what :func:`acquire_upstream_slots` took."""
    guard = request.app[abuse_guard_key]
    guard.per_grant.release(name)
    guard.total.release("")


def check_helix_allowed(request: web.Request, path: str) -> None:
    """403 unless ``helix.allow`` lets ``request.method /path`` through."""
    if not request.app[abuse_guard_key].helix_allowed(request.method, "/" + path):
        raise Forbidden("This proxy does not forward that Helix call.",
                        method=request.method, path="/helix/" + path)


def setup_abuse(app: web.Application, config: Config) -> None:
    """Create the app's :class:`AbuseGuard` (the middleware is added by create_app)."""
    app[abuse_guard_key] = AbuseGuard(config.limits, config.helix.allow)

