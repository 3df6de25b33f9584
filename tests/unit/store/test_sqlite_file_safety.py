"""The SQLite store's files stay the user's own: private modes, and no link, foreign owner or
shared directory accepted.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from proxy.errors import StoreUnavailable
from proxy.store import SQLiteStore, open_store


@pytest.fixture
def permissive_umask():
    """The common 022 umask, under which a file created 0666 is readable by everyone."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def companions(path: Path) -> tuple[Path, Path]:
    """The WAL and shared-memory files SQLite keeps beside ``path``."""
    return path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")


async def test_database_wal_and_shm_are_private_even_under_a_permissive_umask(
    tmp_path, permissive_umask
):
    path = tmp_path / "new" / "store.sqlite3"
    store = await open_store(f"sqlite:///{path}")
    try:
        await store.put("grant:1", b"secret-ish")
        wal, shm = companions(path)
        assert wal.exists() and shm.exists()  # the open connection keeps them
        assert {p.name: mode_of(p) for p in (path, wal, shm)} == {
            p.name: 0o600 for p in (path, wal, shm)}
        assert mode_of(path.parent) == 0o700  # a directory made for the database
    finally:
        await store.close()


async def test_an_existing_database_readable_by_others_is_made_private(
    tmp_path, permissive_umask, caplog
):
    path = tmp_path / "store.sqlite3"
    old = sqlite3.connect(path)  # as an older version left it: 0644, and its WAL too
    old.execute("PRAGMA journal_mode = WAL")
    old.execute("CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, expires_at REAL)")
    old.execute("INSERT INTO kv VALUES ('p:grant:1', x'00', NULL)")
    old.commit()  # left open: its WAL stays, as a running older process would keep it
    wal, shm = companions(path)
    assert mode_of(path) == mode_of(wal) == 0o644

    store = await SQLiteStore.open(path, prefix="p:")
    try:
        assert await store.get("grant:1") == b"\x00"
        await store.put("grant:2", b"v")
        assert (mode_of(path), mode_of(wal), mode_of(shm)) == (0o600, 0o600, 0o600)
    finally:
        await store.close()
        old.close()
    made_private = [r.getMessage() for r in caplog.records if "made it private" in
                    r.getMessage()]
    assert any(str(path) in line and "0644" in line for line in made_private), caplog.text


async def test_a_database_that_is_a_symbolic_link_is_refused(tmp_path):
    target = tmp_path / "elsewhere.db"
    link = tmp_path / "tokens.sqlite3"
    link.symlink_to(target)  # dangling: opening would create the target
    with pytest.raises(StoreUnavailable, match="symbolic link"):
        await SQLiteStore.open(link)
    assert not target.exists()
    target.touch(mode=0o600)
    with pytest.raises(StoreUnavailable, match="symbolic link"):
        await SQLiteStore.open(link)


async def test_a_database_in_a_directory_everyone_may_write_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp: anyone could plant the -wal or -shm file first
    with pytest.raises(StoreUnavailable, match="not this user's alone"):
        await SQLiteStore.open(shared / "tokens.sqlite3")
    assert not (shared / "tokens.sqlite3").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
async def test_a_database_of_another_user_is_refused(tmp_path):
    database = tmp_path / "tokens.sqlite3"
    database.touch(mode=0o600)
    os.chown(database, 65534, 65534)  # nobody
    with pytest.raises(StoreUnavailable, match="another user"):
        await SQLiteStore.open(database)


async def test_a_database_in_a_group_writable_directory_is_refused(tmp_path):
    shared = tmp_path / "team"
    shared.mkdir()
    shared.chmod(0o2770)
    with pytest.raises(StoreUnavailable, match="not this user's alone"):
        await SQLiteStore.open(shared / "tokens.sqlite3")


async def test_a_planted_wal_link_is_refused(tmp_path):
    database = tmp_path / "tokens.sqlite3"
    (tmp_path / "tokens.sqlite3-wal").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StoreUnavailable, match="not a file of this user's"):
        await SQLiteStore.open(database)
