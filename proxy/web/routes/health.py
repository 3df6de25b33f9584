"""Liveness and readiness: ``/healthz`` and ``/readyz``."""

from __future__ import annotations

from aiohttp import web

from ...errors import StoreUnavailable, json_error
from ..keys import config_key, store_key

__all__ = ["setup_health"]


async def healthz(request: web.Request) -> web.Response:
    """The process is alive and serving."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """The store answers and an upstream is configured; 503 otherwise."""
    config = request.app[config_key]
    if not (config.twitch.client_id and config.twitch.helix_url):
        return json_error(503, "not_ready", "No Twitch upstream is configured.")
    try:
        await request.app[store_key].ping()
    except StoreUnavailable:
        return json_error(503, "not_ready", "The token store is unreachable.",
                          headers={"Retry-After": "5"})
    return web.json_response({"status": "ready"})


def setup_health(app: web.Application) -> None:
    """Register the health routes."""
    app.router.add_get("/healthz", healthz, name="healthz")
    app.router.add_get("/readyz", readyz, name="readyz")
