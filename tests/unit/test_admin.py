"""The admin command line, run for real (``python -m proxy grants ...``) on SQLite and Redis."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio
from cryptography.fernet import Fernet

from proxy.config import Config, load_config
from proxy.store import open_store
from proxy.store.crypto import key_file_for
from proxy.web.app import create_app
from proxy.web.keys import grants_key

#: The proxy's own variables, dropped from the environment the commands inherit.
_PROXY_VARIABLES = ("TWITCH_", "TOKEN_", "REDIS_URL", "PROXY_CONFIG", "PORT", "HOST",
                    "PUBLIC_URL", "WEB_CONCURRENCY", "LOG_")


@dataclass
class AdminSetup:
    """One store, and the environment and config both the commands and a server use."""

    env: dict[str, str]
    config: Config
    cwd: Path

    async def run(self, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
        """``python -m proxy ARGS``; (exit code, stdout, stderr)."""
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", *args, cwd=self.cwd, env=self.env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate(stdin.encode() if stdin is not None else None)
        return process.returncode, out.decode(), err.decode()

    async def ok(self, *args: str, stdin: str | None = None) -> str:
        code, out, err = await self.run(*args, stdin=stdin)
        assert code == 0, err
        return out


def environment(mock_url: str, **extra: str) -> dict[str, str]:
    """The test's environment without the proxy's variables, pointed at the mock."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_PROXY_VARIABLES)}
    return {**env, "TWITCH_CLIENT_ID": "mock-client-id",
            "TWITCH_CLIENT_SECRET": "mock-client-secret", "TWITCH_ID_URL": mock_url,
            "TWITCH_HELIX_URL": f"{mock_url}/helix", "LOG_LEVEL": "WARNING", **extra}


@pytest.fixture(params=["sqlite", "redis"])
async def admin(request, twitch_server, tmp_path) -> AdminSetup:
    """The admin commands on a SQLite file or on Redis (under a prefix of its own)."""
    mock_url = str(twitch_server.make_url("")).rstrip("/")
    prefix = f"admin-test-{uuid.uuid4().hex[:8]}:"
    (tmp_path / "proxy.yaml").write_text(f"store:\n  prefix: '{prefix}'\n")
    if request.param == "sqlite":
        store = {"TOKEN_STORE_URL": f"sqlite:///{tmp_path}/tokens.sqlite3"}
        # As a server's first start leaves it: the commands refuse a missing file.
        await (await open_store(store["TOKEN_STORE_URL"])).close()
    else:
        redis_url = request.getfixturevalue("redis_url")
        store = {"REDIS_URL": redis_url, "TOKEN_ENCRYPTION_KEY": Fernet.generate_key().decode()}
    env = environment(mock_url, PROXY_CONFIG=str(tmp_path / "proxy.yaml"), **store)
    setup = AdminSetup(env, load_config(environ=env), tmp_path)
    yield setup
    if request.param == "redis":
        client = redis.asyncio.Redis.from_url(store["REDIS_URL"])
        names = [name async for name in client.scan_iter(match=f"{prefix}*")]
        if names:
            await client.delete(*names)
        await client.aclose()


#: For behaviour that does not depend on the backend: one process start matters here.
sqlite_only = pytest.mark.parametrize("admin", ["sqlite"], indirect=True)


async def import_token(admin: AdminSetup, mock) -> dict:
    tokens = mock.issue_tokens("141981764", ["user:read:email"])
    out = await admin.ok("grants", "import", "--refresh-token", tokens["refresh_token"], "--json")
    return json.loads(out)


