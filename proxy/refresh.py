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
   grant ``needs_reauth`` and Twitch is not asked again for it; a 5xx or a
   timeout keeps the token and raises a retryable error.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .errors import ReauthorizationRequired, TwitchRefused, UpstreamError
from .grants import ACTIVE, NEEDS_REAUTH, Grant, GrantStore, LoadedGrant, token_hash
from .store.base import DEFAULT_LOCK_LEASE, DEFAULT_LOCK_WAIT, StoreUnavailable
from .twitch import TokenSet, TwitchClient

__all__ = ["EXPIRY_MARGIN", "AppTokenProvider", "RefreshOutcome", "Refresher", "new_grant_id"]

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


def new_grant_id() -> str:
    """A fresh, public, non-secret grant id."""
    return "g_" + secrets.token_hex(8)


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
        self._flights: dict[str, asyncio.Task[Grant]] = {}
        # Rotations Twitch made that the store could not take (it was away):
        # grant id -> (the refresh token Twitch spent, the new pair). Written
        # on the grant's next refresh instead of spending a dead token.
        self._unsaved: dict[str, tuple[str, TokenSet]] = {}

    # -- public API ----------------------------------------------------------------

    async def refresh(self, grant_id: str, *, stale_access_token: str) -> Grant:
        """A grant whose access token is no longer ``stale_access_token``.

        Refreshes at most once for all concurrent callers; returns the grant as
        somebody else rotated it when that already happened.
        """
        return await self._single_flight(
            f"grant:{grant_id}", lambda: self._refresh_locked(grant_id, stale_access_token)
        )

    async def ensure_fresh(self, grant: Grant) -> Grant:
        """``grant`` itself, or its refreshed self when expired or about to be."""
        if grant.state != ACTIVE:
            raise self._reauth()
        if grant.expires_at - time.time() > EXPIRY_MARGIN:
            return grant
        return await self.refresh(grant.grant_id, stale_access_token=grant.access_token)

    async def exchange(self, refresh_token: str) -> Grant:
        """What ``POST /refresh`` does with a refresh token a widget sent.

        A token of a grant the proxy holds refreshes that grant (once for all
        callers); a token it rotated recently, or adopted from an old widget,
        gets the grant's current pair; an unknown token is refreshed at Twitch
        and the result kept as a new grant so that its rotation is remembered.
        """
        ref = await self._grants.find_refresh_token(refresh_token)
        if ref is not None:
            # A moment-stale grant is fine here: a refresh reloads under the lock.
            grant = await self._grants.cached_grant(ref.grant_id)
            if grant is not None:
                if grant.refresh_token == refresh_token:
                    if grant.state != ACTIVE:
                        raise self._reauth()
                    return await self.refresh(grant.grant_id,
                                              stale_access_token=grant.access_token)
                self._on_outcome(RefreshOutcome.COALESCED)
                return await self.ensure_fresh(grant)
        return await self._single_flight(
            f"rt:{token_hash(refresh_token)}", lambda: self._adopt_locked(refresh_token)
        )

    async def adopt(self, access_token: str, refresh_token: str) -> Grant:
        """The grant behind an old widget's pair, created on first sight.

        The refresh token is indexed as ``adopted``, so this same stale pair
        keeps opening the grant forever, however often it rotates.
        """
        ref = await self._grants.find_refresh_token(refresh_token)
        if ref is not None:
            grant = await self._grants.get(ref.grant_id)
            if grant is not None:
                if ref.kind != "adopted":
                    # The widget cannot save a rotated token: its pair must keep
                    # working after the replay window too.
                    await self._grants.index_refresh_token(refresh_token, grant.grant_id,
                                                           "adopted")
                return grant
        return await self._single_flight(
            f"rt:{token_hash(refresh_token)}",
            lambda: self._adopt_pair_locked(access_token, refresh_token),
        )

    async def aclose(self) -> None:
        """Let refreshes in flight finish (their rotations must be stored)."""
        if self._flights:
            await asyncio.gather(*self._flights.values(), return_exceptions=True)

    # -- flights ---------------------------------------------------------------------

    async def _single_flight(self, name: str, work: Callable[[], Awaitable[Grant]]) -> Grant:
        task = self._flights.get(name)
        if task is None:
            task = asyncio.ensure_future(self._locked(name, work))
            self._flights[name] = task
            task.add_done_callback(lambda _: self._flights.pop(name, None))
        else:
            self._on_outcome(RefreshOutcome.COALESCED)
        # shield: a caller that goes away must not cancel a rotation in progress.
        return await asyncio.shield(task)

    async def _locked(self, name: str, work: Callable[[], Awaitable[Grant]]) -> Grant:
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
        would lose the grant (twitch-facts: refresh tokens are single use).
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

    async def _adopt_locked(self, refresh_token: str) -> Grant:
        # Another process may have adopted this token while we waited.
        ref = await self._grants.find_refresh_token(refresh_token)
        grant = await self._grants.get(ref.grant_id) if ref else None
        if grant is not None:
            if grant.refresh_token == refresh_token:  # became a grant's current token
                return await self.refresh(grant.grant_id, stale_access_token=grant.access_token)
            self._on_outcome(RefreshOutcome.COALESCED)
            return await self.ensure_fresh(grant)
        tokens = await self._call_twitch(None, refresh_token)
        now = time.time()
        grant = Grant(
            grant_id=new_grant_id(), user_id=None, login=None, scopes=tokens.scopes,
            access_token=tokens.access_token, refresh_token=tokens.refresh_token,
            expires_at=tokens.expires_at(now), created_at=now, updated_at=now,
            last_refresh_at=now,
        )
        await self._grants.create(grant)
        await self._remember_rotated(refresh_token, grant.grant_id)
        _log_outcome(RefreshOutcome.SUCCESS, grant.grant_id, note="new grant from /refresh")
        return grant

    async def _adopt_pair_locked(self, access_token: str, refresh_token: str) -> Grant:
        ref = await self._grants.find_refresh_token(refresh_token)
        if ref is not None:
            grant = await self._grants.get(ref.grant_id)
            if grant is not None:
                return grant
        identity = await self._twitch.validate(access_token)
        now = time.time()
        grant = Grant(
            grant_id=new_grant_id(),
            user_id=identity.user_id if identity else None,
            login=identity.login if identity else None,
            scopes=identity.scopes if identity else (),
            access_token=access_token, refresh_token=refresh_token,
            # Unknown or dead access token: due now, refreshed on first use.
            expires_at=now + identity.expires_in if identity else now,
            created_at=now, updated_at=now, last_validated_at=now if identity else None,
        )
        await self._grants.create(grant)
        await self._grants.index_refresh_token(refresh_token, grant.grant_id, "adopted")
        log.info("adopted an old widget's refresh token as grant=%s", grant.grant_id)
        return grant

    async def _remember_rotated(self, refresh_token: str, grant_id: str) -> None:
        """Keep a spent refresh token replayable for ``replay_window`` seconds."""
        if self._replay_window > 0:
            await self._grants.index_refresh_token(
                refresh_token, grant_id, "rotated", ttl=self._replay_window
            )
        else:
            await self._grants.forget_refresh_token(refresh_token)

    async def _call_twitch(self, grant_id: str | None, refresh_token: str) -> TokenSet:
        try:
            return await self._twitch.refresh(refresh_token)
        except TwitchRefused as exc:
            if exc.permanent and grant_id is not None:
                self._on_outcome(RefreshOutcome.PERMANENT_FAILURE)
                await self._grants.update(grant_id, state=NEEDS_REAUTH)
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
        """Write Twitch's new pair; retried against concurrent non-token edits."""
        old = loaded.grant
        ref = await self._grants.find_refresh_token(old.refresh_token)
        # Index the new token first: if we die after this, the token is findable.
        await self._grants.index_refresh_token(tokens.refresh_token, old.grant_id, "current")
        now = time.time()
        while True:
            new = dataclasses.replace(
                loaded.grant,
                access_token=tokens.access_token, refresh_token=tokens.refresh_token,
                expires_at=tokens.expires_at(now), scopes=tokens.scopes or loaded.grant.scopes,
                state=ACTIVE, updated_at=now, last_refresh_at=now,
            )
            if await self._grants.replace(loaded, new):
                break
            # Someone changed the record (a state or validation stamp) without
            # the refresh lock: apply our tokens on top of their version.
            reloaded = await self._grants.load(old.grant_id)
            if reloaded is None:
                break
            loaded = reloaded
        # An old widget's adopted pair stays adopted forever; others are replayed
        # for the window only.
        if ref is None or ref.kind != "adopted":
            await self._remember_rotated(old.refresh_token, old.grant_id)
        self._on_outcome(RefreshOutcome.SUCCESS)
        _log_outcome(RefreshOutcome.SUCCESS, old.grant_id)
        return new


class AppTokenProvider:
    """The app access token (client_credentials) for calls without a user.

    App tokens cannot be refreshed, only minted again (twitch-facts). One is
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
