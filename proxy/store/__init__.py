"""Token store backends behind one narrow contract (see :mod:`proxy.store.base`).

:func:`open_store` picks the backend from the store URL:

- ``memory://``: :class:`MemoryStore`, this process only;
- ``sqlite:///relative/path.sqlite3`` or ``sqlite:////absolute/path.sqlite3``:
  :class:`SQLiteStore`, every process on one host;
- ``redis://...`` or ``rediss://...``: :class:`RedisStore`, every replica.

What a URL means (its scheme, a SQLite file's path, whether processes share
it) is read by :mod:`proxy.config.store_url`, which the configuration checks use too.
"""

from __future__ import annotations

from ..config.store_url import sqlite_path, store_scheme
from .base import (
    DEFAULT_LOCK_LEASE,
    DEFAULT_LOCK_WAIT,
    DEFAULT_PREFIX,
    TokenStore,
)
from .memory import MemoryStore
from .redis import RedisStore
from .sqlite import SQLiteStore

__all__ = [
    "DEFAULT_LOCK_LEASE",
    "DEFAULT_LOCK_WAIT",
    "DEFAULT_PREFIX",
    "MemoryStore",
    "RedisStore",
    "SQLiteStore",
    "TokenStore",
    "open_store",
]


async def open_store(url: str, *, prefix: str = DEFAULT_PREFIX) -> TokenStore:
    """Open the store ``url`` names, namespacing its keys with ``prefix``.

    A SQLite file is created and prepared here; a Redis client connects on its
    first command, so call ``ping()`` to check it is reachable. Raises
    :class:`ValueError` for an unsupported or malformed URL.
    """
    scheme = store_scheme(url)
    if scheme == "memory":
        return MemoryStore(prefix=prefix)
    if scheme == "sqlite":
        return await SQLiteStore.open(sqlite_path(url), prefix=prefix)
    return RedisStore.from_url(url, prefix=prefix)
