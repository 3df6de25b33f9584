"""The app access token (client_credentials), for Helix calls made without a user."""

from __future__ import annotations

import asyncio
import logging
import time

from ..upstream.twitch import TwitchClient
from .refresh import EXPIRY_MARGIN

__all__ = ["AppTokenProvider"]

#: Every event of a token chain (refresh, login, proof, end) is logged under
#: this one name, the one operators filter refresh outcomes on.
log = logging.getLogger("proxy.core.refresh")


class AppTokenProvider:
    """The app access token (client_credentials) for calls without a user.

    App tokens cannot be refreshed, only minted again (Twitch's OAuth docs). One is
    minted on first use, kept in memory, and minted again, once for all
    concurrent callers, when Helix rejects it.
    """

    def __init__(self, twitch: TwitchClient) -> None:
        self._twitch = twitch
        self._token: str | None = None
        self._expires_at = 0.0
        self._flight: asyncio.Task[str] | None = None

    async def token(self) -> str:
        """A usable app token, minting one if there is none."""
        if self._token is not None and self._expires_at - time.time() > EXPIRY_MARGIN:
            return self._token
        return await self.renew(self._token)

    async def renew(self, rejected: str | None) -> str:
        """A token other than ``rejected``; mints at most once for all callers."""
        if self._token is not None and self._token != rejected:
            return self._token
        if self._flight is None:
            self._flight = asyncio.ensure_future(self._mint())
        return await asyncio.shield(self._flight)

    async def _mint(self) -> str:
        try:
            tokens = await self._twitch.app_token()
            self._token, self._expires_at = tokens.access_token, tokens.expires_at()
            log.info("minted an app access token")
            return tokens.access_token
        finally:
            self._flight = None
