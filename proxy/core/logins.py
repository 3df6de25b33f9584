"""Logins and the end of chains: a user's grant created or renewed, ended, or purged.

A login (:meth:`Logins.store_login`) gives the user's grant a new token chain,
or keeps a working one it would not widen; a revocation, a permanent refusal
by Twitch or the admin ends the chain (:meth:`Logins.end_chain`): none of its
refresh-token aliases opens anything again (:mod:`proxy.core.grants`), and a
rotation racing with the end is revoked at Twitch instead of written. All of it
runs under the grant's refresh lock (:mod:`proxy.core.grant_locks`).
"""

from __future__ import annotations

import dataclasses
import logging
import time

from ..errors import (
    ReauthorizationRequired,
    ScopesNarrowed,
    TwitchRefused,
    UpstreamBadResponse,
    UpstreamError,
)
from ..upstream.twitch import Identity, TokenSet
from .grant_locks import GrantLocks
from .grant_records import ACTIVE, NEEDS_REAUTH, Grant, new_chain

__all__ = ["Logins"]

#: Every event of a token chain (refresh, login, proof, end) is logged under
#: this one name, the one operators filter refresh outcomes on.
log = logging.getLogger("proxy.core.refresh")


class Logins(GrantLocks):
    """A login stored, a chain ended, a dead grant purged; part of the Refresher."""

    async def store_login(self, identity: Identity, tokens: TokenSet) -> Grant:
        """The user's grant after a login: new, or the existing one on a new chain.

        The existing grant keeps its id and its proxy keys; every refresh-token
        alias of its old chain ends. Any page the user visits can send them
        through /login, and Twitch skips its consent page for scopes already
        granted, so a login that would not widen an active, working grant
        changes nothing: with fewer scopes it is refused
        (:class:`ScopesNarrowed`), with the same ones the grant keeps its chain;
        either way the login's new tokens are revoked.
        """
        assert identity.user_id is not None
        existing = await self._grants.grant_of_user(identity.user_id)
        if existing is None:
            now = time.time()
            grant = Grant.new(
                user_id=identity.user_id, login=identity.login,
                scopes=tokens.scopes or identity.scopes, access_token=tokens.access_token,
                refresh_token=tokens.refresh_token, expires_at=tokens.expires_at(now), now=now,
                last_validated_at=now,
            )
            await self._grants.create(grant)
            if await self._grants.claim_user(identity.user_id, grant.grant_id):
                return grant
            # Another login of this user claimed it first: ours joins that grant.
            await self._grants.delete(grant.grant_id)
            existing = await self._grants.grant_of_user(identity.user_id)
            if existing is None:
                raise UpstreamBadResponse("Two logins of one user collided; log in again.")
        grant_id = existing
        return await self._locked(f"grant:{grant_id}",
                                  lambda: self._relogin_locked(grant_id, identity, tokens))

    async def end_chain(self, grant_id: str, *, revoke_at_twitch: bool) -> bool:
        """End the grant's chain: ``needs_reauth``, and none of its aliases opens again.

        With ``revoke_at_twitch`` the refresh and access tokens are revoked at
        Twitch too; returns whether Twitch knew the refresh token. Runs under
        the grant's refresh lock, so a refresh in flight cannot revive it.
        """
        async def work() -> bool:
            grant = await self._grants.get(grant_id)
            if grant is None:
                return False
            revoked = False
            if revoke_at_twitch:
                # The refresh token, and every access token of the chain that may
                # still work: Twitch revokes token by token.
                refresh_token, *access_tokens = grant.given_out()
                revoked = await self._twitch.revoke(refresh_token)
                await self._twitch.revoke_quietly(*access_tokens)
            await self._end_locked(grant_id)
            return revoked

        return await self._locked(f"grant:{grant_id}", work)

    async def purge_if_dead(self, grant_id: str, *, dead_for: float) -> bool:
        """Delete the grant if it has been ``needs_reauth`` for ``dead_for`` seconds.

        Decided and done under the grant's refresh lock, which a login takes
        too: a login bringing the grant back cannot be lost to the purge.
        """
        async def work() -> bool:
            grant = await self._grants.get(grant_id)
            if grant is None or grant.state != NEEDS_REAUTH \
                    or time.time() - grant.updated_at <= dead_for:
                return False
            return await self._grants.delete(grant_id)

        return await self._locked(f"grant:{grant_id}", work)

    async def _relogin_locked(self, grant_id: str, identity: Identity,
                              tokens: TokenSet) -> Grant:
        scopes = tokens.scopes or identity.scopes
        now = time.time()
        current = await self._grants.get(grant_id)
        if current is not None and current.user_id != identity.user_id:
            # The user index named another user's grant: never write one user's
            # tokens into another's grant, nor hand theirs out.
            await self._twitch.revoke_quietly(tokens.refresh_token, tokens.access_token)
            log.warning("login of user %s found grant=%s of another user in its index",
                        identity.user_id, grant_id)
            raise UpstreamBadResponse("This login could not be stored; start again.")
        if current is not None and current.state == ACTIVE \
                and set(current.scopes) == set(scopes):
            working = await self._working(current)
            if working is not None:
                # Nothing to add, and the chain still works: keep it, so that a
                # page sending the user through /login cannot end their widgets'
                # tokens.
                await self._twitch.revoke_quietly(tokens.refresh_token, tokens.access_token)
                log.info("login grant=%s added nothing to a working grant: its chain is kept",
                         grant_id)
                return working
        async def start_chain(old: Grant) -> Grant:
            lost = sorted(set(old.scopes) - set(scopes))
            if old.state == ACTIVE and lost:
                await self._twitch.revoke_quietly(tokens.refresh_token, tokens.access_token)
                raise ScopesNarrowed(
                    "This login asked Twitch for fewer permissions than your widgets already "
                    f"have (missing: {' '.join(lost)}), so nothing was changed and its new "
                    "tokens were revoked. To keep every permission, log in again with all "
                    "of them; to drop some, revoke your key first.",
                    missing_scopes=lost,
                    scopes=sorted(set(old.scopes) | set(scopes)),
                )
            new = dataclasses.replace(
                old, user_id=identity.user_id, login=identity.login, scopes=scopes,
                access_token=tokens.access_token, refresh_token=tokens.refresh_token,
                expires_at=tokens.expires_at(now), state=ACTIVE, chain=new_chain(),
                updated_at=now, last_validated_at=now,
                # The old chain's access tokens that still work stay revocable
                # with the grant (its refresh token is refused here for good).
                earlier_access_tokens=old.rotated(now=now) if old.state == ACTIVE else (),
            )
            await self._grants.index_refresh_token(new.refresh_token, grant_id, "current",
                                                   chain=new.chain)
            return new

        new = await self._grants.update_with(grant_id, start_chain)
        if new is None:
            raise UpstreamBadResponse("The grant was deleted during the login; log in again.")
        # A login starts a new chain: every alias of the old one ends here.
        await self._grants.end_aliases(grant_id, keep_chain=new.chain)
        log.info("login grant=%s started a new token chain", grant_id)
        return new

    async def _working(self, grant: Grant) -> Grant | None:
        """The grant if Twitch still accepts its chain (refreshed when only expired), else None.

        Called under the grant's refresh lock, so it refreshes in place. None
        too when Twitch cannot say right now: the login then replaces the chain.
        """
        try:
            identity = await self._twitch.validate(grant.access_token)
            if identity is not None and identity.user_id == grant.user_id:
                return grant
            # Expired, or revoked: only a refresh tells which.
            return await self._refresh_locked(grant.grant_id, grant.access_token)
        except (ReauthorizationRequired, TwitchRefused, UpstreamError):
            return None
