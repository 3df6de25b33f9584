"""The application factory: where a request goes.

``create_app(config)`` only registers things. It builds the app's
:class:`~proxy.services.Services` and hands them to every middleware and
handler it registers; what needs I/O (the HTTP clients for Twitch, the store
and what is built on it) is opened in ``cleanup_ctx`` generators, which run in
order at start-up and in reverse at shutdown, only for what started: the
services, then the grant cache's watcher, then the validator's sweeps.

Routes, by module:

- ``/`` and ``/static`` (registered here), pages rendered by
  :mod:`proxy.web.routes.pages` (Jinja2 set up by its ``setup_pages``)
- ``/login``, ``/callback``, ``POST /refresh`` -> :mod:`proxy.web.routes.oauth`
- ``/helix/*``                                  -> :mod:`proxy.web.routes.helix`
- ``/status``, ``POST /revoke``                -> :mod:`proxy.web.routes.status`
- ``/healthz``, ``/readyz``                     -> :mod:`proxy.web.routes.health`
- ``/metrics``                                  -> :mod:`proxy.web.routes.metrics`
- ``/openapi.json``                             -> :mod:`proxy.web.routes.openapi`
- ``/eventsub``, ``POST /eventsub/tickets``     -> :mod:`proxy.web.routes.eventsub`
  (live events, relayed by :mod:`proxy.core.relay`)

Every request passes :mod:`proxy.web.middleware.requestlog` first (request id,
the router's view of the client, one log line, metrics), then the JSON errors
(:func:`proxy.web.middleware.errors.error_middleware`), then
:mod:`proxy.web.middleware.header_check` (header values that are not text are
refused before anything reads them), then :mod:`proxy.web.middleware.abuse`
(the limits each route declares in :data:`ROUTE_LIMITS`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from importlib import resources
from pathlib import Path

from aiohttp import web

from ..config import Config
from ..services import Services
from .cors import setup_cors
from .keys import (
    abuse_guard_key,
    config_key,
    grant_cache_key,
    grants_key,
    metrics_key,
    refresher_key,
    store_key,
    twitch_key,
    validator_key,
)
from .middleware.abuse import RouteLimits, abuse_middleware, handler_args
from .middleware.errors import error_middleware
from .middleware.header_check import header_check_middleware
from .middleware.requestlog import request_middleware
from .routes import pages
from .routes.eventsub import EventSubOptions, setup_eventsub
from .routes.health import setup_health
from .routes.helix import setup_helix
from .routes.metrics import setup_metrics
from .routes.oauth import setup_oauth
from .routes.openapi import setup_openapi
from .routes.status import setup_status

__all__ = ["ROUTE_LIMITS", "create_app"]

#: The abuse limits of each route, by its first path segment (see
#: :mod:`proxy.web.middleware.abuse`). Logins and refreshes are rate limited per
#: address; the form endpoints' bodies are capped; the routes that call Twitch
#: hold a slot of the total concurrency (``/helix`` takes its own, per call).
ROUTE_LIMITS = {
    "login": RouteLimits(rate="login"),
    "callback": RouteLimits(rate="callback", upstream=True),
    "refresh": RouteLimits(rate="refresh", form=True, upstream=True),
    "status": RouteLimits(form=True),
    "revoke": RouteLimits(form=True),
    # Opening streams and buying tickets; a stream holds no concurrency slot (it lasts).
    "eventsub": RouteLimits(rate="eventsub"),
}

CleanupContext = Callable[[web.Application], AsyncIterator[None]]


def create_app(config: Config, *, eventsub: EventSubOptions | None = None) -> web.Application:
    """Build the proxy application for ``config``; no I/O happens here.

    ``eventsub`` replaces the live-events options the configuration gives (tests shorten
    their grace periods and backoff).
    """
    services = Services(config)  # in memory only until services_ctx opens the rest
    app = web.Application(
        middlewares=[
            request_middleware(config.server, services.metrics, services.request_ids),
            error_middleware,
            header_check_middleware,
            abuse_middleware(services.abuse_guard, ROUTE_LIMITS, config.server),
        ],
        client_max_size=max(config.helix.max_body, 64 * 1024),
        handler_args=handler_args(config.limits))
    app[config_key] = config
    app[metrics_key] = services.metrics
    app[abuse_guard_key] = services.abuse_guard
    app.cleanup_ctx.append(_services_ctx(services))
    app.cleanup_ctx.append(_grant_cache_watch_ctx(services))
    app.cleanup_ctx.append(_validator_ctx(services))

    pages.setup_pages(app)

    async def landing(request: web.Request) -> web.Response:
        """``GET /``: the landing page."""
        return pages.landing_page(request)

    app.router.add_get("/", landing, name="landing")
    setup_oauth(app, services)
    setup_health(app, services)
    setup_helix(app, services)
    setup_status(app, services)
    setup_metrics(app, services)
    setup_openapi(app)
    setup_eventsub(app, services, options=eventsub)  # after the services, before CORS
    setup_cors(app, config.cors.allow_origins)
    static = resources.files("proxy").joinpath("static")
    app.router.add_static("/static", Path(str(static)), name="static")
    return app


def _services_ctx(services: Services) -> CleanupContext:
    """Open the services at start-up (see :mod:`proxy.services`), close them at shutdown."""
    async def services_ctx(app: web.Application) -> AsyncIterator[None]:
        async with services.opened():
            app[store_key] = services.store
            app[grants_key] = services.grants
            app[grant_cache_key] = services.grants
            app[twitch_key] = services.twitch
            app[refresher_key] = services.refresher
            yield
    return services_ctx


def _grant_cache_watch_ctx(services: Services) -> CleanupContext:
    """Read the grant cache's change marker before serving, then poll it until shutdown."""
    async def grant_cache_watch_ctx(app: web.Application) -> AsyncIterator[None]:
        grants = services.grants
        if grants.poll_interval <= 0:
            yield
            return
        await grants.check_generation()
        task = asyncio.ensure_future(grants.watch())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return grant_cache_watch_ctx


def _validator_ctx(services: Services) -> CleanupContext:
    """Validate every grant at start-up and hourly after (Twitch's rule); stop at shutdown."""
    async def validator_ctx(app: web.Application) -> AsyncIterator[None]:
        validator = services.validator
        app[validator_key] = validator
        await validator.start()
        yield
        await validator.stop()
    return validator_ctx
