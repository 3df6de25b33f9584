"""Creating and deleting a grant's EventSub subscriptions through Helix.

``POST /helix/eventsub/subscriptions`` (and ``DELETE ?id=``) with the grant's
user access token, as Twitch requires for WebSocket transports, over the same
Helix client, rate-limit gate and refresh path as ``/helix``: the token is
refreshed first when it is about to expire, and a 401 saying the token is
invalid or expired refreshes once (single flight, through
:class:`~proxy.core.refresh.Refresher`) and retries once. A 401 Twitch says a
refresh cannot cure (a missing scope, another app's token) and every other
refusal (403 missing authorization, 409 already exists, 400, 429) become
:class:`SubscriptionRefused` with Twitch's status and message. A grant Twitch
no longer accepts raises :class:`~proxy.errors.ReauthorizationRequired` (with
its ``login_url``), as everywhere else.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from yarl import URL

from ..errors import ReauthorizationRequired
from ..upstream.errors import check_gateway_answer, upstream_errors
from ..upstream.helix_client import HelixClient
from ..upstream.ratelimit import RateLimitGate
from .credential import Credential
from .grant_cache import CachedGrantStore
from .grant_records import Grant
from .refresh import Refresher
from .relay_catalog import SubscriptionKey

__all__ = ["CreatedSubscription", "HelixSubscriptions", "SubscriptionRefused"]

log = logging.getLogger(__name__)

#: 401 messages after which a refresh cannot help (Twitch's Helix 401 bodies).
_FINAL_401 = ("missing scope", "client id and oauth token do not match",
              "oauth token is missing", "missing user oauth token")


class SubscriptionRefused(Exception):
    """Twitch refused to create a subscription: its status and message, for the widget."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status} {message}")
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class CreatedSubscription:
    """Twitch's answer to a created subscription."""

    id: str
    cost: int
    total_cost: int | None
    max_total_cost: int | None


def _message(payload: bytes) -> str:
    try:
        body = json.loads(payload)
    except ValueError:
        return ""
    return str(body.get("message", "")) if isinstance(body, dict) else ""


class HelixSubscriptions:
    """A grant's EventSub subscriptions at Twitch; see the module docstring."""

    def __init__(self, client: HelixClient, *, helix_url: str, client_id: str,
                 refresher: Refresher, grants: CachedGrantStore, login_url: str,
                 gate: RateLimitGate | None = None) -> None:
        self._client = client
        self._url = URL(helix_url.rstrip("/") + "/eventsub/subscriptions")
        self._client_id = client_id
        self._refresher = refresher
        self._grants = grants
        self._login_url = login_url
        self._gate = gate

    async def create(self, grant_id: str, key: SubscriptionKey,
                     session_id: str) -> CreatedSubscription:
        """Create ``key`` on the WebSocket session ``session_id``."""
        body = json.dumps({
            "type": key.type, "version": key.version, "condition": key.condition_dict(),
            "transport": {"method": "websocket", "session_id": session_id},
        }).encode()
        status, payload = await self._call(grant_id, "POST", self._url, body)
        if status != 202:
            raise SubscriptionRefused(status, _message(payload) or "Twitch refused the "
                                      "subscription.")
        try:
            answer: dict[str, Any] = json.loads(payload)
            created = answer["data"][0]
            return CreatedSubscription(
                id=str(created["id"]), cost=int(created.get("cost", 0)),
                total_cost=answer.get("total_cost"), max_total_cost=answer.get("max_total_cost"))
        except (ValueError, KeyError, IndexError, TypeError):
            raise SubscriptionRefused(502, "Twitch's answer to the subscription was not "
                                      "understood.") from None

    async def delete(self, grant_id: str, subscription_id: str) -> None:
        """Delete a subscription; one Twitch no longer has (404) is gone already."""
        status, payload = await self._call(
            grant_id, "DELETE", self._url.with_query(id=subscription_id), b"")
        if status not in (204, 404):
            raise SubscriptionRefused(status, _message(payload) or "Twitch refused the delete.")

    async def _call(self, grant_id: str, method: str, url: URL,
                    body: bytes) -> tuple[int, bytes]:
        """One Helix call with the grant's token: refreshed once on an expired-token 401."""
        grant = await self._current(grant_id)
        refreshed = False
        while True:
            status, payload = await self._send(grant, method, url, body)
            if status == 401 and not refreshed and not any(
                    text in _message(payload).lower() for text in _FINAL_401):
                refreshed = True
                grant = await self._refresher.refresh(grant.grant_id,
                                                      stale_access_token=grant.access_token)
                self._grants.remember(grant)
                continue
            return status, payload

    async def _current(self, grant_id: str) -> Grant:
        grant = await self._grants.cached_grant(grant_id)
        if grant is None:
            raise ReauthorizationRequired("This grant no longer exists: log in again.",
                                          login_url=self._login_url)
        fresh = await self._refresher.ensure_fresh(grant)
        if fresh is not grant:
            self._grants.remember(fresh)
        return fresh

    async def _send(self, grant: Grant, method: str, url: URL,
                    body: bytes) -> tuple[int, bytes]:
        bucket = Credential("key", grant.access_token, grant).bucket
        if self._gate is not None:
            await self._gate.wait_turn(bucket)
        headers = [("Client-Id", self._client_id),
                   ("Authorization", f"Bearer {grant.access_token}")]
        if body:
            headers.append(("Content-Type", "application/json"))
        with upstream_errors():
            answer = await self._client.request(method, url, headers, body)
            try:
                payload = await answer.read()
            finally:
                answer.release()
        if self._gate is not None:
            self._gate.observe(bucket, answer.status, answer.headers)
        check_gateway_answer(answer.status, answer.content_type)
        return answer.status, payload