async def test_import_refreshes_once_stores_the_grant_and_prints_a_working_key(
    admin, mock, aiohttp_client
):
    old = mock.issue_tokens("141981764", ["user:read:email"])

    code, out, err = await admin.run("grants", "import", "--refresh-token",
                                     old["refresh_token"], "--json")

    assert code == 0, err
    imported = json.loads(out)
    assert imported["login"] == "twitchdev" and imported["user_id"] == "141981764"
    assert imported["scopes"] == ["user:read:email"]
    assert imported["proxy_key"].startswith("tpk_")
    assert mock.calls["token:refresh_token"] == 1 and mock.calls["validate"] == 1
    assert old["refresh_token"] not in mock.refresh_tokens  # spent, as Twitch would
    for secret in (old["refresh_token"], old["access_token"]):
        assert secret not in out + err
    # A server on the same store serves Helix with the printed key, and the grant
    # holds the rotated refresh token, which Twitch still accepts.
    server = await aiohttp_client(create_app(admin.config))
    response = await server.get("/helix/users",
                                headers={"Authorization": f"Bearer {imported['proxy_key']}"})
    assert response.status == 200
    assert (await response.json())["data"][0]["login"] == "twitchdev"
    grant = await server.app[grants_key].get(imported["grant_id"])
    assert grant.refresh_token in mock.refresh_tokens
    assert grant.access_token not in out + err


@sqlite_only
async def test_import_reads_the_token_from_stdin(admin, mock):
    tokens = mock.issue_tokens("141981764", [])
    out = await admin.ok("grants", "import", "--refresh-token", "-",
                         stdin=tokens["refresh_token"] + "\n")
    assert "imported grant g_" in out and "twitchdev" in out
    assert "tpk_" in out and tokens["refresh_token"] not in out


async def test_import_of_a_refused_token_stores_nothing(admin, mock):
    tokens = mock.issue_tokens("141981764", [])
    mock.revoke_refresh_tokens()

    code, out, err = await admin.run("grants", "import", "--refresh-token",
                                     tokens["refresh_token"])

    assert code == 1
    assert "Twitch refused the refresh token" in err and "nothing was stored" in err
    assert tokens["refresh_token"] not in out + err
    assert json.loads(await admin.ok("grants", "list", "--json")) == []


async def test_list_shows_public_facts_and_key_ids_never_a_secret(admin, mock):
    imported = await import_token(admin, mock)
    created = json.loads(await admin.ok("keys", "create", "twitchdev", "--json"))

    rows = json.loads(await admin.ok("grants", "list", "--json"))
    text = await admin.ok("grants", "list")

    assert len(rows) == 1
    row = rows[0]
    assert (row["grant_id"], row["login"], row["user_id"], row["state"]) == (
        imported["grant_id"], "twitchdev", "141981764", "active")
    assert row["scopes"] == ["user:read:email"] and row["expires_at"] > 0
    assert sorted(row["key_ids"]) == sorted([imported["key_id"], created["key_id"]])
    assert text.splitlines()[0].split() == ["GRANT", "LOGIN", "USER", "ID", "STATE",
                                            "EXPIRES", "SCOPES", "KEYS"]
    assert imported["grant_id"] in text and created["key_id"] in text
    secrets = [imported["proxy_key"], created["proxy_key"], *mock.refresh_tokens,
               *mock.access_tokens]
    assert not any(secret in text + json.dumps(rows) for secret in secrets)


async def test_keys_create_revoke_and_grants_delete_apply_to_a_running_server(
    admin, mock, aiohttp_client
):
    imported = await import_token(admin, mock)
    server = await aiohttp_client(create_app(admin.config))

    async def status(key: str) -> int:
        response = await server.get("/status", headers={"Authorization": f"Bearer {key}"})
        return response.status

    async def becomes(key: str, expected: int) -> None:
        # Another process's write reaches the server's cache within store.cache_poll.
        while await status(key) != expected:
            await asyncio.sleep(0.1)

    created = json.loads(await admin.ok("keys", "create", imported["grant_id"], "--json"))
    assert created["grant_id"] == imported["grant_id"]
    assert await status(created["proxy_key"]) == 200

    assert await admin.ok("keys", "revoke", created["key_id"]) == (
        f"revoked proxy key {created['key_id']}\n")
    await becomes(created["proxy_key"], 401)
    assert await status(imported["proxy_key"]) == 200  # the other key is untouched

    out = await admin.ok("grants", "delete", "twitchdev")
    assert f"deleted grant {imported['grant_id']}" in out and "1 proxy key(s)" in out
    await becomes(imported["proxy_key"], 401)
    assert json.loads(await admin.ok("grants", "list", "--json")) == []


