"""Encryption at rest: what a stolen SQLite file or Redis dump shows, keys and rotation."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import sys
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest
import redis.asyncio
from aiohttp import web
from cryptography.fernet import Fernet, InvalidToken

from proxy.config import load_config
from proxy.config.encryption_keys import parse_keys
from proxy.config.secret import Secret
from proxy.core.grants import GrantStore
from proxy.errors import DecryptionFailed, KeyFileError
from proxy.store import open_store
from proxy.store.crypto import FernetCipher, key_file_for, load_or_create_key_file
from proxy.web.app import create_app
from proxy.web.keys import grants_key
from tests.helpers import login, proxy_config_flags, seed_grants

_PROXY_VARIABLES = ("TWITCH_", "TOKEN_", "REDIS_URL", "PROXY_CONFIG", "PORT", "HOST",
                    "PUBLIC_URL", "WEB_CONCURRENCY", "LOG_")


def mock_url(twitch_server) -> str:
    return str(twitch_server.make_url("")).rstrip("/")


def config_for(twitch_server, tmp_path: Path, url: str, key: str = "", **flags):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    extra = {"store.encryption_key": key} if key else {}
    return load_config(path=empty, environ={}, flags={
        **proxy_config_flags(mock_url(twitch_server)), "store.url": url, **extra, **flags})


async def secrets_of_a_busy_grant(client, mock) -> list[str]:
    """Log in, refresh through /refresh and adopt an old pair; every secret involved."""
    body = await login(client)
    refreshed = await client.post("/refresh", json={"refresh_token": body["refresh_token"]})
    assert refreshed.status == 200
    pair = await refreshed.json()
    old = mock.issue_tokens("141981764", ["user:read:email"])
    adopted = await client.get("/helix/users", headers={
        "Authorization": f"Bearer {old['access_token']}", "X-Refresh-Token": old["refresh_token"]})
    assert adopted.status == 200
    return [body["proxy_key"], body["access_token"], body["refresh_token"],
            pair["access_token"], pair["refresh_token"], old["access_token"],
            old["refresh_token"]]


def assert_absent(secrets: list[str], data: bytes, where: str) -> None:
    for secret in secrets:
        for form in {secret, quote(secret, safe="")}:
            assert form.encode() not in data, f"a token is readable in {where}"


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_the_raw_sqlite_files_hold_no_token_or_key(proxy, mock, store_url):
    secrets = await secrets_of_a_busy_grant(proxy, mock)
    database = Path(store_url.removeprefix("sqlite:///"))
    files = [p for p in database.parent.iterdir() if p.name.startswith(database.name)]
    raw = b"".join(p.read_bytes() for p in files)  # the file, its WAL and shared memory

    assert b"grant:g_" in raw  # we are looking at the right bytes
    assert_absent(secrets, raw, ", ".join(p.name for p in files))


async def test_the_raw_redis_values_hold_no_token_or_key(
    redis_url, twitch_server, mock, tmp_path, aiohttp_client
):
    prefix = f"crypto-test-{uuid.uuid4().hex[:8]}:"
    config = config_for(twitch_server, tmp_path, redis_url, Fernet.generate_key().decode(),
                        **{"store.prefix": prefix})
    client = await aiohttp_client(create_app(config))
    secrets = await secrets_of_a_busy_grant(client, mock)

    raw = redis.asyncio.Redis.from_url(redis_url)
    try:
        names = [name async for name in raw.scan_iter(match=f"{prefix}*")]
        assert any(b":kv:grant:g_" in name for name in names)
        for name in names:
            assert_absent(secrets, name, "a Redis key name")
            if await raw.type(name) == b"string":
                assert_absent(secrets, await raw.get(name), name.decode())
        await raw.delete(*names)
    finally:
        await raw.aclose()


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_key_file_is_created_private_with_a_log_line_and_reused(
    proxy_config, aiohttp_client, mock, caplog, store_url
):
    caplog.set_level(logging.WARNING, logger="proxy.store.crypto")
    key_file = key_file_for(Path(store_url.removeprefix("sqlite:///")))
    assert not key_file.exists()

    first = await aiohttp_client(create_app(proxy_config))
    body = await login(first)

    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    created = [r.getMessage() for r in caplog.records if "created encryption key file" in
               r.getMessage()]
    assert created == [f"created encryption key file {key_file} (mode 0600) for the token "
                       "database; keep it with the database, or set TOKEN_ENCRYPTION_KEY "
                       "instead"]
    key = key_file.read_text().strip()
    assert key not in caplog.text
    # A second start reads the same key: no new file, no new line, the grant opens.
    caplog.clear()
    second = await aiohttp_client(create_app(proxy_config))
    status = await second.get("/status", headers={"Authorization": f"Bearer {body['proxy_key']}"})
    assert status.status == 200
    assert key_file.read_text().strip() == key
    assert "created encryption key file" not in caplog.text


async def test_key_rotation_new_key_first_then_reencrypt(twitch_server, mock, tmp_path):
    old_key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    url = f"sqlite:///{tmp_path}/tokens.sqlite3"
    seeded = await seed_grants(config_for(twitch_server, tmp_path, url, old_key), mock, 2)

    async def read_all(key: str) -> list:
        config = config_for(twitch_server, tmp_path, url, key)
        store = await open_store(config.store.url, prefix=config.store.prefix)
        try:
            grants = GrantStore(store, FernetCipher(parse_keys(config.store.encryption_key)))
            if key == new_key:
                # The sealed index (here the user index) moves to the new key too.
                assert [await grants.grant_of_user(g.user_id) for g in seeded] == [
                    g.grant_id for g in seeded]
            return [await grants.get(g.grant_id) for g in seeded]
        finally:
            await store.close()

    async def raw_records() -> list[bytes]:
        store = await open_store(url)
        try:
            return [await store.get(f"grant:{g.grant_id}") for g in seeded]
        finally:
            await store.close()

    # New key first, old after it: everything still reads.
    assert [g.refresh_token for g in await read_all(f"{new_key},{old_key}")] == [
        g.refresh_token for g in seeded]
    assert all(Fernet(old_key).decrypt(raw) for raw in await raw_records())

    env = {k: v for k, v in os.environ.items() if not k.startswith(_PROXY_VARIABLES)}
    env.update(TWITCH_CLIENT_ID="mock-client-id", TWITCH_CLIENT_SECRET="mock-client-secret",
               TOKEN_STORE_URL=url, TOKEN_ENCRYPTION_KEY=f"{new_key},{old_key}")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "grants", "reencrypt", cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    # Two grants; each has a refresh-token alias and a user index entry.
    assert out.decode() == ("re-encrypted 2 grant(s) and 4 index entries under the first key "
                            "of TOKEN_ENCRYPTION_KEY\n")

    for raw in await raw_records():
        Fernet(new_key).decrypt(raw)
        with pytest.raises(InvalidToken):
            Fernet(old_key).decrypt(raw)
    # The old key can go now.
    assert [g.access_token for g in await read_all(new_key)] == [
        g.access_token for g in seeded]
    with pytest.raises(DecryptionFailed):
        await read_all(old_key)


async def assert_server_and_admin_refuse(tmp_path, env: dict[str, str], message: str, *,
                                         secrets: tuple[str, ...]) -> None:
    """The server and an admin command both stop with exit code 2 and ``message``, with no
    traceback and none of ``secrets`` in what they print."""
    for command in (["--port", "0"], ["grants", "list"]):
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", *command, cwd=tmp_path, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(process.communicate(), 60)
        text = out.decode() + err.decode()
        assert process.returncode == 2, text
        assert message in err.decode()
        assert "Traceback" not in text
        for secret in secrets:
            assert secret not in text


async def test_a_wrong_key_is_one_clear_startup_error(twitch_server, mock, tmp_path):
    url = f"sqlite:///{tmp_path}/tokens.sqlite3"
    seeded = await seed_grants(
        config_for(twitch_server, tmp_path, url, Fernet.generate_key().decode()), mock, 1)
    wrong = config_for(twitch_server, tmp_path, url, Fernet.generate_key().decode())

    runner = web.AppRunner(create_app(wrong))
    with pytest.raises(DecryptionFailed) as failed:
        await runner.setup()
    await runner.cleanup()

    message = str(failed.value)
    assert "cannot be decrypted with the configured encryption key" in message
    assert "grants reencrypt" in message
    grant = seeded[0]
    assert grant.access_token not in message and grant.refresh_token not in message


async def test_the_server_command_exits_with_the_wrong_key_message(twitch_server, mock, tmp_path):
    url = f"sqlite:///{tmp_path}/tokens.sqlite3"
    grant = (await seed_grants(config_for(twitch_server, tmp_path, url,
                                          Fernet.generate_key().decode()), mock, 1))[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith(_PROXY_VARIABLES)}
    env.update(TWITCH_CLIENT_ID="mock-client-id", TWITCH_CLIENT_SECRET="mock-client-secret",
               TWITCH_ID_URL=mock_url(twitch_server),
               TWITCH_HELIX_URL=f"{mock_url(twitch_server)}/helix", TOKEN_STORE_URL=url,
               TOKEN_ENCRYPTION_KEY=Fernet.generate_key().decode())

    await assert_server_and_admin_refuse(
        tmp_path, env, "cannot be decrypted with the configured encryption key",
        secrets=(grant.access_token, grant.refresh_token, env["TOKEN_ENCRYPTION_KEY"]))


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_a_request_meeting_an_undecryptable_record_gets_a_clear_500(
    proxy, mock, tmp_path
):
    body = await login(proxy)
    grants = proxy.app[grants_key]
    grant_id = await grants.grant_of_user(body["user_id"])
    # Another process with another key wrote this record (before any lookup cached it).
    stranger = FernetCipher([Secret(Fernet.generate_key().decode())])
    await grants.store.put(f"grant:{grant_id}",
                           stranger.encrypt((await grants.get(grant_id)).to_bytes()))

    response = await proxy.get("/status", headers={"Authorization": f"Bearer {body['proxy_key']}"})

    assert response.status == 500
    answer = await response.json()
    assert answer["error"] == "store_key_mismatch"
    assert body["access_token"] not in answer["message"]


# --- the key file beside a SQLite database ----------------------------------------------

@pytest.fixture
def permissive_umask():
    """The common 022 umask, under which a file created 0666 is readable by everyone."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_key_file_is_private_and_never_written_through_a_planted_symlink(
    tmp_path, permissive_umask
):
    database = tmp_path / "tokens.sqlite3"
    key_file = key_file_for(database)
    victim = tmp_path / "elsewhere"
    victim.write_text("someone else's file\n")
    # Where a predictable temporary name would put the new key (the pid's).
    planted = key_file.with_name(f"{key_file.name}.{os.getpid()}.tmp")
    planted.symlink_to(victim)

    key = load_or_create_key_file(database)

    assert victim.read_text() == "someone else's file\n"
    assert planted.is_symlink() and os.readlink(planted) == str(victim)
    assert not key_file.is_symlink() and key_file.is_file()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_text().strip() == key.reveal()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == [planted.name]


