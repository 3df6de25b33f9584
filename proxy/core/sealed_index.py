"""The index entries that lead to a grant, sealed with the store key and bound to their names.

=========================  =====================================================
key                        sealed value
=========================  =====================================================
``user:<user_id>``         the grant id of that Twitch user's login (one per
                           user; only a login writes it, never over another)
``key:<sha256(key)>``      a proxy key: ``{"grant_id", "key_id", "created_at"}``
``rt:<sha256(token)>``     an *alias* ``{"grant_id", "chain", "kind", "until"}``
                           for a refresh token the proxy honours
=========================  =====================================================

Proxy keys and refresh tokens are only ever stored as SHA-256 hashes (they are
long random strings, so a fast hash is enough). The values are sealed with the
store cipher like grants (Fernet authenticates what it decrypts), together with
the entry's own name, so whoever can write to the store but lacks the
encryption key can neither forge an entry nor copy one under another name: an
entry that does not unseal for its name opens nothing. Entries a version before
sealing wrote in clear are sealed only by ``twitch-proxy grants reencrypt``
(:meth:`SealedIndex.seal_index`), never at start-up.

:class:`SealedIndex` is the index half of :class:`proxy.core.grants.GrantStore`,
which adds the grants themselves.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import secrets
import time
from typing import Any

from ..errors import DecryptionFailed
from ..store.base import TokenStore
from ..store.crypto import Cipher
from .grant_records import KeyRecord, RefreshTokenKind, RefreshTokenRef

__all__ = ["INDEX_CHECKED", "PROXY_KEY_PREFIX", "SEALED_PREFIXES", "SPENT_ALIAS_TTL",
           "SealedIndex", "new_proxy_key", "token_hash"]

log = logging.getLogger(__name__)

PROXY_KEY_PREFIX = "tpk_"

#: Index prefixes whose values are sealed (see the module docstring).
SEALED_PREFIXES = ("key:", "rt:", "user:")
#: Set once a start-up scan found every index entry sealed (SealedIndex.unsealed_entries).
INDEX_CHECKED = "index:checked"

#: How long a rotated refresh token stays in the index after it was spent.
#: It opens nothing past ``auth.replay_window``; until this it is refused as
#: an alias (401, no call to Twitch) instead of being tried at Twitch as new.
SPENT_ALIAS_TTL = 30 * 24 * 3600.0


def token_hash(token: str) -> str:
    """The hex SHA-256 under which a key or refresh token is indexed."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_proxy_key() -> str:
    """A fresh proxy key: ``tpk_`` and 32 random bytes, url-safe."""
    return PROXY_KEY_PREFIX + secrets.token_urlsafe(32)


def _clear_value(prefix: str, raw: bytes) -> Any:
    """The value of an index entry a version before sealing wrote in clear, or None."""
    try:
        return raw.decode() if prefix == "user:" else json.loads(raw)
    except ValueError:
        return None


class SealedIndex:
    """The ``user:``, ``key:`` and ``rt:`` entries of a TokenStore, sealed with ``cipher``."""

    def __init__(self, store: TokenStore, cipher: Cipher) -> None:
        self.store = store
        self._cipher = cipher

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

    # -- the user index ---------------------------------------------------------------

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

    # -- refresh-token aliases ----------------------------------------------------------

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
        return RefreshTokenRef.from_value(self._unseal(name, await self.store.get(name)))

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
            ref = RefreshTokenRef.from_value(self._unseal(name, raw))
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
        return KeyRecord.from_value(self._unseal(name, await self.store.get(name)))

    async def put_ticket(self, digest: str, key: str, *, ttl: float) -> None:
        """Keep a single-use ticket (by its hash) for ``key``, sealed, for ``ttl`` seconds."""
        name = f"ticket:{digest}"
        await self.store.put(name, self._seal(name, key), ttl=ttl)

    async def peek_ticket(self, digest: str) -> str | None:
        """The key a ticket was issued for, leaving the ticket usable."""
        name = f"ticket:{digest}"
        value = self._unseal(name, await self.store.get(name))
        return value if isinstance(value, str) else None

    async def take_ticket(self, digest: str) -> str | None:
        """The key a ticket was issued for, to exactly one caller; None if unknown or used.

        Every process of the proxy sees the same tickets (they live in the store); of
        two requests racing with one ticket, only the one whose delete succeeded gets
        the key.
        """
        name = f"ticket:{digest}"
        value = self._unseal(name, await self.store.get(name))
        if not isinstance(value, str) or not await self.store.delete(name):
            return None
        return value

    async def revoke_key(self, key: str) -> bool:
        """Revoke a proxy key by its value."""
        return await self.store.delete(f"key:{token_hash(key)}")

    async def keys_of(self, grant_id: str | None = None) -> list[tuple[str, KeyRecord]]:
        """``(digest, record)`` of every key (of one grant); scans the store."""
        out = []
        for name in await self.store.keys("key:"):
            record = KeyRecord.from_value(self._unseal(name, await self.store.get(name)))
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
