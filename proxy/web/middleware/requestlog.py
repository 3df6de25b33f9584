"""One log line per request, request ids, and the router's view of the client.

:func:`request_middleware` (the outermost middleware) gives every request a
:class:`RequestRecord` (reachable from any code running for that request,
including a refresh task it started, through :func:`current_request`), takes the
request id from ``X-Request-Id`` when it is well-formed (Heroku's router sets
one) or makes one, sends it back in ``X-Request-Id``, and when the answer is
ready logs one line with method, route, path, status, duration, Twitch's last
status, the grant id and the client address, and counts it in the metrics.

With ``server.trust_forwarded`` it also rewrites the request as the router
describes it (:mod:`proxy.forwarded`): ``request.remote`` becomes the client's
address and ``request.scheme`` the browser's, for every handler and middleware
after it.

Code that learns which grant a request uses calls :func:`note_grant`.
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import time
from contextvars import ContextVar
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler

from ..forwarded import client_address, forwarded_scheme
from ..keys import config_key, metrics_key, request_ids_key

__all__ = ["REQUEST_ID_HEADER", "RequestRecord", "current_request", "note_grant",
           "put_request_id", "request_middleware", "setup_request_log"]

log = logging.getLogger("proxy.request")

REQUEST_ID_HEADER = "X-Request-Id"
#: An incoming id is kept only if it is this plain and short (Heroku's are UUIDs):
#: it goes into every log line, so it must not be able to forge or bloat one.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{8,128}")


@dataclass
class RequestRecord:
    """What the request log line says about one request."""

    request_id: str
    grant_id: str | None = None
    #: Twitch's rate-limit bucket this request draws on (a grant id, or ``app``).
    ratelimit_bucket: str | None = None
    upstream_status: int | None = None


_current: ContextVar[RequestRecord | None] = ContextVar("proxy_request", default=None)
_record_key = web.RequestKey("request_record", RequestRecord)


def current_request() -> RequestRecord | None:
    """The record of the request being handled, if any."""
    return _current.get()


def note_grant(grant_id: str | None, *, bucket: str | None = None) -> None:
    """Say which grant the current request uses (and whose rate limit it spends)."""
    record = _current.get()
    if record is not None:
        record.grant_id = grant_id
        record.ratelimit_bucket = bucket or grant_id


def _route_of(request: web.Request) -> str:
    """The route template (``/helix/{path}``), never the raw path with its values."""
    info = request.match_info
    if info.http_exception is not None:
        return "unmatched"
    resource = info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def request_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """See the module docstring."""
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    record = RequestRecord(incoming if incoming and _REQUEST_ID.fullmatch(incoming)
                           else request.app[request_ids_key].next_id())
    # Before the clone: aiohttp prepares plain answers with the original request.
    request[_record_key] = record
    _current.set(record)
    if request.app[config_key].server.trust_forwarded:
        request = request.clone(remote=client_address(request),
                                scheme=forwarded_scheme(request))
    started = time.monotonic()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        if not response.prepared:
            # Set here rather than in an on_response_prepare signal, which costs
            # every request a coroutine (see docs/performance.md); streamed answers a handler
            # prepares itself call put_request_id() first.
            response.headers[REQUEST_ID_HEADER] = record.request_id
        return response
    except web.HTTPException as exc:
        status = exc.status
        exc.headers[REQUEST_ID_HEADER] = record.request_id
        raise
    finally:
        _log_request(request, record, status, time.monotonic() - started)


def _log_request(request: web.Request, record: RequestRecord, status: int,
                 seconds: float) -> None:
    route = _route_of(request)
    request.app[metrics_key].request_done(route, request.method, status, seconds)
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
        "client": client_address(request),
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


class RequestIds:
    """Made request ids: 32 hex digits, a random prefix per app and a counter.

    Unique across workers and restarts, without asking the random source on
    every request (uuid4 did, on the hot path).
    """

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count(1)

    def next_id(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


def setup_request_log(app: web.Application) -> None:
    """Request ids for the app (the middleware is added by create_app)."""
    app[request_ids_key] = RequestIds()
