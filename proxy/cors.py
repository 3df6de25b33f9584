"""CORS for widgets: sandboxed iframes (``Origin: null``), editors and OBS.

aiohttp-cors answers preflights and decorates responses for every route it is
given. Origins come from config (default ``*``, which also matches the ``null``
origin of a sandboxed StreamElements iframe). Credentials are never allowed:
widgets authenticate with headers, not cookies, and Origin is never
authentication. Chrome's Private Network Access preflight is answered too, so
an https page may call a proxy on localhost or the LAN.
"""

from __future__ import annotations

import aiohttp_cors
from aiohttp import web

__all__ = ["EXPOSED_HEADERS", "setup_cors"]

#: Response headers a widget's script may read.
EXPOSED_HEADERS = (
    "Ratelimit-Limit",
    "Ratelimit-Remaining",
    "Ratelimit-Reset",
    "Retry-After",
    "X-Access-Token",
    "X-Refresh-Token",
    "X-Request-Id",
)


async def _allow_private_network(request: web.Request, response: web.StreamResponse) -> None:
    """Answer Chrome's Private Network Access preflight header."""
    if request.headers.get("Access-Control-Request-Private-Network", "").lower() == "true":
        response.headers["Access-Control-Allow-Private-Network"] = "true"


def setup_cors(app: web.Application, origins: tuple[str, ...]) -> None:
    """Make every route registered so far callable from the configured origins."""
    options = aiohttp_cors.ResourceOptions(
        allow_credentials=False,
        expose_headers=EXPOSED_HEADERS,
        allow_headers="*",
        max_age=600,
    )
    cors = aiohttp_cors.setup(app, defaults={origin: options for origin in origins})
    for route in list(app.router.routes()):
        if route.method != "OPTIONS" and not isinstance(route.resource, web.StaticResource):
            cors.add(route)
    app.on_response_prepare.append(_allow_private_network)
