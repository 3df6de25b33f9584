"""What a widget's refresh token, or an old widget's token pair, opens.

``POST /refresh`` (:meth:`Pairs.exchange`) and an old widget's pair on
``/helix`` (:meth:`Pairs.open_alias`, :meth:`Pairs.prove_pair`) come here. A
refresh token the proxy knows is an alias of a grant's chain; one it does not
know opens nothing until Twitch accepted it: it is refreshed with our client
secret, the new token is validated (our ``client_id``; with an old widget's
pair, the same user as the pair's access token) and only then stored, as a new
grant on a new chain that never claims the user's ``user:`` index.
"""

from __future__ import annotations

import logging
import time

from ..errors import InvalidTwitchToken, TwitchRefused, UpstreamBadResponse, UpstreamError
from ..upstream.twitch import Identity, TokenSet
from .grant_locks import GrantLocks, RefreshOutcome, log_refresh_outcome
from .grant_records import Grant, RefreshTokenRef
from .sealed_index import token_hash

__all__ = ["Pairs"]

#: Every event of a token chain (refresh, login, proof, end) is logged under
#: this one name, the one operators filter refresh outcomes on.
log = logging.getLogger("proxy.core.refresh")


class Pairs(GrantLocks):
    """Refresh tokens and pairs widgets bring, opened or proven; part of the Refresher."""

    async def exchange(self, refresh_token: str) -> Grant:
        """What ``POST /refresh`` does with a refresh token a widget sent.

        The current token of a grant refreshes that grant (once for all
        callers); another alias the grant still honours gets its current pair;
        an alias of an ended chain is refused; an unknown token is proven at
        Twitch and kept as a new grant, so that its rotation is remembered.
        """
        found = await self.open_alias(refresh_token, promote=False)
        if found is None:
            grant, _ = await self._single_flight(
                f"rt:{token_hash(refresh_token)}", lambda: self._prove_locked(refresh_token))
            return grant
        grant, _ = found
        if grant.refresh_token == refresh_token:
            return await self.refresh(grant.grant_id, stale_access_token=grant.access_token,
                                      chain=grant.chain)
        self._on_outcome(RefreshOutcome.COALESCED)
        return await self.ensure_fresh(grant, chain=grant.chain)

    async def open_alias(self, refresh_token: str, *, promote: bool = True
                         ) -> tuple[Grant, RefreshTokenRef | None] | None:
        """The grant a known refresh token opens, with the alias to remember it by.

        None when the proxy has never seen the token (prove it with
        :meth:`prove_pair`); :class:`ReauthorizationRequired` when it is an
        alias of an ended chain or past its replay window. With ``promote``
        (an old widget's pair), the grant's *current* refresh token becomes an
        ``adopted`` alias of the chain: it is the widget's own original token,
        already proven, and the widget cannot save a rotation. The alias is
        None when it must not be remembered (a lookup that raced a rotation).
        """
        ref = await self._grants.find_refresh_token(refresh_token)
        if ref is None:
            return None
        grant = await self._grants.cached_grant(ref.grant_id)
        if grant is None or not ref.opens(grant):
            raise self._reauth()
        if ref.kind == "current":
            if promote:
                # Decided on the stored grant, not a cached copy: only the token
                # the grant holds right now may become a lasting alias.
                stored = await self._grants.get(ref.grant_id)
                if stored is not None and ref.opens(stored) \
                        and stored.refresh_token == refresh_token:
                    await self._grants.index_refresh_token(refresh_token, stored.grant_id,
                                                           "adopted", chain=stored.chain)
                    return stored, RefreshTokenRef(stored.grant_id, "adopted", stored.chain)
            if grant.refresh_token != refresh_token:
                return grant, None  # rotated a moment ago: its window is being written
        return grant, ref

    async def prove_pair(self, access_token: str, refresh_token: str
                         ) -> tuple[Grant, RefreshTokenRef | None]:
        """A new grant for an old widget's unknown pair, once Twitch proved it.

        Costs one validate, one refresh and one validate, once for all callers
        with this refresh token. A pair whose access token Twitch issued to
        another app is refused before any refresh; a pair whose two tokens
        belong to different users is refused and the new tokens revoked.
        """
        return await self._single_flight(
            f"rt:{token_hash(refresh_token)}",
            lambda: self._prove_locked(refresh_token, access_token=access_token))

    async def _prove_locked(self, refresh_token: str, *,
                            access_token: str | None = None
                            ) -> tuple[Grant, RefreshTokenRef | None]:
        """Prove an unknown refresh token at Twitch and keep it as a new grant.

        ``access_token`` is an old widget's half of the pair (None for
        ``POST /refresh``). Nothing is stored unless Twitch accepted the token.
        """
        # Another process may have proven this token while we waited.
        found = await self.open_alias(refresh_token, promote=False)
        if found is not None:
            self._on_outcome(RefreshOutcome.COALESCED)
            return await self.ensure_fresh(found[0], chain=found[0].chain), found[1]
        claimed = None
        if access_token is not None:
            claimed = await self._twitch.validate(access_token)
            if claimed is not None and (claimed.client_id != self._twitch.client_id
                                        or claimed.user_id is None):
                raise InvalidTwitchToken(
                    "This access token was not issued to this proxy's Twitch app for a user; "
                    "the proxy does not refresh it.")
        try:
            tokens = await self._call_twitch(None, refresh_token)
        except TwitchRefused as exc:
            if access_token is None or not exc.permanent:
                raise  # POST /refresh answers Twitch's own refusal, as the old tool did
            raise self._reauth() from None
        proven = await self._identity_of_new(tokens)
        if proven is not None and (proven.client_id != self._twitch.client_id
                                   or proven.user_id is None
                                   or (claimed is not None
                                       and proven.user_id != claimed.user_id)):
            await self._twitch.revoke_quietly(tokens.refresh_token, tokens.access_token)
            raise InvalidTwitchToken(
                "The access token and the refresh token do not belong to the same Twitch "
                "user of this app; nothing was stored.")
        now = time.time()
        grant = Grant.new(
            user_id=proven.user_id if proven else None, login=proven.login if proven else None,
            scopes=tokens.scopes or (proven.scopes if proven else ()),
            access_token=tokens.access_token, refresh_token=tokens.refresh_token,
            expires_at=tokens.expires_at(now), now=now, last_refresh_at=now,
            last_validated_at=now if proven else None,
        )
        await self._grants.create(grant)
        ref: RefreshTokenRef | None
        if access_token is None:
            # The widget got the new pair: its old token is replayed for the window.
            ref = await self._remember_rotated(refresh_token, grant)
            note = "new grant from /refresh"
        else:
            # An old widget's own original token: it can never save a rotation.
            await self._grants.index_refresh_token(refresh_token, grant.grant_id, "adopted",
                                                   chain=grant.chain)
            ref = RefreshTokenRef(grant.grant_id, "adopted", grant.chain)
            note = "adopted an old widget's pair"
        log_refresh_outcome(RefreshOutcome.SUCCESS, grant.grant_id, note=note)
        return grant, ref

    async def _identity_of_new(self, tokens: TokenSet) -> Identity | None:
        """Who a token Twitch just issued belongs to; None when Twitch cannot say now.

        Twitch has already spent the old refresh token, so a failing validate
        must not lose the new pair: the grant is kept without a user, and the
        hourly validation fills nothing in but still checks it.
        """
        try:
            identity = await self._twitch.validate(tokens.access_token)
        except UpstreamError as exc:
            log.warning("could not validate a newly refreshed token (%s); keeping it", exc.code)
            return None
        if identity is None:
            raise UpstreamBadResponse("Twitch did not confirm the token it just issued.")
        return identity
