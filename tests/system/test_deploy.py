"""The deployment files: Procfile, requirements.txt, .python-version, app.json.

The Procfile's ``web`` command runs the way a Procfile runner runs it (honcho,
with PORT set and the mock Twitch as upstream) and a whole login and Helix call
go through it.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import sys

import aiohttp
import pytest
from yarl import URL

from proxy.config import env_table, load_config
from tests.processes import REPO, browser_login, free_port, mock_environ, start, stop, wait_ready


def _procfile() -> dict[str, str]:
    lines = (REPO / "Procfile").read_text().splitlines()
    return dict(line.split(":", 1) for line in lines if line.strip())


def test_procfile_web_binds_all_interfaces_on_port():
    web = _procfile()["web"].strip()
    assert "--host 0.0.0.0" in web and "--port $PORT" in web
    assert web.startswith("exec ")  # signals reach the proxy, not a shell


def test_buildpack_files():
    assert ".\n" in (REPO / "requirements.txt").read_text()  # installs this project
    assert (REPO / ".python-version").read_text().strip() == "3.11"


def _app_json() -> dict:
    return json.loads((REPO / "app.json").read_text())


def test_app_json_lists_every_environment_variable():
    env = _app_json()["env"]
    known = {name for name, _, _ in env_table()}
    assert known <= set(env), f"app.json misses {sorted(known - set(env))}"
    assert set(env) <= known, f"app.json names unknown {sorted(set(env) - known)}"
    for name, entry in env.items():
        assert entry["description"].strip(), name
        assert "generator" in entry or "value" in entry or "required" in entry, name


def test_app_json_generates_the_key_and_suggests_redis():
    manifest = _app_json()
    assert manifest["name"] and manifest["description"]
    assert manifest["env"]["TOKEN_ENCRYPTION_KEY"]["generator"] == "secret"
    assert manifest["env"]["TWITCH_CLIENT_SECRET"]["required"] is True
    assert any(addon["plan"].startswith("heroku-redis") for addon in manifest["addons"])


def test_a_generated_secret_is_a_usable_encryption_key(tmp_path):
    # Heroku's "secret" generator makes 64 hex digits; with the add-on's
    # REDIS_URL that must be a valid configuration as it is.
    environ = {"TWITCH_CLIENT_ID": "id", "TWITCH_CLIENT_SECRET": "s",
               "REDIS_URL": "redis://127.0.0.1:6379/0", "FORWARDED_ALLOW": "1",
               "TOKEN_ENCRYPTION_KEY": secrets.token_hex(32), "PORT": "5000"}
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    config = load_config(path=empty, environ=environ)
    assert config.store.url.startswith("redis://")
    assert config.server.trust_forwarded


def _honcho() -> list[str]:
    if shutil.which("honcho", path=os.path.dirname(sys.executable)) is None:
        if os.environ.get("CI"):
            pytest.fail("honcho is not installed (pip install -e '.[test]')")
        pytest.skip("honcho is not installed (pip install -e '.[test]')")
    return [sys.executable, "-m", "honcho"]


async def test_procfile_web_runs_the_whole_flow_under_honcho(twitch_server, mock, tmp_path):
    honcho = _honcho()
    shutil.copy(REPO / "Procfile", tmp_path / "Procfile")
    port = free_port()
    mock_url = str(twitch_server.make_url("")).rstrip("/")
    env = mock_environ(
        mock_url, PORT=str(port), WEB_CONCURRENCY="2", FORWARDED_ALLOW="1",
        TOKEN_STORE_URL=f"sqlite:///{tmp_path}/tokens.sqlite3",
        # The console script the Procfile names lives beside this interpreter.
        PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    process = start([*honcho, "start", "web"], env, tmp_path)
    base = URL(f"http://127.0.0.1:{port}")
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
            await wait_ready(session, base, process)
            # As the platform's router would send it.
            router = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}
            result = await browser_login(session, base, headers=router)
            assert result["login"] == "twitchdev"
            async with session.get(base / "helix" / "users",
                                   headers={"Authorization": f"Bearer {result['proxy_key']}"}) \
                    as users:
                assert users.status == 200, await users.text()
                assert (await users.json())["data"][0]["login"] == "twitchdev"
        assert mock.calls["token:authorization_code"] == 1
    finally:
        code, output = await asyncio.to_thread(stop, process)
    assert "Running on http://0.0.0.0:" in output, output
    assert "client=203.0.113.9" in output, output
    # honcho itself answers its SIGTERM with 143; the web process must exit 0.
    assert "web.1 stopped (rc=0)" in output, (code, output)
