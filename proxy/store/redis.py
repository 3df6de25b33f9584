"""The Redis token store (``redis://``, ``rediss://``), shared by any number of replicas.

Keys live under ``<prefix>kv:`` and locks under ``<prefix>lock:``, so a lock
can never collide with a value and :meth:`RedisStore.keys` never lists one.
Compare-and-swap and lock release are small Lua scripts, so each is one atomic
step on the server. A lock is ``SET name owner NX PX lease`` with a random
owner; waiting polls with a short backoff.

Connection failures and timeouts become :class:`~proxy.errors.StoreUnavailable`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import ssl
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from typing import cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio
import redis.exceptions

from ..errors import LockTimeout, StoreUnavailable
from .base import (
    DEFAULT_LOCK_LEASE,
    DEFAULT_LOCK_WAIT,
    DEFAULT_PREFIX,
    check_lock_args,
    check_ttl,
)

__all__ = ["RedisStore"]

log = logging.getLogger(__name__)

# KEYS[1] = key; ARGV = expect_absent ("1"/"0"), expected, value, ttl in ms ("" = none).
# A missing key reads as false, which never equals a string.
_COMPARE_AND_SWAP = """
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if current then return 0 end
elseif current ~= ARGV[2] then
  return 0
end
if ARGV[4] == '' then
  redis.call('SET', KEYS[1], ARGV[3])
