"""The mock's Helix: a handful of endpoints, Twitch's errors and its rate limit.

``/helix/users``, ``/helix/streams``, ``/helix/subscriptions``,
``POST /helix/chat/messages``, ``PATCH /helix/channels`` and any ``DELETE``
answer like Twitch, plus the routes the app adds (``/helix/eventsub/subscriptions``
from :mod:`.eventsub_helix`); every other path is a 404. Every request is recorded in
:attr:`MockTwitch.helix_requests` before anything else looks at it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Callable, Mapping
from http import HTTPStatus

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy, MultiMapping

from .records import AccessToken, HelixRequest, User
from .state import MockTwitch

__all__ = ["HELIX_MAX_IDS", "HELIX_ROUTES", "HelixEndpoints", "HelixHandler", "helix_error"]

HELIX_MAX_IDS = 100


def helix_error(status: int, message: str) -> web.Response:
    """A Helix error: ``{"error": <reason>, "status": ..., "message": ...}``."""
    body = {"error": HTTPStatus(status).phrase, "status": status, "message": message}
    return web.json_response(body, status=status)

# An endpoint, called once the request is authenticated and within its rate limit.
HelixHandler = Callable[[MockTwitch, AccessToken, MultiMapping[str], bytes], web.Response]


def _missing_scope(access: AccessToken, scope: str) -> web.Response | None:
    if access.user_id is None or scope not in access.scopes:
        return helix_error(401, f"Missing scope: {scope}")
    return None


def _helix_users(
    state: MockTwitch, access: AccessToken, query: MultiMapping[str], body: bytes
) -> web.Response:
    wanted = [(name, value) for name, value in query.items() if name in ("id", "login")]
    if len(wanted) > HELIX_MAX_IDS:
        return helix_error(
            400, "The sum of the number of id and login parameters must not exceed 100"
        )
    if not wanted:
        if access.user_id is None:
            return helix_error(400, "Must provide an ID, Login or OAuth Token.")
        wanted = [("id", access.user_id)]
    found: list[User] = []
    for name, value in wanted:
        user = state.users.get(value) if name == "id" else state.user_by_login(value)
        if user is not None and user not in found:
            found.append(user)
    return web.json_response({"data": [user.helix() for user in found]})


def _encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    """Return the offset in a cursor made by :func:`_encode_cursor` (ValueError if not)."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        offset = json.loads(raw)["offset"]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(cursor) from error
    if not isinstance(offset, int) or offset < 0:
        raise ValueError(cursor)
    return offset


def _helix_streams(
    state: MockTwitch, access: AccessToken, query: MultiMapping[str], body: bytes
) -> web.Response:
    user_ids = set(query.getall("user_id", []))
    logins = {login.lower() for login in query.getall("user_login", [])}
    if len(user_ids) + len(logins) > HELIX_MAX_IDS:
        return helix_error(400, "too many user_id and user_login parameters")
    try:
        first = int(query.get("first", "20"))
        offset = _decode_cursor(query["after"]) if "after" in query else 0
    except ValueError:
        return helix_error(400, "Invalid first or after parameter")
    if not 1 <= first <= HELIX_MAX_IDS:
        return helix_error(400, "first must be between 1 and 100")
    streams = [
        stream
        for stream in state.streams.values()
        if not (user_ids or logins) or stream.user.id in user_ids or stream.user.login in logins
    ]
    streams.sort(key=lambda stream: stream.viewer_count, reverse=True)
    page = streams[offset : offset + first]
    pagination = {"cursor": _encode_cursor(offset + first)} if offset + first < len(streams) else {}
    return web.json_response(
        {"data": [stream.helix() for stream in page], "pagination": pagination}
    )


def _helix_subscriptions(
    state: MockTwitch, access: AccessToken, query: MultiMapping[str], body: bytes
) -> web.Response:
    if (refusal := _missing_scope(access, "channel:read:subscriptions")) is not None:
        return refusal
    broadcaster_id = query.get("broadcaster_id")
    if not broadcaster_id:
        return helix_error(400, 'Missing required parameter "broadcaster_id"')
    if broadcaster_id != access.user_id:
        return helix_error(403, "broadcaster_id must match the user in the OAuth token")
    return web.json_response({"data": [], "pagination": {}, "total": 0, "points": 0})


