"""The admin command line: ``twitch-proxy grants ...`` and ``twitch-proxy keys ...``.

Every command works on the store the configuration names (``TOKEN_STORE_URL``,
``REDIS_URL``, ``--store``), with the same encryption keys as the server, so it
can run beside live proxy processes: writes go through the same grant store,
which tells the servers' caches that something changed.

- ``grants import --refresh-token X`` (``-`` reads it from stdin, which keeps it
  out of ``ps`` and shell history): refreshes X once through the
  :class:`~proxy.core.refresh.Refresher`, which proves it and asks Twitch's validate
  endpoint whose it is (the spent X is remembered, so a widget still holding it
  gets the current pair), stores the grant and prints a new proxy key. The
  migration path for the old tool's users.
- ``grants list``: login, user id, scopes, state, expiry and key ids; never a
  token or a key.
- ``grants delete GRANT``, ``keys create GRANT``, ``keys revoke KEY_ID``.
- ``grants reencrypt``: re-saves every grant (and the sealed index: keys,
  refresh-token aliases, users) under the first key of
  ``TOKEN_ENCRYPTION_KEY``; the step between putting a new key first and
  dropping the old one, and the one-off step after upgrading from a version
  that wrote the index in clear.

A SQLite store must exist already (the server creates it on first start):
a path that does not is refused, so a typo cannot create an empty store and a
new key beside it; ``grants import --create`` makes a new one.

``GRANT`` is a grant id (``g_...``) or a Twitch login. Exit codes: 0 done,
1 the operation failed (unknown grant, Twitch refused), 2 bad configuration
(including a SQLite store that does not exist).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from .config import Config
from .config.store_url import sqlite_path, store_is_shared
from .core.grant_records import Grant
from .core.grants import GrantStore
from .errors import DecryptionFailed, KeyFileError, ProxyError, TwitchRefused
from .services import open_services

__all__ = ["AdminError", "add_subcommands", "run"]


class AdminError(Exception):
    """A command that cannot be done; its message is printed, exit code 1."""


def add_subcommands(parser: argparse.ArgumentParser) -> None:
    """Add ``grants`` and ``keys`` to the ``twitch-proxy`` parser (``args.command``)."""
    # Also accepted after the command (``grants list --store URL``); SUPPRESS
    # keeps the top-level value when they are not repeated there.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                        help="YAML config file (default config.yaml)")
    common.add_argument("--store", metavar="URL", default=argparse.SUPPRESS,
                        help="token store URL")
    commands = parser.add_subparsers(dest="command", metavar="{grants,keys}",
                                     title="admin commands (on the configured store)")
    grants = commands.add_parser("grants", help="list, import, delete or re-encrypt grants")
    grant_actions = grants.add_subparsers(dest="action", required=True, metavar="ACTION")
    imported = grant_actions.add_parser(
        "import", parents=[common],
        help="adopt a refresh token you already hold; prints a new proxy key")
    imported.add_argument("--refresh-token", required=True, metavar="TOKEN",
                          help="the refresh token, or - to read it from stdin")
    imported.add_argument("--create", action="store_true",
                          help="create the SQLite store if it does not exist yet (without it, "
                               "every command refuses a SQLite path that does not exist, so "
                               "a typo cannot make a new empty store and key)")
    imported.add_argument("--json", action="store_true", help="print JSON")
    listed = grant_actions.add_parser("list", parents=[common],
                                      help="every grant, without any secret")
    listed.add_argument("--json", action="store_true", help="print JSON")
    deleted = grant_actions.add_parser("delete", parents=[common],
                                       help="delete a grant and all its proxy keys")
    deleted.add_argument("grant", metavar="GRANT", help="grant id or Twitch login")
    grant_actions.add_parser("reencrypt", parents=[common],
                             help="re-save every grant under the first encryption key")

    keys = commands.add_parser("keys", help="create or revoke proxy keys")
    key_actions = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    created = key_actions.add_parser("create", parents=[common],
                                     help="mint a new proxy key for a grant")
    created.add_argument("grant", metavar="GRANT", help="grant id or Twitch login")
    created.add_argument("--json", action="store_true", help="print JSON")
    revoked = key_actions.add_parser("revoke", parents=[common],
                                     help="revoke a proxy key by its id")
    revoked.add_argument("key_id", metavar="KEY_ID", help="the key id `grants list` shows")


def run(args: argparse.Namespace, config: Config, *, out: TextIO = sys.stdout,
        err: TextIO = sys.stderr) -> int:
    """Run the admin command in ``args``; the process exit code."""
    if not store_is_shared(config.store.url):
        print("twitch-proxy: the memory:// store lives inside one server process; admin "
              "commands need the server's SQLite or Redis store (TOKEN_STORE_URL or --store)",
              file=err)
        return 2
    missing = _missing_database(config.store.url)
    if missing is not None and not getattr(args, "create", False):
        print(f"twitch-proxy: no SQLite store at {missing}: check --store or TOKEN_STORE_URL "
              "(the server creates its database on first start; `grants import --create` "
              "makes a new one)", file=err)
        return 2
    command = _COMMANDS[(args.command, args.action)]
    try:
        asyncio.run(command(args, config, out))
    except AdminError as exc:
        print(f"twitch-proxy: {exc}", file=err)
        return 1
    except (DecryptionFailed, KeyFileError) as exc:
        print(f"twitch-proxy: {exc}", file=err)
        return 2
    except ProxyError as exc:  # the store or Twitch unavailable: messages hold no secret
        print(f"twitch-proxy: {exc.message}", file=err)
        return 1
    return 0


def _missing_database(url: str) -> Path | None:
    """The SQLite file ``url`` names when it does not exist (absolute); else None.

    Opening it would create an empty database and, beside it, a new key:
    from a typo in ``--store``, a store that only looks empty.
    """
    if not url.startswith("sqlite:"):
        return None
    path = Path(sqlite_path(url)).absolute()
    return None if path.exists() else path


@asynccontextmanager
async def _grant_store(config: Config) -> AsyncIterator[GrantStore]:
    """The servers' grant store: its writes tell running servers' caches."""
    # No key check at opening: the commands read (and reencrypt re-seals) themselves.
    async with open_services(config, check_store_key=False) as services:
        yield services.grants


async def _all_grants(grants: GrantStore) -> list[Grant]:
    found = []
    for grant_id in await grants.all_ids():
        grant = await grants.get(grant_id)
        if grant is not None:
            found.append(grant)
    return found


async def _resolve(grants: GrantStore, name: str) -> Grant:
    """The grant called ``name``: its id, or the login of exactly one grant."""
    grant = await grants.get(name)
    if grant is not None:
        return grant
    matches = [g for g in await _all_grants(grants) if (g.login or "").lower() == name.lower()]
    if not matches:
        raise AdminError(f"no grant {name!r} (give a grant id or a login from `grants list`)")
    if len(matches) > 1:
        ids = ", ".join(g.grant_id for g in matches)
        raise AdminError(f"{name!r} has several grants ({ids}): give the grant id")
    return matches[0]


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _read_refresh_token(value: str) -> str:
    token = sys.stdin.readline().strip() if value == "-" else value.strip()
    if not token:
        raise AdminError("the refresh token is empty")
    return token


# -- the commands --------------------------------------------------------------------


async def grants_import(args: argparse.Namespace, config: Config, out: TextIO) -> None:
    """Refresh once to prove the token, learn whose it is, store it, print a proxy key."""
    refresh_token = _read_refresh_token(args.refresh_token)
    async with open_services(config, check_store_key=False) as services:
        grants, twitch, refresher = services.grants, services.twitch, services.refresher
        try:
            grant = await refresher.exchange(refresh_token)
        except TwitchRefused as exc:
            raise AdminError(f"Twitch refused the refresh token ({exc.status} {exc.message}); "
                             "nothing was stored") from None
        if grant.user_id is None:
            # The exchange proves whose the token is; it could not (Twitch failing
            # to validate), so ask once more before handing out a key.
            identity = await twitch.validate(grant.access_token)
            if identity is None:
                raise AdminError("Twitch does not accept the refreshed token; try again")
            now = time.time()
            grant = await grants.update(
                grant.grant_id, user_id=identity.user_id, login=identity.login,
                scopes=grant.scopes or identity.scopes, last_validated_at=now,
            ) or grant
            if identity.user_id:
                # One grant per user for /login's sake, unless the user already has one.
                await grants.claim_user(identity.user_id, grant.grant_id)
        key, record = await grants.create_key(grant.grant_id)
    if args.json:
        print(json.dumps({"grant_id": grant.grant_id, "login": grant.login,
                          "user_id": grant.user_id, "scopes": list(grant.scopes),
                          "key_id": record.key_id, "proxy_key": key}), file=out)
        return
    print(f"imported grant {grant.grant_id} for {grant.login} (user id {grant.user_id}), "
          f"scopes: {' '.join(grant.scopes) or '-'}", file=out)
    print(f"proxy key {record.key_id} (shown once, keep it in the widget): {key}", file=out)


async def grants_list(args: argparse.Namespace, config: Config, out: TextIO) -> None:
    """Every grant's public facts and key ids."""
    async with _grant_store(config) as grants:
        every = await _all_grants(grants)
        key_ids: dict[str, list[str]] = {}
        for _, record in await grants.keys_of():
            key_ids.setdefault(record.grant_id, []).append(record.key_id)
    if args.json:
        print(json.dumps([{
            "grant_id": g.grant_id, "login": g.login, "user_id": g.user_id,
            "scopes": list(g.scopes), "state": g.state, "expires_at": g.expires_at,
            "last_refresh_at": g.last_refresh_at, "last_validated_at": g.last_validated_at,
            "key_ids": sorted(key_ids.get(g.grant_id, [])),
        } for g in every]), file=out)
        return
    table = [["GRANT", "LOGIN", "USER ID", "STATE", "EXPIRES", "SCOPES", "KEYS"]]
    table += [[g.grant_id, g.login or "-", g.user_id or "-", g.state, _when(g.expires_at),
               " ".join(g.scopes) or "-", " ".join(sorted(key_ids.get(g.grant_id, []))) or "-"]
              for g in every]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]), file=out)


