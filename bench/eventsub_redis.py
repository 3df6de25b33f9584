"""The Redis row of ``python -m bench eventsub``: widgets spread over gunicorn workers.

:func:`redis_stack` replaces the benchmark's one-process proxy (on the
in-memory store) by the proxy as the Procfile runs it with
``WEB_CONCURRENCY=2``: a gunicorn master whose workers share one listening
socket, on the Redis at ``$REDIS_URL`` (else 127.0.0.1:6379) under a store prefix of its own
(removed afterwards), on the same mock Twitch. Each worker is a process of
the Redis relay: one of them leads the grant (holds the one Twitch socket and
publishes each event once to Redis), every worker reads the grant's pub/sub
channel and writes to its own widgets. :class:`SocketCount` samples the
mock's count of open Twitch sockets all along; :func:`redis_line` is the
row, with every worker's widgets checked apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from yarl import URL

from bench.eventsub_stack import MockControl, Stack, start_proxy
from bench.eventsub_widgets import SseWidget, by_worker, check_deliveries
from bench.processes import redis_answers

if TYPE_CHECKING:  # bench.eventsub imports this module
    from bench.eventsub import Measurement

__all__ = ["REDIS_HEAD", "SocketCount", "redis_line", "redis_stack", "redis_url", "redis_where"]


def redis_url() -> str:
    """The Redis the row runs on: ``$REDIS_URL`` as the tests take it, else the local one."""
    return os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"


def redis_where() -> str:
    """host:port of :func:`redis_url`, without a password, for the report."""
    url = URL(redis_url())
    return f"{url.host}:{url.port}"


REDIS_HEAD = ("| widgets over workers (each) | events/s | notifications sent (mock log) | "
              "deliveries | p50 ms | p95 ms | p99 ms | exactly once, in order, per worker | "
              "Twitch sockets at the mock (samples) | proxy CPU (master + workers) | "
              "load generator loop lag p50 / p99 / max ms |")


@contextlib.contextmanager
def redis_stack(directory: Path, stack: Stack, workers: int) -> Iterator[Stack | None]:
    """``stack``'s mock with a ``workers``-worker proxy on Redis instead of its proxy
    (``None`` when no Redis answers); the proxy stopped and its keys removed after."""
    url = redis_url()
    if not redis_answers(url):
        yield None
        return
    stack.proxy.stop()  # its Twitch socket closes: the mock counts the new proxy's alone
    proxy, setup, login = start_proxy(directory, stack.mock, store=url, workers=workers)
    try:
        yield Stack(stack.mock, proxy, login)
    finally:
        proxy.stop()
        _forget(url, setup.prefix)


def _forget(url: str, prefix: str) -> None:
    """Remove what the proxy left in Redis under its own prefix."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        names = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if names:
            client.delete(*names)
    finally:
        client.close()


class SocketCount:
    """The mock's count of open Twitch sockets, sampled every ``interval`` seconds."""

    def __init__(self, mock: MockControl, interval: float = 0.1) -> None:
        self._mock, self._interval = mock, interval
        self.samples: list[int] = []
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            self.samples.append(int((await self._mock.state())["open_sockets"]))
            await asyncio.sleep(self._interval)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._sample())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @property
    def always_one(self) -> bool:
        return bool(self.samples) and set(self.samples) == {1}

    def text(self) -> str:
        if not self.samples:
            return "not sampled"
        low, high = min(self.samples), max(self.samples)
        shown = f"{low}" if low == high else f"**{low} to {high}**"
        return f"{shown} ({len(self.samples)} samples)"


def redis_line(widgets: list[SseWidget], rate: int, r: Measurement,
               sockets: SocketCount) -> tuple[str, list[str]]:
    """The row for one measurement over several workers, and what failed in it."""
    groups = by_worker(widgets)
    failures = []
    verdicts = []
    for number, group in enumerate(groups.values(), 1):
        delivery = check_deliveries((w.serials for w in group), r.sent)
        verdicts.append(f"{number}: {'yes' if delivery.exactly_once else delivery.text()}")
        if not delivery.exactly_once:
            failures.append(f"worker {number} of the Redis row: {delivery.text()}")
    if not sockets.always_one:
        failures.append(f"Twitch sockets at the mock during the Redis row: {sockets.text()}")
    each = " / ".join(f"{len(group):,}" for group in groups.values())
    p50, p95, p99 = r.latency
    line = (f"| {len(widgets):,} over {len(groups)} ({each}) | {rate} | {r.sent} | "
            f"{r.delivery.received:,} | {p50 * 1000:.1f} | {p95 * 1000:.1f} | "
            f"{p99 * 1000:.1f} | {'; '.join(verdicts)} | {sockets.text()} | {r.cpu:.0%} | "
            f"{r.lag} |")
    return line, failures
