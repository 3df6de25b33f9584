"""proxy.cli: --check-config, config errors, and --mock-twitch as a real process."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from yarl import URL

REPO = Path(__file__).resolve().parent.parent


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
