"""The in-memory token store (``memory://``): one process, nothing survives a restart.

Good for a single worker and for tests. Every operation runs to completion
without awaiting, so on one event loop each is atomic without further locking.
The per-key lock is a :class:`LeaseLockTable`, which :mod:`proxy.store.sqlite`
also uses to keep one process's waiters from all polling the database.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from .base import (
    DEFAULT_LOCK_LEASE,
    DEFAULT_LOCK_WAIT,
    DEFAULT_PREFIX,
    LeaseLockTable,
    check_lock_args,
    check_ttl,
)

__all__ = ["MemoryStore"]

# Expired entries nobody reads again (abandoned OAuth states) are swept at
# most this often, on a write, so a long-running process does not grow.
_SWEEP_INTERVAL = 60.0


class MemoryStore:
    """A :class:`~proxy.store.base.TokenStore` in a dict, for a single process.

    ``prefix`` namespaces keys as in the shared backends, so code that passes
    one behaves the same whatever the store.
    """

    def __init__(self, *, prefix: str = DEFAULT_PREFIX) -> None:
        self._prefix = prefix
        # Full key -> (value, monotonic expiry or None).
        self._data: dict[str, tuple[bytes, float | None]] = {}
        self._locks = LeaseLockTable()
        self._last_sweep = time.monotonic()

    def _live(self, name: str, now: float) -> bytes | None:
        entry = self._data.get(name)
        if entry is None:
            return None
        value, expires_at = entry
        if expires_at is not None and expires_at <= now:
            del self._data[name]
            return None
        return value

    def _store(self, name: str, value: bytes, ttl: float | None, now: float) -> None:
        self._data[name] = (bytes(value), None if ttl is None else now + ttl)
        if now - self._last_sweep >= _SWEEP_INTERVAL:
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        self._last_sweep = now
        expired = [k for k, (_, exp) in self._data.items() if exp is not None and exp <= now]
        for name in expired:
            del self._data[name]

    async def get(self, key: str) -> bytes | None:
        """Return the live value for ``key``, or None."""
        return self._live(self._prefix + key, time.monotonic())

    async def put(self, key: str, value: bytes, *, ttl: float | None = None) -> None:
        """Store ``value`` under ``key``, replacing any value and ttl."""
        check_ttl(ttl)
        self._store(self._prefix + key, value, ttl, time.monotonic())

    async def compare_and_swap(
        self, key: str, expected: bytes | None, value: bytes, *, ttl: float | None = None
    ) -> bool:
        """Store ``value`` only if the live value is ``expected`` (None: absent)."""
        check_ttl(ttl)
        name, now = self._prefix + key, time.monotonic()
        if self._live(name, now) != expected:
            return False
        self._store(name, value, ttl, now)
        return True

    async def delete(self, key: str) -> bool:
        """Remove ``key``; True if a live value was there."""
        name = self._prefix + key
        present = self._live(name, time.monotonic()) is not None
        self._data.pop(name, None)
        return present

    async def keys(self, prefix: str) -> list[str]:
        """Live keys starting with ``prefix``, without the store's own prefix."""
        self._sweep(time.monotonic())
        start = self._prefix + prefix
        return [name[len(self._prefix):] for name in self._data if name.startswith(start)]

    def lock(
        self, key: str, *, lease: float = DEFAULT_LOCK_LEASE, wait: float = DEFAULT_LOCK_WAIT
    ) -> AbstractAsyncContextManager[None]:
        """Hold ``key``'s lock in this process (see :class:`LeaseLockTable`)."""
        check_lock_args(lease, wait)
        return self._lock(self._prefix + key, lease, wait)

    @asynccontextmanager
    async def _lock(self, name: str, lease: float, wait: float) -> AsyncIterator[None]:
        owner = await self._locks.acquire(name, lease=lease, wait=wait)
        try:
            yield
        finally:
            self._locks.release(name, owner)

    async def ping(self) -> None:
        """Always reachable."""

    async def close(self) -> None:
        """Drop every value."""
        self._data.clear()
