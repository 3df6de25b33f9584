"""Every error the proxy raises: the whole tree, and nothing else.

The hierarchy of the proxy's answers::

    ProxyError                      (500 internal_error)
    ├── InvalidRequest              (400 invalid_request)
    │   ├── InvalidState            (400 invalid_state)
    │   ├── InvalidPath             (400 invalid_path)
    │   └── InvalidHeader           (400 invalid_header)
    ├── AccessDenied                (400 access_denied)
    ├── InvalidProxyKey             (401 invalid_proxy_key)
    │   └── InvalidTicket           (401 invalid_ticket)
    ├── ReauthorizationRequired     (401 reauthorization_required)
    ├── InvalidTwitchToken          (401 invalid_token)
    ├── Unauthorized                (401 unauthorized, WWW-Authenticate)
    ├── Forbidden                   (403 forbidden)
    │   └── ScopesNotAllowed        (403 scopes_not_allowed)
    ├── ScopesNarrowed              (409 scopes_narrowed)
    ├── PayloadTooLarge             (413 payload_too_large)
    ├── RateLimited                 (429 rate_limited, Retry-After)
    │   ├── TooManyStreams          (429 too_many_streams, Retry-After)
    │   └── BucketEmpty             (429 rate_limited, Twitch's bucket empty: Ratelimit-* headers)
    ├── TwitchRefused               (Twitch's own 4xx status and body)
    ├── UpstreamError               (502 upstream_error)
    │   ├── UpstreamUnreachable     (502 upstream_unreachable)
    │   ├── UpstreamBadResponse     (502 upstream_bad_response)
    │   ├── UpstreamUnavailable     (503 upstream_unavailable, Retry-After)
    │   └── UpstreamTimeout         (504 upstream_timeout)
    ├── EventSubNeedsRedis          (501 eventsub_needs_redis)
    ├── Overloaded                  (503 overloaded, Retry-After)
    ├── StoreUnavailable            (503 store_unavailable, Retry-After)
    │   └── LockTimeout             (503 store_busy, Retry-After)
    ├── DecryptionFailed            (500 store_key_mismatch)
    └── KeyFileError                (500 store_key_file_unsafe)

Every one renders as JSON ``{"error": code, "message": text}`` plus any extra
fields the error carries (:mod:`proxy.web.middleware.errors` does it). Messages
are written by the proxy, never copied from a request, so they cannot carry a
token.

Beneath those answers, the failures of the Helix client's own transport
(:mod:`proxy.upstream.helix_client`), never rendered as they are:
:class:`proxy.upstream.errors.upstream_errors` turns them into the
``UpstreamError`` answers above::

    HelixTransportError             (the call to Twitch failed)
    ├── ConnectFailed               (no connection: DNS, refused, TLS handshake)
    └── ConnectionBroken            (failed mid-call, or the answer was not HTTP)
"""

from __future__ import annotations

import math
import time
from typing import Any

__all__ = [
    "AccessDenied",
    "BucketEmpty",
    "ConnectFailed",
    "ConnectionBroken",
    "DecryptionFailed",
    "EventSubNeedsRedis",
    "Forbidden",
    "HelixTransportError",
    "InvalidHeader",
    "InvalidPath",
    "InvalidProxyKey",
    "InvalidRequest",
    "InvalidState",
    "InvalidTicket",
    "InvalidTwitchToken",
    "KeyFileError",
    "LockTimeout",
    "Overloaded",
    "PayloadTooLarge",
    "ProxyError",
    "RateLimited",
    "ReauthorizationRequired",
    "ScopesNarrowed",
    "ScopesNotAllowed",
    "StoreUnavailable",
    "TooManyStreams",
    "TwitchRefused",
    "UpstreamBadResponse",
    "UpstreamError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "Unauthorized",
    "UpstreamUnreachable",
]


class ProxyError(Exception):
    """Base of every error the proxy turns into a JSON answer."""

    status: int = 500
    code: str = "internal_error"
    retry_after: int | None = None

    def __init__(self, message: str | None = None, **extra: Any) -> None:
        self.message = message or self.__class__.__doc__ or self.code
        self.extra = extra
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        """The JSON object sent to the client."""
        return {"error": self.code, "message": self.message, **self.extra}

    def headers(self) -> dict[str, str]:
        """Extra response headers (Retry-After for the retryable ones)."""
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(self.retry_after)}


class InvalidRequest(ProxyError):
    """The request is malformed."""

    status = 400
    code = "invalid_request"


class InvalidState(InvalidRequest):
    """The OAuth state is missing, unknown, expired, reused or not this browser's."""

    code = "invalid_state"


class InvalidPath(InvalidRequest):
    """The Helix path would leave the Helix base URL."""

    code = "invalid_path"


class InvalidHeader(InvalidRequest):
    """A request header value holds control characters or bytes that are not text."""

    code = "invalid_header"


class AccessDenied(ProxyError):
    """The user declined the authorization on Twitch."""

    status = 400
    code = "access_denied"


class InvalidProxyKey(ProxyError):
    """The proxy key is unknown or revoked."""

    status = 401
    code = "invalid_proxy_key"


class InvalidTicket(InvalidProxyKey):
    """The ticket is unknown, was used already, or expired."""

    code = "invalid_ticket"


class ReauthorizationRequired(ProxyError):
    """Twitch no longer accepts this grant's refresh token: the user must log in again."""

    status = 401
    code = "reauthorization_required"


