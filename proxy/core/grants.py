"""Where tokens live: grants and login states, with the sealed index beside them.

A *grant* (:class:`~proxy.core.grant_records.Grant`) is one Twitch user's
authorization of this app. This module maps grants onto the bytes-by-key
:mod:`proxy.store` contract:

=========================  =====================================================
key                        value (JSON; all but states and claims encrypted)
=========================  =====================================================
``grant:<grant_id>``       the :class:`Grant`, encrypted with the store cipher
``user:<user_id>``         sealed: the grant id of that Twitch user's login
``key:<sha256(key)>``      sealed: a proxy key's record
``rt:<sha256(token)>``     sealed: a refresh-token alias
``state:<state>``          a pending /login (single use, expires)
``validated:<grant_id>``   who validates the grant this interval
                           (:mod:`proxy.core.validator`; expires)
=========================  =====================================================

The sealed entries are :mod:`proxy.core.sealed_index`, which :class:`GrantStore`
builds on. **Chains end for good**: a chain ends when the grant is revoked,
deleted or refused by Twitch (``chain`` becomes None) and when a login replaces
it (one that widens the scopes or finds the chain dead); no alias of an ended
chain opens anything again, whatever the grant becomes later.

Every write that replaces a grant is a compare-and-swap against the exact bytes
that were read (:meth:`GrantStore.update_with` is the one retry loop), so two
writers can never silently lose a rotated refresh token.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .grant_records import Grant, LoadedGrant
from .sealed_index import SealedIndex

__all__ = ["GrantStore"]


class GrantStore(SealedIndex):
    """Grants and login states on top of a TokenStore, beside the sealed index."""

    # -- grants ------------------------------------------------------------------

    async def load(self, grant_id: str) -> LoadedGrant | None:
        """The grant and its raw bytes, or None."""
        raw = await self.store.get(f"grant:{grant_id}")
        if raw is None:
            return None
        return LoadedGrant(Grant.from_bytes(self._cipher.decrypt(raw)), raw)

    async def get(self, grant_id: str) -> Grant | None:
        """The grant, or None."""
        loaded = await self.load(grant_id)
        return loaded.grant if loaded else None

    async def cached_grant(self, grant_id: str) -> Grant | None:
        """The grant for a lookup that may be a moment stale (see proxy.core.grant_cache).

        Here it always reads the store; :class:`proxy.core.grant_cache.CachedGrantStore`
        answers from memory. Never use it to decide a refresh: that reloads
        under the lock.
        """
        return await self.get(grant_id)

    async def create(self, grant: Grant) -> LoadedGrant:
        """Store a new grant and index its refresh token as its chain's ``current``.

        The ``user:`` index is left alone: only a login claims it
        (:meth:`claim_user`), so no other path can re-point a user's grant.
        """
        raw = self._cipher.encrypt(grant.to_bytes())
        await self.index_refresh_token(grant.refresh_token, grant.grant_id, "current",
                                       chain=grant.chain)
        await self.store.put(f"grant:{grant.grant_id}", raw)
        return LoadedGrant(grant, raw)

    async def replace(self, old: LoadedGrant, new: Grant) -> LoadedGrant | None:
        """Compare-and-swap ``old`` for ``new``; None when someone wrote first."""
        raw = self._cipher.encrypt(new.to_bytes())
        if await self.store.compare_and_swap(f"grant:{new.grant_id}", old.raw, raw):
            return LoadedGrant(new, raw)
        return None

    async def update_with(self, grant_id: str, edit: Callable[[Grant], Awaitable[Grant]], *,
                          loaded: LoadedGrant | None = None) -> Grant | None:
        """Replace the grant with ``edit(grant)`` by compare-and-swap; None if it is gone.

        The one retry loop for writing a grant: when someone wrote in between,
        the grant is read again and ``edit`` runs again on what is stored now
        (it may raise to give up). ``loaded`` spares the first read.
        """
        while True:
            if loaded is None:
                loaded = await self.load(grant_id)
                if loaded is None:
                    return None
            new = await edit(loaded.grant)
            if await self.replace(loaded, new):
                return new
            loaded = None

    async def update(self, grant_id: str, **changes: Any) -> Grant | None:
        """Apply field changes (stamping ``updated_at``); None if the grant is gone."""
        async def edit(grant: Grant) -> Grant:
            return dataclasses.replace(grant, updated_at=time.time(), **changes)

        return await self.update_with(grant_id, edit)

    async def delete(self, grant_id: str) -> bool:
        """Remove a grant, its user index and every key that opens it.

        Its aliases are kept a while as refusals (:meth:`end_aliases`), so a
        refresh token of a deleted grant is not proven afresh at Twitch.
        """
        grant = await self.get(grant_id)
        if grant is None:
            return False
        for record in await self.keys_of(grant_id):
            await self.store.delete(f"key:{record[0]}")
        if grant.user_id and await self.grant_of_user(grant.user_id) == grant_id:
            await self.store.delete(f"user:{grant.user_id}")
        await self.end_aliases(grant_id)
        return await self.store.delete(f"grant:{grant_id}")

    async def all_ids(self) -> list[str]:
        """Every grant id (admin and validator only: it scans the store)."""
        return sorted(key.removeprefix("grant:") for key in await self.store.keys("grant:"))

    async def check_cipher(self) -> None:
        """Raise DecryptionFailed unless a stored grant decrypts with this cipher.

        Run at start-up, so a wrong or missing key is one clear error there
        instead of a failure on every request. Reads one grant (there is one
        key for all of them); an empty store passes.
        """
        for key in await self.store.keys("grant:"):
            raw = await self.store.get(key)
            if raw is not None:
                self._cipher.decrypt(raw)
                return

    # -- login states ---------------------------------------------------------------

    async def put_state(self, state: str, data: dict[str, Any], ttl: float) -> None:
        """Remember a pending /login for ``ttl`` seconds."""
        await self.store.put(f"state:{state}", json.dumps(data).encode(), ttl=ttl)

    async def peek_state(self, state: str) -> dict[str, Any] | None:
        """A pending login, without using it up."""
        raw = await self.store.get(f"state:{state}")
        return json.loads(raw) if raw else None

    async def consume_state(self, state: str) -> bool:
        """Use a state up; True for exactly one caller."""
        return await self.store.delete(f"state:{state}")
