"""Fault injection, store: a failing token store.

Store faults use a throwaway ``redis-server`` on a free port (killed and
restarted mid-traffic) and a SQLite file locked by another process.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time

import pytest
import redis
from cryptography.fernet import Fernet

from proxy.config import load_config
from proxy.web.app import create_app
from tests.conftest import _redis_answers, _start_redis_server, _stop_redis_server
from tests.helpers import bearer, login, proxy_config_flags
from tests.processes import free_port
from tests.system.faulty_upstream import grant_survived

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def throwaway_redis(tmp_path):
    """A redis-server of our own on a free port, to kill and restart."""
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not on PATH (CI is set, so this must run)")
        pytest.skip("redis-server is not on PATH")
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    state = {"process": None}

    def start():
        state["process"] = _start_redis_server(tmp_path, url, ["--port", str(port),
                                                               "--save", "60 1",
                                                               "--dbfilename", "dump.rdb"])
        assert state["process"] is not None, "redis-server did not start"

    def stop(*, save: bool = True):
        process = state["process"]
        if process is not None:
            if save:  # a restart keeps the data, as a managed Redis does
                client = redis.Redis.from_url(url)
                try:
                    client.save()
                finally:
                    client.close()
            _stop_redis_server(process)
            state["process"] = None

    start()
    yield url, start, stop
    stop(save=False)


async def test_redis_restart_mid_traffic(aiohttp_client, mock, twitch_server, tmp_path,
                                         throwaway_redis, caplog, reliability):
    url, start, stop = throwaway_redis
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    flags = {**proxy_config_flags(str(twitch_server.make_url("")).rstrip("/")),
             "store.url": url + "?socket_timeout=1&socket_connect_timeout=1",
             "store.encryption_key": Fernet.generate_key().decode(),
             "twitch.timeout": "2"}
    proxy = await aiohttp_client(create_app(load_config(path=empty, environ={}, flags=flags)))
    first = await login(proxy)
    key = first["proxy_key"]
    assert (await proxy.get("/helix/users", headers=bearer(key))).status == 200

    stop()
    down = []
    for method, path, kwargs in [
        ("GET", "/helix/users", {"headers": bearer(key)}),
        ("POST", "/refresh", {"json": {"refresh_token": first["refresh_token"]}}),
        ("GET", "/status", {"headers": bearer(key)}),
        ("POST", "/revoke", {"headers": bearer(key)}),
        ("GET", "/login", {"allow_redirects": False}),
        ("GET", "/callback", {"params": {"state": "s", "code": "c"},
                              "headers": {"Accept": "application/json"}}),
        ("GET", "/readyz", {}),
    ]:
        response = await proxy.request(method, path, **kwargs)
        body = await response.json()
        down.append((path, response.status))
        if response.status == 200:  # answered from the in-process cache, no store needed
            assert path in ("/helix/users", "/status"), (path, body)
            continue
        assert response.status == 503, (path, body)
        assert body["error"] in ("store_unavailable", "store_busy", "not_ready"), body
        assert int(response.headers["Retry-After"]) >= 1, path
    assert {path for path, status in down if status == 503} >= {
        "/refresh", "/revoke", "/login", "/callback", "/readyz"}, down
    # A refresh while the store is away: Twitch must not be asked (the rotation
    # could not be stored), so the token is not spent.
    mock.expire_access_tokens()
    refreshes = mock.calls["token:refresh_token"]
    response = await proxy.get("/helix/users", headers=bearer(key))
    assert response.status == 503
    assert mock.calls["token:refresh_token"] == refreshes

    start()  # the same proxy, no restart
    for _ in range(50):
        response = await proxy.get("/helix/users", headers=bearer(key))
        if response.status != 503:
            break
        await asyncio.sleep(0.1)
    assert response.status == 200, await response.text()
    await grant_survived(proxy, mock, key, first, caplog, reliability)


async def test_redis_killed_during_refresh_keeps_the_rotation_or_the_token(
        aiohttp_client, mock, twitch_server, tmp_path, throwaway_redis, reliability):
    """Redis goes away while a refresh is at Twitch: afterwards the grant works."""
    url, start, stop = throwaway_redis
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    flags = {**proxy_config_flags(str(twitch_server.make_url("")).rstrip("/")),
             "store.url": url + "?socket_timeout=1&socket_connect_timeout=1",
             "store.encryption_key": Fernet.generate_key().decode(),
             # The dead flight's lock outlives the restart (saved with the data).
             "twitch.timeout": "2", "store.lock_lease": "3"}
    proxy = await aiohttp_client(create_app(load_config(path=empty, environ={}, flags=flags)))
    first = await login(proxy)
    key = first["proxy_key"]
    mock.expire_access_tokens()
    mock.hold_refresh = asyncio.Event()
    call = asyncio.ensure_future(proxy.get("/helix/users", headers=bearer(key)))
    for _ in range(100):
        if mock.calls["token:refresh_token"]:
            break
        await asyncio.sleep(0.02)
    stop()
    mock.hold_refresh.set()
    response = await call
    assert response.status in (200, 503), await response.text()
    mock.hold_refresh = None
    start()
    for _ in range(50):
        healed = await proxy.get("/helix/users", headers=bearer(key))
        if healed.status != 503:
            break
        await asyncio.sleep(0.1)
    # Twitch rotated while the store was away: if the new pair could not be
    # written, the grant still holds the spent token and needs a new login.
    lost = healed.status != 200
    reliability.tokens_lost += int(lost)
    assert not lost, await healed.text()
    reliability.fault_scenarios += 1


_LOCKER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=0)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
db.execute("ROLLBACK")
"""


