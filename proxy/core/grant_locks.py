"""What refreshing, logging in and proving a pair share: the per-grant locks and flights.

Every change of a grant's token chain runs under the store's per-grant lock
(``refresh:grant:<id>``, or ``refresh:rt:<hash>`` for a refresh token not yet
known), inside a *single flight*: concurrent callers in this process share one
task, shielded from the request that started it, so a client hanging up cannot
cancel the write of a token Twitch already rotated. :class:`GrantLocks` holds
that machinery and the two chain operations all three need (ending a chain,
remembering a spent refresh token); the refresh itself is
:class:`proxy.core.refresh.Refresher`, the only code that spends a refresh token.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ..errors import ReauthorizationRequired
from ..store.base import DEFAULT_LOCK_LEASE, DEFAULT_LOCK_WAIT
from ..upstream.twitch import TokenSet, TwitchClient
from .grant_records import NEEDS_REAUTH, Grant, RefreshTokenRef
from .grants import GrantStore

__all__ = ["GrantLocks", "RefreshOutcome", "log_refresh_outcome"]

#: Every event of a token chain (refresh, login, proof, end) is logged under
#: this one name, the one operators filter refresh outcomes on.
log = logging.getLogger("proxy.core.refresh")

T = TypeVar("T")


class RefreshOutcome:
    """Names of refresh outcomes, as counted and logged."""

    SUCCESS = "success"
    COALESCED = "coalesced"
    PERMANENT_FAILURE = "permanent_failure"
    TRANSIENT_FAILURE = "transient_failure"


def log_refresh_outcome(outcome: str, grant_id: str | None, **details: str | int) -> None:
    """One line per refresh, ``refresh outcome=... grant=...``; structured in JSON logs."""
    fields: dict[str, str | int | None] = {"event": "refresh", "outcome": outcome,
                                           "grant_id": grant_id, **details}
    text = " ".join(f"{key}={value}" for key, value in fields.items()
                    if key not in ("event", "note") and value is not None)
    note = f" ({details['note']})" if "note" in details else ""
    level = logging.INFO if outcome == RefreshOutcome.SUCCESS else logging.WARNING
    log.log(level, "refresh %s%s", text, note, extra={"fields": fields})


class GrantLocks(ABC):
    """Single flights and per-grant locks; the base of :class:`proxy.core.refresh.Refresher`."""

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

    async def aclose(self) -> None:
        """Let refreshes in flight finish (their rotations must be stored)."""
        if self._flights:
            await asyncio.gather(*self._flights.values(), return_exceptions=True)

    # -- the refresh, implemented by proxy.core.refresh.Refresher only ----------------

    @abstractmethod
    async def refresh(self, grant_id: str, *, stale_access_token: str,
                      chain: str | None = None) -> Grant:
        """A grant whose access token is no longer ``stale_access_token``."""

    @abstractmethod
    async def ensure_fresh(self, grant: Grant, *, chain: str | None = None) -> Grant:
        """``grant`` itself, or its refreshed self when expired or about to be."""

    @abstractmethod
    async def _refresh_locked(self, grant_id: str, stale_access_token: str) -> Grant:
        """The refresh, under the grant's lock (the caller holds it)."""

    @abstractmethod
    async def _call_twitch(self, grant_id: str | None, refresh_token: str) -> TokenSet:
        """Spend ``refresh_token`` at Twitch, counting and logging the outcome."""

    # -- flights and locks ----------------------------------------------------------------

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

    def _on_chain(self, grant: Grant, chain: str | None) -> Grant:
        if chain is not None and grant.chain != chain:
            raise self._reauth()
        return grant

    # -- chain operations, always under the grant's lock ----------------------------------

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
