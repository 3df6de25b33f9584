"""The in-memory store, and how :func:`proxy.store.open_store` picks a backend."""

from __future__ import annotations

import pytest

from proxy.config.store_url import store_is_shared
from proxy.store import MemoryStore, open_store
from tests.store_contract import StoreContract


@pytest.fixture
async def make_store():
    stores: list[MemoryStore] = []

    async def make(prefix: str) -> MemoryStore:
        store = MemoryStore(prefix=prefix)
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.close()


class TestMemoryStore(StoreContract):
    shared_backend = False


async def test_open_store_memory():
    store = await open_store("memory://")
    try:
        assert isinstance(store, MemoryStore)
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("url", "shared"),
    [
        ("memory://", False),
        ("sqlite:///data/proxy.sqlite3", True),
        ("sqlite:////var/lib/proxy.sqlite3", True),
        ("redis://localhost:6379/0", True),
        ("rediss://:secret@example.com:6380/0?ssl_cert_reqs=none", True),
    ],
)
def test_store_is_shared(url, shared):
    assert store_is_shared(url) is shared


@pytest.mark.parametrize("url", ["postgres://localhost/db", "/tmp/file.sqlite3", ""])
async def test_unknown_scheme_is_rejected(url):
    with pytest.raises(ValueError, match="supported: memory://.*sqlite.*redis://, rediss://"):
        await open_store(url)
    with pytest.raises(ValueError, match="supported"):
        store_is_shared(url)