@sqlite_only
async def test_unknown_names_fail_with_a_clear_message(admin, mock):
    code, _, err = await admin.run("keys", "revoke", "0123456789ab")
    assert code == 1 and "no proxy key with id '0123456789ab'" in err
    code, _, err = await admin.run("grants", "delete", "nobody")
    assert code == 1 and "no grant 'nobody'" in err
    code, _, err = await admin.run("keys", "create", "g_0000")
    assert code == 1 and "no grant 'g_0000'" in err


@sqlite_only
async def test_options_may_follow_the_command(admin, mock, tmp_path):
    await import_token(admin, mock)
    other = f"sqlite:///{tmp_path}/elsewhere.sqlite3"
    await (await open_store(other)).close()
    assert json.loads(await admin.ok("grants", "list", "--json", "--store", other)) == []
    assert len(json.loads(await admin.ok("grants", "list", "--json"))) == 1


@sqlite_only
async def test_import_keeps_the_users_existing_grant_for_logins(admin, mock):
    first = await import_token(admin, mock)
    second = await import_token(admin, mock)
    assert first["grant_id"] != second["grant_id"]  # two chains of one user, both kept
    rows = json.loads(await admin.ok("grants", "list", "--json"))
    assert sorted(r["grant_id"] for r in rows) == sorted([first["grant_id"],
                                                          second["grant_id"]])
    code, _, err = await admin.run("keys", "create", "twitchdev")
    assert code == 1 and "several grants" in err


async def test_admin_commands_refuse_the_memory_store(twitch_server, tmp_path):
    env = environment(str(twitch_server.make_url("")).rstrip("/"), TOKEN_STORE_URL="memory://")
    setup = AdminSetup(env, load_config(environ=env), tmp_path)
    code, _, err = await setup.run("grants", "list")
    assert code == 2 and "memory:// store lives inside one server process" in err


@pytest.mark.parametrize("command", [
    ["grants", "list"],
    ["grants", "delete", "twitchdev"],
    ["grants", "reencrypt"],
    ["keys", "create", "twitchdev"],
    ["keys", "revoke", "0123456789ab"],
    ["grants", "import", "--refresh-token", "-"],
], ids=" ".join)
async def test_a_sqlite_store_that_does_not_exist_is_refused_and_not_created(
    twitch_server, mock, tmp_path, command
):
    env = environment(str(twitch_server.make_url("")).rstrip("/"))
    setup = AdminSetup(env, load_config(environ=env), tmp_path)
    tokens = mock.issue_tokens("141981764", [])

    code, out, err = await setup.run(*command, "--store", "sqlite:///typo/tokens.sqlite3",
                                     stdin=tokens["refresh_token"] + "\n")

    assert code == 2, out + err
    assert f"no SQLite store at {tmp_path / 'typo' / 'tokens.sqlite3'}" in err
    assert "Traceback" not in err and tokens["refresh_token"] not in out + err
    assert list(tmp_path.iterdir()) == []  # no database, no key file, no directory
    assert mock.calls["token:refresh_token"] == 0  # the token was not spent either


async def test_import_with_create_makes_a_new_private_store(twitch_server, mock, tmp_path):
    env = environment(str(twitch_server.make_url("")).rstrip("/"))
    setup = AdminSetup(env, load_config(environ=env), tmp_path)
    database = tmp_path / "new" / "tokens.sqlite3"
    store = ["--store", f"sqlite:///{database}"]
    tokens = mock.issue_tokens("141981764", ["user:read:email"])

    imported = json.loads(await setup.ok("grants", "import", "--create", *store, "--json",
                                         "--refresh-token", tokens["refresh_token"]))

    assert imported["login"] == "twitchdev"
    for path in (database, key_file_for(database)):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    rows = json.loads(await setup.ok("grants", "list", "--json", *store))
    assert [row["grant_id"] for row in rows] == [imported["grant_id"]]


def test_the_create_option_is_explained_in_the_help():
    result = subprocess.run([sys.executable, "-m", "proxy", "grants", "import", "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "--create" in result.stdout and "does not exist" in result.stdout
