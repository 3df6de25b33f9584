"""The token store contract every backend implements.

The store knows nothing about grants or tokens: it keeps opaque bytes under
string keys, with an optional time to live, and offers a compare-and-swap and a
per-key lock. Everything token-shaped (serialisation, hashing, encryption) is
layered on top in :mod:`proxy.grants`, so a backend is small and the contract
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
  ``wait`` seconds with :class:`LockTimeout`.
- ``ping()`` raises :class:`StoreUnavailable` when the backend is unreachable.
- ``close()`` releases connections; the store is not used afterwards.

Backends raise :class:`StoreUnavailable` for connection-level failures so the
HTTP layer can answer 503 instead of a bare 500.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Protocol, runtime_checkable

from ..errors import ProxyError

__all__ = [
    "DEFAULT_LOCK_LEASE",
    "DEFAULT_LOCK_WAIT",
    "LockTimeout",
    "StoreUnavailable",
    "TokenStore",
]

#: Seconds a lock stays held if its holder dies. Longer than the token
#: endpoint timeout, so a live holder never loses its lock mid-refresh.
DEFAULT_LOCK_LEASE = 30.0
#: Seconds a caller waits for a lock before giving up.
DEFAULT_LOCK_WAIT = 35.0


class StoreUnavailable(ProxyError):
    """The backend cannot be reached or answered with a connection error."""

    status = 503
    code = "store_unavailable"
    retry_after = 5


class LockTimeout(StoreUnavailable):
    """A per-key lock could not be taken within the wait time."""

    code = "store_busy"


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
