"""Applies the abuse limits (:mod:`proxy.core.limits`) to each request, before its handler.

What a route is limited by is declared where routes are registered
(:mod:`proxy.web.app`), as a :class:`RouteLimits` per route name (the route's
first path segment: ``login``, ``refresh``...). The middleware then, per request:

- spends from the route's per-address rate limit (not for a CORS preflight);
- refuses a caller presenting a proxy key while its unknown-key budget is empty,
  and spends from that budget for every key that turns out unknown;
- refuses a form body that is too large or cannot be parsed, before it is read;
- holds a slot of the total concurrency while a route that calls Twitch runs
  (``/helix`` takes its slots around each upstream call instead).

:func:`handler_args` caps header lines and header count in aiohttp's parser.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from email.message import Message
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from ...config import LimitsConfig, ServerConfig
from ...core.credential import proxy_key_in
from ...core.limits import AbuseGuard, RateBucket, retry_after
from ...errors import InvalidProxyKey, InvalidRequest, PayloadTooLarge, RateLimited
from ..forwarded import client_address

__all__ = ["RouteLimits", "abuse_middleware", "handler_args"]


@dataclass(frozen=True)
class RouteLimits:
    """The abuse limits of one route (see the module docstring)."""

    #: The per-address rate limit its requests spend from.
    rate: RateBucket | None = None
    #: Its POST bodies are small forms, capped by ``limits.max_form_body``.
    form: bool = False
    #: It calls Twitch, so it holds a slot of the total concurrency while it runs.
    upstream: bool = False


def handler_args(limits: LimitsConfig) -> dict[str, Any]:
    """aiohttp server options that cap request line, header size and count.

    Passed as ``web.Application(handler_args=...)`` so every runner that serves
    the app (``run_app``, a test server, a worker) applies them.
    """
    return {
        "max_line_size": limits.max_header_line,
        "max_field_size": limits.max_header_line,
        "max_headers": limits.max_headers,
    }


def _route_name(request: web.Request) -> str | None:
    """``login``, ``refresh``, ``helix``...: the route's path, without slashes or variables."""
    resource = request.match_info.route.resource
    if resource is None:
        return None
    return resource.canonical.strip("/").split("/", 1)[0] or None


def _presents_proxy_key(request: web.Request) -> bool:
    return proxy_key_in(request.headers.get("Authorization", "")) is not None or (
        request.path == "/status" and request.method == "POST")


def _check_form_body(request: web.Request, limit: int) -> None:
    """Refuse a form body that is too large or cannot be parsed, before it is read."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"The body is larger than {limit} bytes.")
    if request.content_type.startswith("multipart/"):
        header = Message()
        header["Content-Type"] = request.headers.get("Content-Type", "")
        if not header.get_param("boundary"):
            # aiohttp's form parser would fail with a bare ValueError (a 500).
            raise InvalidRequest("A multipart body needs a boundary in its Content-Type.")


def abuse_middleware(guard: AbuseGuard, routes: Mapping[str, RouteLimits],
                     server: ServerConfig) -> Middleware:
    """The middleware applying ``guard`` to the routes named in ``routes``."""
    unlimited = RouteLimits()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Apply rate, size and concurrency limits before the handler runs."""
        route = _route_name(request)
        limits = routes.get(route or "", unlimited)
        address = client_address(request, server)

        # A CORS preflight (OPTIONS) is the browser asking, not a login or a refresh:
        # counting it would halve the rate an old widget's POST /refresh gets.
        if limits.rate is not None and request.method != "OPTIONS":
            guard.spend(limits.rate, address)
        if _presents_proxy_key(request):
            wait = guard.invalid_keys.wait(address)
            if wait:
                raise RateLimited("Too many unknown proxy keys from your address.",
                                  retry_after=retry_after(wait))
        if limits.form and request.method == "POST":
            _check_form_body(request, guard.limits.max_form_body)

        try:
            if limits.upstream:
                await guard.take_total_slot()
                try:
                    response = await handler(request)
                finally:
                    guard.total.release("")
            else:
                response = await handler(request)
        except InvalidProxyKey:
            guard.invalid_keys.take(address)
            raise
        if response.status == 401 and route == "status" and request.method == "POST":
            guard.invalid_keys.take(address)  # the status page shows the refusal itself
        return response

    return middleware
