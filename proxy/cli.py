"""The ``twitch-proxy`` command (also ``python -m proxy``).

``twitch-proxy`` serves; ``--check-config`` validates and exits; ``--mock-twitch``
starts the project's mock of Twitch beside the proxy and points the proxy at
it, so the whole flow can be tried offline without credentials. The mock mode
always runs on its own in-memory store: a store configured in the environment
or the file is ignored with a warning, and ``--store`` is refused.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import socket
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from . import admin
from .config import Config, ConfigError, env_table, load_config
from .errors import DecryptionFailed, KeyFileError
from .server import serve
from .services import cipher_for
from .telemetry.logs import config_secrets, setup_logging
from .web.app import create_app

__all__ = ["build_parser", "main"]

log = logging.getLogger("proxy")

MOCK_CLIENT_ID = "mock-client-id"
MOCK_CLIENT_SECRET = "mock-client-secret"
#: The only store ``--mock-twitch`` runs on (see :func:`_on_mock_store`).
MOCK_STORE_URL = "memory://"
#: Environment variables that name a store; ``--mock-twitch`` does not read them.
_STORE_VARIABLES = ("TOKEN_STORE_URL", "REDIS_URL")


def build_parser() -> argparse.ArgumentParser:
    """The command line; flags override environment variables and the file."""
    parser = argparse.ArgumentParser(
        prog="twitch-proxy",
        description="Hold a Twitch app's secret and users' tokens for widgets; "
                    "refresh them and proxy Helix.",
        epilog="Environment variables:\n" + "\n".join(
            f"  {name:22} {key:24} {doc}" for name, key, doc in env_table()
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="PATH", help="YAML config file (default config.yaml)")
    parser.add_argument("--host", help="address to bind")
    parser.add_argument("--port", help="port to bind")
    parser.add_argument("--public-url", help="public base URL (redirect_uri base)")
    parser.add_argument("--store", metavar="URL", help="token store URL")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")
    parser.add_argument("--workers", help="worker processes (WEB_CONCURRENCY)")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the configuration and exit")
    parser.add_argument("--mock-twitch", action="store_true",
                        help="run against the built-in mock of Twitch (offline demo), on an "
                             "in-memory store: a configured store is never opened")
    parser.add_argument("--mock-port", type=int, default=0,
                        help="port of the mock Twitch with --mock-twitch (default: any free)")
    admin.add_subcommands(parser)
    return parser


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "server.host": args.host,
        "server.port": args.port,
        "server.public_url": args.public_url,
        "store.url": args.store,
        "log.level": args.log_level,
        "server.workers": args.workers,
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


MOCK_SCOPES = ("user:read:email", "moderator:read:followers", "channel:read:subscriptions")


def _load(args: argparse.Namespace, mock_port: int | None) -> Config:
    flags = _flags(args)
    defaults: dict[str, Any] = {}
    environ: Mapping[str, str] = os.environ
    if mock_port is not None:
        mock = f"http://127.0.0.1:{mock_port}"
        # The mock knows only its own app: these win over anything configured.
        flags.update({
            "twitch.client_id": MOCK_CLIENT_ID,
            "twitch.client_secret": MOCK_CLIENT_SECRET,
            "twitch.id_url": mock,
            "twitch.helix_url": f"{mock}/helix",
            "twitch.eventsub_ws_url": f"ws://127.0.0.1:{mock_port}/ws",
        })
        defaults["store.url"] = MOCK_STORE_URL
        # What the widget kit's alert box subscribes to (follows, subs), so the demo's
        # first login can fire an alert; a config file or flag still wins.
        defaults["twitch.scopes"] = MOCK_SCOPES
        # Not even validated: the mock mode never opens them (see _on_mock_store).
        environ = {k: v for k, v in os.environ.items() if k not in _STORE_VARIABLES}
    return load_config(path=args.config, environ=environ, flags=flags, defaults=defaults)


def _ignored_store(args: argparse.Namespace, config: Config) -> str | None:
    """What names a store other than the mock's, as the user would say it; None: nothing.

    Never the URL itself: a Redis URL may hold a password.
    """
    if args.store is not None and args.store != MOCK_STORE_URL:
        return "--store"
    for name in _STORE_VARIABLES:
        if os.environ.get(name, "") not in ("", MOCK_STORE_URL):
            return f"${name}"
    if config.store.url != MOCK_STORE_URL:
        return "the configuration file's store.url"
    return None


def _mock_mode_problems(args: argparse.Namespace, config: Config) -> list[str]:
    """Why ``--mock-twitch`` cannot run with these options (empty: it can)."""
    problems = []
    if _ignored_store(args, config) == "--store":
        problems.append("--mock-twitch runs on its own in-memory store, so it cannot use "
                        "the store --store names (drop --store, or drop --mock-twitch)")
    if config.server.workers > 1:
        problems.append("--mock-twitch runs the mock inside the proxy's process, so it "
                        "needs one worker (unset WEB_CONCURRENCY or pass --workers 1)")
    return problems


def _on_mock_store(args: argparse.Namespace, config: Config) -> Config:
    """``config`` on the mock's own in-memory store, warning about a store it ignores.

    The mock issues its own tokens: on a real store, the validator would send
    every real grant's tokens to the mock, which refuses them, and mark each
    user ``needs_reauth``; and the demo would accept production proxy keys.
    So a store from the environment or the file is never opened, only named.
    """
    origin = _ignored_store(args, config)
    if origin is not None:
        print(f"twitch-proxy: warning: --mock-twitch runs on its own in-memory store "
              f"({MOCK_STORE_URL}); {origin} is ignored (that store is never opened, read "
              "or written)", file=sys.stderr, flush=True)
    return dataclasses.replace(config, store=dataclasses.replace(config.store,
                                                                 url=MOCK_STORE_URL))


async def _with_mock(config: Config, mock_port: int) -> web.Application:
    """The proxy app, with the mock Twitch started beside it and stopped after it."""
    from .mock_twitch import create_mock_app

    runner = web.AppRunner(create_mock_app(client_id=MOCK_CLIENT_ID,
                                           client_secret=MOCK_CLIENT_SECRET,
                                           auto_approve=False))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", mock_port).start()
    app = create_app(config)

    async def stop_mock(_: web.Application) -> None:
        await runner.cleanup()

    app.on_cleanup.append(stop_mock)
    return app


def _serve(config: Config, mock_port: int | None) -> None:
    """Serve (see :mod:`proxy.server`), with the mock Twitch beside it if asked."""
    if mock_port is None:
        serve(config)
        return
    serve(config, _with_mock(config, mock_port),
          banner=f"mock Twitch on http://127.0.0.1:{mock_port} (client id {MOCK_CLIENT_ID}); "
                 f"tokens are kept in an in-memory store ({MOCK_STORE_URL}), lost at exit; "
                 f"open {config.server.public_url}/ to try the flow; fire a live event with "
                 f"curl -X POST http://127.0.0.1:{mock_port}/_mock/eventsub/trigger "
                 "-d '{\"type\":\"channel.follow\"}'")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    mock_port = (args.mock_port or _free_port()) if args.mock_twitch else None
    try:
        config = _load(args, mock_port)
    except ConfigError as exc:
        print(f"twitch-proxy: {exc}", file=sys.stderr)
        return 2
    if mock_port is not None:
        problems = _mock_mode_problems(args, config)
        for problem in problems:
            print(f"twitch-proxy: {problem}", file=sys.stderr)
        if problems:
            return 2
        config = _on_mock_store(args, config)
    if args.check_config:
        print(f"configuration OK: store {config.store.url.split('://')[0]}, "
              f"listening on {config.server.host}:{config.server.port}, "
              f"redirect_uri {config.redirect_uri}")
        return 0
    setup_logging(config.log.level, config.log.format, secrets=config_secrets(config))
    if args.command is not None:
        return admin.run(args, config)
    try:
        # The key file is checked (or created) before anything is served, so an
        # unsafe one is one clear start-up error, not one per gunicorn worker.
        cipher_for(config)
        _serve(config, mock_port)
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass
    except (DecryptionFailed, KeyFileError) as exc:
        print(f"twitch-proxy: cannot start: {exc}", file=sys.stderr)
        return 2
    return 0
