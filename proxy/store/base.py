"""The token store contract every backend implements.

The store knows nothing about grants or tokens: it keeps opaque bytes under
string keys, with an optional time to live, and offers a compare-and-swap and a
per-key lock. Everything token-shaped (serialisation, hashing, encryption) is
layered on top in :mod:`proxy.core.grants`, so a backend is small and the contract
test suite (``tests/store_contract.py``) can prove each one the same way.

Contract, for every backend:

- ``get(key)`` returns the bytes last stored, or ``None`` when absent or expired.
- ``put(key, value, ttl=None)`` stores unconditionally; ``ttl`` is seconds.
- ``compare_and_swap(key, expected, value, ttl=None)`` stores ``value`` only if
  the current value is exactly ``expected`` (``None`` meaning "absent"), and
  says whether it did. Two writers racing on one key: exactly one wins.
- ``delete(key)`` removes the key and says whether it was there. Used for
  single-use values (OAuth state): of two concurrent deletes only one is True.
- ``keys(prefix)`` lists live keys that start with ``prefix`` (admin and the
  hourly validator use it; it is never on a request's hot path).
- ``lock(key, lease=...)`` is an async context manager holding an exclusive
  lock for ``key`` across every process sharing the store. The lock expires
  after ``lease`` seconds even if its holder dies; waiting gives up after
  ``wait`` seconds with :class:`~proxy.errors.LockTimeout`.
- ``ping()`` raises :class:`~proxy.errors.StoreUnavailable` when the backend is
  unreachable.
- ``close()`` releases connections; the store is not used afterwards.

Backends raise :class:`~proxy.errors.StoreUnavailable` for connection-level
failures so the HTTP layer can answer 503 instead of a bare 500.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AbstractAsyncContextManager, suppress
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ..errors import LockTimeout

__all__ = [
    "DEFAULT_LOCK_LEASE",
    "DEFAULT_LOCK_WAIT",
    "DEFAULT_PREFIX",
    "LeaseLockTable",
    "check_lock_args",
    "check_ttl",
    "TokenStore",
]

#: Seconds a lock stays held if its holder dies. Longer than the token
#: endpoint timeout, so a live holder never loses its lock mid-refresh.
DEFAULT_LOCK_LEASE = 30.0
#: Seconds a caller waits for a lock before giving up.
DEFAULT_LOCK_WAIT = 35.0


@runtime_checkable
class TokenStore(Protocol):
    """Bytes by key, compare-and-swap and a per-key lock (see module docstring)."""

    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, value: bytes, *, ttl: float | None = None) -> None: ...

    async def compare_and_swap(
        self, key: str, expected: bytes | None, value: bytes, *, ttl: float | None = None
    ) -> bool: ...

    async def delete(self, key: str) -> bool: ...

    async def keys(self, prefix: str) -> list[str]: ...

    def lock(
        self, key: str, *, lease: float = DEFAULT_LOCK_LEASE, wait: float = DEFAULT_LOCK_WAIT
    ) -> AbstractAsyncContextManager[None]: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


# -- shared by the backends ------------------------------------------------------

#: Prefix every backend puts in front of its keys and lock names by default.
DEFAULT_PREFIX = "twitch-proxy:"

def check_ttl(ttl: float | None) -> None:
    """Reject a ``ttl`` that is not a positive number of seconds (every backend agrees)."""
    if ttl is not None and not ttl > 0:
        raise ValueError(f"ttl must be a positive number of seconds or None, not {ttl!r}")


def check_lock_args(lease: float, wait: float) -> None:
    """Reject a non-positive ``lease`` or a negative ``wait`` (every backend agrees)."""
    if not lease > 0:
        raise ValueError(f"lease must be a positive number of seconds, not {lease!r}")
    if not wait >= 0:
        raise ValueError(f"wait must be zero or more seconds, not {wait!r}")


@dataclass
class _Holder:
    owner: object
    expires_at: float
    released: asyncio.Event = field(default_factory=asyncio.Event)


class LeaseLockTable:
    """Exclusive per-name locks for the tasks of one event loop, each with a lease.

    A holder keeps its lock until it releases it or its lease runs out,
    whichever comes first; then the next waiter takes it over. Releasing a
    lock that was taken over since is a no-op, so a slow holder never frees
    its successor's lock.
    """

    def __init__(self) -> None:
        self._holders: dict[str, _Holder] = {}

    async def acquire(self, name: str, *, lease: float, wait: float) -> object:
        """Take the lock for ``name``; return the owner token :meth:`release` needs.

        Raises :class:`LockTimeout` when the lock is still held after ``wait`` seconds.
        """
        owner = object()
        deadline = time.monotonic() + wait
        while True:
            now = time.monotonic()
            holder = self._holders.get(name)
            if holder is None or holder.expires_at <= now:
                self._holders[name] = _Holder(owner, now + lease)
                return owner
            remaining = deadline - now
            if remaining <= 0:
                raise LockTimeout("Timed out waiting for a lock held by another request.")
            # Wake on release, at the holder's lease end, or when our wait runs out.
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
            # cancellation that arrives as the release does, and we would take the lock.
            with suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, holder.expires_at - now)):
                    await holder.released.wait()

    def release(self, name: str, owner: object) -> bool:
        """Release ``name`` if ``owner`` still holds it; say whether it did."""
        holder = self._holders.get(name)
        if holder is None or holder.owner is not owner:
            return False
        del self._holders[name]
        holder.released.set()
        return True
