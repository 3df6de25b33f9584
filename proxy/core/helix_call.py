"""One call to Helix with the proxy's retry policy: send, look at the answer, decide.

The policy, in the order :meth:`HelixCaller.call` applies it to each answer:

- **an empty rate-limit bucket**: before each send, wait until Twitch's
  ``Ratelimit-Reset`` (:class:`~proxy.upstream.ratelimit.RateLimitGate`; past
  ``helix.ratelimit_wait`` it answers 429 without calling Twitch);
- **a 401 that means "token invalid or expired"** (:func:`classify_401`; when
  Twitch's message says neither, its validate endpoint decides): renew the
  credential once, through the refresher shared by every concurrent request
  (or a new app token), and send the same buffered body again. A 401 after
  that, or one a refresh cannot help ("Missing scope"), is passed on;
  a bare Twitch token is never renewed (the proxy holds nothing to renew it with);
- **a 503**: send once more after a short pause (Twitch's guide: retry once);
- anything else is the answer.

Each of the two retries happens at most once per call, in whichever order the
answers come. What is measured or logged about each answer is the caller's
business (the ``observe`` hook); what the answer becomes (a relayed response,
a gateway error) is the web layer's.
"""

from __future__ import annotations

import asyncio
import json
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from yarl import URL

from ..upstream.errors import upstream_errors
from ..upstream.helix_client import HelixClient, HelixResponse
from ..upstream.ratelimit import RateLimitGate
from ..upstream.twitch import TwitchClient
from .app_token import AppTokenProvider
from .credential import Credential
from .refresh import Refresher

__all__ = ["RETRY_503_DELAY", "HelixAnswer", "HelixCaller", "HelixRequest", "Observe",
           "classify_401"]

#: Seconds before a 503 is sent again.
RETRY_503_DELAY = 0.1

#: 401 messages after which a refresh helps, and those after which it cannot.
_REFRESHABLE_401 = ("invalid oauth token", "invalid access token", "token is expired",
                    "expired")
_FINAL_401 = ("missing scope", "client id and oauth token do not match",
              "oauth token is missing", "missing user oauth token")

#: Told of every send: the credential, Twitch's status (None: no answer), the
#: seconds until the answer's headers, and its ``Ratelimit-Remaining``.
Observe = Callable[[Credential, "int | None", float, "str | None"], None]


def classify_401(body: bytes, content_encoding: str = "") -> Literal["refresh", "final", "unknown"]:
    """Whether a Helix 401 means "refresh the token" (Twitch's documented 401 messages)."""
    try:
        if content_encoding in ("gzip", "deflate"):
            body = zlib.decompress(body, 47)  # 47: auto-detect gzip or zlib header
        message = str(json.loads(body).get("message", "")).lower()
    except (ValueError, AttributeError, zlib.error):
        return "unknown"
    if any(text in message for text in _FINAL_401):
        return "final"
    if any(text in message for text in _REFRESHABLE_401):
        return "refresh"
    return "unknown"


@dataclass(frozen=True)
class HelixRequest:
    """What to send: ``headers`` are the caller's; Client-Id and Authorization are added."""

    method: str
    url: URL
    headers: Sequence[tuple[str, str]]
    #: Buffered, so a retry sends the same bytes.
    body: bytes = b""


@dataclass(frozen=True)
class HelixAnswer:
    """Twitch's last answer to a call; the caller reads or streams it, then releases it."""

    response: HelixResponse
    #: The credential that got it: after a refresh, the renewed one.
    credential: Credential
    #: The body, when the policy had to read it (a 401 it passes on); else None.
    body: bytes | None = None


class HelixCaller:
    """Sends Helix requests under the retry policy of the module docstring."""

    def __init__(self, client: HelixClient, gate: RateLimitGate, twitch: TwitchClient,
                 refresher: Refresher, app_token: AppTokenProvider, *, client_id: str,
                 observe: Observe | None = None) -> None:
        self._client = client
        self._gate = gate
        self._twitch = twitch
        self._refresher = refresher
        self._app_token = app_token
        self._client_id = client_id
        self._observe = observe or (lambda credential, status, seconds, remaining: None)

    async def call(self, request: HelixRequest, credential: Credential) -> HelixAnswer:
        """Send ``request`` with ``credential``; renew once on a 401, send a 503 once more."""
        renewed = retried = False
        while True:
            response = await self._send(request, credential)
            if response.status == 401 and not renewed and credential.mode != "passthrough":
                try:
                    with upstream_errors():
                        body = await response.read()
                    fresh = await self._renewed(credential, body,
                                                response.headers.get("Content-Encoding", ""))
                except BaseException:
                    response.release()
                    raise
                if fresh is None:
                    return HelixAnswer(response, credential, body)
                response.release()
                credential, renewed = fresh, True
            elif response.status == 503 and not retried:
                response.release()
                retried = True
                await asyncio.sleep(RETRY_503_DELAY)
            else:
                return HelixAnswer(response, credential)

    async def _send(self, request: HelixRequest, credential: Credential) -> HelixResponse:
        """One send, once the credential's bucket has points; its answer noted by the gate."""
        bucket = credential.bucket
        await self._gate.wait_turn(bucket)  # an empty bucket: wait for Ratelimit-Reset, or 429
        headers = [*request.headers, ("Client-Id", self._client_id),
                   ("Authorization", f"Bearer {credential.access_token}")]
        started = time.perf_counter()
        try:
            with upstream_errors():
                response = await self._client.request(request.method, request.url, headers,
                                                      request.body)
        except BaseException:
            self._observe(credential, None, time.perf_counter() - started, None)
            raise
        self._observe(credential, response.status, time.perf_counter() - started,
                      response.headers.get("Ratelimit-Remaining"))
        self._gate.observe(bucket, response.status, response.headers)
        return response

    async def _renewed(self, credential: Credential, body: bytes,
                       content_encoding: str) -> Credential | None:
        """The credential to send again with after a 401, or None to pass the 401 on."""
        kind = classify_401(body, content_encoding)
        if kind == "final":
            return None
        if kind == "unknown":
            # Twitch asks clients not to rely on messages: /validate decides.
            if await self._twitch.validate(credential.access_token) is not None:
                return None
        if credential.mode == "app":
            return Credential("app", await self._app_token.renew(credential.access_token))
        assert credential.grant is not None
        # A key follows its grant to a new chain; an old widget's pair stays on its own.
        grant = await self._refresher.refresh(
            credential.grant.grant_id, stale_access_token=credential.access_token,
            chain=credential.grant.chain if credential.mode == "legacy" else None)
        return Credential(credential.mode, grant.access_token, grant)

