"""The mock's ``/helix/eventsub/subscriptions``: create, list and delete WebSocket subscriptions.

Authenticated and rate-limited like the mock's other Helix routes (see
:mod:`.helix`); WebSocket subscriptions need a user access token. What Twitch
enforces, the mock enforces, per (client id, user):

- the type and version must be known (400) and the condition well formed
  (400), see :mod:`.eventsub_catalog`;
- ``transport`` must be ``{"method": "websocket", "session_id"}`` naming a
  connected session, not one another user subscribed with (400);
- the scope the type needs, and the condition's authorising user being the
  token's user (403 "subscription missing proper authorization");
- the same type, version and condition twice on one session (409);
- a 4th WebSocket connection with subscriptions (429 "websocket transports
  limit exceeded"), a 301st subscription on one connection, or a total cost
  over ``max_total_cost`` (429).

Bodies as Twitch's: ``{"data", "total", "total_cost", "max_total_cost"}``
(and ``pagination`` when listing: one page holds everything). Disabled
subscriptions (their session ended, or revoked) are listed with their status
and cost nothing.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from multidict import MultiMapping

from .eventsub_catalog import SUBSCRIPTION_TYPES, condition_problem, subscription_cost
from .eventsub_records import Subscription
from .eventsub_state import MAX_SUBSCRIPTIONS_PER_TRANSPORT, MAX_TRANSPORTS, EventSubState
from .helix import HelixHandler, helix_error
from .records import AccessToken
from .state import MockTwitch

__all__ = ["EVENTSUB_ROUTES"]

_NO_SESSION = "websocket transport session does not exist or has already disconnected"
_NOT_AUTHORIZED = "subscription missing proper authorization"


def _totals(events: EventSubState, access: AccessToken) -> dict[str, Any]:
    """``total``, ``total_cost`` and ``max_total_cost`` of the token's (client id, user)."""
    subs = events.subscriptions_of(access.client_id, access.user_id or "")
    return {"total": len(subs),
            "total_cost": sum(sub.cost for sub in subs if sub.status == "enabled"),
            "max_total_cost": events.max_total_cost}


def _transport_problem(transport: Any) -> web.Response | str:
    """The session id of a WebSocket transport, or the 400 for a bad transport."""
    if not isinstance(transport, dict):
        return helix_error(400, 'The parameter "transport" is required')
    method = transport.get("method")
    if method in ("webhook", "conduit"):
        return helix_error(400, "invalid transport and auth combination")
    if method != "websocket":
        return helix_error(400, 'The parameter "transport.method" is not valid')
    session_id = transport.get("session_id")
    if not isinstance(session_id, str) or not session_id:
        return helix_error(400, 'The parameter "transport.session_id" is required')
    return session_id


def _limit_problem(events: EventSubState, access: AccessToken, session_id: str,
                   cost: int) -> web.Response | None:
    """The 429 for a subscription over one of Twitch's limits, or None."""
    owner = (access.client_id, access.user_id or "")
    transports = [s for s in events.bound_sessions(*owner) if s.id != session_id]
    session = events.sessions[session_id]
    if not session.subscriptions and len(transports) >= MAX_TRANSPORTS:
        return helix_error(429, "websocket transports limit exceeded")
    if len(session.subscriptions) >= MAX_SUBSCRIPTIONS_PER_TRANSPORT:
        return helix_error(429, "websocket transport subscriptions limit exceeded")
    total_cost = sum(sub.cost for sub in events.subscriptions_of(*owner)
                     if sub.status == "enabled")
    if total_cost + cost > events.max_total_cost:
        return helix_error(429, "subscription cost exceeds max_total_cost")
    return None


