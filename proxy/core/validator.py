"""Hourly validation of every grant's access token, as Twitch requires.

Twitch: "Any third-party app that calls the Twitch APIs and maintains an OAuth
session must call the /validate endpoint ... when it starts and on an hourly
basis thereafter." The :class:`Validator` does that for every active grant:

- **valid**: ``last_validated_at`` is stamped on the grant, and its expiry is
  taken from Twitch's ``expires_in``;
- **invalid** (401): the grant is refreshed through
  :class:`~proxy.core.refresh.Refresher` (the only place refresh happens); a
  permanent refusal there marks the grant ``needs_reauth``, which ``/status``
  shows;
- **Twitch failing** (5xx, timeout, unreachable) during validation or refresh:
  the grant is left as it is and tried again at the next sweep;
- **needs_reauth for longer than** ``auth.purge_needs_reauth_after`` (30 days
  by default; 0: never): the grant is deleted with its keys and user index
  (:meth:`~proxy.core.grants.GrantStore.delete`), so a widget's key to it gets 401
  ``invalid_proxy_key``. The age is counted from ``updated_at``, stamped when
  the grant became needs_reauth; nothing writes a needs_reauth grant again but
  a new login, which makes it active. One log line per purge, grant id only.

Once per interval in total, however many processes run. Every process has a
validator, but a grant is validated only by the one that *claims* it: a
``validated:<grant_id>`` store key written with compare-and-swap (absent ->
ours) that lives ``auth.validate_interval`` seconds. A process sweeps at start
and then every :attr:`Validator.sweep_period` seconds (the interval, or
:data:`MAX_SWEEP_PERIOD` when that is shorter), validating the grants nobody
claimed within the interval; so a process that died leaves its share to the
others within one sweep. When Twitch failed, the claim is given back, so the
next sweep (of any process) tries again. A purge is decided under the same
claim, so one process alone deletes a grant.

A restart within the interval does not validate again the grants that were
validated less than an interval ago: the claims are in the shared store, and
the session was checked within the hour, which is what Twitch asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from ..errors import (
    DecryptionFailed,
    ReauthorizationRequired,
    StoreUnavailable,
    TwitchRefused,
    UpstreamError,
)
from ..upstream.twitch import TwitchClient
from .grant_records import ACTIVE, NEEDS_REAUTH, Grant
from .grants import GrantStore
from .refresh import Refresher

__all__ = ["CLAIM_PREFIX", "MAX_SWEEP_PERIOD", "ValidationOutcome", "Validator"]

log = logging.getLogger(__name__)

#: Store key prefix of the per-grant, per-interval validation claims.
CLAIM_PREFIX = "validated:"
#: Longest pause between two sweeps of one process (seconds): bounds how late a
#: grant is validated when the process that last claimed it is gone.
MAX_SWEEP_PERIOD = 300.0
#: Validations one process runs at once (each is one small call to Twitch).
CONCURRENT_VALIDATIONS = 8


class ValidationOutcome:
    """What happened to one grant in a sweep, as logged and returned."""

    VALID = "valid"
    REFRESHED = "refreshed"
    NEEDS_REAUTH = "needs_reauth"
    #: Twitch failed to validate; the grant is untouched, retried next sweep.
    UNAVAILABLE = "unavailable"
    #: The token was invalid but refreshing failed transiently; retried next sweep.
    REFRESH_FAILED = "refresh_failed"
    #: Validated elsewhere within the interval, gone, or not active.
    SKIPPED = "skipped"
    #: needs_reauth past ``auth.purge_needs_reauth_after``: deleted (not a validation).
    PURGED = "purged"


_RETRIED = frozenset({ValidationOutcome.UNAVAILABLE, ValidationOutcome.REFRESH_FAILED})
#: Outcomes that are no validation, so ``on_outcome`` is not told them.
_NOT_VALIDATED = frozenset({ValidationOutcome.SKIPPED, ValidationOutcome.PURGED})
_QUIET = frozenset({ValidationOutcome.VALID, ValidationOutcome.REFRESHED})


def _log_outcome(outcome: str, grant_id: str, *, level: int | None = None,
                 note: str | None = None, **details: str | None) -> None:
    """One line per validation, ``validation outcome=... grant_id=...``; structured in JSON."""
    fields = {"event": "validation", "outcome": outcome, "grant_id": grant_id, **details}
    text = " ".join(f"{key}={value}" for key, value in fields.items()
                    if key != "event" and value is not None)
    if level is None:
        level = logging.INFO if outcome in _QUIET else logging.WARNING
    log.log(level, "validation %s%s", text, f": {note}" if note else "",
            extra={"fields": fields})


class Validator:
    """Validates every active grant once per ``interval`` across all processes.

    ``purge_after`` (seconds; 0: never) deletes grants that have been
    needs_reauth that long; ``on_purged`` is told each one.
    """

    def __init__(self, grants: GrantStore, twitch: TwitchClient, refresher: Refresher, *,
                 interval: float, on_outcome: Callable[[str], None] | None = None,
                 purge_after: float = 0.0,
                 on_purged: Callable[[], None] | None = None) -> None:
        if interval <= 0:
            raise ValueError("the validation interval must be positive")
        self._grants = grants
        self._twitch = twitch
        self._refresher = refresher
        #: Told every outcome but SKIPPED and PURGED (the metrics count validations by outcome).
        self._on_outcome = on_outcome or (lambda outcome: None)
        self.purge_after = purge_after
        self._on_purged = on_purged or (lambda: None)
        self.interval = interval
        self.sweep_period = min(interval, MAX_SWEEP_PERIOD)
        # Written into this process's claims, so only we give them back.
        self._owner = secrets.token_hex(8).encode()
        self._task: asyncio.Task[None] | None = None
        #: Sweeps finished by this validator, and the outcomes of the last one.
        self.completed_sweeps = 0
        self.last_outcomes: dict[str, str] = {}

    # -- running in the background ---------------------------------------------

    async def start(self) -> None:
        """List the grants there are now and validate them in the background, then sweep on.

        Listing first means "at start" is exactly the grants that existed at
        start, not whatever a request creates a moment later.
        """
        try:
            first: list[str] | None = await self._grants.all_ids()
        except StoreUnavailable as exc:
            log.warning("validation deferred: the store is unavailable (%s)", exc)
            first = None
        self._task = asyncio.create_task(self._run(first), name="grant-validator")

    async def stop(self) -> None:
        """Stop sweeping; a validation in progress is abandoned (its claim expires)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self, first: list[str] | None) -> None:
        grant_ids = first
        while True:
            try:
                await self.sweep(grant_ids)
            except Exception:  # a bug must not end validation for good
                log.exception("validation sweep failed")
            grant_ids = None
            await asyncio.sleep(self.sweep_period)

    # -- one sweep ------------------------------------------------------------------

    async def sweep(self, grant_ids: list[str] | None = None) -> dict[str, str]:
        """Validate every grant (or those given) not claimed this interval; outcomes by id."""
        try:
            if grant_ids is None:
                grant_ids = await self._grants.all_ids()
        except StoreUnavailable as exc:
            log.warning("validation sweep skipped: the store is unavailable (%s)", exc)
            return {}
        limit = asyncio.Semaphore(CONCURRENT_VALIDATIONS)

        async def bounded(grant_id: str) -> str:
            async with limit:
                return await self.validate_grant(grant_id)

        outcomes = await asyncio.gather(*(bounded(grant_id) for grant_id in grant_ids))
        for outcome in outcomes:
            if outcome not in _NOT_VALIDATED:
                self._on_outcome(outcome)
        self.last_outcomes = dict(zip(grant_ids, outcomes, strict=True))
        self.completed_sweeps += 1
        return self.last_outcomes

    async def validate_grant(self, grant_id: str) -> str:
        """Claim ``grant_id`` for this interval and validate it; the outcome."""
        claim = CLAIM_PREFIX + grant_id
        store = self._grants.store
        try:
            if not await store.compare_and_swap(claim, None, self._owner, ttl=self.interval):
                return ValidationOutcome.SKIPPED  # another process (or sweep) has it
            outcome = await self._validate_claimed(grant_id)
            if outcome in _RETRIED and await store.get(claim) == self._owner:
                await store.delete(claim)
            return outcome
        except StoreUnavailable as exc:
            _log_outcome(ValidationOutcome.UNAVAILABLE, grant_id, error=exc.code,
                         note="the store is unavailable")
            return ValidationOutcome.UNAVAILABLE
        except DecryptionFailed as exc:
            _log_outcome(ValidationOutcome.SKIPPED, grant_id, level=logging.ERROR, note=str(exc))
            return ValidationOutcome.SKIPPED

    async def _validate_claimed(self, grant_id: str) -> str:
        grant = await self._grants.get(grant_id)
        if grant is not None and self._purge_due(grant):
            return await self._purge(grant_id)
        if grant is None or grant.state != ACTIVE:
            return ValidationOutcome.SKIPPED
        try:
            identity = await self._twitch.validate(grant.access_token)
        except UpstreamError as exc:
            _log_outcome(ValidationOutcome.UNAVAILABLE, grant_id, error=exc.code)
            return ValidationOutcome.UNAVAILABLE
        now = time.time()
        if identity is not None:
            await self._stamp(grant, last_validated_at=now,
                              expires_at=now + identity.expires_in)
            _log_outcome(ValidationOutcome.VALID, grant_id, login=grant.login)
            return ValidationOutcome.VALID
        try:
            refreshed = await self._refresher.refresh(grant_id,
                                                      stale_access_token=grant.access_token)
        except ReauthorizationRequired:
            _log_outcome(ValidationOutcome.NEEDS_REAUTH, grant_id, login=grant.login,
                         note="Twitch refused the refresh token; the user must log in again")
            return ValidationOutcome.NEEDS_REAUTH
        except (TwitchRefused, UpstreamError) as exc:
            _log_outcome(ValidationOutcome.REFRESH_FAILED, grant_id, error=exc.code)
            return ValidationOutcome.REFRESH_FAILED
        # Twitch has just issued this token, which is as good as validating it.
        await self._stamp(refreshed, last_validated_at=now)
        _log_outcome(ValidationOutcome.REFRESHED, grant_id, login=grant.login)
        return ValidationOutcome.REFRESHED

    def _purge_due(self, grant: Grant) -> bool:
        """Whether ``grant`` has been needs_reauth for longer than ``purge_after``."""
        return (self.purge_after > 0 and grant.state == NEEDS_REAUTH
                and time.time() - grant.updated_at > self.purge_after)

    async def _purge(self, grant_id: str) -> str:
        """Delete a grant that stayed needs_reauth too long.

        Under this interval's claim, so no other validator looks at it, and
        checked again under the grant's refresh lock, so a login bringing it
        back at that moment wins.
        """
        if not await self._refresher.purge_if_dead(grant_id, dead_for=self.purge_after):
            return ValidationOutcome.SKIPPED  # deleted or logged in again meanwhile
        self._on_purged()
        _log_outcome(ValidationOutcome.PURGED, grant_id, level=logging.INFO,
                     note="needs_reauth for longer than auth.purge_needs_reauth_after; "
                          "deleted with its keys")
        return ValidationOutcome.PURGED

    async def _stamp(self, seen: Grant, **changes: Any) -> None:
        """Record ``changes`` on the grant, unless its token changed since we saw it.

        A refresh may land between our validate call and this write; Twitch's
        answer was about the old token and must not touch the new one.
        """
        while True:
            loaded = await self._grants.load(seen.grant_id)
            if loaded is None or loaded.grant.access_token != seen.access_token:
                return
            new = dataclasses.replace(loaded.grant, updated_at=time.time(), **changes)
            if await self._grants.replace(loaded, new):
                return
