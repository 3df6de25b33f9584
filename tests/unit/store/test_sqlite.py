"""The SQLite store: the shared contract, plus what a file shared by processes adds."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import time
from pathlib import Path

import aiosqlite
import pytest

from proxy.config.store_url import sqlite_path, store_is_shared
from proxy.errors import StoreUnavailable
from proxy.store import SQLiteStore, open_store
from tests.store_contract import StoreContract

REPO_ROOT = Path(__file__).resolve().parents[3]


# Takes the store lock in another process, holds it briefly, then releases it.
HOLD_STORE_LOCK = """
import asyncio, sys
from proxy.store.sqlite import SQLiteStore

async def main(path):
    store = await SQLiteStore.open(path, prefix="contract:")
    try:
        async with store.lock("shared", lease=10, wait=5):
            print("locked", flush=True)
            await asyncio.sleep(0.5)
            print("released", flush=True)
    finally:
        await store.close()

asyncio.run(main(sys.argv[1]))
"""


# Holds an exclusive transaction on the file until its stdin is closed.
HOLD_EXCLUSIVE_TRANSACTION = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
db.rollback()
db.close()
"""


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "store.sqlite3"


@pytest.fixture
async def make_store(db_path):
    stores: list[SQLiteStore] = []

    async def make(prefix: str, **options) -> SQLiteStore:
        store = await SQLiteStore.open(db_path, prefix=prefix, **options)
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.close()


class TestSQLiteStore(StoreContract):
    shared_backend = True


async def _python(script: str, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )


async def _finish(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None and process.stdin and not process.stdin.is_closing():
        process.stdin.close()
    try:
        await asyncio.wait_for(process.wait(), 5)
    except TimeoutError:
        process.kill()
        await process.wait()


async def test_open_creates_the_file_and_directory_in_wal_mode(tmp_path):
    path = tmp_path / "new" / "dir" / "store.sqlite3"
    store = await SQLiteStore.open(path)
    await store.close()
    assert path.is_file()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        columns = {
            table: [row[1] for row in db.execute(f"PRAGMA table_info({table})")]
            for table in ("kv", "locks")
        }
    finally:
        db.close()
    assert columns == {
        "kv": ["key", "value", "expires_at"],
        "locks": ["name", "owner", "expires_at"],
    }


async def test_data_survives_reopening(make_store):
    store = await make_store("p:")
    await store.put("grant:1", b"\x00token\xff")
    await store.put("state:1", b"s", ttl=60)
    await store.close()
    reopened = await make_store("p:")
    assert await reopened.get("grant:1") == b"\x00token\xff"
    assert sorted(await reopened.keys("")) == ["grant:1", "state:1"]


async def test_expired_rows_are_purged(make_store, db_path):
    store = await make_store("p:")
    await store.put("gone", b"v", ttl=0.05)
    await store.put("also-gone", b"v", ttl=0.05)
    await asyncio.sleep(0.1)
    assert await store.get("gone") is None
    db = sqlite3.connect(db_path)
    try:
        assert [key for (key,) in db.execute("SELECT key FROM kv")] == ["p:also-gone"]
        await store.keys("nothing")
        assert db.execute("SELECT count(*) FROM kv").fetchone() == (0,)
    finally:
        db.close()


async def test_lock_is_exclusive_across_processes(make_store, db_path):
    store = await make_store("contract:")  # creates the file before the other process opens it
    holder = await _python(HOLD_STORE_LOCK, str(db_path))
    try:
        assert await asyncio.wait_for(holder.stdout.readline(), 10) == b"locked\n"
        started = time.monotonic()
        async with store.lock("shared", lease=5, wait=5):
            waited = time.monotonic() - started
            # The other process said so just before releasing, so it is already there.
            assert await asyncio.wait_for(holder.stdout.readline(), 1) == b"released\n"
    finally:
        await _finish(holder)
    assert waited >= 0.3
    assert holder.returncode == 0


async def test_a_file_locked_too_long_is_unavailable(make_store, db_path):
    store = await make_store("p:", busy_timeout=0.2)
    await store.put("k", b"v")
    locker = await _python(HOLD_EXCLUSIVE_TRANSACTION, str(db_path))
    try:
        assert await asyncio.wait_for(locker.stdout.readline(), 10) == b"locked\n"
        assert await store.get("k") == b"v"  # WAL: readers do not wait for the writer
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as raised:
            await store.put("k", b"v2")
        assert 0.15 <= time.monotonic() - started < 3
        assert type(raised.value) is StoreUnavailable
        assert "database is locked" in str(raised.value.__cause__)
        with pytest.raises(StoreUnavailable):
            async with store.lock("k", wait=5):
                pass
    finally:
        await _finish(locker)
    await store.put("k", b"v3")
    assert await store.get("k") == b"v3"


async def test_unopenable_path_is_unavailable(tmp_path):
    (tmp_path / "a-file").write_text("not a directory")
    with pytest.raises(StoreUnavailable):
        await SQLiteStore.open(tmp_path / "a-file" / "store.sqlite3")


async def test_handed_in_connection_is_left_open(db_path):
    async with aiosqlite.connect(db_path, isolation_level=None) as connection:
        store = SQLiteStore(connection, prefix="p:")
        await store.prepare()
        await store.put("k", b"v")
        await store.close()
        async with connection.execute("SELECT value FROM kv WHERE key = 'p:k'") as cursor:
            assert await cursor.fetchone() == (b"v",)


async def test_connection_must_autocommit(db_path):
    async with aiosqlite.connect(db_path) as connection:
        with pytest.raises(ValueError, match="autocommit"):
            SQLiteStore(connection)


async def test_open_store_sqlite_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    relative = await open_store("sqlite:///data/relative.sqlite3", prefix="p:")
    absolute = await open_store(f"sqlite:///{tmp_path}/absolute.sqlite3")
    try:
        assert isinstance(relative, SQLiteStore)
        assert isinstance(absolute, SQLiteStore)
    finally:
        await relative.close()
        await absolute.close()
    assert (tmp_path / "data" / "relative.sqlite3").is_file()
    assert (tmp_path / "absolute.sqlite3").is_file()
    assert store_is_shared("sqlite:///data/relative.sqlite3")


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///proxy.sqlite3", "proxy.sqlite3"),
        ("sqlite:///data/proxy.sqlite3", "data/proxy.sqlite3"),
        ("sqlite:////var/lib/proxy/proxy.sqlite3", "/var/lib/proxy/proxy.sqlite3"),
        ("sqlite:///with%20space.sqlite3", "with space.sqlite3"),
    ],
)
def test_sqlite_path(url, path):
    assert sqlite_path(url) == path


