"""The records the proxy keeps about one authorization: the grant, its aliases, its keys.

A *grant* is one Twitch user's authorization of this app: the current access
and refresh token, their scopes and expiry, and whether it still works. Every
grant carries a *chain*: a random id for the run of tokens Twitch issued from
one authorization (a login, or an old widget's refresh token that Twitch
accepted). A refresh token the proxy honours is an alias
(:class:`RefreshTokenRef`) tied to the chain that proved it, and
:meth:`RefreshTokenRef.opens` is the whole rule of when it opens the grant.
A proxy key is a :class:`KeyRecord`. Plain data: where they are stored is
:mod:`proxy.core.grants` and :mod:`proxy.core.sealed_index`.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["ACTIVE", "MAX_EARLIER_ACCESS_TOKENS", "NEEDS_REAUTH", "Grant", "KeyRecord",
           "LoadedGrant", "RefreshTokenKind", "RefreshTokenRef", "new_chain", "new_grant_id"]

ACTIVE = "active"
NEEDS_REAUTH = "needs_reauth"

RefreshTokenKind = Literal["current", "rotated", "adopted"]

#: Earlier access tokens a grant remembers for revocation (see Grant.rotated).
MAX_EARLIER_ACCESS_TOKENS = 16

#: The chain of grants stored before chains existed.
_FIRST_CHAIN = "c0"


def new_grant_id() -> str:
    """A fresh, public, non-secret grant id."""
    return "g_" + secrets.token_hex(8)


def new_chain() -> str:
    """A fresh chain id (see the module docstring)."""
    return "c_" + secrets.token_hex(8)


@dataclass(frozen=True)
class Grant:
    """One user's tokens as the proxy holds them. Never logged: see ``__repr__``."""

    grant_id: str
    user_id: str | None
    login: str | None
    scopes: tuple[str, ...]
    access_token: str
    refresh_token: str
    expires_at: float
    state: str = ACTIVE
    created_at: float = 0.0
    updated_at: float = 0.0
    last_refresh_at: float | None = None
    last_validated_at: float | None = None
    #: The live token chain; None once it ended (revoked, refused by Twitch).
    chain: str | None = _FIRST_CHAIN
    #: Access tokens of this chain handed out before the current one and not yet
    #: expired, ``(token, expires_at)``: revoked with the grant (see ``given_out``).
    earlier_access_tokens: tuple[tuple[str, float], ...] = ()

    @classmethod
    def new(cls, *, user_id: str | None, login: str | None, scopes: tuple[str, ...],
            access_token: str, refresh_token: str, expires_at: float,
            now: float | None = None, **extra: Any) -> Grant:
        """A new grant on a new chain, stamped ``now``."""
        now = time.time() if now is None else now
        fields: dict[str, Any] = {"created_at": now, "updated_at": now, **extra}
        return cls(grant_id=new_grant_id(), user_id=user_id, login=login, scopes=scopes,
                   access_token=access_token, refresh_token=refresh_token,
                   expires_at=expires_at, chain=new_chain(), **fields)

    def rotated(self, *, now: float) -> tuple[tuple[str, float], ...]:
        """``earlier_access_tokens`` once the current access token is replaced.

        Expired tokens are dropped (they are dead at Twitch anyway), and at most
        :data:`MAX_EARLIER_ACCESS_TOKENS` are kept: normally one refresh every
        few hours leaves one or two alive.
        """
        # The refresher revokes the ones this drops (see live_access_tokens).
        return self.live_access_tokens(now=now)[-MAX_EARLIER_ACCESS_TOKENS:]

    def live_access_tokens(self, *, now: float) -> tuple[tuple[str, float], ...]:
        """The earlier access tokens not yet expired, then the current one."""
        alive = [(token, until) for token, until in self.earlier_access_tokens if until > now]
        alive.append((self.access_token, self.expires_at))
        return tuple(alive)

    def given_out(self) -> tuple[str, ...]:
        """Every token of the chain that may still work at Twitch: what revoking revokes."""
        live = self.live_access_tokens(now=time.time())
        return (self.refresh_token, *(token for token, _ in live))

    def __repr__(self) -> str:
        return (f"Grant(grant_id={self.grant_id!r}, login={self.login!r}, "
                f"state={self.state!r}, expires_at={self.expires_at!r})")

    def expires_in(self, now: float | None = None) -> int:
        """Whole seconds until the access token expires (0 when it has)."""
        return max(0, int(self.expires_at - (time.time() if now is None else now)))

    def token_response(self) -> dict[str, Any]:
        """The grant's current pair in the shape of Twitch's token answer."""
        return {
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "expires_in": self.expires_in(),
            "scope": list(self.scopes),
            "token_type": "bearer",
        }

    def to_bytes(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Grant:
        fields = json.loads(data)
        fields["scopes"] = tuple(fields["scopes"])
        fields["earlier_access_tokens"] = tuple(
            (token, until) for token, until in fields.get("earlier_access_tokens", ()))
        return cls(**fields)  # records from before chains get the first chain


@dataclass(frozen=True)
class KeyRecord:
    """A proxy key as stored: which grant it opens, and its public id."""

    key_id: str
    grant_id: str
    created_at: float

    @classmethod
    def from_value(cls, data: Any) -> KeyRecord | None:
        """A key record from its unsealed index value; None for anything of another shape."""
        try:
            return cls(key_id=str(data["key_id"]), grant_id=str(data["grant_id"]),
                       created_at=float(data["created_at"]))
        except (TypeError, KeyError, ValueError):
            return None


@dataclass(frozen=True)
class RefreshTokenRef:
    """An alias: a refresh token the proxy was shown, and the chain it belongs to."""

    grant_id: str
    kind: RefreshTokenKind
    chain: str | None = _FIRST_CHAIN
    #: Wall-clock end of a rotated token's replay window (None: no end of its own).
    until: float | None = None

    @classmethod
    def from_value(cls, data: Any) -> RefreshTokenRef | None:
        """An alias from its unsealed index value; None for anything of another shape."""
        try:
            return cls(grant_id=str(data["grant_id"]), kind=data["kind"],
                       chain=data.get("chain", _FIRST_CHAIN), until=data.get("until"))
        except (TypeError, KeyError, AttributeError):
            return None

    def opens(self, grant: Grant | None, now: float | None = None) -> bool:
        """Whether this alias still opens ``grant``: the whole rule, in one place.

        The grant must be active and still on the chain that proved the token,
        and a rotated token must be inside its replay window.
        """
        if grant is None or grant.state != ACTIVE or grant.chain is None:
            return False
        if grant.grant_id != self.grant_id or grant.chain != self.chain:
            return False
        return self.until is None or self.until > (time.time() if now is None else now)


@dataclass(frozen=True)
class LoadedGrant:
    """A grant together with the exact stored bytes, for compare-and-swap."""

    grant: Grant
    raw: bytes
