"""One log line per request, request ids, and the router's view of the client.

:func:`request_middleware` (the outermost middleware) opens every request's
:class:`~proxy.telemetry.context.RequestRecord` (reachable from any code running
for that request through :func:`proxy.telemetry.context.current_request`), takes
the request id from ``X-Request-Id`` when it is well-formed (Heroku's router sets
one) or makes one, sends it back in ``X-Request-Id``, and when the answer is
ready logs one line with method, route, path, status, duration, Twitch's last
status, the grant id and the client address, and counts it in the metrics.

With ``server.trust_forwarded`` it also rewrites the request as the router
describes it (:mod:`proxy.web.forwarded`): ``request.remote`` becomes the
client's address and ``request.scheme`` the browser's, for every handler and
middleware after it.
"""

from __future__ import annotations

import logging
import re
import time

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from ...config import ServerConfig
from ...telemetry.context import RequestIds, RequestRecord, open_request
from ...telemetry.metrics import Metrics
from ..forwarded import client_address, forwarded_scheme

__all__ = ["REQUEST_ID_HEADER", "put_request_id", "request_middleware"]

log = logging.getLogger("proxy.request")

REQUEST_ID_HEADER = "X-Request-Id"
#: An incoming id is kept only if it is this plain and short (Heroku's are UUIDs):
#: it goes into every log line, so it must not be able to forge or bloat one.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{8,128}")


_record_key = web.RequestKey("request_record", RequestRecord)


def _route_of(request: web.Request) -> str:
    """The route template (``/helix/{path}``), never the raw path with its values."""
    info = request.match_info
    if info.http_exception is not None:
        return "unmatched"
    resource = info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def request_middleware(server: ServerConfig, metrics: Metrics,
                       request_ids: RequestIds) -> Middleware:
    """The outermost middleware: see the module docstring."""
    trusted = server.trust_forwarded

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Open the request's record, answer, then log and count it."""
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        record = open_request(incoming if incoming and _REQUEST_ID.fullmatch(incoming)
                              else request_ids.next_id())
        # Before the clone: aiohttp prepares plain answers with the original request.
        request[_record_key] = record
        if trusted:
            request = request.clone(remote=client_address(request, server),
                                    scheme=forwarded_scheme(request, server))
        started = time.monotonic()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            if not response.prepared:
                # Set here rather than in an on_response_prepare signal, which costs
                # every request a coroutine (see docs/performance.md); streamed answers
                # a handler prepares itself call put_request_id() first.
                response.headers[REQUEST_ID_HEADER] = record.request_id
            return response
        except web.HTTPException as exc:
            status = exc.status
            exc.headers[REQUEST_ID_HEADER] = record.request_id
            raise
        finally:
            seconds = time.monotonic() - started
            route = _route_of(request)
            metrics.request_done(route, request.method, status, seconds)
            _log_request(request, server, route, record, status, seconds)

    return middleware


def _log_request(request: web.Request, server: ServerConfig, route: str,
                 record: RequestRecord, status: int, seconds: float) -> None:
    if not log.isEnabledFor(logging.INFO):
        return  # LOG_LEVEL above INFO: building the line would be wasted (hot path)
    fields = {
        "event": "request",
        "method": request.method,
        "route": route,
        # As sent, percent-encoded: a decoded path could hold a line break or a
        # space followed by a field of its own ("path=/x grant_id=...").
        "path": request.rel_url.raw_path,
        "status": status,
        "duration_ms": round(seconds * 1000, 1),
        "upstream_status": record.upstream_status,
        "grant_id": record.grant_id,
        "client": client_address(request, server),
        "request_id": record.request_id,
    }
    text = " ".join(f"{key}={'-' if value is None else value}"
                    for key, value in fields.items() if key != "event")
    log.info("request %s", text, extra={"fields": fields})


def put_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """Give ``response`` its ``X-Request-Id``: for a handler that prepares it itself."""
    record = request.get(_record_key)
    if record is not None:
        response.headers[REQUEST_ID_HEADER] = record.request_id
