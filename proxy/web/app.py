"""The application factory: where a request goes.

``create_app(config)`` only registers things; all I/O (the HTTP session to
Twitch, the store) is opened and closed in ``cleanup_ctx`` generators, which
run in order at start-up and in reverse at shutdown, only for what started.

Routes, by module:

- ``/`` and ``/static`` (registered here), pages rendered by :mod:`proxy.pages`
  (Jinja2 set up by :func:`proxy.pages.setup_pages`)
- ``/login``, ``/callback``, ``POST /refresh`` -> :mod:`proxy.oauth`
- ``/helix/*``                                  -> :mod:`proxy.helix`
- ``/status``, ``POST /revoke``                -> :mod:`proxy.status`
- ``/healthz``, ``/readyz``                     -> :mod:`proxy.health`
- ``/metrics``                                  -> :mod:`proxy.metrics`

Every request passes :func:`proxy.requestlog.request_middleware` first (request
id, the router's view of the client, one log line, metrics), then the JSON
errors, then :mod:`proxy.header_check` (header values that are not text are
refused before anything reads them).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path

import aiohttp
from aiohttp import web

from ..config import Config
from ..config.encryption_keys import parse_keys
from ..config.store_url import sqlite_path
from ..core.grant_cache import CachedGrantStore, setup_cache
from ..core.limits import abuse_middleware, handler_args, setup_abuse
from ..core.refresh import AppTokenProvider, Refresher
from ..core.validator import setup_validator
from ..errors import StoreUnavailable, error_middleware
from ..store import open_store
from ..store.crypto import (
    Cipher,
    FernetCipher,
    PlainCipher,
    load_or_create_key_file,
)
from ..telemetry.metrics import setup_metrics
from ..upstream.helix_client import HelixClient
from ..upstream.ratelimit import setup_ratelimit
from ..upstream.twitch import TwitchClient
from .cors import setup_cors
from .keys import (
    app_token_key,
    config_key,
    grant_cache_key,
    grants_key,
    helix_client_key,
    http_session_key,
    metrics_key,
    refresher_key,
    store_key,
    twitch_key,
)
from .middleware.header_check import header_check_middleware
from .middleware.requestlog import request_middleware, setup_request_log
from .routes import pages
from .routes.health import setup_health
from .routes.helix import setup_helix
from .routes.oauth import setup_oauth
from .routes.openapi import setup_openapi
from .routes.status import setup_status

__all__ = ["create_app", "cipher_for"]

log = logging.getLogger(__name__)


def cipher_for(config: Config) -> Cipher:
    """The cipher that protects grant records in the configured store."""
    url = config.store.url
    if config.store.encryption_key:
        return FernetCipher(parse_keys(config.store.encryption_key))
    if url.startswith("sqlite://"):
        return FernetCipher([load_or_create_key_file(Path(sqlite_path(url)))])
    return PlainCipher()  # memory:// (Redis without a key is refused by config)


async def http_session_ctx(app: web.Application) -> AsyncIterator[None]:
    """The HTTP clients for Twitch (OAuth and Helix), closed at shutdown."""
    config = app[config_key]
    connector = aiohttp.TCPConnector(limit=config.helix.pool_size,
                                     limit_per_host=config.helix.pool_size, ttl_dns_cache=300,
                                     keepalive_timeout=30)
    session = aiohttp.ClientSession(
        connector=connector,
        # No cookies from Twitch ever reach another widget's request.
        cookie_jar=aiohttp.DummyCookieJar(),
        # Helix bodies are passed through as they came; the OAuth client asks
        # for identity encoding because it parses its answers.
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=config.twitch.timeout),
    )
    app[http_session_key] = session
    # /helix's calls go through a leaner client of their own (proxy.helix_client).
    app[helix_client_key] = HelixClient(pool_size=config.helix.pool_size,
                                        timeout=config.twitch.timeout, keepalive=30)
    yield
    await app[helix_client_key].close()
    await session.close()


async def store_ctx(app: web.Application) -> AsyncIterator[None]:
    """The token store and the services built on it."""
    config = app[config_key]
    store = await open_store(config.store.url, prefix=config.store.prefix)
    app[store_key] = store
    try:
        # Hot-path lookups from memory, invalidated across processes (proxy.cache).
        grants = CachedGrantStore(store, cipher_for(config),
                                  poll_interval=config.store.cache_poll)
        # A wrong encryption key fails the start with one clear error.
        await grants.check_cipher()
        unsealed = await grants.unsealed_entries()
        if unsealed:
            log.warning("%d index entries (proxy keys, refresh tokens, users) are not sealed "
                        "with this store's key and open nothing; if a version before sealing "
                        "wrote them, run `twitch-proxy grants reencrypt` once", unsealed)
    except StoreUnavailable:
        pass  # not reachable yet: /readyz says so, and reads check the key later
    except BaseException:
        # A refused key file or a wrong key: close the store, whose SQLite
        # thread would otherwise keep the failed process alive.
        await store.close()
        raise
    twitch = TwitchClient(app[http_session_key], config.twitch,
                          observe=app[metrics_key].upstream_answer)
    app[grants_key] = grants
    app[grant_cache_key] = grants
    app[twitch_key] = twitch
    app[refresher_key] = Refresher(
        grants, twitch, replay_window=config.auth.replay_window,
        on_outcome=app[metrics_key].refresh_outcome,
        login_url=config.server.login_url, lock_lease=config.store.lock_lease,
    )
    app[app_token_key] = AppTokenProvider(twitch)
    yield
    await app[refresher_key].aclose()
    await store.close()


async def landing(request: web.Request) -> web.Response:
    """``GET /``: the landing page."""
    return pages.landing_page(request)


def create_app(config: Config) -> web.Application:
    """Build the proxy application for ``config``; no I/O happens here."""
    app = web.Application(middlewares=[request_middleware, error_middleware,
                                       header_check_middleware, abuse_middleware],
                          client_max_size=max(config.helix.max_body, 64 * 1024),
                          handler_args=handler_args(config.limits))
    app[config_key] = config
    app.cleanup_ctx.append(http_session_ctx)
    app.cleanup_ctx.append(store_ctx)
    setup_cache(app)
    setup_validator(app)
    setup_ratelimit(app)
    setup_abuse(app, config)
    setup_metrics(app)
    setup_request_log(app)
    pages.setup_pages(app)
    app.router.add_get("/", landing, name="landing")
    setup_oauth(app)
    setup_health(app)
    setup_helix(app)
    setup_status(app)
    setup_openapi(app)
    setup_cors(app, config.cors.allow_origins)
    static = resources.files("proxy").joinpath("static")
    app.router.add_static("/static", Path(str(static)), name="static")
    return app
