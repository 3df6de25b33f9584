"""The SQLite token store (``sqlite:///relative.sqlite3``, ``sqlite:////abs/path``).

One file shared by every worker on one host. Each statement runs in
autocommit, so every operation is one atomic statement and no transaction is
ever left open. The file and its -wal/-shm companions are private to the
user (0600). The file is in WAL mode, so readers never wait for a writer;
a writer waits up to ``busy_timeout`` for another and then gives up with
:class:`~proxy.errors.StoreUnavailable`.

Schema::

    kv(key TEXT PRIMARY KEY, value BLOB NOT NULL, expires_at REAL)
    locks(name TEXT PRIMARY KEY, owner TEXT, expires_at REAL)

Expiry times are wall-clock seconds (``time.time()``) because several
processes compare them. An expired row counts as absent and is purged lazily.
The per-key lock is a ``locks`` row; waiting for it polls with a short backoff,
and one process's waiters queue on a :class:`LeaseLockTable` first so only one
of them polls.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import random
import sqlite3
import stat
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from ..errors import LockTimeout, StoreUnavailable
from .base import (
    DEFAULT_LOCK_LEASE,
    DEFAULT_LOCK_WAIT,
    DEFAULT_PREFIX,
    LeaseLockTable,
    check_lock_args,
    check_ttl,
)

__all__ = ["SQLiteStore"]

log = logging.getLogger(__name__)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, expires_at REAL)",
    "CREATE TABLE IF NOT EXISTS locks (name TEXT PRIMARY KEY, owner TEXT, expires_at REAL)",
)
# A row is live when it has no expiry or its expiry is still ahead (?1 = now).
_LIVE = "(expires_at IS NULL OR expires_at > ?1)"

# Insert, or take over a row whose value has expired; changes() says whether we wrote.
_CAS_ABSENT = (
    "INSERT INTO kv (key, value, expires_at) VALUES (?2, ?3, ?4)"
    " ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at"
    " WHERE kv.expires_at IS NOT NULL AND kv.expires_at <= ?1"
)
_CAS_PRESENT = (
    f"UPDATE kv SET value = ?3, expires_at = ?4 WHERE key = ?2 AND value = ?5 AND {_LIVE}"
)
_TAKE_LOCK = (
    "INSERT INTO locks (name, owner, expires_at) VALUES (?2, ?3, ?4)"
    " ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at"
    " WHERE locks.expires_at <= ?1"
)

# Lock polling backoff, in seconds: starts short so a freshly released lock is
# taken quickly, and is capped so a waiter notices a release within ~50 ms.
_POLL_FIRST = 0.01
_POLL_MAX = 0.05

# Expired rows nobody reads again are purged at most this often, on a write.
_PURGE_INTERVAL = 60.0

# The database and its companions hold user ids and pending logins: owner only.
_PRIVATE = 0o600
_OTHERS = 0o077  # group and others' permission bits
_COMPANIONS = ("-wal", "-shm", "-journal")


def _make_private(database: Path) -> None:
    """Create ``database`` readable by this user only, and make private what is not.

    The file is created 0600 here, before SQLite opens it: SQLite would create
    it 0644 under the usual umask, with user ids and pending logins in it. Its
    -wal, -shm and -journal files SQLite creates later with the database's own
    permission bits, so they are born private too; those an older version left
    open to others are made private (with a warning), as is such a database.
    """
    _refuse_unsafe(database)
    for path in (database, *(database.with_name(database.name + s) for s in _COMPANIONS)):
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            continue
        if not mode & _OTHERS:
            continue
        try:
            path.chmod(_PRIVATE)
        except PermissionError:  # another user's file: SQLite may still be able to open it
            log.warning("%s is open to other users (mode %04o) and only its owner can make "
                        "it private", path, mode)
        else:
            log.warning("%s was open to other users (mode %04o); made it private (0600)",
                        path, mode)


def _refuse_unsafe(database: Path) -> None:
    """Create ``database`` 0600 if absent; refuse one another account could control.

    Refused (an :class:`OSError` saying why): a database that is a symbolic
    link (it would be written where the link points), one that is not a
    regular file or belongs to another user, one whose -wal, -shm or -journal
    file is not this user's own file, and one in a directory that is not this
    user's alone, where someone else could plant those files first.
    """
    directory = database.parent.stat()
    if directory.st_mode & (stat.S_IWOTH | stat.S_IWGRP) or directory.st_uid != os.geteuid():
        raise OSError(f"its directory {database.parent} is not this user's alone (others "
                      "could plant its -wal or -shm file); keep the database in a directory "
                      "of its own")
    for companion in (database.with_name(database.name + s) for s in _COMPANIONS):
        try:
            owner = companion.lstat()
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(owner.st_mode) or owner.st_uid != os.geteuid():
            raise OSError(f"{companion} is not a file of this user's")
    try:
        descriptor = os.open(database, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                             _PRIVATE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError("it is a symbolic link; point the store at the real file") from None
        raise
    try:
        status = os.fstat(descriptor)
    finally:
        os.close(descriptor)
    if not stat.S_ISREG(status.st_mode):
        raise OSError("it is not a regular file")
    if status.st_uid != os.geteuid():
        raise OSError("it belongs to another user")


@contextmanager
def _unavailable_on_operational_errors() -> Iterator[None]:
    try:
        yield
    except sqlite3.OperationalError as exc:
        # "database is locked" once busy_timeout is over, disk and I/O errors.
        # Logged here, as the message a client sees does not name the cause.
        log.warning("the SQLite store failed: %s", exc)
        raise StoreUnavailable("The token store (SQLite) is unavailable.") from exc


class SQLiteStore:
    """A :class:`~proxy.store.base.TokenStore` in one SQLite file, shared across processes.

    It is handed an open ``aiosqlite`` connection, which must be in autocommit
    mode (``isolation_level=None``); call :meth:`prepare` once before use.
    :meth:`open` does all of that from a path. ``close()`` closes the
    connection only when ``close_connection`` is true (as :meth:`open` sets it).
    """

    def __init__(
        self,
        connection: aiosqlite.Connection,
        *,
        prefix: str = DEFAULT_PREFIX,
        busy_timeout: float = 5.0,
        close_connection: bool = False,
    ) -> None:
        if connection.isolation_level is not None:
            raise ValueError(
                "the SQLite connection must be in autocommit mode (isolation_level=None)"
            )
        self._db = connection
        self._prefix = prefix
        self._busy_timeout = busy_timeout
        self._close_connection = close_connection
        self._local_locks = LeaseLockTable()
        self._last_purge = 0.0

    @classmethod
    async def open(
        cls, path: str | Path, *, prefix: str = DEFAULT_PREFIX, busy_timeout: float = 5.0
    ) -> SQLiteStore:
        """Open (creating it 0600, and its directory, if needed) and prepare the file ``path``."""
        path = Path(path)
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _make_private(path)
            connection = await aiosqlite.connect(path, isolation_level=None, timeout=busy_timeout)
        except (OSError, sqlite3.OperationalError) as exc:
            raise StoreUnavailable(f"Cannot open the SQLite store at {path}: {exc}") from exc
        store = cls(connection, prefix=prefix, busy_timeout=busy_timeout, close_connection=True)
        try:
            await store.prepare()
        except BaseException:
            await connection.close()
            raise
        return store

    async def prepare(self) -> None:
        """Set the connection's pragmas and create the tables if they are missing."""
        await self._run(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
        # WAL lets readers and one writer work at once; NORMAL sync is safe in WAL
        # (a power cut may lose the last commits, never corrupt the file).
        await self._switch_to_wal()
        await self._run("PRAGMA synchronous = NORMAL")
        for statement in _SCHEMA:
            await self._run(statement)

    async def _switch_to_wal(self) -> None:
        """``PRAGMA journal_mode = WAL``, retried while another process does the same.

        Workers starting together on a fresh file all switch it at once; SQLite
        answers "database is locked" at once to all but one of them, without
        waiting for busy_timeout (it would deadlock), so the wait is ours.
        """
        deadline = time.monotonic() + self._busy_timeout
        delay = _POLL_FIRST
        while True:
            try:
                await self._db.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    with _unavailable_on_operational_errors():
                        raise
            await asyncio.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, _POLL_MAX)

    async def _run(self, sql: str, params: Iterable[Any] = ()) -> int:
        """Execute one statement; return how many rows it changed."""
        with _unavailable_on_operational_errors():
            async with self._db.execute(sql, tuple(params)) as cursor:
                return cursor.rowcount

    async def _fetch(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        # Executed and fetched in one call on the connection's thread: a cursor
        # left open between the two keeps a read transaction open, and another
        # task's write on this connection then fails at once with "database is
        # locked" (SQLite cannot wait for the write lock in that state).
        with _unavailable_on_operational_errors():
            return list(await self._db.execute_fetchall(sql, tuple(params)))

    async def _maybe_purge(self, now: float) -> None:
        if now - self._last_purge >= _PURGE_INTERVAL:
            self._last_purge = now
            await self._run("DELETE FROM kv WHERE expires_at <= ?", (now,))

    async def get(self, key: str) -> bytes | None:
        """Return the live value for ``key``, or None."""
        name, now = self._prefix + key, time.time()
        rows = await self._fetch("SELECT value, expires_at FROM kv WHERE key = ?", (name,))
        if not rows:
            return None
        value, expires_at = rows[0]
        if expires_at is not None and expires_at <= now:
            await self._run("DELETE FROM kv WHERE key = ? AND expires_at <= ?", (name, now))
            return None
        return bytes(value)

    async def put(self, key: str, value: bytes, *, ttl: float | None = None) -> None:
        """Store ``value`` under ``key``, replacing any value and ttl."""
        check_ttl(ttl)
        now = time.time()
        await self._run(
            "INSERT OR REPLACE INTO kv (key, value, expires_at) VALUES (?, ?, ?)",
            (self._prefix + key, bytes(value), None if ttl is None else now + ttl),
        )
        await self._maybe_purge(now)

    async def compare_and_swap(
        self, key: str, expected: bytes | None, value: bytes, *, ttl: float | None = None
    ) -> bool:
        """Store ``value`` only if the live value is ``expected`` (None: absent), atomically."""
        check_ttl(ttl)
        now = time.time()
        expires_at = None if ttl is None else now + ttl
        params: list[Any] = [now, self._prefix + key, bytes(value), expires_at]
        if expected is None:
            return await self._run(_CAS_ABSENT, params) == 1
        return await self._run(_CAS_PRESENT, [*params, bytes(expected)]) == 1

    async def delete(self, key: str) -> bool:
        """Remove ``key``; True if a live value was there."""
        rows = await self._fetch(
            "DELETE FROM kv WHERE key = ? RETURNING expires_at", (self._prefix + key,)
        )
        now = time.time()
        return any(expires_at is None or expires_at > now for (expires_at,) in rows)

    async def keys(self, prefix: str) -> list[str]:
        """Live keys starting with ``prefix``, without the store's own prefix."""
        now = time.time()
        self._last_purge = now
        await self._run("DELETE FROM kv WHERE expires_at <= ?", (now,))
        start = self._prefix + prefix
        # substr() rather than LIKE/GLOB: no wildcard escaping, and case-sensitive.
        rows = await self._fetch(
            f"SELECT key FROM kv WHERE substr(key, 1, ?2) = ?3 AND {_LIVE} ORDER BY key",
            (now, len(start), start),
        )
        return [name[len(self._prefix):] for (name,) in rows]

    def lock(
        self, key: str, *, lease: float = DEFAULT_LOCK_LEASE, wait: float = DEFAULT_LOCK_WAIT
    ) -> AbstractAsyncContextManager[None]:
        """Hold ``key``'s lock across every process using this file."""
        check_lock_args(lease, wait)
        return self._lock(self._prefix + key, lease, wait)

    @asynccontextmanager
    async def _lock(self, name: str, lease: float, wait: float) -> AsyncIterator[None]:
        deadline = time.monotonic() + wait
        local_owner = await self._local_locks.acquire(name, lease=lease, wait=wait)
        try:
            owner = uuid.uuid4().hex
            await self._take_shared_lock(name, owner, lease, deadline)
            try:
                yield
            finally:
                await self._release_shared_lock(name, owner)
        finally:
            self._local_locks.release(name, local_owner)

    async def _take_shared_lock(self, name: str, owner: str, lease: float, deadline: float) -> None:
        delay = _POLL_FIRST
        while True:
            now = time.time()
            try:
                taken = await self._run(_TAKE_LOCK, (now, name, owner, now + lease)) == 1
            except BaseException:
                # Cancelled (or failed) after the statement may have run: do not
                # leave our row behind for a whole lease.
                await self._release_shared_lock(name, owner)
                raise
            if taken:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LockTimeout("Timed out waiting for a lock held by another request.")
            await asyncio.sleep(min(delay * random.uniform(0.5, 1.0), remaining))
            delay = min(delay * 1.5, _POLL_MAX)

    async def _release_shared_lock(self, name: str, owner: str) -> None:
        # Only our own row: after our lease ran out someone else may hold it.
        try:
            await self._run("DELETE FROM locks WHERE name = ? AND owner = ?", (name, owner))
        except StoreUnavailable:
            log.warning("could not release a lock; it is freed when its lease runs out")

    async def ping(self) -> None:
        """Raise :class:`~proxy.errors.StoreUnavailable` unless the file can be read."""
        await self._fetch("SELECT 1 FROM kv LIMIT 1")

    async def close(self) -> None:
        """Close the connection if this store opened it."""
        if self._close_connection:
            await self._db.close()
