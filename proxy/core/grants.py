"""Where tokens live: grants, proxy keys, refresh-token index and login states.

A *grant* is one Twitch user's authorization of this app: the current access
and refresh token, their scopes and expiry, and whether it still works. This
module maps grants onto the bytes-by-key :mod:`proxy.store` contract:

=========================  =====================================================
key                        value (JSON; all but states and claims encrypted)
=========================  =====================================================
``grant:<grant_id>``       the :class:`Grant`, encrypted with the store cipher
``user:<user_id>``         sealed: the grant id of that Twitch user's login (one
                           per user; only a login writes it, never over another)
``key:<sha256(key)>``      sealed: ``{"grant_id", "key_id", "created_at"}``
``rt:<sha256(token)>``     sealed: an *alias* ``{"grant_id", "chain", "kind",
                           "until"}`` for a refresh token the proxy honours
``state:<state>``          a pending /login (single use, expires)
``validated:<grant_id>``   who validates the grant this interval
                           (:mod:`proxy.validator`; expires)
=========================  =====================================================

**Chains and aliases.** Every grant carries a *chain*: a random id for the run
of tokens Twitch issued from one authorization (a login, or an old widget's
refresh token that Twitch accepted). A refresh token the proxy honours is an
alias tied to the chain that proved it: ``current`` (the grant's own refresh
token), ``rotated`` (one the proxy spent, honoured until ``until``: the replay
window) or ``adopted`` (an old widget's own original token, proven at Twitch,
honoured as long as the chain lives). :meth:`RefreshTokenRef.opens` is the
whole rule. A chain ends when the grant is revoked, deleted or refused by
Twitch (``chain`` becomes None) and when a login replaces it (one that widens
the scopes or finds the chain dead); no alias of an ended chain opens anything
again, whatever the grant becomes later.

Proxy keys and refresh tokens are only ever stored as SHA-256 hashes (they are
long random strings, so a fast hash is enough). The values of ``key:``,
``rt:`` and ``user:`` entries are sealed with the store cipher like grants
(Fernet authenticates what it decrypts), together with the entry's own name,
so whoever can write to the store but lacks the encryption key can neither
forge an entry nor copy one under another name: an entry that does not
unseal for its name opens nothing. Entries a version before sealing wrote in
clear are sealed only by ``twitch-proxy grants reencrypt``
(:meth:`GrantStore.seal_index`), never at start-up. Every write that replaces a
grant is a compare-and-swap against the exact bytes that were read, so two
writers can never silently lose a rotated refresh token.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import DecryptionFailed
from ..store.base import TokenStore
from ..store.crypto import Cipher

__all__ = ["ACTIVE", "SPENT_ALIAS_TTL", "NEEDS_REAUTH", "Grant", "GrantStore", "KeyRecord",
           "RefreshTokenRef", "new_chain", "new_grant_id", "new_proxy_key", "token_hash"]

ACTIVE = "active"
NEEDS_REAUTH = "needs_reauth"
PROXY_KEY_PREFIX = "tpk_"

RefreshTokenKind = Literal["current", "rotated", "adopted"]

log = logging.getLogger(__name__)

#: Index prefixes whose values are sealed (see the module docstring).
SEALED_PREFIXES = ("key:", "rt:", "user:")
#: Set once a start-up scan found every index entry sealed (GrantStore.unsealed_entries).
INDEX_CHECKED = "index:checked"

#: How long a rotated refresh token stays in the index after it was spent.
#: It opens nothing past ``auth.replay_window``; until this it is refused as
#: an alias (401, no call to Twitch) instead of being tried at Twitch as new.
SPENT_ALIAS_TTL = 30 * 24 * 3600.0

#: Earlier access tokens a grant remembers for revocation (see Grant.rotated).
MAX_EARLIER_ACCESS_TOKENS = 16

#: The chain of grants stored before chains existed.
_FIRST_CHAIN = "c0"


def token_hash(token: str) -> str:
    """The hex SHA-256 under which a key or refresh token is indexed."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_proxy_key() -> str:
    """A fresh proxy key: ``tpk_`` and 32 random bytes, url-safe."""
    return PROXY_KEY_PREFIX + secrets.token_urlsafe(32)


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


@dataclass(frozen=True)
class RefreshTokenRef:
    """An alias: a refresh token the proxy was shown, and the chain it belongs to."""

    grant_id: str
    kind: RefreshTokenKind
    chain: str | None = _FIRST_CHAIN
    #: Wall-clock end of a rotated token's replay window (None: no end of its own).
    until: float | None = None

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


