"""Fixtures for the ``test_eventsub_redis*`` suites: real proxy processes on one Redis.

Each test starts ``python -m proxy`` processes on the real Redis (a unique
store prefix per test, removed afterwards) with a short lease (the
``eventsub.lease`` settings, so a failover takes a second or two, not 30 s),
all pointed at one mock Twitch served by the test process, whose EventSub
controls the test drives. Widgets are plain HTTP clients of ``/eventsub``
(:class:`tests.system.test_eventsub_support.Widget`). No tests of its own.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio
import yaml
from cryptography.fernet import Fernet
from yarl import URL

from proxy.mock_twitch.eventsub_state import ws_url
from tests.processes import ProxyProcess, mock_environ, spawn_proxy, wait_spawned
from tests.system.test_eventsub_support import SCOPES, Widget

__all__ = ["Cluster", "Follows", "ProxyProcess", "cluster", "leads", "open_stream", "session",
           "sockets_at_twitch", "trigger"]

#: Seconds a lease lasts in these tests, and how often it is renewed.
LEASE = 2.0
RENEW = 0.5


def leads(proxy: ProxyProcess) -> bool:
    """Whether it took a grant's lease (and has not said it gave it up since)."""
    lines = [line for line in proxy.output().splitlines()
             if "this process leads" in line or "this process no longer leads" in line]
    return bool(lines) and "this process leads" in lines[-1]


@dataclass
class Cluster:
    """The processes of one test, their shared Redis prefix and the mock Twitch."""

    env: dict[str, str]
    directory: Path
    mock_url: URL
    redis_url: str
    prefix: str
    processes: list[ProxyProcess] = field(default_factory=list)
    widgets: list[Widget] = field(default_factory=list)
    #: The proxy key a test logged in with, when a helper did it.
    key: str = ""

    async def start(self, count: int, session: aiohttp.ClientSession, *,
                    workers: int = 1) -> list[ProxyProcess]:
        """``count`` processes, each of ``workers`` gunicorn workers when more than one."""
        started = [await self._spawn(workers) for _ in range(count)]
        await asyncio.gather(*(wait_spawned(p, session) for p in started))
        return started

    async def _spawn(self, workers: int) -> ProxyProcess:
        started = await spawn_proxy(self.directory, self.env, "--workers", str(workers))
        self.processes.append(started)
        return started

    def outputs(self) -> str:
        return "\n".join(p.output() for p in self.processes)

    async def control(self, name: str, **body: Any) -> Any:
        """``POST /_mock/eventsub/<name>``; its JSON answer."""
        async with aiohttp.ClientSession() as client, client.post(
                self.mock_url / "_mock" / "eventsub" / name, json=body) as answer:
            assert answer.status == 200, await answer.text()
            return await answer.json()

    async def state(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as client, client.get(
                self.mock_url / "_mock" / "eventsub" / "state") as answer:
            return await answer.json()


@pytest.fixture
async def cluster(twitch_server, redis_url, tmp_path) -> AsyncIterator[Cluster]:
    """Where a test's proxies run; they are killed and their Redis keys removed after."""
    mock_url = URL(str(twitch_server.make_url("")).rstrip("/"))
    prefix = f"eventsub-redis-{uuid.uuid4().hex[:8]}:"
    settings = {
        "store": {"prefix": prefix, "lock_lease": 5},
        "twitch": {"timeout": 4, "eventsub_ws_url": ws_url(mock_url), "scopes": SCOPES.split(",")},
        "eventsub": {"grace": 0.5, "keepalive": 10, "lease": LEASE, "lease_renew": RENEW},
    }
    (tmp_path / "proxy.yaml").write_text(yaml.safe_dump(settings))
    env = mock_environ(str(mock_url), PROXY_CONFIG=str(tmp_path / "proxy.yaml"),
                       LOG_LEVEL="INFO", TOKEN_STORE_URL=redis_url,
                       TOKEN_ENCRYPTION_KEY=Fernet.generate_key().decode())
    setup = Cluster(env, tmp_path, mock_url, redis_url, prefix)
    try:
        yield setup
    finally:
        for widget in setup.widgets:
            widget.close()
        for proxy in setup.processes:
            if proxy.process.returncode is None:
                proxy.process.kill()
            await proxy.process.wait()
        client = redis.asyncio.Redis.from_url(redis_url)
        names = [name async for name in client.scan_iter(match=f"{prefix}*")]
        if names:
            await client.delete(*names)
        await client.aclose()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A browser-like client: keeps the login cookie, many connections at once."""
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        cookie_jar=aiohttp.CookieJar(unsafe=True),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
    ) as client:
        yield client


async def open_stream(session: aiohttp.ClientSession, cluster: Cluster, proxy: ProxyProcess,
                      key: str, *types: str, resume_from: str | None = None) -> Widget:
    """``GET /eventsub`` on ``proxy`` with the key in the header; fails unless a stream.

    The cluster closes it at the end of the test.
    """
    headers = {"Authorization": f"Bearer {key}"}
    if resume_from is not None:
        headers["Last-Event-ID"] = resume_from
    response = await session.get(proxy.base / "eventsub",
                                 params=[("type", name) for name in types], headers=headers)
    assert response.status == 200, await response.text()
    widget = Widget(response)
    cluster.widgets.append(widget)
    return widget


async def sockets_at_twitch(cluster: Cluster) -> int:
    return int((await cluster.state())["open_sockets"])


async def trigger(cluster: Cluster, names: list[str]) -> None:
    """One follow per name, one at a time, each to exactly one subscription."""
    for name in names:
        sent = await cluster.control("trigger", type="channel.follow",
                                     event={"user_name": name})
        assert len(sent["sent"]) == 1, sent


class Follows:
    """A follow every ``period`` seconds, each with the next name of :attr:`names`.

    :meth:`stop` lets the follow in flight finish rather than cancelling it, so
    every name listed was sent (a cancelled trigger may or may not have reached
    the mock, and a test counting on the list would then wait for an event that
    never came).
    """

    def __init__(self, cluster: Cluster, prefix: str, *, period: float = 0.02,
                 after_each: Callable[[], Awaitable[None]] | None = None) -> None:
        self.names: list[str] = []
        self._stopping = asyncio.Event()
        self._task = asyncio.ensure_future(self._run(cluster, prefix, period, after_each))

    async def _run(self, cluster: Cluster, prefix: str, period: float,
                   after_each: Callable[[], Awaitable[None]] | None) -> None:
        while not self._stopping.is_set():
            name = f"{prefix}{len(self.names)}"
            await cluster.control("trigger", type="channel.follow", event={"user_name": name})
            self.names.append(name)
            if after_each is not None:
                await after_each()
            await asyncio.sleep(period)

    async def stop(self) -> list[str]:
        """Stop after the follow in flight; every name sent, in order."""
        self._stopping.set()
        await self._task
        return self.names


async def wait_for(check, *, seconds: float = 20.0, every: float = 0.05) -> None:
    """Until the coroutine function ``check`` answers true."""
    async with asyncio.timeout(seconds):
        while not await check():
            await asyncio.sleep(every)
