"""CORS for widgets: sandboxed iframes (``Origin: null``), editors and OBS.

aiohttp-cors answers preflights and decorates responses for every route it is
given. Origins come from config (default ``*``, which also matches the ``null``
origin of a sandboxed StreamElements iframe). Credentials are never allowed:
widgets authenticate with headers, not cookies, and Origin is never
authentication. Chrome's Private Network Access preflight is answered too, so
an https page may call a proxy on localhost or the LAN: aiohttp-cors' preflight
handler is wrapped where it is registered (:class:`_PrivateNetworkAdapter`), so
only preflights pay for it, not every request (a response signal or a
middleware would: see docs/performance.md).
"""

from __future__ import annotations

from typing import Any

import aiohttp_cors
from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp_cors.urldispatcher_router_adapter import ResourcesUrlDispatcherRouterAdapter

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


def _allow_private_network(preflight: Handler) -> Handler:
    """``preflight``, also answering Chrome's Private Network Access request header."""
    async def handler(request: web.Request) -> web.StreamResponse:
        response = await preflight(request)
        if request.headers.get("Access-Control-Request-Private-Network", "").lower() == "true":
            response.headers["Access-Control-Allow-Private-Network"] = "true"
        return response
    return handler


class _PrivateNetworkAdapter(ResourcesUrlDispatcherRouterAdapter):
    """aiohttp-cors' own router adapter, with its preflight handler wrapped."""

    def add_preflight_handler(self, routing_entity: Any, handler: Any,
                              webview: bool = False) -> Any:
        # ``webview`` is the abstract signature's; class-based views are not used here.
        return super().add_preflight_handler(routing_entity, _allow_private_network(handler))


def setup_cors(app: web.Application, origins: tuple[str, ...]) -> None:
    """Make every route registered so far callable from the configured origins."""
    options = aiohttp_cors.ResourceOptions(
        allow_credentials=False,
        expose_headers=EXPOSED_HEADERS,
        allow_headers="*",
        max_age=600,
    )
    defaults = {origin: options for origin in origins}
    # aiohttp_cors.setup() without its default adapter: CorsConfig takes ours.
    cors = aiohttp_cors.CorsConfig(
        app, defaults=defaults, router_adapter=_PrivateNetworkAdapter(app.router, defaults))
    for route in list(app.router.routes()):
        if route.method != "OPTIONS" and not isinstance(route.resource, web.StaticResource):
            cors.add(route)