else
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
end
return 1
"""

# KEYS[1] = lock name; ARGV[1] = owner. After a lease ran out someone else may
# hold the lock: delete it only if it is still ours.
_RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# Lock polling backoff, in seconds (see proxy.store.sqlite).
_POLL_FIRST = 0.01
_POLL_MAX = 0.05

# Accepted spellings of ``ssl_cert_reqs`` in a URL. redis-py itself knows only
# the lowercase names, and would reject the others at the first command.
_CERT_REQS = {
    "none": ssl.CERT_NONE,
    "cert_none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "cert_optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
    "cert_required": ssl.CERT_REQUIRED,
}

# Escaped in a SCAN MATCH pattern so a key prefix matches only itself.
_GLOB_SPECIALS = frozenset("*?[]\\")


def _glob_escape(text: str) -> str:
    return "".join("\\" + char if char in _GLOB_SPECIALS else char for char in text)


def _milliseconds(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


@contextmanager
def _unavailable_on_connection_errors() -> Iterator[None]:
    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        # Logged here, as the message a client sees does not name the cause. The
        # error names the server and the failure, never a key or value.
        log.warning("Redis is unavailable: %s", exc)
        raise StoreUnavailable("The token store (Redis) is unavailable.") from exc


def _split_cert_reqs(url: str) -> tuple[str, ssl.VerifyMode | None]:
    """Split a checked ``ssl_cert_reqs`` out of ``url``'s query.

    Heroku Redis serves a self-signed certificate, so its URLs are used with
    ``?ssl_cert_reqs=none``. redis-py parses that itself (unknown query options
    go to the connection as strings; ``"none"`` turns certificate and hostname
    checks off), but only in lowercase, and only when the first command runs.
    Checking it here fails at startup instead, and accepts ``CERT_NONE`` too.
    """
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    cert_reqs = None
    kept = []
    for name, value in query:
        if name != "ssl_cert_reqs":
            kept.append((name, value))
            continue
        if parts.scheme != "rediss":
            raise ValueError("ssl_cert_reqs only applies to rediss:// URLs")
        try:
            cert_reqs = _CERT_REQS[value.lower()]
        except KeyError:
            raise ValueError(
                f"ssl_cert_reqs must be one of none, optional, required, not {value!r}"
            ) from None
    return urlunsplit(parts._replace(query=urlencode(kept))), cert_reqs


class RedisStore:
    """A :class:`~proxy.store.base.TokenStore` in Redis.

    It is handed a ``redis.asyncio.Redis`` client that returns bytes (the
    default, ``decode_responses=False``). ``close()`` closes that client only
    when ``close_connection`` is true, as :meth:`from_url` sets it.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        close_connection: bool = False,
    ) -> None:
        if client.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError("the Redis client must return bytes (decode_responses=False)")
        self._client = client
        self._close_connection = close_connection
        self._kv_prefix = f"{prefix}kv:"
        self._lock_prefix = f"{prefix}lock:"
        self._compare_and_swap = client.register_script(_COMPARE_AND_SWAP)
        self._release_lock = client.register_script(_RELEASE_LOCK)

    @property
    def client(self) -> redis.asyncio.Redis:
        """The Redis client this store talks through."""
        return self._client

    @classmethod
    def from_url(cls, url: str, *, prefix: str = DEFAULT_PREFIX) -> RedisStore:
        """Connect lazily to the Redis at ``url``; the store owns the client.

        Query options are redis-py's (``socket_timeout``, ``db``, ...), plus a
        checked ``ssl_cert_reqs=none|optional|required`` for ``rediss://``.
        """
        url, cert_reqs = _split_cert_reqs(url)
        if cert_reqs is None:
            client = redis.asyncio.Redis.from_url(url)
        else:
            client = redis.asyncio.Redis.from_url(url, ssl_cert_reqs=cert_reqs)
        return cls(client, prefix=prefix, close_connection=True)

    async def get(self, key: str) -> bytes | None:
        """Return the live value for ``key``, or None."""
        with _unavailable_on_connection_errors():
            value = await self._client.get(self._kv_prefix + key)
        # Bytes, not str: __init__ checked the client does not decode responses.
        return cast("bytes | None", value)

    async def put(self, key: str, value: bytes, *, ttl: float | None = None) -> None:
        """Store ``value`` under ``key``, replacing any value and ttl."""
        check_ttl(ttl)
        px = None if ttl is None else _milliseconds(ttl)
        with _unavailable_on_connection_errors():
            await self._client.set(self._kv_prefix + key, value, px=px)

    async def compare_and_swap(
        self, key: str, expected: bytes | None, value: bytes, *, ttl: float | None = None
    ) -> bool:
        """Store ``value`` only if the value is ``expected`` (None: absent), atomically."""
        check_ttl(ttl)
        args = [
            "1" if expected is None else "0",
            b"" if expected is None else expected,
            value,
            "" if ttl is None else str(_milliseconds(ttl)),
        ]
        with _unavailable_on_connection_errors():
            swapped = await self._compare_and_swap(keys=[self._kv_prefix + key], args=args)
        return bool(swapped)

    async def delete(self, key: str) -> bool:
        """Remove ``key``; True if it was there."""
        with _unavailable_on_connection_errors():
            deleted: int = await self._client.delete(self._kv_prefix + key)
        return deleted > 0

    async def keys(self, prefix: str) -> list[str]:
        """Keys starting with ``prefix``, without the store's own prefix (SCAN, not KEYS)."""
        pattern = _glob_escape(self._kv_prefix + prefix) + "*"
        start = len(self._kv_prefix)
        with _unavailable_on_connection_errors():
            # SCAN may return a key twice; the set drops the repeats.
            names = {name async for name in self._client.scan_iter(match=pattern, count=500)}
        return sorted(name.decode()[start:] for name in names)

    def lock(
        self, key: str, *, lease: float = DEFAULT_LOCK_LEASE, wait: float = DEFAULT_LOCK_WAIT
    ) -> AbstractAsyncContextManager[None]:
        """Hold ``key``'s lock across every client of this Redis."""
        check_lock_args(lease, wait)
        return self._lock(self._lock_prefix + key, lease, wait)

    @asynccontextmanager
    async def _lock(self, name: str, lease: float, wait: float) -> AsyncIterator[None]:
        owner = uuid.uuid4().hex
        await self._take_lock(name, owner, lease, asyncio.get_running_loop().time() + wait)
        try:
            yield
        finally:
            await self._release(name, owner)

    async def _take_lock(self, name: str, owner: str, lease: float, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        cancels_before = task.cancelling() if task else 0
        delay = _POLL_FIRST
        while True:
            try:
                with _unavailable_on_connection_errors():
                    taken = await self._client.set(name, owner, nx=True, px=_milliseconds(lease))
                if task is not None and task.cancelling() > cancels_before:
                    # redis-py awaits asyncio.wait_for, which on Python 3.11 swallows
                    # a cancellation landing as the command completes; without this
                    # a cancelled waiter would poll on and take the lock anyway.
                    raise asyncio.CancelledError
            except BaseException:
                # Cancelled (or cut off) after the SET may have run: do not
                # leave our lock behind for a whole lease.
                await self._release(name, owner)
                raise
            if taken:
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise LockTimeout("Timed out waiting for a lock held by another request.")
            await asyncio.sleep(min(delay * random.uniform(0.5, 1.0), remaining))
            delay = min(delay * 1.5, _POLL_MAX)

    async def _release(self, name: str, owner: str) -> None:
        try:
            with _unavailable_on_connection_errors():
                await self._release_lock(keys=[name], args=[owner])
        except StoreUnavailable:
            log.warning("could not release a lock; it is freed when its lease runs out")

    async def ping(self) -> None:
        """Raise :class:`~proxy.errors.StoreUnavailable` unless Redis answers PING."""
        with _unavailable_on_connection_errors():
            await self._client.ping()

    async def close(self) -> None:
        """Close the client if this store created it."""
        if self._close_connection:
            await self._client.aclose()