def test_the_temporary_key_file_is_created_exclusively_without_following_a_symlink(
    tmp_path, monkeypatch
):
    import proxy.store.crypto

    database = tmp_path / "tokens.sqlite3"
    victim = tmp_path / "elsewhere"
    victim.write_text("someone else's file\n")
    planted = tmp_path / "guessed.tmp"
    planted.symlink_to(victim)
    # As if someone had guessed the random name: the create must still refuse it.
    monkeypatch.setattr(proxy.store.crypto, "_temporary_key_path", lambda path: planted)

    with pytest.raises(KeyFileError) as refused:
        load_or_create_key_file(database)

    assert str(key_file_for(database)) in str(refused.value)
    assert victim.read_text() == "someone else's file\n"
    assert not key_file_for(database).exists()


def _key_file_with(database: Path, mode: int) -> str:
    key = Fernet.generate_key().decode()
    path = key_file_for(database)
    path.write_text(key + "\n")
    path.chmod(mode)
    return key


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620], ids=lambda mode: f"{mode:04o}")
def test_a_key_file_others_may_read_or_change_is_refused(tmp_path, mode):
    database = tmp_path / "tokens.sqlite3"
    key = _key_file_with(database, mode)

    with pytest.raises(KeyFileError) as refused:
        load_or_create_key_file(database)

    message = str(refused.value)
    assert str(key_file_for(database)) in message and f"{mode:04o}" in message
    assert "chmod 600" in message and "TOKEN_ENCRYPTION_KEY" in message
    assert key not in message


