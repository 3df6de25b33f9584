"""Where refresh happens: the only code that spends a refresh token.

``/refresh``, ``/helix/*`` and the hourly validator all come here. Rules:

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
   ends the grant's chain (:mod:`proxy.grants`): none of its refresh-token
   aliases opens anything again, and a rotation racing with the end is
   revoked at Twitch instead of written.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ..errors import (
    InvalidTwitchToken,
    ReauthorizationRequired,
    ScopesNarrowed,
    StoreUnavailable,
    TwitchRefused,
    UpstreamBadResponse,
    UpstreamError,
)
from ..store.base import DEFAULT_LOCK_LEASE, DEFAULT_LOCK_WAIT
from ..upstream.twitch import Identity, TokenSet, TwitchClient
from .grant_records import ACTIVE, NEEDS_REAUTH, Grant, LoadedGrant, RefreshTokenRef, new_chain
from .grants import GrantStore
from .sealed_index import token_hash

__all__ = ["EXPIRY_MARGIN", "AppTokenProvider", "RefreshOutcome", "Refresher"]

log = logging.getLogger(__name__)

#: A token this close to its stored expiry is refreshed before it is used.
EXPIRY_MARGIN = 60.0

T = TypeVar("T")


class RefreshOutcome:
    """Names of refresh outcomes, as counted and logged."""

    SUCCESS = "success"
    COALESCED = "coalesced"
    PERMANENT_FAILURE = "permanent_failure"
    TRANSIENT_FAILURE = "transient_failure"


def _log_outcome(outcome: str, grant_id: str | None, **details: str | int) -> None:
    """One line per refresh, ``refresh outcome=... grant=...``; structured in JSON logs."""
    fields: dict[str, str | int | None] = {"event": "refresh", "outcome": outcome,
                                           "grant_id": grant_id, **details}
    text = " ".join(f"{key}={value}" for key, value in fields.items()
                    if key not in ("event", "note") and value is not None)
    note = f" ({details['note']})" if "note" in details else ""
    level = logging.INFO if outcome == RefreshOutcome.SUCCESS else logging.WARNING
    log.log(level, "refresh %s%s", text, note, extra={"fields": fields})


class Refresher:
    """Refreshes grants once for everyone; see the module docstring for the rules."""

    def __init__(self, grants: GrantStore, twitch: TwitchClient, *, replay_window: float,
                 login_url: str, lock_lease: float = DEFAULT_LOCK_LEASE,
                 on_outcome: Callable[[str], None] | None = None) -> None:
        self._grants = grants
        self._twitch = twitch
        self._replay_window = replay_window
        self._login_url = login_url
        self._lock_lease = lock_lease
        self._on_outcome = on_outcome or (lambda outcome: None)
        self._flights: dict[str, asyncio.Task[Any]] = {}
        # Rotations Twitch made that the store could not take (it was away):
        # grant id -> (the refresh token Twitch spent, the new pair). Written
        # on the grant's next refresh instead of spending a dead token.
        self._unsaved: dict[str, tuple[str, TokenSet]] = {}

    # -- public API ----------------------------------------------------------------

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

    def _on_chain(self, grant: Grant, chain: str | None) -> Grant:
        if chain is not None and grant.chain != chain:
            raise self._reauth()
        return grant

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

    async def aclose(self) -> None:
        """Let refreshes in flight finish (their rotations must be stored)."""
        if self._flights:
            await asyncio.gather(*self._flights.values(), return_exceptions=True)

    # -- flights ---------------------------------------------------------------------

    async def _single_flight(self, name: str, work: Callable[[], Awaitable[T]]) -> T:
        task = self._flights.get(name)
        if task is None:
            task = asyncio.ensure_future(self._locked(name, work))
            self._flights[name] = task
            task.add_done_callback(lambda _: self._flights.pop(name, None))
        else:
            self._on_outcome(RefreshOutcome.COALESCED)
        # shield: a caller that goes away must not cancel a rotation in progress.
        result: T = await asyncio.shield(task)
        return result

    async def _locked(self, name: str, work: Callable[[], Awaitable[T]]) -> T:
        # Wait past the lease: a waiter must outlive a holder that died.
        wait = max(DEFAULT_LOCK_WAIT, self._lock_lease + 5.0)
        async with self._grants.store.lock(f"refresh:{name}", lease=self._lock_lease,
                                           wait=wait):
            return await work()

    def _reauth(self) -> ReauthorizationRequired:
        return ReauthorizationRequired(
            "Twitch no longer accepts this grant: log in again.", login_url=self._login_url
        )

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
        _log_outcome(RefreshOutcome.SUCCESS, grant.grant_id, note=note)
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
        while True:
            loaded = await self._grants.load(grant_id)
            if loaded is None:
                raise UpstreamBadResponse("The grant was deleted during the login; log in again.")
            old = loaded.grant
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
            if await self._grants.replace(loaded, new):
                break
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

    async def _end_locked(self, grant_id: str) -> None:
        """Mark the grant ``needs_reauth`` and end its chain and every alias."""
        await self._grants.update(grant_id, state=NEEDS_REAUTH, chain=None)
        await self._grants.end_aliases(grant_id)

    async def _remember_rotated(self, refresh_token: str, grant: Grant) -> RefreshTokenRef | None:
        """Keep a spent refresh token replayable for ``replay_window`` seconds.

        After the window it stays in the index a while as a refusal, so that it
        gets 401 here instead of costing a refresh Twitch would refuse.
        """
        await self._grants.index_refresh_token(
            refresh_token, grant.grant_id, "rotated", chain=grant.chain,
            window=self._replay_window,
        )
        if self._replay_window <= 0:
            return None
        return RefreshTokenRef(grant.grant_id, "rotated", grant.chain,
                               until=time.time() + self._replay_window)

    async def _call_twitch(self, grant_id: str | None, refresh_token: str) -> TokenSet:
        try:
            return await self._twitch.refresh(refresh_token)
        except TwitchRefused as exc:
            if exc.permanent and grant_id is not None:
                self._on_outcome(RefreshOutcome.PERMANENT_FAILURE)
                await self._end_locked(grant_id)
                _log_outcome(RefreshOutcome.PERMANENT_FAILURE, grant_id, status=exc.status,
                             note="grant needs re-authorization")
                raise self._reauth() from None
            self._on_outcome(RefreshOutcome.PERMANENT_FAILURE if exc.permanent
                             else RefreshOutcome.TRANSIENT_FAILURE)
            _log_outcome(RefreshOutcome.PERMANENT_FAILURE if exc.permanent
                         else RefreshOutcome.TRANSIENT_FAILURE, grant_id, status=exc.status,
                         note="refused by Twitch")
            raise
        except UpstreamError as exc:
            self._on_outcome(RefreshOutcome.TRANSIENT_FAILURE)
            _log_outcome(RefreshOutcome.TRANSIENT_FAILURE, grant_id, error=exc.code)
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
        while True:
            current = loaded.grant
            if (current.refresh_token != old.refresh_token or current.chain != old.chain
                    or current.state != ACTIVE):
                await self._grants.forget_refresh_token(tokens.refresh_token)
                await self._twitch.revoke_quietly(tokens.refresh_token, tokens.access_token)
                log.warning("refresh grant=%s: the chain ended while Twitch rotated it; the "
                            "new tokens were revoked", old.grant_id)
                raise self._reauth()
            new = dataclasses.replace(
                current,
                access_token=tokens.access_token, refresh_token=tokens.refresh_token,
                expires_at=tokens.expires_at(now), scopes=tokens.scopes or current.scopes,
                updated_at=now, last_refresh_at=now,
                earlier_access_tokens=current.rotated(now=now),
            )
            if await self._grants.replace(loaded, new):
                break
            # Someone changed the record (a validation stamp, a state) without
            # the refresh lock: look again before applying our tokens.
            reloaded = await self._grants.load(old.grant_id)
            if reloaded is None:
                raise self._reauth()
            loaded = reloaded
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
        _log_outcome(RefreshOutcome.SUCCESS, old.grant_id)
        return new


class AppTokenProvider:
    """The app access token (client_credentials) for calls without a user.

    App tokens cannot be refreshed, only minted again (Twitch's OAuth docs). One is
    minted on first use, kept in memory, and minted again, once for all
    concurrent callers, when Helix rejects it.
    """

    def __init__(self, twitch: TwitchClient) -> None:
        self._twitch = twitch
        self._token: str | None = None
        self._expires_at = 0.0
        self._flight: asyncio.Task[str] | None = None

    async def token(self) -> str:
        """A usable app token, minting one if there is none."""
        if self._token is not None and self._expires_at - time.time() > EXPIRY_MARGIN:
            return self._token
        return await self.renew(self._token)

    async def renew(self, rejected: str | None) -> str:
        """A token other than ``rejected``; mints at most once for all callers."""
        if self._token is not None and self._token != rejected:
            return self._token
        if self._flight is None:
            self._flight = asyncio.ensure_future(self._mint())
        return await asyncio.shield(self._flight)

    async def _mint(self) -> str:
        try:
            tokens = await self._twitch.app_token()
            self._token, self._expires_at = tokens.access_token, tokens.expires_at()
            log.info("minted an app access token")
            return tokens.access_token
        finally:
            self._flight = None