async def grants_delete(args: argparse.Namespace, config: Config, out: TextIO) -> None:
    """Delete a grant and every proxy key that opens it."""
    async with _grant_store(config) as grants:
        grant = await _resolve(grants, args.grant)
        keys = await grants.keys_of(grant.grant_id)
        await grants.delete(grant.grant_id)
    print(f"deleted grant {grant.grant_id} ({grant.login or 'no login'}) "
          f"and {len(keys)} proxy key(s)", file=out)


async def grants_reencrypt(args: argparse.Namespace, config: Config, out: TextIO) -> None:
    """Re-save every grant, which encrypts it under the first configured key."""
    count = 0
    async with _grant_store(config) as grants:
        for grant_id in await grants.all_ids():
            while True:
                loaded = await grants.load(grant_id)
                # The same record, encrypted anew; a concurrent write wins and
                # is re-read, since it was encrypted under the first key too.
                if loaded is None or await grants.replace(loaded, loaded.grant):
                    break
            count += loaded is not None
        # Keys, refresh-token aliases and the user index are sealed too (and,
        # once after upgrading, those a version before sealing wrote in clear).
        entries = await grants.seal_index(seal_clear=True)
    print(f"re-encrypted {count} grant(s) and {entries} index entries under the first key of "
          "TOKEN_ENCRYPTION_KEY", file=out)