@pytest.mark.parametrize(
    "url",
    ["sqlite://", "sqlite:///", "sqlite://host/proxy.sqlite3", "sqlite:///:memory:",
     "sqlite:///dir/", "sqlite:///proxy.sqlite3?mode=ro"],
)
async def test_bad_sqlite_urls_are_rejected(url):
    with pytest.raises(ValueError, match="SQLite store URL"):
        await open_store(url)


async def test_reads_and_writes_of_two_connections_interleave_without_busy_errors(tmp_path):
    """A read's open cursor must not make this connection's next write fail at once."""
    path = tmp_path / "shared.sqlite3"
    first, second = await SQLiteStore.open(path), await SQLiteStore.open(path)
    try:
        for n in range(300):
            await first.put(f"k{n}", b"v" * 100)

        async def mixed(store: SQLiteStore, n: int) -> None:
            await asyncio.gather(store.get(f"k{n}"), store.keys("k"),
                                 store.put(f"k{n}", b"w"),
                                 store.compare_and_swap(f"c{n}", None, b"x", ttl=60))

        # Each connection's busy_timeout covers waiting for the other's writes.
        await asyncio.gather(*(mixed((first, second)[n % 2], n) for n in range(300)))
        assert len(await second.keys("c")) == 300
    finally:
        await first.close()
        await second.close()


class _LockedWalSwitch:
    """An aiosqlite connection whose first ``failures`` WAL switches find the file locked.

    What a worker sees when others switch the same fresh file at once: SQLite
    answers "database is locked" at once (no busy wait, it would deadlock).
    A standalone run of 6 processes x 60 fresh files hit it in 3 rounds.
    """

    def __init__(self, connection: aiosqlite.Connection, failures: int) -> None:
        self._connection = connection
        self.failures = failures
        self.attempts = 0

    def __getattr__(self, name: str):
        return getattr(self._connection, name)

    def execute(self, sql: str, *args):
        if sql == "PRAGMA journal_mode = WAL":
            self.attempts += 1
            if self.attempts <= self.failures:
                async def locked():
                    raise sqlite3.OperationalError("database is locked")
                return _Awaitable(locked())
        return self._connection.execute(sql, *args)


class _Awaitable:
    def __init__(self, coroutine) -> None:
        self._coroutine = coroutine

    def __await__(self):
        return self._coroutine.__await__()


async def test_wal_switch_is_retried_while_another_worker_holds_the_file(tmp_path):
    connection = await aiosqlite.connect(tmp_path / "fresh.sqlite3", isolation_level=None)
    flaky = _LockedWalSwitch(connection, failures=3)
    store = SQLiteStore(flaky, busy_timeout=5.0, close_connection=True)  # type: ignore[arg-type]
    try:
        await store.prepare()
        assert flaky.attempts == 4
        await store.put("k", b"v")
        assert await store.get("k") == b"v"
    finally:
        await store.close()


async def test_wal_switch_gives_up_after_the_busy_timeout(tmp_path):
    connection = await aiosqlite.connect(tmp_path / "fresh.sqlite3", isolation_level=None)
    flaky = _LockedWalSwitch(connection, failures=10_000)
    store = SQLiteStore(flaky, busy_timeout=0.2, close_connection=True)  # type: ignore[arg-type]
    try:
        with pytest.raises(StoreUnavailable):
            await store.prepare()
        assert flaky.attempts > 1
    finally:
        await store.close()
