"""The request being handled: its id and what the request log line will say about it.

The web layer's request middleware opens a :class:`RequestRecord` for every
request (:func:`open_request`); any code running for that request, including a
refresh task it started, reaches it through :func:`current_request` without
being handed the request. Code that learns which grant a request uses calls
:func:`note_grant`; the metrics note Twitch's last status and rate-limit figure.
"""

from __future__ import annotations

import itertools
import secrets
from contextvars import ContextVar
from dataclasses import dataclass

__all__ = ["RequestIds", "RequestRecord", "current_request", "note_grant", "open_request"]


@dataclass
class RequestRecord:
    """What the request log line says about one request."""

    request_id: str
    grant_id: str | None = None
    #: Twitch's rate-limit bucket this request draws on (a grant id, or ``app``).
    ratelimit_bucket: str | None = None
    upstream_status: int | None = None


_current: ContextVar[RequestRecord | None] = ContextVar("proxy_request", default=None)


def open_request(request_id: str) -> RequestRecord:
    """Start the record of the request being handled in this context."""
    record = RequestRecord(request_id)
    _current.set(record)
    return record


def current_request() -> RequestRecord | None:
    """The record of the request being handled, if any."""
    return _current.get()


def note_grant(grant_id: str | None, *, bucket: str | None = None) -> None:
    """Say which grant the current request uses (and whose rate limit it spends)."""
    record = _current.get()
    if record is not None:
        record.grant_id = grant_id
        record.ratelimit_bucket = bucket or grant_id


class RequestIds:
    """Made request ids: 32 hex digits, a random prefix per app and a counter.

    Unique across workers and restarts, without asking the random source on
    every request (uuid4 did, on the hot path).
    """

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count(1)

    def next_id(self) -> str:
        """A new request id."""
        return f"{self._prefix}{next(self._counter):016x}"