def _create_subscription(
    state: MockTwitch, access: AccessToken, query: MultiMapping[str], body: bytes
) -> web.Response:
    """``POST /helix/eventsub/subscriptions``."""
    events = state.eventsub
    if access.user_id is None:
        return helix_error(400, "invalid transport and auth combination")
    try:
        request = json.loads(body)
    except ValueError:
        request = None
    if not isinstance(request, dict):
        return helix_error(400, "Invalid JSON body")
    spec = SUBSCRIPTION_TYPES.get((str(request.get("type")), str(request.get("version"))))
    if spec is None:
        return helix_error(
            400, "The combination of values in the type and version fields is not valid")
    if (problem := condition_problem(spec, request.get("condition"))) is not None:
        return helix_error(400, problem)
    condition: dict[str, str] = request["condition"]  # checked just above
    session_id = _transport_problem(request.get("transport"))
    if isinstance(session_id, web.Response):
        return session_id
    session = events.sessions.get(session_id)
    if session is None or session.connection is None:
        return helix_error(400, _NO_SESSION)
    owner = (access.client_id, access.user_id)
    if session.owner not in (None, owner):
        return helix_error(400, "websocket transport session belongs to another user")
    if spec.scopes and not spec.scopes & set(access.scopes):
        return helix_error(403, _NOT_AUTHORIZED)
    if spec.authorising_key is not None and condition[spec.authorising_key] != access.user_id:
        return helix_error(403, _NOT_AUTHORIZED)
    if any((sub.type, sub.version, sub.condition) == (spec.type, spec.version, condition)
           for sub in session.subscriptions.values()):
        return helix_error(409, "subscription already exists")
    cost = subscription_cost(condition, access.user_id)
    if (refusal := _limit_problem(events, access, session_id, cost)) is not None:
        return refusal
    sub = Subscription(id=str(uuid.uuid4()), type=spec.type, version=spec.version,
                       condition=dict(condition), session_id=session.id,
                       client_id=access.client_id, user_id=access.user_id, cost=cost,
                       created_at=events.now(), connected_at=session.connected_at)
    session.owner = owner
    session.subscriptions[sub.id] = sub
    session.ever_subscribed = True
    return web.json_response({"data": [sub.helix()], **_totals(events, access)}, status=202)


def _list_subscriptions(
    state: MockTwitch, access: AccessToken, query: MultiMapping[str], body: bytes
) -> web.Response:
    """``GET /helix/eventsub/subscriptions`` with optional status, type, user_id or
    subscription_id filters."""
    events = state.eventsub
    subs = [] if access.user_id is None else \
        events.subscriptions_of(access.client_id, access.user_id)
    filters: Mapping[str, Any] = {
        "status": lambda sub, value: sub.status == value,
        "type": lambda sub, value: sub.type == value,
        "user_id": lambda sub, value: value in sub.condition.values(),
        "subscription_id": lambda sub, value: sub.id == value,
    }
    for name, matches in filters.items():
        if name in query:
            subs = [sub for sub in subs if matches(sub, query[name])]
    return web.json_response({"data": [sub.helix() for sub in subs], **_totals(events, access),
                              "pagination": {}})


def _delete_subscription(
    state: MockTwitch, access: AccessToken, query: MultiMapping[str], body: bytes
) -> web.Response:
    """``DELETE /helix/eventsub/subscriptions?id=``: 204, or 404 when it is not the caller's."""
    events = state.eventsub
    sub_id = query.get("id")
    if not sub_id:
        return helix_error(400, 'Missing required parameter "id"')
    for session in events.sessions.values():
        sub = session.subscriptions.get(sub_id)
        if sub is not None and (sub.client_id, sub.user_id) == (access.client_id,
                                                                access.user_id):
            del session.subscriptions[sub_id]
            return web.Response(status=204)
    for sub in events.ended_subscriptions:
        if sub.id == sub_id and (sub.client_id, sub.user_id) == (access.client_id,
                                                                 access.user_id):
            events.ended_subscriptions.remove(sub)
            return web.Response(status=204)
    return helix_error(404, "subscription not found")


EVENTSUB_ROUTES: dict[tuple[str, str], HelixHandler] = {
    ("POST", "/eventsub/subscriptions"): _create_subscription,
    ("GET", "/eventsub/subscriptions"): _list_subscriptions,
    ("DELETE", "/eventsub/subscriptions"): _delete_subscription,
}
