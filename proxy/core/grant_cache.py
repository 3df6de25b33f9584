"""The grant store the app uses: hot-path lookups from memory, invalidated across processes.

:class:`CachedGrantStore` is the :class:`~proxy.core.grants.GrantStore` the app
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
(:meth:`~proxy.core.grant_records.RefreshTokenRef.opens`), so a rotated token's replay
window ends on time here too. Lookups that decide a refresh (``load`` under
the refresh lock) always read the store; ``/refresh``'s alias lookups may be
:data:`REFRESH_REF_TTL` old.

The background watcher (:meth:`CachedGrantStore.watch`) is started by the web
app at start-up, after the store opens.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time

from ..errors import StoreUnavailable
from ..store.base import TokenStore
from ..store.crypto import Cipher
from .grant_records import Grant, KeyRecord, LoadedGrant, RefreshTokenKind, RefreshTokenRef
from .grants import GrantStore
from .sealed_index import token_hash

__all__ = ["GENERATION_KEY", "REFRESH_REF_TTL", "CachedGrantStore"]

log = logging.getLogger(__name__)

#: Store key whose value changes on every write a cached lookup depends on.
GENERATION_KEY = "cache:generation"
#: Seconds a remembered refresh-token lookup is trusted (see find_refresh_token).
REFRESH_REF_TTL = 1.0


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