def _helix_chat_message(
    state: MockTwitch, access: AccessToken, query: MultiMapping[str], body: bytes
) -> web.Response:
    if (refusal := _missing_scope(access, "user:write:chat")) is not None:
        return refusal
    try:
        message = json.loads(body)
    except ValueError:
        return helix_error(400, "Invalid JSON body")
    if not isinstance(message, dict):
        return helix_error(400, "Invalid JSON body")
    for name in ("broadcaster_id", "sender_id", "message"):
        if not isinstance(message.get(name), str) or not message[name]:
            return helix_error(400, f'Missing required parameter "{name}"')
    if message["sender_id"] != access.user_id:
        return helix_error(403, "The sender must be the user in the OAuth token")
    state.sent_chat_messages.append(message)
    return web.json_response({"data": [{"message_id": str(uuid.uuid4()), "is_sent": True}]})


def _helix_no_content(
    state: MockTwitch, access: AccessToken, query: MultiMapping[str], body: bytes
) -> web.Response:
    if access.user_id is None:
        return helix_error(401, "Missing User OAUTH Token")
    return web.Response(status=204)


HELIX_ROUTES: dict[tuple[str, str], HelixHandler] = {
    ("GET", "/users"): _helix_users,
    ("GET", "/streams"): _helix_streams,
    ("GET", "/subscriptions"): _helix_subscriptions,
    ("POST", "/chat/messages"): _helix_chat_message,
    ("PATCH", "/channels"): _helix_no_content,
}


def _helix_authenticate(state: MockTwitch, request: web.Request) -> AccessToken | web.Response:
    """Return the request's live token, or the 401 Twitch would answer."""
    scheme, _, value = request.headers.get("Authorization", "").strip().partition(" ")
    value = value.strip()
    if not value:
        return helix_error(401, "OAuth token is missing")
    access = state.live_access_token(value) if scheme.lower() == "bearer" else None
    if access is None:
        return helix_error(401, "Invalid OAuth token")
    client_id = request.headers.get("Client-Id", "")
    if not client_id:
        return helix_error(401, "Client-Id header required")
    if client_id != access.client_id:
        return helix_error(401, "Client ID and OAuth token do not match")
    return access


def _helix_answer(
    state: MockTwitch,
    routes: Mapping[tuple[str, str], HelixHandler],
    request: web.Request,
    path: str,
    body: bytes,
) -> web.Response:
    """The answer once recorded and past any queued failure: auth, rate limit, route."""
    access = _helix_authenticate(state, request)
    if isinstance(access, web.Response):
        _, headers = state.ratelimit(f"app:{request.headers.get('Client-Id', '')}", consume=False)
        access.headers.update(headers)
        return access
    if access.user_id is None:
        bucket = f"app:{access.client_id}"
    else:
        bucket = f"user:{access.client_id}:{access.user_id}"
    allowed, headers = state.ratelimit(bucket, consume=True)
    if not allowed:
        response = helix_error(429, "Too Many Requests")
    elif (handler := routes.get((request.method, path))) is not None:
        response = handler(state, access, request.query, body)
    elif request.method == "DELETE":
        response = _helix_no_content(state, access, request.query, body)
    else:
        response = helix_error(404, "")
    response.headers.update(headers)
    return response


class HelixEndpoints:
    """The ``/helix/*`` handler, answering from one :class:`MockTwitch`.

    ``routes`` maps (method, path after ``/helix``) to handlers; by default
    :data:`HELIX_ROUTES`. Any other ``DELETE`` is a 204, any other path a 404.
    """

    def __init__(
        self, state: MockTwitch, routes: Mapping[tuple[str, str], HelixHandler] = HELIX_ROUTES
    ) -> None:
        self._state = state
        self._routes = routes

    def routes(self) -> list[web.RouteDef]:
        """The route to add to the mock's app: every method, every path under /helix."""
        return [web.route("*", "/helix/{path:.*}", self.helix)]

    async def helix(self, request: web.Request) -> web.Response:
        """Every ``/helix/...`` request: record, authenticate, rate-limit, dispatch."""
        state = self._state
        path = request.path[len("/helix") :] or "/"
        body = await request.read()
        state.calls[f"helix:{request.method} {path}"] += 1
        state.helix_requests.append(
            HelixRequest(
                method=request.method,
                path=path,
                query_string=request.rel_url.raw_query_string,
                headers=CIMultiDictProxy(CIMultiDict(request.headers)),
                body=body,
            )
        )
        failure = state.take_failure("helix")
        if state.helix_delay:
            await asyncio.sleep(state.helix_delay)
        if failure is not None:
            return failure  # stands for something in front of Helix: no Helix headers
        response = _helix_answer(state, self._routes, request, path, body)
        # Twitch sets cookies on API responses; a proxy must not pass them to widgets.
        response.headers.add("Set-Cookie", "twitch_mock=1; Path=/; Secure; HttpOnly")
        # Like Twitch, compress when the caller's Accept-Encoding allows (gzip or deflate).
        if response.body:
            response.enable_compression()
        return response
