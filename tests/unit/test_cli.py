"""proxy.cli: --check-config, config errors, and --mock-twitch as a real process."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiohttp
import redis.asyncio
from cryptography.fernet import Fernet
from yarl import URL

from proxy.config import load_config
from proxy.core.grants import GrantStore
from proxy.services import cipher_for
from proxy.store import open_store
from tests.helpers import proxy_config_flags, seed_grants
from tests.processes import clean_environ, start_proxy, stop, wait_ready

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TWITCH_", "TOKEN_"))}
    return subprocess.run([sys.executable, "-m", "proxy", *args], env={**base, **(env or {})},
                          cwd=cwd or REPO, capture_output=True, text=True, timeout=60)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_check_config_ok(tmp_path):
    result = run_cli("--check-config", env={"TWITCH_CLIENT_ID": "id",
                                            "TWITCH_CLIENT_SECRET": "hush-123456"})
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout
    assert "hush-123456" not in result.stdout + result.stderr


def test_check_config_lists_every_problem_and_fails(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  port: x\n  nope: 1\n")
    result = run_cli("--check-config", "--config", str(bad),
                     env={"TWITCH_CLIENT_SECRET": "hush-123456", "LOG_LEVEL": "LOUD"})
    assert result.returncode == 2
    for expected in ("server.port", "server.nope", "client_id is missing", "log.level"):
        assert expected in result.stderr
    assert "hush-123456" not in result.stdout + result.stderr


def test_help_lists_environment_variables():
    result = run_cli("--help")
    assert result.returncode == 0
    for name in ("TWITCH_CLIENT_ID", "TWITCH_CLIENT_SECRET", "PORT", "PUBLIC_URL",
                 "TOKEN_STORE_URL", "CORS_ALLOW_ORIGINS", "LOG_LEVEL"):
        assert name in result.stdout


async def test_mock_twitch_mode_runs_the_whole_flow(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWITCH_", "TOKEN_"))}
    process = subprocess.Popen(  # noqa: ASYNC220 - a server that outlives this call
        [sys.executable, "-m", "proxy", "--mock-twitch", "--port", str(port)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    base = URL(f"http://127.0.0.1:{port}")
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
            deadline = time.monotonic() + 20
            while True:
                try:
                    async with session.get(base / "healthz") as health:
                        assert await health.json() == {"status": "ok"}
                        break
                except aiohttp.ClientConnectionError:
                    assert process.poll() is None, process.stdout.read()
                    assert time.monotonic() < deadline, "proxy did not start"
                    await asyncio.sleep(0.2)
            async with session.get(base / "login", allow_redirects=False) as login:
                consent_url = URL(login.headers["Location"])
            # The demo mock shows a consent page; submit its form like a browser.
            async with session.get(consent_url) as consent:
                page = await consent.text()
            fields = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', page))
            assert "Authorize" in page
            action = consent_url.with_path("/oauth2/authorize").with_query(None)
            fields["decision"] = "authorize"
            async with session.post(action, data=fields, allow_redirects=False) as decided:
                back = URL(decided.headers["Location"])
            assert back.path == "/callback" and "code" in back.query
            async with session.get((base / "callback").with_query(back.query),
                                   headers={"Accept": "application/json"}) as callback:
                assert callback.status == 200, await callback.text()
                result = await callback.json()
            assert result["login"] == "twitchdev"
            async with session.post(base / "refresh",
                                    json={"refresh_token": result["refresh_token"]}) as refreshed:
                assert refreshed.status == 200
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert "mock Twitch on http://127.0.0.1:" in output
    assert not (tmp_path / "tokens.sqlite3").exists()  # mock mode keeps tokens in memory


# --- --mock-twitch never runs on a configured store ------------------------------------

async def seed_store_with_a_key(config, mock) -> tuple[object, str]:
    """One grant (tokens of the test's own mock) and a proxy key for it, in ``config``'s store."""
    grant = (await seed_grants(config, mock, 1))[0]
    store = await open_store(config.store.url, prefix=config.store.prefix)
    try:
        key, _ = await GrantStore(store, cipher_for(config)).create_key(grant.grant_id)
    finally:
        await store.close()
    return grant, key


def files_under(directory: Path) -> dict[str, bytes]:
    """Every file below ``directory``, name to bytes (a SQLite file, its WAL, its key)."""
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


async def run_mock_mode_against(env: dict[str, str], cwd: Path, proxy_key: str) -> str:
    """Start ``--mock-twitch`` with ``env``, present ``proxy_key``, stop it; its output."""
    port = free_port()
    process = start_proxy(env, cwd, "--mock-twitch", "--port", str(port))
    base = URL(f"http://127.0.0.1:{port}")
    try:
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, base, process)
            # A production key must not open anything in the demo.
            async with session.get(base / "status",
                                   headers={"Authorization": f"Bearer {proxy_key}",
                                            "Accept": "application/json"}) as status:
                assert status.status == 401, await status.text()
            # Time for the validator's start-up sweep, which would send the
            # configured store's tokens to the mock.
            await asyncio.sleep(1.0)
    finally:
        code, output = await asyncio.to_thread(stop, process)
    assert code == 0, output
    return output


async def test_mock_twitch_mode_ignores_a_sqlite_store_from_the_environment(
    twitch_server, mock, tmp_path
):
    data = tmp_path / "data"
    url = f"sqlite:///{data}/tokens.sqlite3"
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    config = load_config(path=empty, environ={}, flags={
        **proxy_config_flags(str(twitch_server.make_url("")).rstrip("/")), "store.url": url})
    grant, proxy_key = await seed_store_with_a_key(config, mock)
    before = files_under(data)
    assert "tokens.sqlite3" in before and "tokens.sqlite3.key" in before

    output = await run_mock_mode_against(clean_environ(TOKEN_STORE_URL=url), tmp_path, proxy_key)

    assert files_under(data) == before  # not opened: not one byte, not a -wal file
    assert "in-memory store" in output and "$TOKEN_STORE_URL" in output, output
    for secret in (proxy_key, grant.access_token, grant.refresh_token):
        assert secret not in output
    store = await open_store(url)
    try:
        saved = await GrantStore(store, cipher_for(config)).get(grant.grant_id)
    finally:
        await store.close()
    assert saved is not None and saved.state == "active"


async def test_mock_twitch_mode_ignores_redis_url(redis_url, twitch_server, mock, tmp_path):
    prefix = f"cli-mock-test-{uuid.uuid4().hex[:8]}:"
    (tmp_path / "proxy.yaml").write_text(f"store:\n  prefix: '{prefix}'\n")
    encryption_key = Fernet.generate_key().decode()
    config = load_config(path=tmp_path / "proxy.yaml", environ={}, flags={
        **proxy_config_flags(str(twitch_server.make_url("")).rstrip("/")),
        "store.url": redis_url, "store.encryption_key": encryption_key})
    grant, proxy_key = await seed_store_with_a_key(config, mock)
    client = redis.asyncio.Redis.from_url(redis_url)

    async def snapshot() -> dict[bytes, bytes | None]:
        names = sorted([name async for name in client.scan_iter(match=f"{prefix}*")])
        return {name: await client.dump(name) for name in names}

    try:
        before = await snapshot()
        assert any(b"grant:" in name for name in before)
        env = clean_environ(REDIS_URL=redis_url, TOKEN_ENCRYPTION_KEY=encryption_key,
                            PROXY_CONFIG=str(tmp_path / "proxy.yaml"))

        output = await run_mock_mode_against(env, tmp_path, proxy_key)

        assert await snapshot() == before
        assert "in-memory store" in output and "$REDIS_URL" in output, output
        # The variable is named, never its value (a Redis URL may hold a password).
        assert redis_url not in output
        for secret in (proxy_key, grant.access_token, grant.refresh_token, encryption_key):
            assert secret not in output
    finally:
        names = [name async for name in client.scan_iter(match=f"{prefix}*")]
        if names:
            await client.delete(*names)
        await client.aclose()


def test_mock_twitch_mode_refuses_a_store_flag(tmp_path):
    database = tmp_path / "real" / "tokens.sqlite3"
    result = run_cli("--mock-twitch", "--store", f"sqlite:///{database}", "--port", "0",
                     cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--mock-twitch runs on its own in-memory store" in result.stderr
    assert "--store" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "real").exists()


def test_mock_twitch_check_config_reports_the_memory_store_over_a_configured_one(tmp_path):
    config = tmp_path / "proxy.yaml"
    config.write_text(f"store:\n  url: 'sqlite:///{tmp_path}/tokens.sqlite3'\n")
    result = run_cli("--mock-twitch", "--check-config", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "configuration OK: store memory" in result.stdout
    assert "the configuration file's store.url is ignored" in result.stderr
    assert "in-memory store" in result.stderr
    assert not (tmp_path / "tokens.sqlite3").exists()
