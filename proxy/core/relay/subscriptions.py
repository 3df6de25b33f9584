"""Creating and deleting a grant's EventSub subscriptions through Helix.

``POST /helix/eventsub/subscriptions`` (and ``DELETE ?id=``) with the grant's
user access token, as Twitch requires for WebSocket transports, through the
same :class:`~proxy.core.helix_call.HelixCaller` as ``/helix``: the rate-limit
gate, and a 401 saying the token is invalid or expired refreshes once (single
flight) and sends again. The token is refreshed first when it is about to
expire. A 401 a refresh cannot cure (a missing scope) and every other refusal
(403 missing authorization, 409 already exists, 400, 429) become
:class:`SubscriptionRefused` with Twitch's status and message. A grant Twitch
no longer accepts raises :class:`~proxy.errors.ReauthorizationRequired` (with
its ``login_url``), as everywhere else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from yarl import URL

from ...errors import ReauthorizationRequired
from ...upstream.errors import check_gateway_answer, upstream_errors
from ..credential import Credential
from ..grant_cache import CachedGrantStore
from ..grant_records import Grant
from ..helix_call import HelixCaller, HelixRequest
from ..refresh import Refresher
from .catalog import SubscriptionKey

__all__ = ["CreatedSubscription", "HelixSubscriptions", "SubscriptionRefused"]

_JSON = (("Content-Type", "application/json"), ("Accept-Encoding", "identity"))
_PLAIN = (("Accept-Encoding", "identity"),)


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

    def __init__(self, caller: HelixCaller, *, helix_url: str, refresher: Refresher,
                 grants: CachedGrantStore, login_url: str) -> None:
        self._caller = caller
        self._url = URL(helix_url.rstrip("/") + "/eventsub/subscriptions")
        self._refresher = refresher
        self._grants = grants
        self._login_url = login_url

    async def create(self, grant_id: str, key: SubscriptionKey,
                     session_id: str) -> CreatedSubscription:
        """Create ``key`` on the WebSocket session ``session_id``."""
        body = json.dumps({
            "type": key.type, "version": key.version, "condition": key.condition_dict(),
            "transport": {"method": "websocket", "session_id": session_id},
        }).encode()
        status, payload = await self._call(grant_id, HelixRequest("POST", self._url, _JSON,
                                                                  body))
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
        url = self._url.with_query(id=subscription_id)
        status, payload = await self._call(grant_id, HelixRequest("DELETE", url, _PLAIN))
        if status not in (204, 404):
            raise SubscriptionRefused(status, _message(payload) or "Twitch refused the delete.")

    async def _call(self, grant_id: str, request: HelixRequest) -> tuple[int, bytes]:
        """One Helix call with the grant's current token; Twitch's status and body."""
        grant = await self._current(grant_id)
        answer = await self._caller.call(request, Credential("key", grant.access_token, grant))
        response = answer.response
        try:
            payload = answer.body
            if payload is None:
                with upstream_errors():
                    payload = await response.read()
        finally:
            response.release()
        renewed = answer.credential.grant
        if renewed is not None and renewed is not grant:
            self._grants.remember(renewed)
        check_gateway_answer(response.status, response.content_type)
        return response.status, payload

    async def _current(self, grant_id: str) -> Grant:
        grant = await self._grants.cached_grant(grant_id)
        if grant is None:
            raise ReauthorizationRequired("This grant no longer exists: log in again.",
                                          login_url=self._login_url)
        fresh = await self._refresher.ensure_fresh(grant)
        if fresh is not grant:
            self._grants.remember(fresh)
        return fresh
