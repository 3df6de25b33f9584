"""Refuses a request whose header values are not text, before any handler reads them.

aiohttp's HTTP parsers already refuse ASCII control characters in a header
(they answer 400 themselves; :mod:`proxy.telemetry.logs` makes that one INFO line), but
they pass bytes above 0x7F through, decoded
as UTF-8 with ``surrogateescape``: a value can then hold lone surrogates (bytes
that are not UTF-8), C1 controls such as NEL or the Unicode line separators.
Such a value cannot be sent on to Twitch (encoding it fails) and some log
viewers break a line at it. :func:`header_check_middleware` answers those
requests 400 ``invalid_header``, so no handler or library ever sees one.

It also refuses a compressed request body (``Content-Encoding`` other than
``identity``): no widget sends one, aiohttp would inflate it while a handler
reads it (a broken one failing there, a small one growing large), and Helix
is never sent one.
"""

from __future__ import annotations

import re

from aiohttp import web
from aiohttp.typedefs import Handler

from ...errors import InvalidHeader, InvalidRequest

__all__ = ["header_check_middleware"]

#: What a header value must not hold: C0 controls but the tab, DEL, C1 controls,
#: the line and paragraph separators, and surrogates (undecodable bytes). The
#: ASCII ones are there too, so the rule does not depend on the parser.
_NOT_TEXT = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


@web.middleware
async def header_check_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """See the module docstring. Header names need no check: both parsers allow only tokens."""
    # One pass over all the values, on the hot path: isprintable() answers for
    # nearly every request; the regex decides the rest (a tab, a no-break space...).
    headers = request.headers
    values = "".join(headers.values())
    if not values.isprintable() and _NOT_TEXT.search(values):
        raise InvalidHeader()
    if "Content-Encoding" in headers and any(
            coding.strip().lower() not in ("", "identity")
            for value in headers.getall("Content-Encoding") for coding in value.split(",")):
        raise InvalidRequest("Send the request body uncompressed (no Content-Encoding).")
    return await handler(request)
