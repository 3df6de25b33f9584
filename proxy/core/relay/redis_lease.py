"""One process's bookkeeping in Redis for live events: heartbeat, wants, leases.

:class:`Coordination` is what :class:`~proxy.core.relay.redis_hub.RedisRelay`
keeps in Redis, with the names of :class:`~proxy.core.relay.backend.RelayKeys`:

- ``alive:<process>``: the process's heartbeat, set for ``lease`` seconds and
  renewed more often; wants of a process whose heartbeat expired are ignored
  and removed (it died without saying so);
- ``wants:<grant>``: a hash ``<process>|<key token>`` -> how many of that
  process's widgets want the subscription (it expires once no process
  renews it);
- ``lease:<grant>``: the leader's process id, ``SET NX PX lease``; renewed with a
  compare-and-renew script, so a process never renews a lease it lost (one
  Redis lost in a restart is taken again, as nobody holds it);
- ``led:<grant>``: set while a leader holds a session, removed when it steps
  down on purpose; found by the next leader, it means the last one died.

Control words are published on the grant's channel without a stream entry:
``wants`` (the wants changed), ``handover`` and ``released`` (the lease is
free, with the old session still open or closed), ``ready`` and
``stepped_down`` (the two sides of a hand-over).
"""

from __future__ import annotations

import collections
import logging
from typing import Any

import redis.asyncio

from .backend import Entry, RelayKeys, key_from_token, text_of
from .catalog import SubscriptionKey

__all__ = ["CONTROL_ID", "Coordination"]

log = logging.getLogger(__name__)

#: Control messages are published without a stream entry, under this id.
CONTROL_ID = "-"

# KEYS[1] = lease; ARGV = owner, lease ms. Renew a lease we hold, take one
# nobody holds (Redis lost it), never touch another's: 1 held, 0 lost.
_RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# KEYS = names; ARGV[1] = owner: delete each one only while it is still ours.
_RELEASE = """
for _, name in ipairs(KEYS) do
  if redis.call('GET', name) == ARGV[1] then redis.call('DEL', name) end
end
return 1
"""

#: How many leases long a leader's ``led`` mark outlives its last renewal.
_LED_LEASES = 20


class Coordination:
    """This process's heartbeat, wants and leases in Redis; see the module docstring."""

    def __init__(self, client: redis.asyncio.Redis, keys: RelayKeys, process_id: str, *,
                 lease: float) -> None:
        self._client = client
        self._keys = keys
        self.process_id = process_id
        self._lease_ms = max(1, int(lease * 1000))
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    async def write_wants(self, grant_id: str, counts: collections.Counter[str]) -> None:
        """Renew the heartbeat and write ``counts`` (tokens down to 0 are removed)."""
        name, me = self._keys.wants(grant_id), self.process_id
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.set(self._keys.alive(me), b"1", px=self._lease_ms)
            for token, count in list(counts.items()):
                if count > 0:
                    pipe.hset(name, f"{me}|{token}", count)
                else:
                    pipe.hdel(name, f"{me}|{token}")
                    del counts[token]
            # Renewed by every live process: gone a while after the last one died.
            pipe.pexpire(name, self._lease_ms * _LED_LEASES)
            await pipe.execute()
        await self.control(grant_id, "wants")

    async def forget(self, grant_id: str, tokens: list[str]) -> None:
        """Remove this process's wants for ``grant_id`` (it is stopping)."""
        if tokens:
            await self._client.hdel(self._keys.wants(grant_id),
                                    *(f"{self.process_id}|{token}" for token in tokens))

    async def stop(self) -> None:
        """Remove the heartbeat: this process is gone."""
        await self._client.delete(self._keys.alive(self.process_id))

    async def union(self, grant_id: str) -> set[SubscriptionKey]:
        """Every live process's wants for ``grant_id``; dead processes' are removed."""
        name = self._keys.wants(grant_id)
        fields: dict[Any, Any] = await self._client.hgetall(name)
        by_process: dict[str, list[tuple[Any, str]]] = {}
        for raw, count in fields.items():
            process, _, token = text_of(raw).partition("|")
            if int(count) > 0:
                by_process.setdefault(process, []).append((raw, token))
        processes = sorted(by_process)
        alive = await self._client.mget([self._keys.alive(p) for p in processes]) \
            if processes else []
        wanted: set[SubscriptionKey] = set()
        for process, present in zip(processes, alive, strict=True):
            if present is None:
                await self._client.hdel(name, *(raw for raw, _ in by_process[process]))
                log.info("eventsub grant=%s: a process stopped renewing its heartbeat; its "
                         "widgets' subscriptions are dropped", grant_id)
                continue
            wanted.update(key_from_token(token) for _, token in by_process[process])
        return wanted

    async def take_lease(self, grant_id: str) -> tuple[bool, bool]:
        """Try to take the grant's lease: (taken, whether the last leader died holding it)."""
        if not await self._client.set(self._keys.lease(grant_id), self.process_id, nx=True,
                                      px=self._lease_ms):
            return False, False
        died = await self._client.set(self._keys.led(grant_id), self.process_id, get=True,
                                      px=self._lease_ms * _LED_LEASES)
        return True, died is not None and text_of(died) != self.process_id

    async def renew_lease(self, grant_id: str) -> bool:
        """Renew a lease this process holds; False if another process holds it now."""
        held = await self._renew(keys=[self._keys.lease(grant_id)],
                                 args=[self.process_id, self._lease_ms])
        if held:
            await self._client.set(self._keys.led(grant_id), self.process_id,
                                   px=self._lease_ms * _LED_LEASES)
        return bool(held)

    async def release_lease(self, grant_id: str, *, word: str = "handover") -> None:
        """Step down on purpose: the lease and the mark go, and the others are told.

        ``handover``: our session is still open until the next one is ready;
        ``released``: it is closed already.
        """
        await self._release(keys=[self._keys.led(grant_id), self._keys.lease(grant_id)],
                            args=[self.process_id])
        await self.control(grant_id, word)

    async def control(self, grant_id: str, event: str) -> None:
        """Publish a control word on the grant's channel."""
        await self._client.publish(self._keys.channel(grant_id),
                                   f"{CONTROL_ID} {Entry(event, {}, None).encode()}")
