"""Everything the proxy says to Twitch's OAuth server (id.twitch.tv).

One class, :class:`TwitchClient`, handed the app's shared ``ClientSession``.
Every failure of a call becomes a proxy error (network failures through
:mod:`proxy.upstream.errors`, the boundary ``/helix`` shares):

- connection refused or reset -> :class:`~proxy.errors.UpstreamUnreachable` (502)
- no answer within ``twitch.timeout`` -> :class:`~proxy.errors.UpstreamTimeout` (504)
- a 5xx from Twitch -> :class:`~proxy.errors.UpstreamUnavailable` (503)
- a body that is not the JSON we need -> :class:`~proxy.errors.UpstreamBadResponse` (502)
- a 4xx refusal -> :class:`~proxy.errors.TwitchRefused`, with Twitch's status and
  body, and ``permanent`` set when the refresh token is dead (Twitch: an invalid
  refresh token needs a new login; an invalid client is configuration).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from ..config import TwitchConfig
from ..errors import ProxyError, TwitchRefused, UpstreamBadResponse, UpstreamUnavailable
from .errors import upstream_errors

__all__ = ["Identity", "TokenSet", "TwitchClient", "read_limited"]

log = logging.getLogger(__name__)

#: Twitch's token and validate answers are a few hundred bytes; anything far
#: larger is a broken upstream, not a token.
MAX_OAUTH_BODY = 64 * 1024

# Our own calls parse the body, so ask for it uncompressed: the shared session
# does not decompress (Helix bodies are passed through as they are).
_OAUTH_HEADERS = {"Accept": "application/json", "Accept-Encoding": "identity"}


@dataclass(frozen=True)
class TokenSet:
    """A token endpoint answer (user tokens have a refresh token, app tokens not)."""

    access_token: str
    refresh_token: str
    expires_in: int
    scopes: tuple[str, ...]
    token_type: str = "bearer"

    def expires_at(self, now: float | None = None) -> float:
        """Absolute expiry as a Unix time."""
        return (time.time() if now is None else now) + self.expires_in


@dataclass(frozen=True)
class Identity:
    """What /oauth2/validate says about an access token."""

    client_id: str
    user_id: str | None
    login: str | None
    scopes: tuple[str, ...]
    expires_in: int


async def read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """Read at most ``limit`` bytes of a body; raise UpstreamBadResponse beyond it."""
    chunks = []
    size = 0
    async for chunk in response.content.iter_chunked(16384):
        size += len(chunk)
        if size > limit:
            raise UpstreamBadResponse("Twitch sent a response far larger than expected.")
        chunks.append(chunk)
    return b"".join(chunks)


def _is_permanent_refusal(status: int, payload: Mapping[str, Any]) -> bool:
    """True when a refresh refusal means the token is dead, not the config wrong."""
    message = str(payload.get("message", "")).lower()
    if "client" in message:  # "invalid client", "invalid client secret"
        return False
    return status in (400, 401)


class TwitchClient:
    """Token endpoint, validate and revoke, with failures mapped to proxy errors."""

    def __init__(self, session: aiohttp.ClientSession, config: TwitchConfig, *,
                 observe: Callable[[str, int | None, float], None] | None = None) -> None:
        self._session = session
        self._config = config
        #: Told (endpoint, status or None, seconds) after every call (metrics).
        self._observe = observe or (lambda endpoint, status, seconds: None)
        base = config.id_url.rstrip("/")
        self._token_url = f"{base}/oauth2/token"
        self._validate_url = f"{base}/oauth2/validate"
        self._revoke_url = f"{base}/oauth2/revoke"
        self.authorize_url = f"{base}/oauth2/authorize"
        self._timeout = aiohttp.ClientTimeout(total=config.timeout)

    @property
    def client_id(self) -> str:
        """This app's client id: a token whose ``client_id`` differs is someone else's."""
        return self._config.client_id

    async def revoke_quietly(self, *tokens: str) -> None:
        """Revoke tokens the proxy will not keep; Twitch failing is only logged."""
        for token in tokens:
            try:
                await self.revoke(token)
            except ProxyError as exc:
                log.warning("could not revoke a token at Twitch: %s", exc.code)

    # -- grants -------------------------------------------------------------

    async def exchange_code(self, code: str, redirect_uri: str) -> TokenSet:
        """authorization_code grant: trade a code from /callback for tokens."""
        payload = await self._token_request(
            {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri},
            permanent_on_refusal=False,
        )
        return self._token_set(payload, need_refresh=True)

    async def refresh(self, refresh_token: str) -> TokenSet:
        """refresh_token grant: Twitch answers a new access AND refresh token."""
        payload = await self._token_request(
            {"grant_type": "refresh_token", "refresh_token": refresh_token},
            permanent_on_refusal=True,
        )
        return self._token_set(payload, need_refresh=True)

    async def app_token(self) -> TokenSet:
        """client_credentials grant: an app access token (cannot be refreshed)."""
        payload = await self._token_request(
            {"grant_type": "client_credentials"}, permanent_on_refusal=False
        )
        return self._token_set(payload, need_refresh=False)

    # -- validate and revoke -------------------------------------------------

    async def validate(self, access_token: str) -> Identity | None:
        """The token's identity, or None when Twitch says it is invalid (401)."""
        status, payload = await self._call(
            "GET", self._validate_url, headers={"Authorization": f"OAuth {access_token}"}
        )
        if status == 401:
            return None
        if status != 200:
            raise UpstreamBadResponse(f"Twitch's validate endpoint answered {status}.")
        try:
            scopes = payload.get("scopes") or []
            return Identity(
                client_id=str(payload["client_id"]),
                user_id=str(payload["user_id"]) if payload.get("user_id") else None,
                login=str(payload["login"]) if payload.get("login") else None,
                scopes=tuple(str(s) for s in scopes),
                expires_in=int(payload["expires_in"]),
            )
        except (KeyError, TypeError, ValueError):
            raise UpstreamBadResponse("Twitch's validate answer lacks expected fields.") from None

    async def revoke(self, token: str) -> bool:
        """Revoke an access or refresh token; False when Twitch did not know it."""
        status, _ = await self._call(
            "POST", self._revoke_url,
            data={"client_id": self._config.client_id, "token": token}, allow_empty=True,
        )
        return status == 200

    # -- plumbing --------------------------------------------------------------

    async def _token_request(self, form: dict[str, str], *,
                             permanent_on_refusal: bool) -> dict[str, Any]:
        form = {
            "client_id": self._config.client_id,
            "client_secret": self._config.client_secret.reveal(),
            **form,
        }
        status, payload = await self._call("POST", self._token_url, data=form)
        if status != 200:
            raise TwitchRefused(
                status,
                payload,
                permanent=permanent_on_refusal and _is_permanent_refusal(status, payload),
            )
        return payload

    async def _call(self, method: str, url: str, *, headers: Mapping[str, str] | None = None,
                    data: Mapping[str, str] | None = None,
                    allow_empty: bool = False) -> tuple[int, dict[str, Any]]:
        """One request to Twitch: (status, JSON object); 5xx and faults raise."""
        answered: int | None = None
        started = time.perf_counter()
        try:
            with upstream_errors():
                async with self._session.request(
                    method, url, data=data, headers={**_OAUTH_HEADERS, **(headers or {})},
                    timeout=self._timeout, allow_redirects=False,
                ) as response:
                    body = await read_limited(response, MAX_OAUTH_BODY)
                    answered = status = response.status
        finally:
            # "token", "validate" or "revoke"; None: no (whole) answer.
            self._observe(url.rsplit("/", 1)[-1], answered, time.perf_counter() - started)
        if status >= 500:
            raise UpstreamUnavailable(f"Twitch answered {status}; try again shortly.")
        if not body and allow_empty:
            return status, {}
        try:
            payload = json.loads(body)
        except ValueError:
            raise UpstreamBadResponse(f"Twitch answered {status} with a non-JSON body.") from None
        if not isinstance(payload, dict):
            raise UpstreamBadResponse(f"Twitch answered {status} with unexpected JSON.")
        return status, payload

    @staticmethod
    def _token_set(payload: Mapping[str, Any], *, need_refresh: bool) -> TokenSet:
        try:
            access = payload["access_token"]
            refresh = payload.get("refresh_token", "")
            expires_in = int(payload["expires_in"])
            scopes = payload.get("scope") or []
            if not isinstance(access, str) or not access or not isinstance(refresh, str):
                raise TypeError
            if need_refresh and not refresh:
                raise KeyError("refresh_token")
            if isinstance(scopes, str):
                scopes = scopes.split()
            return TokenSet(
                access_token=access,
                refresh_token=refresh,
                expires_in=expires_in,
                scopes=tuple(str(s) for s in scopes),
                token_type=str(payload.get("token_type", "bearer")),
            )
        except (KeyError, TypeError, ValueError):
            raise UpstreamBadResponse("Twitch's token answer lacks expected fields.") from None
