"""Which relay serves live events, and what processes sharing one Redis say to each other.

Twitch allows 3 EventSub WebSockets per user, so several workers must not each
open their own. :func:`relay_mode` picks the relay for a configuration:

- one worker on any store: the one-process :class:`~proxy.core.relay.local.Relay`;
- a Redis store: :class:`~proxy.core.relay.redis_hub.RedisRelay`, which
  shares one Twitch socket per grant across every process on that Redis;
- several workers on another store: refused (:data:`NEEDS_REDIS`), as they
  could only open one socket per worker.

On Redis, every name lives under ``<store prefix>eventsub:`` (:class:`RelayKeys`).
A grant's events are entries of a capped stream (``XADD MAXLEN ~ N``); an
entry's id is the event id widgets see and resume from. The leader adds each
entry and publishes it on the grant's pub/sub channel in one script, so the
two never disagree on order. A message (:class:`Entry`) is JSON: the SSE event
name, its data, and the subscriptions it concerns (None: every widget of the
grant), or a control word (``end``: streams of those subscriptions end).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import redis.exceptions

from ...config.store_url import store_scheme
from .catalog import SubscriptionKey
from .stream import Outbox

__all__ = ["NEEDS_REDIS", "REDIS_ERRORS", "Entry", "RelayBackend", "RelayKeys", "key_from_token",
           "key_token", "relay_mode", "stream_id", "text_of"]

#: The refusal's message: what is wrong and how to fix it.
NEEDS_REDIS = ("Live events need one Twitch socket per streamer, shared by every worker, "
               "which only a Redis store can coordinate: set TOKEN_STORE_URL (or REDIS_URL) "
               "to a Redis, or run one worker (WEB_CONCURRENCY=1).")


#: What redis-py raises when Redis cannot be reached or does not answer in time.
REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


def relay_mode(store_url: str, workers: int) -> Literal["local", "redis", "refused"]:
    """How live events run for this store and worker count (see the module docstring)."""
    if store_scheme(store_url) in ("redis", "rediss"):
        return "redis"
    return "local" if workers <= 1 else "refused"


class RelayBackend(Protocol):
    """What ``GET /eventsub`` needs of a relay, in one process or across many."""

    def attach(self, grant_id: str, user_id: str, keys: Sequence[SubscriptionKey],
               last_event_id: str | None = None) -> Outbox: ...

    def detach(self, outbox: Outbox) -> None: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class RelayKeys:
    """Redis names under one prefix (the store's, plus ``eventsub:``)."""

    prefix: str

    def lease(self, grant_id: str) -> str:
        return f"{self.prefix}lease:{grant_id}"

    def led(self, grant_id: str) -> str:
        """Set while a leader holds a Twitch session; left behind by one that died."""
        return f"{self.prefix}led:{grant_id}"

    def wants(self, grant_id: str) -> str:
        """Hash ``<process>|<key token>`` -> widgets of that process wanting it."""
        return f"{self.prefix}wants:{grant_id}"

    def alive(self, process_id: str) -> str:
        return f"{self.prefix}alive:{process_id}"

    def events(self, grant_id: str) -> str:
        return f"{self.prefix}events:{grant_id}"

    def channel(self, grant_id: str) -> str:
        return f"{self.prefix}live:{grant_id}"

    def channel_pattern(self) -> str:
        return f"{self.prefix}live:*"

    def grant_of_channel(self, channel: str) -> str:
        return channel[len(self.prefix) + len("live:"):]


def key_token(key: SubscriptionKey) -> str:
    """``key`` as a compact, stable string (a hash field, a message's list entry)."""
    return json.dumps([key.type, key.version, [list(pair) for pair in key.condition]],
                      separators=(",", ":"))


def key_from_token(token: str) -> SubscriptionKey:
    """The key :func:`key_token` wrote."""
    kind, version, condition = json.loads(token)
    return SubscriptionKey(str(kind), str(version),
                           tuple((str(name), str(value)) for name, value in condition))


def text_of(value: Any) -> str:
    """A reply of the client (bytes: it does not decode responses) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


#: A Redis stream entry id, in ASCII digits only (``str.isdigit`` also takes ``²`` and ``١``).
_STREAM_ID = re.compile(r"([0-9]{1,15})-([0-9]{1,18})")


def stream_id(text: str) -> tuple[int, int] | None:
    """A stream entry id (``<ms>-<seq>``) as a comparable pair; None if it is not one."""
    match = _STREAM_ID.fullmatch(text.strip())
    if match is None:
        return None
    return int(match[1]), int(match[2])


@dataclass(frozen=True, slots=True)
class Entry:
    """One message of a grant's stream and channel; see the module docstring."""

    event: str
    data: dict[str, Any]
    #: Tokens of the subscriptions it concerns; None for every widget of the grant.
    keys: frozenset[str] | None

    def encode(self) -> str:
        return json.dumps({"e": self.event, "d": self.data,
                           "k": None if self.keys is None else sorted(self.keys)},
                          separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def decode(cls, text: str | bytes) -> Entry:
        body = json.loads(text)
        keys = body.get("k")
        return cls(str(body["e"]), dict(body.get("d") or {}),
                   None if keys is None else frozenset(map(str, keys)))

    @classmethod
    def of(cls, event: str, data: dict[str, Any],
           keys: Iterable[SubscriptionKey] | None) -> Entry:
        return cls(event, data, None if keys is None else frozenset(map(key_token, keys)))

    def wanted_by(self, tokens: frozenset[str]) -> bool:
        return self.keys is None or not self.keys.isdisjoint(tokens)
