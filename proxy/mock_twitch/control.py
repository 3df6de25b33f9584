"""The mock's ``/_mock/*`` control endpoints: :class:`MockTwitch`'s knobs over HTTP.

For a proxy (and its tests) running in another process, which cannot reach the
state object. All JSON: ``GET /_mock/calls``, ``GET /_mock/state``,
``GET /_mock/helix_requests`` and ``POST /_mock/`` + ``reset_calls``,
``expire``, ``expire_app``, ``revoke_refresh``, ``issue``, ``hold_refresh``,
``fail``, ``delay``, ``ratelimit``, ``add_user``, ``set_live``, ``advance``.
A malformed body is a 400 ``{"error": ...}``. EventSub's are under
``/_mock/eventsub/`` (:mod:`.eventsub_control`).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from .state import FAILABLE_ENDPOINTS, MockTwitch

__all__ = ["ControlEndpoints", "bad_control", "json_body"]


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object, ``{}`` when there is no body."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(
            text='{"error": "body must be a JSON object"}', content_type="application/json"
        )
    return body


def bad_control(message: str) -> web.HTTPBadRequest:
    """The 400 a control endpoint answers to a body it cannot use."""
    return web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")


class ControlEndpoints:
    """The ``/_mock/*`` handlers, all turning the knobs of one :class:`MockTwitch`."""

    def __init__(self, state: MockTwitch) -> None:
        self._state = state

    def routes(self) -> list[web.RouteDef]:
        """The routes to add to the mock's app."""
        return [
            web.get("/_mock/calls", self.calls),
            web.get("/_mock/state", self.snapshot),
            web.get("/_mock/helix_requests", self.helix_requests),
            web.post("/_mock/reset_calls", self.reset_calls),
            web.post("/_mock/expire", self.expire),
            web.post("/_mock/expire_app", self.expire_app),
            web.post("/_mock/revoke_refresh", self.revoke_refresh),
            web.post("/_mock/issue", self.issue),
            web.post("/_mock/hold_refresh", self.hold_refresh),
            web.post("/_mock/fail", self.fail),
            web.post("/_mock/delay", self.delay),
            web.post("/_mock/ratelimit", self.ratelimit),
            web.post("/_mock/add_user", self.add_user),
            web.post("/_mock/set_live", self.set_live),
            web.post("/_mock/advance", self.advance),
        ]

    async def calls(self, request: web.Request) -> web.Response:
        """``GET /_mock/calls``: the calls counter."""
        return web.json_response(dict(self._state.calls))

    async def snapshot(self, request: web.Request) -> web.Response:
        """``GET /_mock/state``: calls plus counts a cross-process test may assert on."""
        state = self._state
        now = state.now()
        return web.json_response(
            {
                "calls": dict(state.calls),
                "refresh_reuses": state.refresh_reuses,
                "live_access_tokens": sum(
                    token.expires_at > now for token in state.access_tokens.values()
                ),
                "refresh_tokens": len(state.refresh_tokens),
                "sent_chat_messages": state.sent_chat_messages,
            }
        )

    async def helix_requests(self, request: web.Request) -> web.Response:
        """``GET /_mock/helix_requests``: every recorded Helix request (body as text)."""
        return web.json_response(
            [
                {
                    "method": recorded.method,
                    "path": recorded.path,
                    "query_string": recorded.query_string,
                    "headers": dict(recorded.headers),
                    "body": recorded.body.decode("utf-8", "replace"),
                }
                for recorded in self._state.helix_requests
            ]
        )

    async def reset_calls(self, request: web.Request) -> web.Response:
        """``POST /_mock/reset_calls``."""
        self._state.reset_calls()
        return web.json_response({"calls": {}})

    async def expire(self, request: web.Request) -> web.Response:
        """``POST /_mock/expire`` with optional ``{"user_id"}``."""
        body = await json_body(request)
        return web.json_response(
            {"expired": self._state.expire_access_tokens(body.get("user_id"))}
        )

    async def expire_app(self, request: web.Request) -> web.Response:
        """``POST /_mock/expire_app``."""
        return web.json_response({"expired": self._state.expire_app_tokens()})

    async def revoke_refresh(self, request: web.Request) -> web.Response:
        """``POST /_mock/revoke_refresh`` with optional ``{"user_id"}``."""
        body = await json_body(request)
        return web.json_response(
            {"revoked": self._state.revoke_refresh_tokens(body.get("user_id"))}
        )

    async def issue(self, request: web.Request) -> web.Response:
        """``POST /_mock/issue`` ``{"user_id", "scopes", "client_id", "refresh_token"}``.

        Twitch's token JSON for a user, as if they had consented: by default to
        this mock's own client, with a refresh token. ``client_id`` mints it for
        another application; ``"refresh_token": false`` mints a bare access token.
        """
        state = self._state
        body = await json_body(request)
        scopes = body.get("scopes", [])
        if not isinstance(scopes, list) or not all(isinstance(scope, str) for scope in scopes):
            raise bad_control("scopes must be a list of strings")
        user_id = str(body.get("user_id", state.signed_in_user_id))
        if user_id not in state.users:
            raise bad_control("unknown user_id")
        return web.json_response(state.mint_user_tokens(
            str(body.get("client_id", state.client_id)), user_id, scopes,
            with_refresh_token=bool(body.get("refresh_token", True))))

    async def hold_refresh(self, request: web.Request) -> web.Response:
        """``POST /_mock/hold_refresh`` ``{"hold": bool}``: park refresh grants or let them go."""
        state = self._state
        hold = bool((await json_body(request)).get("hold", True))
        if hold and state.hold_refresh is None:
            state.hold_refresh = asyncio.Event()
        elif not hold and state.hold_refresh is not None:
            state.hold_refresh.set()  # whatever was parked goes on now
            state.hold_refresh = None
        return web.json_response({"hold": hold})

    async def fail(self, request: web.Request) -> web.Response:
        """``POST /_mock/fail`` ``{"endpoint", "status", "body", "times"?}``."""
        state = self._state
        body = await json_body(request)
        endpoint, status, times = body.get("endpoint"), body.get("status"), body.get("times", 1)
        if not isinstance(status, int) or not isinstance(times, int) or not 100 <= status <= 599:
            raise bad_control("status and times must be integers")
        try:
            state.queue_failure(str(endpoint), status, body.get("body"), times=times)
        except ValueError:
            problem = f"endpoint must be one of {sorted(FAILABLE_ENDPOINTS)}"
            raise bad_control(problem) from None
        return web.json_response({"queued": len(state.fail_next[str(endpoint)])})

    async def delay(self, request: web.Request) -> web.Response:
        """``POST /_mock/delay`` ``{"token": s, "helix": s}`` (either may be left out)."""
        state = self._state
        body = await json_body(request)
        try:
            state.token_delay = float(body.get("token", state.token_delay))
            state.helix_delay = float(body.get("helix", state.helix_delay))
        except (TypeError, ValueError):
            raise bad_control("delays must be numbers") from None
        return web.json_response({"token": state.token_delay, "helix": state.helix_delay})

    async def ratelimit(self, request: web.Request) -> web.Response:
        """``POST /_mock/ratelimit`` ``{"limit": n}``: new bucket size; buckets start afresh."""
        state = self._state
        limit = (await json_body(request)).get("limit")
        if not isinstance(limit, int) or limit < 0:
            raise bad_control("limit must be a non-negative integer")
        state.ratelimit_limit = limit
        state.reset_ratelimits()
        return web.json_response({"limit": limit})

    async def add_user(self, request: web.Request) -> web.Response:
        """``POST /_mock/add_user`` ``{"user_id", "login", "display_name"?}``."""
        body = await json_body(request)
        if not isinstance(body.get("user_id"), str) or not isinstance(body.get("login"), str):
            raise bad_control("user_id and login are required strings")
        self._state.add_user(body["user_id"], body["login"], body.get("display_name"))
        return web.json_response({"user_id": body["user_id"]})

    async def set_live(self, request: web.Request) -> web.Response:
        """``POST /_mock/set_live`` ``{"user_id", "live"?: bool, "title"?, "game_name"?}``."""
        state = self._state
        body = await json_body(request)
        user_id = body.get("user_id")
        if user_id not in state.users:
            raise bad_control("unknown user_id")
        if body.get("live", True):
            state.set_live(
                user_id, body.get("title", "Mock stream"), body.get("game_name", "Just Chatting")
            )
        else:
            state.set_offline(user_id)
        return web.json_response({"live": user_id in state.streams})

    async def advance(self, request: web.Request) -> web.Response:
        """``POST /_mock/advance`` ``{"seconds": s}``: move the mock's clock forward."""
        state = self._state
        seconds = (await json_body(request)).get("seconds")
        if not isinstance(seconds, (int, float)):
            raise bad_control("seconds must be a number")
        state.advance(seconds)
        return web.json_response({"clock_offset": state.clock_offset})
