"""Two real proxy processes on one store behave as one: one refresh, no lost rotation.

Each test starts two ``python -m proxy`` processes on one Redis or one SQLite
file, pointed at the mock Twitch served by this test process (so the test can
read its counters and hold a refresh open).
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio
import yaml
from cryptography.fernet import Fernet
from yarl import URL

from proxy.config import Config, load_config
from proxy.core.grants import GrantStore
from proxy.services import cipher_for
from proxy.store import open_store
from tests.processes import ProxyProcess, spawn_proxy, wait_spawned

#: The proxy's own variables, dropped from the environment the processes inherit.
_PROXY_VARIABLES = ("TWITCH_", "TOKEN_", "REDIS_URL", "PROXY_CONFIG", "PORT", "HOST",
                    "PUBLIC_URL", "WEB_CONCURRENCY", "LOG_")
USER_ID = "141981764"


@dataclass
class Deployment:
    """The processes' shared store, environment and configuration."""

    env: dict[str, str]
    config: Config
    directory: Path
    processes: list[ProxyProcess]

    async def start(self, count: int, session: aiohttp.ClientSession) -> list[ProxyProcess]:
        started = [await self._spawn() for _ in range(count)]
        await asyncio.gather(*(wait_spawned(p, session) for p in started))
        return started

    async def _spawn(self) -> ProxyProcess:
        started = await spawn_proxy(self.directory, self.env)
        self.processes.append(started)
        return started

    async def grant_refresh_token(self, user_id: str) -> str:
        """The refresh token the shared store holds for a user (read as a server would)."""
        store = await open_store(self.config.store.url, prefix=self.config.store.prefix)
        try:
            grants = GrantStore(store, cipher_for(self.config))
            grant_id = await grants.grant_of_user(user_id)
            grant = await grants.get(grant_id) if grant_id else None
        finally:
            await store.close()
        assert grant is not None
        return grant.refresh_token


@pytest.fixture(params=["redis", "sqlite"])
async def deployment(request, twitch_server, tmp_path) -> AsyncIterator[Deployment]:
    """Where the proxies of a test run: one Redis prefix or one SQLite file.

    The lock lease is short (``store.lock_lease: 5``) so the SIGKILL test does
    not wait the default 30 seconds for a dead holder's lock; the abuse limits
    are raised so 200 concurrent requests of one grant are all let through.
    """
    mock_url = str(twitch_server.make_url("")).rstrip("/")
    prefix = f"multiprocess-{uuid.uuid4().hex[:8]}:"
    settings = {
        "store": {"prefix": prefix, "lock_lease": 5},
        "twitch": {"timeout": 4},
        "limits": {"concurrent_per_grant": 1000, "concurrent_total": 1000},
    }
    (tmp_path / "proxy.yaml").write_text(yaml.safe_dump(settings))
    env = {k: v for k, v in os.environ.items() if not k.startswith(_PROXY_VARIABLES)}
    env.update(TWITCH_CLIENT_ID="mock-client-id", TWITCH_CLIENT_SECRET="mock-client-secret",
               TWITCH_ID_URL=mock_url, TWITCH_HELIX_URL=f"{mock_url}/helix",
               PROXY_CONFIG=str(tmp_path / "proxy.yaml"), LOG_LEVEL="INFO")
    if request.param == "redis":
        env.update(TOKEN_STORE_URL=request.getfixturevalue("redis_url"),
                   TOKEN_ENCRYPTION_KEY=Fernet.generate_key().decode())
    else:
        env.update(TOKEN_STORE_URL=f"sqlite:///{tmp_path}/shared.sqlite3")
    setup = Deployment(env, load_config(environ=env), tmp_path, [])
    try:
        yield setup
    finally:
        for proxy in setup.processes:
            if proxy.process.returncode is None:
                proxy.process.kill()
            await proxy.process.wait()
        if request.param == "redis":
            client = redis.asyncio.Redis.from_url(env["TOKEN_STORE_URL"])
            names = [name async for name in client.scan_iter(match=f"{prefix}*")]
            if names:
                await client.delete(*names)
            await client.aclose()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A browser-like client: keeps the login cookie, many connections at once."""
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        cookie_jar=aiohttp.CookieJar(unsafe=True),  # cookies of 127.0.0.1
        timeout=aiohttp.ClientTimeout(total=60),
    ) as client:
        yield client


async def browser_login(session: aiohttp.ClientSession, base: URL) -> dict:
    """/login -> the mock's consent (auto-approved) -> /callback, as JSON."""
    async with session.get(base / "login", allow_redirects=False) as login:
        assert login.status == 302, await login.text()
        authorize = URL(login.headers["Location"])
    # Connection: close, so the only connections the mock keeps are the proxies'.
    async with session.get(authorize, allow_redirects=False,
                           headers={"Connection": "close"}) as consent:
        assert consent.status == 302, await consent.text()
        back = URL(consent.headers["Location"])
    async with session.get(base / "callback", params=back.query,
                           headers={"Accept": "application/json"}) as callback:
        body = await callback.json()
        assert callback.status == 200, body
        return body