def _ref_from(data: Any) -> RefreshTokenRef | None:
    """An alias from its unsealed value; None for anything of another shape."""
    try:
        return RefreshTokenRef(grant_id=str(data["grant_id"]), kind=data["kind"],
                               chain=data.get("chain", _FIRST_CHAIN), until=data.get("until"))
    except (TypeError, KeyError, AttributeError):
        return None


def _key_record_from(data: Any) -> KeyRecord | None:
    """A key record from its unsealed value; None for anything of another shape."""
    try:
        return KeyRecord(key_id=str(data["key_id"]), grant_id=str(data["grant_id"]),
                         created_at=float(data["created_at"]))
    except (TypeError, KeyError, ValueError):
        return None


def _clear_value(prefix: str, raw: bytes) -> Any:
    """The value of an index entry a version before sealing wrote in clear, or None."""
    try:
        return raw.decode() if prefix == "user:" else json.loads(raw)
    except ValueError:
        return None


class GrantStore:
    """Grants, keys, refresh-token index and states on top of a TokenStore."""

    def __init__(self, store: TokenStore, cipher: Cipher) -> None:
        self.store = store
        self._cipher = cipher

    # -- sealed index values ---------------------------------------------------------

    def _seal(self, name: str, value: Any) -> bytes:
        """``value`` sealed for the entry ``name``: copied under another name, it opens nothing."""
        return self._cipher.encrypt(
            json.dumps({"name": name, "value": value}, separators=(",", ":")).encode())

    def _unseal(self, name: str, raw: bytes | None) -> Any:
        """An index entry's value; None when absent, or not sealed for ``name`` with this key."""
        if raw is None:
            return None
        try:
            sealed = json.loads(self._cipher.decrypt(raw))
        except (DecryptionFailed, ValueError):
            sealed = None
        if not isinstance(sealed, dict) or sealed.get("name") != name:
            # Written without the key, copied from another entry, or by a
            # version that wrote in clear (see seal_index).
            log.warning("ignored a %s entry that is not sealed for its name with this "
                        "store's key", name.partition(":")[0])
            return None
        return sealed.get("value")

    async def unsealed_entries(self) -> int:
        """How many index entries open nothing because they are not sealed (start-up check).

        The scan decrypts every entry, so it runs until one finds none: then
        :data:`INDEX_CHECKED` spares later starts (and other workers) the
        work. Deleting that marker only brings the scan, and its warning, back.
        """
        if await self.store.get(INDEX_CHECKED) is not None:
            return 0
        count = 0
        for prefix in SEALED_PREFIXES:
            for name in await self.store.keys(prefix):
                raw = await self.store.get(name)
                if raw is not None and self._unseal(name, raw) is None:
                    count += 1
        if not count:
            await self.store.put(INDEX_CHECKED, b"1")
        return count

    async def seal_index(self, *, seal_clear: bool = False) -> int:
        """Seal every index entry anew under the cipher's first key; returns how many.

        The key-rotation step of ``twitch-proxy grants reencrypt``. With
        ``seal_clear`` (that command, run once after upgrading), entries a
        version before sealing wrote in clear are sealed too. Never at
        start-up: whoever can write to the store could plant a clear entry and
        have it sealed. Other entries that do not unseal are left alone.
        """
        count = 0
        for prefix in SEALED_PREFIXES:
            for name in await self.store.keys(prefix):
                raw = await self.store.get(name)
                if raw is None:
                    continue
                value = self._unseal(name, raw)
                if value is None and seal_clear:
                    value = _clear_value(prefix, raw)
                if value is None:
                    continue
                ttl = SPENT_ALIAS_TTL if isinstance(value, dict) and value.get("until") else None
                count += await self.store.compare_and_swap(name, raw, self._seal(name, value),
                                                           ttl=ttl)
        return count

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
        """The grant for a lookup that may be a moment stale (see proxy.cache).

        Here it always reads the store; :class:`proxy.cache.CachedGrantStore`
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

    async def update(self, grant_id: str, **changes: Any) -> Grant | None:
        """Apply field changes with a compare-and-swap retry loop; None if gone."""
        while True:
            loaded = await self.load(grant_id)
            if loaded is None:
                return None
            changed = dataclasses.replace(loaded.grant, updated_at=time.time(), **changes)
            if await self.replace(loaded, changed):
                return changed

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

    async def grant_of_user(self, user_id: str) -> str | None:
        """The grant id already held for a Twitch user, if any."""
        name = f"user:{user_id}"
        value = self._unseal(name, await self.store.get(name))
        return value if isinstance(value, str) else None

    async def claim_user(self, user_id: str, grant_id: str) -> bool:
        """Make ``grant_id`` the user's grant unless the user has one; say whether it did.

        An entry that does not unseal (forged) is replaced: it names no grant.
        """
        name = f"user:{user_id}"
        raw = await self.store.get(name)
        if raw is not None and isinstance(self._unseal(name, raw), str):
            return False
        return await self.store.compare_and_swap(name, raw, self._seal(name, grant_id))

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

    # -- refresh-token index -----------------------------------------------------

    async def index_refresh_token(self, token: str, grant_id: str, kind: RefreshTokenKind,
                                  *, chain: str | None, window: float | None = None) -> None:
        """Make ``token`` an alias of ``grant_id``'s ``chain``.

        With ``window`` (a rotated token) it opens the grant for that many
        seconds only, and is forgotten after :data:`SPENT_ALIAS_TTL`.
        """
        until = time.time() + window if window is not None else None
        name = f"rt:{token_hash(token)}"
        value = self._seal(name, {"grant_id": grant_id, "kind": kind, "chain": chain,
                                  "until": until})
        ttl = max(window, SPENT_ALIAS_TTL) if window is not None else None
        await self.store.put(name, value, ttl=ttl)

    async def forget_refresh_token(self, token: str) -> None:
        """Drop a refresh token from the index."""
        await self.store.delete(f"rt:{token_hash(token)}")

    async def find_refresh_token(self, token: str) -> RefreshTokenRef | None:
        """The alias a refresh token is, if the proxy knows it (:meth:`RefreshTokenRef.opens`)."""
        name = f"rt:{token_hash(token)}"
        return _ref_from(self._unseal(name, await self.store.get(name)))

    async def end_aliases(self, grant_id: str, *, keep_chain: str | None = None) -> int:
        """Make sure every alias of ``grant_id`` (but those of ``keep_chain``) is refused.

        An alias cannot open a grant on another chain, and a grant whose chain
        ended has none; this only makes the refusals last. A rotated token keeps
        its expiry (Twitch refuses it anyway); a current or adopted one may
        still be live at Twitch, so its entry is kept for good: the proxy must
        never prove it afresh and give it a grant again. Scans the index:
        revocations are rare. Returns how many aliases it ended.
        """
        ended = 0
        for name in await self.store.keys("rt:"):
            raw = await self.store.get(name)
            ref = _ref_from(self._unseal(name, raw))
            if raw is None or ref is None:
                continue
            if ref.grant_id != grant_id or (keep_chain is not None and ref.chain == keep_chain):
                continue
            if ref.kind != "rotated":
                await self.store.put(name, raw)  # no expiry
            ended += 1
        return ended

    # -- proxy keys -----------------------------------------------------------------

    async def create_key(self, grant_id: str) -> tuple[str, KeyRecord]:
        """Mint a proxy key for a grant; returns the key (shown once) and its record."""
        key = new_proxy_key()
        digest = token_hash(key)
        record = KeyRecord(key_id=digest[:12], grant_id=grant_id, created_at=time.time())
        await self.store.put(f"key:{digest}",
                             self._seal(f"key:{digest}", dataclasses.asdict(record)))
        return key, record

    async def key_record(self, key: str) -> KeyRecord | None:
        """The record of a proxy key, or None when unknown or revoked."""
        name = f"key:{token_hash(key)}"
        return _key_record_from(self._unseal(name, await self.store.get(name)))

    async def revoke_key(self, key: str) -> bool:
        """Revoke a proxy key by its value."""
        return await self.store.delete(f"key:{token_hash(key)}")

    async def keys_of(self, grant_id: str | None = None) -> list[tuple[str, KeyRecord]]:
        """``(digest, record)`` of every key (of one grant); scans the store."""
        out = []
        for name in await self.store.keys("key:"):
            record = _key_record_from(self._unseal(name, await self.store.get(name)))
            if record is None:
                continue
            if grant_id is None or record.grant_id == grant_id:
                out.append((name.removeprefix("key:"), record))
        return out

    async def revoke_keys_of(self, grant_id: str) -> int:
        """Revoke every proxy key of a grant; returns how many there were."""
        revoked = 0
        for digest, _ in await self.keys_of(grant_id):
            revoked += await self.store.delete(f"key:{digest}")
        return revoked

    async def revoke_key_id(self, key_id: str) -> bool:
        """Revoke a proxy key by its public id (admin command line)."""
        for digest, record in await self.keys_of():
            if record.key_id == key_id:
                return await self.store.delete(f"key:{digest}")
        return False

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
