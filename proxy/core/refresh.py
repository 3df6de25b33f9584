"""Where refresh happens: the only code that spends a refresh token.

``/refresh``, ``/helix/*`` and the hourly validator all come here. Logins
(:mod:`proxy.core.logins`) and the tokens widgets bring (:mod:`proxy.core.pairs`)
are parts of the same :class:`Refresher` and refresh through here. Rules:

1. **Single flight.** Concurrent refreshes of one grant in this process share
   one task; across processes they serialise on the store's per-grant lock.
2. **Reload before refresh.** Under the lock the grant is read again; if its
   access token is no longer the one the caller saw fail, somebody already
   rotated it and the current grant is returned without calling Twitch
   (oauth2-proxy does the same across replicas).
3. **Never lose a rotation.** The refresh runs in its own task, shielded from
   the request that started it, so a client hanging up cannot cancel the write
   of a token Twitch already rotated. The new refresh token is indexed before
   the grant is swapped, and the swap is a compare-and-swap.
4. **Replay.** A refresh token the proxy rotated less than ``replay_window``
   seconds ago gets the grant's current pair instead of Twitch's "Invalid
   refresh token", because several copies of one widget share one token.
5. **Permanent vs transient.** Twitch refusing the refresh token marks the
   grant ``needs_reauth`` and ends its chain; Twitch is not asked again for
   it. A 5xx or a timeout keeps the token and raises a retryable error.
6. **Proven before stored.** A refresh token the proxy does not know opens
   nothing until Twitch accepted it: it is refreshed with our client secret,
   the new token is validated (our ``client_id``; with an old widget's pair,
   the same user as the pair's access token) and only then stored, as a new
   grant on a new chain that never claims the user's ``user:`` index.
7. **Chains end for good.** A login, a revocation or a permanent refusal
   ends the grant's chain (:mod:`proxy.core.logins`): none of its refresh-token
   aliases opens anything again, and a rotation racing with the end is
   revoked at Twitch instead of written.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from ..errors import StoreUnavailable, TwitchRefused, UpstreamError
from ..upstream.twitch import TokenSet
from .grant_locks import RefreshOutcome, log_refresh_outcome
from .grant_records import ACTIVE, Grant, LoadedGrant
from .logins import Logins
from .pairs import Pairs

__all__ = ["EXPIRY_MARGIN", "Refresher"]

log = logging.getLogger(__name__)

#: A token this close to its stored expiry is refreshed before it is used.
EXPIRY_MARGIN = 60.0


class Refresher(Logins, Pairs):
    """Refreshes grants once for everyone; see the module docstring for the rules.

    Logins and the end of chains are :class:`~proxy.core.logins.Logins`, the
    tokens widgets bring :class:`~proxy.core.pairs.Pairs`; both run under the
    locks of :class:`~proxy.core.grant_locks.GrantLocks` and refresh through here.
    """

    async def refresh(self, grant_id: str, *, stale_access_token: str,
                      chain: str | None = None) -> Grant:
        """A grant whose access token is no longer ``stale_access_token``.

        Refreshes at most once for all concurrent callers; returns the grant as
        somebody else rotated it when that already happened. With ``chain``
        (a caller that came with a refresh-token alias of that chain), a grant
        that has moved to another chain meanwhile is not handed out:
        :class:`ReauthorizationRequired`, as for any alias of an ended chain.
        """
        grant = await self._single_flight(
            f"grant:{grant_id}", lambda: self._refresh_locked(grant_id, stale_access_token)
        )
        return self._on_chain(grant, chain)

    async def ensure_fresh(self, grant: Grant, *, chain: str | None = None) -> Grant:
        """``grant`` itself, or its refreshed self when expired or about to be.

        ``chain`` as for :meth:`refresh`.
        """
        if grant.state != ACTIVE:
            raise self._reauth()
        if grant.expires_at - time.time() > EXPIRY_MARGIN:
            return self._on_chain(grant, chain)
        return await self.refresh(grant.grant_id, stale_access_token=grant.access_token,
                                  chain=chain)

    # -- the work, always under the store lock ----------------------------------------

    async def _refresh_locked(self, grant_id: str, stale_access_token: str) -> Grant:
        loaded = await self._grants.load(grant_id)
        if loaded is None:
            raise self._reauth()
        grant = loaded.grant
        if grant.access_token != stale_access_token:
            self._on_outcome(RefreshOutcome.COALESCED)
            if grant.state != ACTIVE:
                raise self._reauth()
            return grant
        unsaved = self._unsaved.get(grant_id)
        if unsaved is not None and unsaved[0] == grant.refresh_token:
            # Twitch already rotated this grant while the store was away.
            return await self._store_rotation_or_keep(loaded, unsaved[1])
        if grant.state != ACTIVE:
            raise self._reauth()
        tokens = await self._call_twitch(grant.grant_id, grant.refresh_token)
        return await self._store_rotation_or_keep(loaded, tokens)

    async def _store_rotation_or_keep(self, loaded: LoadedGrant, tokens: TokenSet) -> Grant:
        """Store a rotation; if the store is away, keep it in memory for the next try.

        Twitch has already spent the old refresh token, so dropping the new pair
        would lose the grant (Twitch's refresh tokens are single use).
        """
        grant_id = loaded.grant.grant_id
        try:
            grant = await self._store_rotation(loaded, tokens)
        except StoreUnavailable:
            self._unsaved[grant_id] = (loaded.grant.refresh_token, tokens)
            log.warning("refresh grant=%s rotated at Twitch but the store is unavailable: "
                        "kept in memory until it can be written", grant_id)
            raise
        self._unsaved.pop(grant_id, None)
        return grant

    async def _call_twitch(self, grant_id: str | None, refresh_token: str) -> TokenSet:
        try:
            return await self._twitch.refresh(refresh_token)
        except TwitchRefused as exc:
            if exc.permanent and grant_id is not None:
                self._on_outcome(RefreshOutcome.PERMANENT_FAILURE)
                await self._end_locked(grant_id)
                log_refresh_outcome(RefreshOutcome.PERMANENT_FAILURE, grant_id, status=exc.status,
                             note="grant needs re-authorization")
                raise self._reauth() from None
            self._on_outcome(RefreshOutcome.PERMANENT_FAILURE if exc.permanent
                             else RefreshOutcome.TRANSIENT_FAILURE)
            log_refresh_outcome(RefreshOutcome.PERMANENT_FAILURE if exc.permanent
                         else RefreshOutcome.TRANSIENT_FAILURE, grant_id, status=exc.status,
                         note="refused by Twitch")
            raise
        except UpstreamError as exc:
            self._on_outcome(RefreshOutcome.TRANSIENT_FAILURE)
            log_refresh_outcome(RefreshOutcome.TRANSIENT_FAILURE, grant_id, error=exc.code)
            raise

    async def _store_rotation(self, loaded: LoadedGrant, tokens: TokenSet) -> Grant:
        """Write Twitch's new pair; retried against concurrent non-token edits.

        If the grant's chain changed meanwhile (a login, a revocation, the
        admin), the rotation belongs to a chain that no longer exists: it is
        revoked at Twitch instead of written over the newer state.
        """
        old = loaded.grant
        ref = await self._grants.find_refresh_token(old.refresh_token)
        # Index the new token first: if we die after this, the token is findable.
        await self._grants.index_refresh_token(tokens.refresh_token, old.grant_id, "current",
                                               chain=old.chain)
        now = time.time()
        async def apply_tokens(current: Grant) -> Grant:
            # Run again when someone changed the record (a validation stamp, a
            # state) without the refresh lock: our tokens go onto what is stored.
            if (current.refresh_token != old.refresh_token or current.chain != old.chain
                    or current.state != ACTIVE):
                await self._grants.forget_refresh_token(tokens.refresh_token)
                await self._twitch.revoke_quietly(tokens.refresh_token, tokens.access_token)
                log.warning("refresh grant=%s: the chain ended while Twitch rotated it; the "
                            "new tokens were revoked", old.grant_id)
                raise self._reauth()
            return dataclasses.replace(
                current,
                access_token=tokens.access_token, refresh_token=tokens.refresh_token,
                expires_at=tokens.expires_at(now), scopes=tokens.scopes or current.scopes,
                updated_at=now, last_refresh_at=now,
                earlier_access_tokens=current.rotated(now=now),
            )

        new = await self._grants.update_with(old.grant_id, apply_tokens, loaded=loaded)
        if new is None:
            raise self._reauth()
        # Access tokens the grant can no longer remember are revoked now, so
        # that revoking the grant later still ends every one it gave out.
        remembered = {token for token, _ in new.earlier_access_tokens}
        await self._twitch.revoke_quietly(*(
            token for token, _ in old.live_access_tokens(now=now)
            if token not in remembered and token != new.access_token))
        # An old widget's adopted token stays an alias of the chain; others are
        # replayed for the window only.
        if ref is None or ref.kind != "adopted" or ref.chain != old.chain:
            await self._remember_rotated(old.refresh_token, new)
        self._on_outcome(RefreshOutcome.SUCCESS)
        log_refresh_outcome(RefreshOutcome.SUCCESS, old.grant_id)
        return new
