"""The JSON errors: every error becomes ``{"error": code, "message": text}``.

The error tree is :mod:`proxy.errors`; this middleware renders it. ``web.HTTPException``
raised by aiohttp itself (404, 405, ...) passes through, re-rendered as the same JSON
shape. The unexpected is logged once with its traceback (code lines, never locals, so
never a token in flight) and answered with a 500.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from ...errors import ProxyError

__all__ = ["error_middleware", "json_error"]

log = logging.getLogger("proxy.errors")


def json_error(status: int, code: str, message: str, headers: dict[str, str] | None = None,
               **extra: Any) -> web.Response:
    """Build the JSON error response every error path uses."""
    return web.Response(
        status=status,
        text=json.dumps({"error": code, "message": message, **extra}),
        content_type="application/json",
        headers=headers,
    )


_HTTP_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    431: "headers_too_large",
}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every error into ``{"error", "message"}`` JSON; log the unexpected once."""
    try:
        return await handler(request)
    except ProxyError as exc:
        if exc.status >= 500:
            log.warning("%s %s -> %d %s", request.method, request.path, exc.status, exc.code)
        return web.Response(
            status=exc.status,
            text=json.dumps(exc.body()),
            content_type="application/json",
            headers=exc.headers(),
        )
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json" or exc.text and \
                exc.content_type == "text/html":
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return json_error(exc.status, code, exc.reason, headers=headers)
    except Exception:
        # Logged with its traceback, but never with locals: the traceback names
        # code lines, not the tokens that were in flight.
        log.exception("unexpected error on %s %s", request.method, request.path)
        return json_error(500, "internal_error", "Unexpected error; see the proxy's log.")
