"""The Redis store: the shared contract against a real Redis, plus URLs and TLS."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import uuid
from contextlib import suppress

import pytest
import redis.asyncio
from cryptography.fernet import Fernet

from proxy.config import load_config
from proxy.errors import LockTimeout, StoreUnavailable
from proxy.store import RedisStore, open_store
from tests.store_contract import StoreContract


@pytest.fixture
async def namespace(redis_url):
    """A prefix of this test's own; its keys are deleted afterwards."""
    namespace = f"test-{uuid.uuid4().hex}:"
    yield namespace
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        names = [name async for name in client.scan_iter(match=f"{namespace}*")]
        if names:
            await client.delete(*names)
    finally:
        await client.aclose()


@pytest.fixture
async def make_store(redis_url, namespace):
    stores: list[RedisStore] = []

    async def make(prefix: str) -> RedisStore:
        # A client each, so stores talk through separate connections.
        store = RedisStore.from_url(redis_url, prefix=namespace + prefix)
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.close()


@pytest.fixture
async def raw(redis_url):
    """A plain client, to look at what the store wrote."""
    client = redis.asyncio.Redis.from_url(redis_url)
    yield client
    await client.aclose()


class TestRedisStore(StoreContract):
    shared_backend = True


async def test_key_layout(make_store, namespace, raw):
    store = await make_store("p:")
    await store.put("grant:1", b"v", ttl=60)
    async with store.lock("grant:1", lease=5):
        assert await raw.get(f"{namespace}p:kv:grant:1") == b"v"
        assert 0 < await raw.pttl(f"{namespace}p:kv:grant:1") <= 60_000
        assert 0 < await raw.pttl(f"{namespace}p:lock:grant:1") <= 5_000
    assert await raw.exists(f"{namespace}p:lock:grant:1") == 0


async def test_lock_across_two_connections(make_store):
    first = await make_store("p:")
    second = await make_store("p:")
    assert first.client is not second.client
    async with first.lock("k", lease=5):
        with pytest.raises(LockTimeout):
            async with second.lock("k", wait=0.2):
                pass
    async with second.lock("k", wait=0):
        pass


async def test_handed_in_client_is_left_open(redis_url, namespace):
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        store = RedisStore(client, prefix=namespace)
        await store.put("k", b"v")
        await store.close()
        assert await client.get(f"{namespace}kv:k") == b"v"
    finally:
        await client.aclose()


async def test_decoding_client_is_rejected(redis_url):
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        with pytest.raises(ValueError, match="decode_responses"):
            RedisStore(client)
    finally:
        await client.aclose()


async def test_open_store_redis(redis_url):
    store = await open_store(redis_url, prefix=f"test-{uuid.uuid4().hex}:")
    try:
        assert isinstance(store, RedisStore)
        await store.ping()
    finally:
        await store.close()


async def test_unreachable_redis_is_unavailable():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before the store connects
    store = RedisStore.from_url(f"redis://127.0.0.1:{port}/0")
    try:
        for operation in (
            lambda: store.ping(),
            lambda: store.get("k"),
            lambda: store.put("k", b"v"),
            lambda: store.compare_and_swap("k", None, b"v"),
            lambda: store.delete("k"),
            lambda: store.keys(""),
        ):
            with pytest.raises(StoreUnavailable):
                await operation()
        with pytest.raises(StoreUnavailable) as raised:
            async with store.lock("k", wait=1):
                pass
        assert type(raised.value) is StoreUnavailable  # not a LockTimeout
        assert "127.0.0.1" not in raised.value.message  # clients are not told our topology
    finally:
        await store.close()


# -- rediss:// and ssl_cert_reqs (Heroku Redis serves a self-signed certificate) ---------


@pytest.mark.parametrize(
    ("query", "cert_reqs"),
    [
        ("ssl_cert_reqs=none", ssl.CERT_NONE),
        ("ssl_cert_reqs=CERT_NONE", ssl.CERT_NONE),
        ("ssl_cert_reqs=None", ssl.CERT_NONE),
        ("ssl_cert_reqs=optional", ssl.CERT_OPTIONAL),
        ("ssl_cert_reqs=required", ssl.CERT_REQUIRED),
    ],
)
async def test_from_url_parses_ssl_cert_reqs(query, cert_reqs):
    store = RedisStore.from_url(f"rediss://:p%40ss@example.com:6380/2?{query}&socket_timeout=2")
    try:
        pool = store.client.connection_pool
        assert pool.connection_class is redis.asyncio.SSLConnection
        assert pool.connection_kwargs["ssl_cert_reqs"] == cert_reqs
        assert pool.connection_kwargs["password"] == "p@ss"
        assert pool.connection_kwargs["host"] == "example.com"
        assert pool.connection_kwargs["port"] == 6380
        assert pool.connection_kwargs["db"] == 2
        assert pool.connection_kwargs["socket_timeout"] == 2.0
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("rediss://example.com?ssl_cert_reqs=sometimes", "must be one of"),
        ("redis://example.com?ssl_cert_reqs=none", "only applies to rediss://"),
    ],
)
def test_from_url_rejects_bad_ssl_cert_reqs(url, message):
    with pytest.raises(ValueError, match=message):
        RedisStore.from_url(url)


async def test_self_signed_tls_with_ssl_cert_reqs_none(redis_tls_url):
    store = RedisStore.from_url(f"{redis_tls_url}?ssl_cert_reqs=none", prefix="tls-test:")
    try:
        await store.ping()
        await store.put("k", b"v", ttl=5)
        assert await store.get("k") == b"v"
        assert await store.delete("k")
    finally:
        await store.close()


async def test_self_signed_tls_is_refused_by_default(redis_tls_url):
    store = RedisStore.from_url(redis_tls_url)
    try:
        with pytest.raises(StoreUnavailable) as raised:
            await store.ping()
        assert "certificate verify failed" in str(raised.value.__cause__)
    finally:
        await store.close()


async def test_cancel_swallowed_by_the_client_still_stops_a_waiter(make_store, monkeypatch):
    """On Python 3.11 redis-py can lose a cancellation that lands as a command ends."""
    store = await make_store("p:")
    calls = 0

    async def set_that_swallows_a_cancel(*args, **kwargs):
        nonlocal calls
        calls += 1
        asyncio.current_task().cancel()
        with suppress(asyncio.CancelledError):
            await asyncio.sleep(0)  # what wait_for does when the command finished anyway
        return None  # the lock is held by someone else

    monkeypatch.setattr(store.client, "set", set_that_swallows_a_cancel)

    async def take() -> None:
        async with store.lock("k", wait=5):
            pytest.fail("a cancelled waiter took the lock")

    waiter = asyncio.create_task(take())
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(waiter, 1)
    assert calls == 1


async def test_redis_tls_verify_false_reaches_a_self_signed_server(redis_tls_url):
    # What a Heroku deploy does: the add-on's URL as it is, plus REDIS_TLS_VERIFY=false.
    config = load_config(path=os.devnull, environ={
        "TWITCH_CLIENT_ID": "id", "TWITCH_CLIENT_SECRET": "secret",
        "TOKEN_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "REDIS_URL": redis_tls_url, "REDIS_TLS_VERIFY": "false"})
    store = await open_store(config.store.url, prefix="tls-verify-test:")
    try:
        await store.put("k", b"v")
        assert await store.get("k") == b"v"
        await store.delete("k")
    finally:
        await store.close()
