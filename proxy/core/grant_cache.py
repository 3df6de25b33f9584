"""In-process caches for the Helix hot path, and the single flight of GETs.

Two things live here.

:class:`CachedGrantStore` is the :class:`~proxy.grants.GrantStore` the app
uses. It answers the hot-path lookups (proxy key -> key record -> grant, and an
old widget's refresh token -> its alias -> grant) from memory, so a request that
changes nothing costs no store round trip. Correctness across processes comes
from a *generation marker*: every write that can change what a lookup returns
(grant replaced, created or deleted; key created or revoked; refresh-token
index changed) stores a fresh random value under ``cache:generation``, and
drops this process's cache at once. A background task (:meth:`watch`) reads the
marker every ``poll_interval`` seconds and drops the cache when it changed.

Staleness bound: a write in another process is seen here at most
``poll_interval`` seconds plus one store read after that process stored the
new marker (0.5 s by default). A lookup racing with a drop is not cached (the
cache has an epoch; an entry read before a drop is not put back after it).
When the marker cannot be read (store down), the cache is off until it can be.
A remembered alias is checked against the grant on every use
(:meth:`~proxy.grants.RefreshTokenRef.opens`), so a rotated token's replay
window ends on time here too. Lookups that decide a refresh (``load`` under
the refresh lock) always read the store; ``/refresh``'s alias lookups may be
:data:`REFRESH_REF_TTL` old.

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
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from ..errors import StoreUnavailable
from ..store.base import TokenStore
from ..store.crypto import Cipher
from ..web.keys import config_key, grant_cache_key, shared_gets_key
from .grant_records import Grant, KeyRecord, LoadedGrant, RefreshTokenKind, RefreshTokenRef
from .grants import GrantStore
from .sealed_index import token_hash

__all__ = ["GENERATION_KEY", "CachedGrantStore", "SharedAnswer", "SharedGets", "cache_ttl",
           "setup_cache"]

log = logging.getLogger(__name__)

#: Store key whose value changes on every write a cached lookup depends on.
GENERATION_KEY = "cache:generation"
#: Seconds a remembered refresh-token lookup is trusted (see find_refresh_token).
REFRESH_REF_TTL = 1.0

#: Most answers kept by the TTL cache; beyond it expired ones are purged first,
#: then the oldest.
MAX_CACHED_ANSWERS = 10_000


class CachedGrantStore(GrantStore):
    """A GrantStore whose hot-path lookups are answered from memory.

    ``poll_interval`` 0 turns the cache off (every lookup reads the store).
    """

    def __init__(self, store: TokenStore, cipher: Cipher, *, poll_interval: float) -> None:
        super().__init__(store, cipher)
        self.poll_interval = poll_interval
        # By the key itself, not its hash: hashing is a measurable part of the
        # hot path, and the key sits in this process's memory anyway (in the
        # request). Only the store must never see it.
        self._keys: dict[str, KeyRecord] = {}
        self._grants: dict[str, Grant] = {}
        # By the refresh token itself, like keys (hashing costs on the hot path).
        self._aliases: dict[str, RefreshTokenRef] = {}
        # sha256(refresh token) -> (its index entry, trusted until this monotonic time)
        self._refresh_refs: dict[str, tuple[RefreshTokenRef, float]] = {}
        self._generation: bytes | None = None
        self._verified = False  # True once the marker was read and while it can be
        self._epoch = 0

    # -- hot-path lookups ------------------------------------------------------------

    async def grant_for_key(self, key: str) -> Grant | None:
        """The grant a proxy key opens, or None when unknown or revoked."""
        epoch = self._epoch
        record = self._keys.get(key)
        if record is None:
            record = await super().key_record(key)
            if record is None:
                return None
            if self._cacheable(epoch):
                self._keys[key] = record
        return await self.cached_grant(record.grant_id)

    async def cached_grant(self, grant_id: str) -> Grant | None:
        """The grant, from memory when nothing changed since it was read."""
        grant = self._grants.get(grant_id)
        if grant is not None:
            return grant
        epoch = self._epoch
        grant = await self.get(grant_id)
        if grant is not None and self._cacheable(epoch):
            self._grants[grant_id] = grant
        return grant

    async def alias_grant(self, refresh_token: str) -> Grant | None:
        """The grant an old widget's refresh token opens, when remembered and still open.

        None means "ask the refresher", which reads the store and decides.
        """
        ref = self._aliases.get(refresh_token)
        if ref is None:
            return None
        grant = await self.cached_grant(ref.grant_id)
        return grant if ref.opens(grant) else None

    async def find_refresh_token(self, token: str) -> RefreshTokenRef | None:
        """The index entry of a refresh token, from memory for a moment.

        Entries of rotated tokens expire in the store without a write that
        would drop this cache, so a remembered lookup is trusted only for
        :data:`REFRESH_REF_TTL` seconds (the replay window ends at most that late).
        """
        digest = token_hash(token)
        now = time.monotonic()
        hit = self._refresh_refs.get(digest)
        if hit is not None and hit[1] > now:
            return hit[0]
        epoch = self._epoch
        ref = await super().find_refresh_token(token)
        if ref is not None and self._cacheable(epoch):
            self._refresh_refs[digest] = (ref, now + REFRESH_REF_TTL)
        return ref

    @property
    def epoch(self) -> int:
        """Changes whenever the cache is dropped (see :meth:`remember_alias`)."""
        return self._epoch

    def remember_alias(self, refresh_token: str, ref: RefreshTokenRef, grant: Grant,
                       epoch: int) -> None:
        """Note that ``refresh_token`` is the alias ``ref`` of ``grant``.

        ``epoch`` is :attr:`epoch` from before the lookup that found it, so a
        lookup that raced with a change is not remembered.
        """
        if self._cacheable(epoch):
            self._aliases[refresh_token] = ref
            self._grants.setdefault(grant.grant_id, grant)

    def remember(self, grant: Grant) -> None:
        """Keep a grant the refresher just returned (newer than the cached one)."""
        if self._verified and grant.grant_id in self._grants:
            self._grants[grant.grant_id] = grant

    def _cacheable(self, epoch: int) -> bool:
        return self._verified and self.poll_interval > 0 and epoch == self._epoch

    # -- invalidation ------------------------------------------------------------------

    def drop(self) -> None:
        """Forget every cached lookup (they are read again from the store)."""
        self._epoch += 1
        self._keys.clear()
        self._grants.clear()
        self._aliases.clear()
        self._refresh_refs.clear()

    async def _changed(self) -> None:
        """After a write: drop here, and tell the other processes."""
        self.drop()
        marker = secrets.token_bytes(8)
        await self.store.put(GENERATION_KEY, marker)
        self._generation = marker

    async def check_generation(self) -> None:
        """Read the marker once; drop the cache when another process wrote."""
        try:
            marker = await self.store.get(GENERATION_KEY)
        except StoreUnavailable:
            if self._verified:
                log.warning("grant cache off: the store's change marker cannot be read")
            self._verified = False
            self.drop()
            return
        if marker != self._generation or not self._verified:
            self.drop()
            self._generation = marker
        self._verified = True

    async def watch(self) -> None:
        """Poll the marker forever (run as a task; cancel to stop)."""
        while True:
            try:
                await self.check_generation()
            except Exception:
                # Never let the watcher die with the cache on: it would go stale.
                log.exception("grant cache off: checking the change marker failed")
                self._verified = False
                self.drop()
            await asyncio.sleep(self.poll_interval)

    # -- writes: every one of these can change a cached lookup ---------------------------

    async def create(self, grant: Grant) -> LoadedGrant:
        try:
            return await super().create(grant)
        finally:
            await self._changed()

    async def replace(self, old: LoadedGrant, new: Grant) -> LoadedGrant | None:
        replaced = await super().replace(old, new)
        if replaced is not None:
            await self._changed()
        return replaced

    async def delete(self, grant_id: str) -> bool:
        try:
            return await super().delete(grant_id)
        finally:
            await self._changed()

    async def index_refresh_token(self, token: str, grant_id: str, kind: RefreshTokenKind,
                                  *, chain: str | None, window: float | None = None) -> None:
        try:
            await super().index_refresh_token(token, grant_id, kind, chain=chain, window=window)
        finally:
            await self._changed()

    async def end_aliases(self, grant_id: str, *, keep_chain: str | None = None) -> int:
        try:
            return await super().end_aliases(grant_id, keep_chain=keep_chain)
        finally:
            await self._changed()

    async def forget_refresh_token(self, token: str) -> None:
        try:
            await super().forget_refresh_token(token)
        finally:
            await self._changed()

    async def revoke_key(self, key: str) -> bool:
        try:
            return await super().revoke_key(key)
        finally:
            await self._changed()

    async def revoke_keys_of(self, grant_id: str) -> int:
        try:
            return await super().revoke_keys_of(grant_id)
        finally:
            await self._changed()

    async def revoke_key_id(self, key_id: str) -> bool:
        try:
            return await super().revoke_key_id(key_id)
        finally:
            await self._changed()


# -- shared GETs and the per-grant TTL cache ------------------------------------------


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


# -- wiring ----------------------------------------------------------------------------


async def grant_cache_watch_ctx(app: web.Application) -> AsyncIterator[None]:
    """Read the change marker before serving, then poll it until shutdown."""
    grants = app[grant_cache_key]
    if grants.poll_interval <= 0:
        yield
        return
    await grants.check_generation()
    task = asyncio.ensure_future(grants.watch())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def setup_cache(app: web.Application) -> None:
    """Shared GETs for /helix, and the grant cache's watcher (after the store opens)."""
    app[shared_gets_key] = SharedGets(app[config_key].helix.cache)
    app.cleanup_ctx.append(grant_cache_watch_ctx)