async def helix_users(session: aiohttp.ClientSession, base: URL, key: str,
                      widget: int = 0) -> int:
    """GET /helix/users; ``widget`` makes the URL distinct, so no two requests share a call."""
    async with session.get(base / "helix" / "users", params={"widget": str(widget)},
                           headers={"Authorization": f"Bearer {key}"}) as response:
        if response.status == 200:
            body = await response.json()
            assert body["data"][0]["id"] == USER_ID
        return response.status


async def test_200_requests_over_two_processes_cost_one_refresh(deployment, session, mock):
    first, second = await deployment.start(2, session)
    login = await browser_login(session, first.base)
    key = login["proxy_key"]
    # Both processes hold the grant (and its soon stale token) before it expires.
    assert [await helix_users(session, p.base, key) for p in (first, second)] == [200, 200]
    mock.expire_access_tokens()
    mock.reset_calls()

    statuses = await asyncio.gather(*(
        helix_users(session, (first, second)[n % 2].base, key, widget=n) for n in range(200)
    ))

    assert statuses == [200] * 200, {s: statuses.count(s) for s in set(statuses)}
    assert mock.calls["token:refresh_token"] == 1, first.output() + second.output()
    assert mock.refresh_reuses == 0
    # Both processes met Twitch's 401 for the expired token (even widgets went to
    # the first, odd ones to the second), so both had to coordinate a refresh.
    stale = {int(r.query["widget"]) % 2 for r in mock.helix_requests
             if r.headers["Authorization"] == f"Bearer {login['access_token']}"}
    assert stale == {0, 1}


async def test_a_process_killed_mid_refresh_loses_nothing(
    deployment, session, mock, twitch_server
):
    doomed, survivor = await deployment.start(2, session)
    login = await browser_login(session, doomed.base)
    key = login["proxy_key"]
    assert await helix_users(session, survivor.base, key) == 200
    held_token = login["refresh_token"]
    mock.expire_access_tokens()
    mock.hold_refresh = asyncio.Event()

    # The doomed process starts the refresh; the mock keeps it open.
    in_flight = asyncio.ensure_future(helix_users(session, doomed.base, key))
    while mock.calls["token:refresh_token"] < 1:
        assert not in_flight.done(), "the request finished without a held refresh"
        await asyncio.sleep(0.01)
    connections = len(twitch_server.runner.server.connections)
    doomed.process.send_signal(signal.SIGKILL)
    assert await doomed.process.wait() == -signal.SIGKILL
    with pytest.raises(aiohttp.ClientError):
        await in_flight
    # The mock notices its caller vanished (one of its connections, all from the
    # proxies, closes), so the held refresh is not processed.
    while len(twitch_server.runner.server.connections) >= connections:
        await asyncio.sleep(0.01)
    held, mock.hold_refresh = mock.hold_refresh, None
    held.set()

    # The survivor refreshes once the dead process's lock lease has run out.
    assert await helix_users(session, survivor.base, key) == 200, survivor.output()
    assert mock.calls["token:refresh_token"] == 2  # the held one (unanswered) and this
    assert mock.refresh_reuses == 0  # nobody ever presented a spent token
    assert held_token in mock.spent_refresh_tokens  # spent once, by the survivor
    current = await deployment.grant_refresh_token(USER_ID)
    assert current in mock.refresh_tokens  # the rotation was kept: Twitch accepts it
    assert await helix_users(session, survivor.base, key) == 200
    assert mock.calls["token:refresh_token"] == 2

