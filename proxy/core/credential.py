"""What a request authenticates with, in one place.

- :func:`bearer_token` is the only parser of ``Authorization: Bearer <token>``
  (``/helix``, ``/status``, ``/revoke``, the abuse limits and ``/metrics`` all
  use it), so a fix to it cannot miss a copy.
- :class:`Credential` is what one ``/helix`` request brings, once resolved:
  a proxy key, an old widget's pair, a bare Twitch token or the app token.
- :attr:`Credential.bucket` is the only naming of the buckets counted per
  credential: Twitch's rate-limit bucket (per user for user tokens, one for the
  app) and this proxy's per-grant concurrency limit.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

from .grant_records import Grant
from .sealed_index import PROXY_KEY_PREFIX, token_hash

__all__ = ["Credential", "Mode", "bearer_token", "proxy_key_in"]

#: ``key``: a proxy key; ``legacy``: an old widget's Twitch pair (Bearer plus
#: ``X-Refresh-Token``); ``passthrough``: a bare Twitch token, forwarded as it
#: is; ``app``: no Authorization at all, with ``helix.app_token`` on.
Mode = Literal["key", "legacy", "passthrough", "app"]


def bearer_token(authorization: str) -> str | None:
    """The token of an ``Authorization`` value ``Bearer <token>``; None for anything else.

    The scheme is case-insensitive (RFC 9110); surrounding spaces are ignored.
    """
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def proxy_key_in(authorization: str) -> str | None:
    """The proxy key of an ``Authorization: Bearer tpk_...`` value, if that is what it holds."""
    token = bearer_token(authorization)
    return token if token is not None and token.startswith(PROXY_KEY_PREFIX) else None


@dataclass(frozen=True)
class Credential:
    """How one request authenticates upstream."""

    mode: Mode
    access_token: str
    grant: Grant | None = None

    @functools.cached_property
    def bucket(self) -> str:
        """The name this credential is counted under, towards Twitch and here.

        Twitch keeps one rate-limit bucket per user for user tokens and one for
        the app token; a bare token counts alone, under its hash (never the
        token itself: bucket names reach metrics). Worked out once per
        credential: a request asks for it several times.
        """
        grant = self.grant
        if grant is not None:
            return f"user:{grant.user_id}" if grant.user_id else f"grant:{grant.grant_id}"
        if self.mode == "app":
            return "app"
        return "token:" + token_hash(self.access_token)
