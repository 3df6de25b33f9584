"""Token store backends behind one narrow contract (see :mod:`proxy.store.base`).

:func:`open_store` picks the backend from the store URL:

- ``memory://``: :class:`MemoryStore`, this process only;
- ``sqlite:///relative/path.sqlite3`` or ``sqlite:////absolute/path.sqlite3``:
  :class:`SQLiteStore`, every process on one host;
- ``redis://...`` or ``rediss://...``: :class:`RedisStore`, every replica.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

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
    "sqlite_path",
    "store_is_shared",
]

# Scheme -> whether several processes see the same data through it.
_SHARED_BY_SCHEME = {"memory": False, "sqlite": True, "redis": True, "rediss": True}
_SUPPORTED = "memory://, sqlite:///relative/path, sqlite:////absolute/path, redis://, rediss://"


def _scheme(url: str) -> str:
    scheme = urlsplit(url).scheme.lower()
    if scheme not in _SHARED_BY_SCHEME:
        raise ValueError(f"unsupported store URL scheme {scheme!r}; supported: {_SUPPORTED}")
    return scheme


def sqlite_path(url: str) -> str:
    """The file path in a ``sqlite:`` URL: three slashes relative, four absolute."""
    parts = urlsplit(url)
    if parts.netloc or parts.query or parts.fragment or not parts.path.startswith("/"):
        raise ValueError(
            "a SQLite store URL is sqlite:///relative/path or sqlite:////absolute/path"
        )
    path = unquote(parts.path[1:])
    if not path or path.endswith("/") or path == ":memory:":
        raise ValueError("a SQLite store URL needs a file path (for no file, use memory://)")
    return path


def store_is_shared(url: str) -> bool:
    """Whether the store at ``url`` is shared between processes (False for ``memory://``)."""
    return _SHARED_BY_SCHEME[_scheme(url)]


async def open_store(url: str, *, prefix: str = DEFAULT_PREFIX) -> TokenStore:
    """Open the store ``url`` names, namespacing its keys with ``prefix``.

    A SQLite file is created and prepared here; a Redis client connects on its
    first command, so call ``ping()`` to check it is reachable. Raises
    :class:`ValueError` for an unsupported or malformed URL.
    """
    scheme = _scheme(url)
    if scheme == "memory":
        return MemoryStore(prefix=prefix)
    if scheme == "sqlite":
        return await SQLiteStore.open(sqlite_path(url), prefix=prefix)
    return RedisStore.from_url(url, prefix=prefix)