class InvalidTwitchToken(ProxyError):
    """A Twitch token pair the proxy will not honour (another app's, or not proven)."""

    status = 401
    code = "invalid_token"


class Unauthorized(ProxyError):
    """A bearer token is required (``/metrics`` with ``METRICS_TOKEN`` set)."""

    status = 401
    code = "unauthorized"

    def __init__(self, message: str | None = None, *, realm: str, **extra: Any) -> None:
        super().__init__(message, **extra)
        self.realm = realm

    def headers(self) -> dict[str, str]:
        """``WWW-Authenticate``, as RFC 6750 asks of a 401 for a bearer token."""
        return {"WWW-Authenticate": f'Bearer realm="{self.realm}"'}


class Forbidden(ProxyError):
    """The request is not allowed by this proxy's configuration."""

    status = 403
    code = "forbidden"


class ScopesNotAllowed(Forbidden):
    """Twitch granted scopes this login did not ask for; the tokens were revoked."""

    code = "scopes_not_allowed"


class ScopesNarrowed(ProxyError):
    """A login would take scopes away from the user's existing grant; nothing changed."""

    status = 409
    code = "scopes_narrowed"


class PayloadTooLarge(ProxyError):
    """The request body is larger than this proxy accepts."""

    status = 413
    code = "payload_too_large"


class RateLimited(ProxyError):
    """Too many requests; retry after the given number of seconds."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str | None = None, *, retry_after: int = 1, **extra: Any) -> None:
        super().__init__(message, **extra)
        self.retry_after = max(1, retry_after)


class TooManyStreams(RateLimited):
    """This grant holds as many live-event streams as the proxy allows at once."""

    code = "too_many_streams"


class BucketEmpty(RateLimited):
    """Twitch's bucket for these credentials is empty for longer than we wait.

    Answered like Twitch's own 429: ``Ratelimit-Remaining: 0`` and
    ``Ratelimit-Reset``, plus ``Retry-After``.
    """

    def __init__(self, reset: float) -> None:
        super().__init__("Twitch's rate limit for these credentials is used up; retry after "
                         "Retry-After seconds.", retry_after=math.ceil(reset - time.time()))
        self.reset = reset

    def headers(self) -> dict[str, str]:
        return {**super().headers(), "Ratelimit-Remaining": "0",
                "Ratelimit-Reset": str(math.ceil(self.reset))}


class TwitchRefused(ProxyError):
    """Twitch refused a token request; its status and JSON body are passed on.

    ``permanent`` is True when the refusal means the refresh token is dead and
    only a new login helps (as opposed to a configuration error such as an
    invalid client secret).
    """

    code = "twitch_refused"

    def __init__(self, status: int, payload: dict[str, Any], *, permanent: bool) -> None:
        self.status = status
        self.payload = payload
        self.permanent = permanent
        super().__init__(str(payload.get("message") or "Twitch refused the request"))

    def body(self) -> dict[str, Any]:
        return self.payload


class UpstreamError(ProxyError):
    """Twitch answered in a way the proxy cannot use."""

    status = 502
    code = "upstream_error"


class UpstreamUnreachable(UpstreamError):
    """Twitch could not be reached."""

    code = "upstream_unreachable"


class UpstreamBadResponse(UpstreamError):
    """Twitch sent a response the proxy could not understand."""

    code = "upstream_bad_response"


class UpstreamUnavailable(UpstreamError):
    """Twitch is temporarily failing; the stored token was kept, retry later."""

    status = 503
    code = "upstream_unavailable"
    retry_after = 5


class UpstreamTimeout(UpstreamError):
    """Twitch did not answer in time."""

    status = 504
    code = "upstream_timeout"


class EventSubNeedsRedis(ProxyError):
    """Live events across several workers need a Redis store to share one Twitch socket."""

    status = 501
    code = "eventsub_needs_redis"


class Overloaded(ProxyError):
    """The proxy has as many upstream requests in flight as it allows; retry shortly."""

    status = 503
    code = "overloaded"
    retry_after = 1


class StoreUnavailable(ProxyError):
    """The backend cannot be reached or answered with a connection error."""

    status = 503
    code = "store_unavailable"
    retry_after = 5


class LockTimeout(StoreUnavailable):
    """A per-key lock could not be taken within the wait time."""

    code = "store_busy"


class DecryptionFailed(ProxyError):
    """A stored record could not be decrypted with any configured key.

    A configuration problem (a changed or wrong key), never a token's fault:
    the server refuses to start on it, and a request meeting it gets a 500
    whose message says what to fix.
    """

    code = "store_key_mismatch"


class KeyFileError(ProxyError):
    """The key file beside the SQLite database cannot be used safely.

    A configuration problem, like :class:`DecryptionFailed`: the server and the
    admin commands refuse to start on it. The message names the file and what
    is wrong with it, never the key.
    """

    code = "store_key_file_unsafe"


# -- the Helix client's transport: never rendered, mapped by proxy.upstream.errors ---------

class HelixTransportError(Exception):
    """The Helix client's call to Twitch failed (see the subclasses).

    Not a :class:`ProxyError`: it says what broke on the wire, not what to
    answer; :mod:`proxy.upstream.errors` decides that.
    """


class ConnectFailed(HelixTransportError):
    """No connection could be made (DNS, refused, TLS handshake)."""


class ConnectionBroken(HelixTransportError):
    """The connection failed mid-call, or the answer was not valid HTTP."""
