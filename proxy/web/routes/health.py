"""Liveness and readiness: ``/healthz`` and ``/readyz``."""

from __future__ import annotations

from aiohttp import web

from ...errors import StoreUnavailable
from ...services import Services
from ..middleware.errors import json_error

__all__ = ["setup_health"]


async def healthz(request: web.Request) -> web.Response:
    """The process is alive and serving."""
    return web.json_response({"status": "ok"})


def setup_health(app: web.Application, services: Services) -> None:
    """Register the health routes."""
    twitch = services.config.twitch

    async def readyz(request: web.Request) -> web.Response:
        """The store answers and an upstream is configured; 503 otherwise."""
        if not (twitch.client_id and twitch.helix_url):
            return json_error(503, "not_ready", "No Twitch upstream is configured.")
        try:
            await services.store.ping()
        except StoreUnavailable:
            return json_error(503, "not_ready", "The token store is unreachable.",
                              headers={"Retry-After": "5"})
        return web.json_response({"status": "ready"})

    app.router.add_get("/healthz", healthz, name="healthz")
    app.router.add_get("/readyz", readyz, name="readyz")