async def test_sqlite_locked_by_another_process(aiohttp_client, mock, twitch_server, tmp_path,
                                                caplog, reliability):
    database = tmp_path / "tokens.sqlite3"
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    flags = {**proxy_config_flags(str(twitch_server.make_url("")).rstrip("/")),
             "store.url": f"sqlite:///{database}"}
    proxy = await aiohttp_client(create_app(load_config(path=empty, environ={}, flags=flags)))
    first = await login(proxy)
    key = first["proxy_key"]

    locker = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _LOCKER, str(database),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    try:
        assert (await locker.stdout.readline()).strip() == b"locked"
        # Reads still work (WAL); anything that writes waits busy_timeout, then 503.
        started = time.monotonic()
        response = await proxy.get("/login", allow_redirects=False)
        waited = time.monotonic() - started
        body = await response.json()
        assert response.status == 503, body
        assert body["error"].startswith("store_"), body
        assert int(response.headers["Retry-After"]) >= 1
        refresh = await proxy.post("/refresh", json={"refresh_token": first["refresh_token"]})
        assert refresh.status == 503, await refresh.text()
        print(f"SQLite locked: answered 503 after waiting {waited:.1f} s")
    finally:
        locker.stdin.write(b"\n")
        await locker.stdin.drain()
        await locker.wait()
    healed = await proxy.get("/helix/users", headers=bearer(key))
    assert healed.status == 200, await healed.text()
    await grant_survived(proxy, mock, key, first, caplog, reliability)


async def test_redis_unreachable_from_the_start(aiohttp_client, twitch_server, tmp_path):
    """A proxy whose Redis never answers starts, reports not ready, and answers 503."""
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    url = f"redis://127.0.0.1:{free_port()}/0?socket_connect_timeout=0.5"
    assert not _redis_answers(url.split("?")[0])
    flags = {**proxy_config_flags(str(twitch_server.make_url("")).rstrip("/")),
             "store.url": url, "store.encryption_key": Fernet.generate_key().decode()}
    proxy = await aiohttp_client(create_app(load_config(path=empty, environ={}, flags=flags)))
    ready = await proxy.get("/readyz")
    assert ready.status == 503
    refresh = await proxy.post("/refresh", json={"refresh_token": "x" * 30})
    assert refresh.status == 503 and "Retry-After" in refresh.headers
