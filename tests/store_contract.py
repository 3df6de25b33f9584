"""The contract every token store backend keeps (see :mod:`proxy.store.base`).

A backend's test module subclasses :class:`StoreContract` and provides a
``make_store`` fixture: an async callable ``make_store(prefix)`` returning a
store on one shared backend (closed at teardown), and sets ``shared_backend``
to say whether two stores made with the same prefix see the same data (False
for the in-memory store). Where they do, the concurrency tests spread their
tasks over two stores, so they race through two connections.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import suppress

import pytest

from proxy.errors import LockTimeout, StoreUnavailable
from proxy.store import TokenStore

ALL_BYTES = bytes(range(256))


class StoreContract:
    """Tests every backend must pass; subclass and provide ``make_store``."""

    shared_backend = True

    @pytest.fixture
    async def store(self, make_store):
        return await make_store("contract:")

    @pytest.fixture
    async def peer(self, store, make_store):
        """A second handle on the store's data: another connection where there can be one."""
        return await make_store("contract:") if self.shared_backend else store

    # -- get / put / delete -------------------------------------------------

    async def test_implements_the_protocol(self, store):
        assert isinstance(store, TokenStore)
        await store.ping()

    async def test_get_missing_is_none(self, store):
        assert await store.get("missing") is None

    async def test_put_then_get_and_overwrite(self, store, peer):
        await store.put("k", b"one")
        assert await store.get("k") == b"one"
        await store.put("k", b"two")
        assert await peer.get("k") == b"two"

    async def test_binary_values_round_trip(self, store):
        await store.put("bin", ALL_BYTES)
        assert await store.get("bin") == ALL_BYTES
        assert await store.compare_and_swap("bin", ALL_BYTES, ALL_BYTES[::-1])
        assert await store.get("bin") == ALL_BYTES[::-1]
        await store.put("empty", b"")
        assert await store.get("empty") == b""

    async def test_delete_says_whether_the_key_was_there(self, store):
        await store.put("k", b"v")
        assert await store.delete("k") is True
        assert await store.get("k") is None
        assert await store.delete("k") is False

    async def test_concurrent_deletes_have_one_winner(self, store, peer):
        await store.put("state", b"single-use")
        handles = [store, peer] * 10
        results = await asyncio.gather(*(handle.delete("state") for handle in handles))
        assert results.count(True) == 1

    # -- expiry ---------------------------------------------------------------

    async def test_ttl_expires_values(self, store):
        await store.put("short", b"v", ttl=0.2)
        await store.put("kept", b"v", ttl=0.2)
        await store.put("kept", b"v2")  # a put without ttl clears the old one
        await store.put("long", b"v", ttl=30)
        assert await store.get("short") == b"v"
        await asyncio.sleep(0.3)
        assert await store.get("short") is None
        assert await store.delete("short") is False
        assert await store.get("kept") == b"v2"
        assert await store.get("long") == b"v"

    @pytest.mark.parametrize("ttl", [0, -1.0])
    async def test_non_positive_ttl_is_rejected(self, store, ttl):
        with pytest.raises(ValueError):
            await store.put("k", b"v", ttl=ttl)
        with pytest.raises(ValueError):
            await store.compare_and_swap("k", None, b"v", ttl=ttl)

    # -- compare-and-swap -----------------------------------------------------

    async def test_compare_and_swap_replaces_only_the_expected_value(self, store):
        await store.put("k", b"old")
        assert await store.compare_and_swap("k", b"other", b"new") is False
        assert await store.get("k") == b"old"
        assert await store.compare_and_swap("k", b"old", b"new") is True
        assert await store.get("k") == b"new"

    async def test_compare_and_swap_with_none_means_absent(self, store):
        assert await store.compare_and_swap("k", b"anything", b"v") is False
        assert await store.get("k") is None
        assert await store.compare_and_swap("k", None, b"first") is True
        assert await store.compare_and_swap("k", None, b"second") is False
        assert await store.get("k") == b"first"

    async def test_compare_and_swap_treats_expired_as_absent(self, store):
        await store.put("stale", b"old", ttl=0.1)
        await store.put("gone", b"old", ttl=0.1)
        assert await store.compare_and_swap("timed", None, b"v", ttl=0.1) is True
        await asyncio.sleep(0.2)
        assert await store.compare_and_swap("stale", b"old", b"new") is False
        assert await store.compare_and_swap("gone", None, b"new") is True
        assert await store.get("gone") == b"new"
        assert await store.get("timed") is None

    async def test_concurrent_compare_and_swap_has_one_winner(self, store, peer):
        await store.put("grant", b"v0")
        handles = [store, peer] * 10
        results = await asyncio.gather(
            *(h.compare_and_swap("grant", b"v0", b"w%d" % i) for i, h in enumerate(handles))
        )
        assert results.count(True) == 1
        assert await store.get("grant") == b"w%d" % results.index(True)

    async def test_concurrent_create_has_one_winner(self, store, peer):
        handles = [store, peer] * 10
        results = await asyncio.gather(
            *(h.compare_and_swap("new", None, b"v%d" % i) for i, h in enumerate(handles))
        )
        assert results.count(True) == 1
        assert await store.get("new") == b"v%d" % results.index(True)

    # -- keys -----------------------------------------------------------------

    async def test_keys_lists_live_keys_by_prefix(self, store):
        for key in ("grant:a", "grant:b", "grantee", "state:x"):
            await store.put(key, b"v")
        await store.put("grant:expiring", b"v", ttl=0.1)
        async with store.lock("grant:a"):  # locks are not keys
            assert sorted(await store.keys("grant:")) == ["grant:a", "grant:b", "grant:expiring"]
        await asyncio.sleep(0.2)
        assert sorted(await store.keys("grant:")) == ["grant:a", "grant:b"]
        assert sorted(await store.keys("")) == ["grant:a", "grant:b", "grantee", "state:x"]
        assert await store.keys("nothing:") == []

    async def test_keys_prefix_is_literal(self, store):
        literal = ["a*b", "a?b", "a[x]b", "a%b", "a_b", "a\\b"]
        for key in (*literal, "axb", "A*B", "a*"):
            await store.put(key, b"v")
        assert sorted(await store.keys("a*")) == ["a*", "a*b"]
        for key in literal:
            assert await store.keys(key) == [key]

    async def test_unicode_keys(self, store):
        await store.put("grant:ünïcødé-ユーザー", b"v")
        assert await store.keys("grant:ünï") == ["grant:ünïcødé-ユーザー"]
        assert await store.get("grant:ünïcødé-ユーザー") == b"v"

    async def test_prefixes_isolate_stores(self, make_store):
        one = await make_store("one:")
        two = await make_store("two:")
        await one.put("k", b"1")
        assert await two.get("k") is None
        assert await two.keys("") == []
        assert await two.delete("k") is False
        assert await two.compare_and_swap("k", None, b"2") is True
        assert await one.get("k") == b"1"
        assert await one.keys("") == ["k"]
        async with one.lock("k", wait=0):
            async with two.lock("k", wait=0):
                pass

    # -- lock -----------------------------------------------------------------

    async def test_lock_is_exclusive(self, store, peer):
        events: list[str] = []
        first_holds = asyncio.Event()

        async def first() -> None:
            async with store.lock("k", lease=5, wait=1):
                events.append("first in")
                first_holds.set()
                await asyncio.sleep(0.2)
                events.append("first out")

        async def second() -> None:
            await first_holds.wait()
            async with peer.lock("k", lease=5, wait=2):
                events.append("second in")

        await asyncio.gather(first(), second())
        assert events == ["first in", "first out", "second in"]

    async def test_locks_on_different_keys_are_independent(self, store):
        async with store.lock("a", wait=0):
            async with store.lock("b", wait=0):
                pass

    async def test_lock_wait_times_out(self, store, peer):
        async with store.lock("k", lease=5, wait=1):
            started = time.monotonic()
            with pytest.raises(LockTimeout) as raised:
                async with peer.lock("k", lease=5, wait=0.2):
                    pytest.fail("took a lock that is held")
            assert 0.15 <= time.monotonic() - started < 1.5
        assert isinstance(raised.value, StoreUnavailable)  # so the HTTP layer answers 503

    async def test_lock_is_released_when_the_body_raises(self, store):
        with pytest.raises(RuntimeError):
            async with store.lock("k", wait=0):
                raise RuntimeError("boom")
        async with store.lock("k", wait=0):
            pass

    async def test_cancelled_waiter_leaves_no_lock(self, store, peer):
        async def take() -> None:
            async with peer.lock("k", lease=5, wait=5):
                pytest.fail("took a lock that is held")

        async with store.lock("k", lease=5, wait=1):
            waiter = asyncio.create_task(take())
            await asyncio.sleep(0.1)
            waiter.cancel()
            with suppress(asyncio.CancelledError):
                await waiter
        async with peer.lock("k", wait=0.2):
            pass

    async def test_lock_lease_expires(self, store, peer):
        abandoned = store.lock("k", lease=0.3, wait=1)
        await abandoned.__aenter__()  # a holder that never releases
        try:
            started = time.monotonic()
            async with peer.lock("k", lease=5, wait=3):
                waited = time.monotonic() - started
        finally:
            await abandoned.__aexit__(None, None, None)
        assert 0.2 <= waited < 2

    async def test_late_release_keeps_the_successors_lock(self, store, peer):
        stale = store.lock("k", lease=0.2, wait=1)
        await stale.__aenter__()
        successor = peer.lock("k", lease=5, wait=3)
        await successor.__aenter__()  # takes over once the stale lease is over
        try:
            await stale.__aexit__(None, None, None)  # too late: must not free the successor's
            with pytest.raises(LockTimeout):
                async with store.lock("k", wait=0.2):
                    pass
        finally:
            await successor.__aexit__(None, None, None)
        async with store.lock("k", wait=0.5):
            pass

    @pytest.mark.parametrize(("lease", "wait"), [(0, 1), (-1, 1), (1, -1)])
    async def test_bad_lock_arguments_are_rejected(self, store, lease, wait):
        with pytest.raises(ValueError):
            store.lock("k", lease=lease, wait=wait)
