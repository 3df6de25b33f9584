"""What a store URL says: its backend, whether processes share it, a SQLite file's path.

Read by the configuration checks and by :func:`proxy.store.open_store` alike,
so both accept exactly the same URLs.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

__all__ = ["STORE_SCHEMES", "sqlite_path", "store_is_shared", "store_scheme"]

#: Scheme -> whether several processes see the same data through it.
STORE_SCHEMES = {"memory": False, "sqlite": True, "redis": True, "rediss": True}
_SUPPORTED = "memory://, sqlite:///relative/path, sqlite:////absolute/path, redis://, rediss://"


def store_scheme(url: str) -> str:
    """The lower-cased scheme of ``url``; ValueError when no backend serves it."""
    scheme = urlsplit(url).scheme.lower()
    if scheme not in STORE_SCHEMES:
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
    return STORE_SCHEMES[store_scheme(url)]
