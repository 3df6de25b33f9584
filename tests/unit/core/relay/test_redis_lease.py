"""A process's heartbeat, wants and leases for live events, on the real Redis."""

from __future__ import annotations

import asyncio
import collections
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from proxy.core.relay.backend import RelayKeys, key_token
from proxy.core.relay.catalog import SubscriptionKey
from proxy.core.relay.redis_lease import Coordination

FOLLOW = SubscriptionKey("channel.follow", "2", (("broadcaster_user_id", "1"),
                                                 ("moderator_user_id", "1")))
CHEER = SubscriptionKey("channel.cheer", "1", (("broadcaster_user_id", "1"),))


@pytest.fixture
async def client(redis_url) -> AsyncIterator[redis.asyncio.Redis]:
    connection = redis.asyncio.Redis.from_url(redis_url)
    yield connection
    await connection.aclose()


@pytest.fixture
async def keys(client) -> AsyncIterator[RelayKeys]:
    prefix = f"lease-test-{uuid.uuid4().hex[:8]}:eventsub:"
    yield RelayKeys(prefix)
    names = [name async for name in client.scan_iter(match=f"{prefix}*")]
    if names:
        await client.delete(*names)


def _process(client, keys, name: str, lease: float = 5.0) -> Coordination:
    return Coordination(client, keys, name, lease=lease)


async def test_one_process_takes_the_lease_and_only_it_renews_it(client, keys):
    first, second = _process(client, keys, "first"), _process(client, keys, "second")
    assert await first.take_lease("g") == (True, False)
    assert await second.take_lease("g") == (False, False)
    assert await first.renew_lease("g")
    assert not await second.renew_lease("g")  # never renews a lease it does not hold
    assert await client.get(keys.lease("g")) == b"first"


async def test_a_lease_redis_forgot_is_taken_again_by_its_holder(client, keys):
    first = _process(client, keys, "first")
    await first.take_lease("g")
    await client.delete(keys.lease("g"))  # as after a restart without the key
    assert await first.renew_lease("g")
    assert await client.get(keys.lease("g")) == b"first"


async def test_a_lapsed_lease_goes_to_the_next_with_the_dead_leaders_mark(client, keys):
    dead = _process(client, keys, "dead", lease=0.2)
    assert await dead.take_lease("g") == (True, False)
    await asyncio.sleep(0.3)  # it stopped renewing: the lease lapses, the mark stays
    assert await client.get(keys.led("g")) == b"dead"
    assert await _process(client, keys, "next").take_lease("g") == (True, True)
    assert not await dead.renew_lease("g")  # it lost the lease


async def test_a_released_lease_leaves_no_mark_and_says_so(client, keys):
    first, second = _process(client, keys, "first"), _process(client, keys, "second")
    await first.take_lease("g")
    pubsub = client.pubsub()
    await pubsub.subscribe(keys.channel("g"))
    await first.release_lease("g")
    assert await second.take_lease("g") == (True, False)  # no gap: it was handed over
    messages = []
    async with asyncio.timeout(5):
        while len(messages) < 2:
            message = await pubsub.get_message(timeout=1.0)
            if message is not None:
                messages.append(message)
    assert b"handover" in messages[1]["data"]
    await pubsub.aclose()


async def test_the_union_counts_live_processes_only(client, keys):
    alive, dead = _process(client, keys, "alive"), _process(client, keys, "dead", lease=0.2)
    await alive.write_wants("g", collections.Counter({key_token(FOLLOW): 2}))
    await dead.write_wants("g", collections.Counter({key_token(CHEER): 1}))
    assert await alive.union("g") == {FOLLOW, CHEER}
    await asyncio.sleep(0.3)  # the dead one's heartbeat expires
    assert await alive.union("g") == {FOLLOW}
    assert await client.hkeys(keys.wants("g")) == [f"alive|{key_token(FOLLOW)}".encode()]


async def test_wants_down_to_zero_are_removed(client, keys):
    process = _process(client, keys, "p")
    counts = collections.Counter({key_token(FOLLOW): 1, key_token(CHEER): 1})
    await process.write_wants("g", counts)
    counts.subtract({key_token(CHEER): 1})
    await process.write_wants("g", counts)
    assert await process.union("g") == {FOLLOW}
    assert key_token(CHEER) not in counts
    await process.forget("g", list(counts))
    await process.stop()
    assert await process.union("g") == set()
