"""Live events on Redis when Redis itself restarts mid-stream.

The processes run on a private ``redis-server`` (never the shared one), shut
down with a save and started again on the same port, as a managed Redis
restarts: the grants and the event stream survive, connections and leases
may not. An event Twitch sends while Redis is down cannot be published:
widgets get a ``gap`` instead, nothing crashes, the lease is held again and
events flow on.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest
import redis

from tests.processes import browser_login, free_port
from tests.system import test_eventsub_redis_support as support
from tests.system.test_eventsub_redis_support import open_stream, trigger, wait_for

cluster, session = support.cluster, support.session

pytestmark = pytest.mark.timeout(90)


class PrivateRedis:
    """A redis-server of this test's own on a free port, to stop and start again."""

    def __init__(self, directory: str) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", self._directory],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        client = redis.Redis.from_url(self.url)
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis.exceptions.ConnectionError:
                    pass
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        """``SHUTDOWN SAVE``: what it holds is back when it starts again."""
        if self.process is not None:
            client = redis.Redis.from_url(self.url)
            try:
                client.shutdown(save=True)
            except redis.exceptions.ConnectionError:
                pass  # it closes the connection as it exits
            finally:
                client.close()
            self.process.wait(timeout=10)
            self.process = None

    def keys(self, pattern: str) -> list[bytes]:
        client = redis.Redis.from_url(self.url)
        try:
            return list(client.scan_iter(match=pattern))
        finally:
            client.close()


@pytest.fixture
def private_redis(tmp_path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not on PATH (CI is set, so this must run)")
        pytest.skip("redis-server is not on PATH")
    server = PrivateRedis(str(tmp_path))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(private_redis) -> str:
    """The cluster runs on the private server."""
    return private_redis.url


async def test_a_redis_restart_mid_stream_is_a_gap_then_events_flow_again(
        cluster, session, private_redis):
    first, second = await cluster.start(2, session)
    key = (await browser_login(session, first.base))["proxy_key"]
    widgets = [await open_stream(session, cluster, proxy, key, "channel.follow:2")
               for proxy in (first, second, first, second)]

    async def subscribed() -> bool:
        state = await cluster.state()
        return sum(len(s["subscriptions"]) for s in state["sessions"]) == 1
    await wait_for(subscribed)
    await trigger(cluster, ["before"])
    for widget in widgets:
        assert (await widget.next(10)).data["user_name"] == "before"

    private_redis.stop()
    await asyncio.sleep(0.5)  # the processes notice (pub/sub and renewals fail)
    await trigger(cluster, ["lost"])  # Twitch sends it; nobody can publish it
    private_redis.start()

    # Each widget hears that events were missed...
    for widget in widgets:
        gap = await widget.next(15)
        assert gap.event == "gap", gap
        assert gap.data["reason"] in ("store_unavailable", "lease_lost"), gap
        assert gap.data["subscription_types"] == ["channel.follow:2"]
    # ...a process leads again (the lease is back in Redis), with one socket at Twitch...
    lease = f"{cluster.prefix}eventsub:lease:*"

    async def led_again() -> bool:
        state = await cluster.state()
        return bool(private_redis.keys(lease)) and state["open_sockets"] == 1 and \
            sum(len(s["subscriptions"]) for s in state["sessions"]) == 1
    await wait_for(led_again)
    # ...and events flow again, once each, to every widget (after any further gap).
    await trigger(cluster, ["after"])
    for widget in widgets:
        while (event := await widget.next(10)).event == "gap":
            pass
        assert (event.event, event.data["user_name"]) == ("channel.follow", "after")
    assert all(proxy.process.returncode is None for proxy in (first, second))
    assert "Traceback" not in cluster.outputs(), cluster.outputs()