def test_a_key_file_that_is_a_symlink_is_refused(tmp_path):
    database = tmp_path / "tokens.sqlite3"
    # Someone else's key, in a private file: following the link would encrypt under it.
    theirs = tmp_path / "their.key"
    key = Fernet.generate_key().decode()
    theirs.write_text(key + "\n")
    theirs.chmod(0o600)
    key_file_for(database).symlink_to(theirs)

    with pytest.raises(KeyFileError) as refused:
        load_or_create_key_file(database)

    assert "symbolic link" in str(refused.value) and key not in str(refused.value)


def test_a_dangling_key_file_symlink_is_refused_not_followed(tmp_path):
    database = tmp_path / "tokens.sqlite3"
    target = tmp_path / "not-yet"
    key_file_for(database).symlink_to(target)

    with pytest.raises(KeyFileError):
        load_or_create_key_file(database)

    assert not target.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
def test_a_key_file_of_another_user_is_refused(tmp_path):
    database = tmp_path / "tokens.sqlite3"
    _key_file_with(database, 0o600)
    os.chown(key_file_for(database), 65534, 65534)

    with pytest.raises(KeyFileError) as refused:
        load_or_create_key_file(database)

    assert "another user" in str(refused.value)


async def test_the_commands_exit_with_the_unsafe_key_file_message(twitch_server, mock, tmp_path):
    url = f"sqlite:///{tmp_path}/tokens.sqlite3"
    grant = (await seed_grants(config_for(twitch_server, tmp_path, url), mock, 1))[0]
    key_file = key_file_for(tmp_path / "tokens.sqlite3")
    key = key_file.read_text().strip()
    key_file.chmod(0o644)
    env = {k: v for k, v in os.environ.items() if not k.startswith(_PROXY_VARIABLES)}
    env.update(TWITCH_CLIENT_ID="mock-client-id", TWITCH_CLIENT_SECRET="mock-client-secret",
               TWITCH_ID_URL=mock_url(twitch_server),
               TWITCH_HELIX_URL=f"{mock_url(twitch_server)}/helix", TOKEN_STORE_URL=url)

    await assert_server_and_admin_refuse(
        tmp_path, env, f"refusing the encryption key file {key_file}",
        secrets=(grant.access_token, grant.refresh_token, key))