async def keys_create(args: argparse.Namespace, config: Config, out: TextIO) -> None:
    """Mint a new proxy key for a grant; printed once."""
    async with _grant_store(config) as grants:
        grant = await _resolve(grants, args.grant)
        key, record = await grants.create_key(grant.grant_id)
    if args.json:
        print(json.dumps({"grant_id": grant.grant_id, "key_id": record.key_id,
                          "proxy_key": key}), file=out)
        return
    print(f"proxy key {record.key_id} for {grant.grant_id} ({grant.login or 'no login'}), "
          f"shown once: {key}", file=out)


async def keys_revoke(args: argparse.Namespace, config: Config, out: TextIO) -> None:
    """Revoke a proxy key by its public id."""
    async with _grant_store(config) as grants:
        if not await grants.revoke_key_id(args.key_id):
            raise AdminError(f"no proxy key with id {args.key_id!r}")
    print(f"revoked proxy key {args.key_id}", file=out)


_COMMANDS: dict[tuple[str, str], Any] = {
    ("grants", "import"): grants_import,
    ("grants", "list"): grants_list,
    ("grants", "delete"): grants_delete,
    ("grants", "reencrypt"): grants_reencrypt,
    ("keys", "create"): keys_create,
    ("keys", "revoke"): keys_revoke,
}
