"""The old tool's endpoints, done properly: ``/login``, ``/callback``, ``/refresh``.

``/login`` starts Twitch's authorization code flow with a single-use state
bound to the browser by a cookie; ``/callback`` checks that state before it
talks to Twitch, exchanges the code, learns who the user is, checks that
Twitch granted no scope beyond what the login asked for (and this proxy
offers), stores the grant through :meth:`proxy.core.refresh.Refresher.store_login`
(a new chain; never fewer scopes than the user's widgets already have) and
mints a proxy key; ``POST /refresh`` is the old widgets' refresh call,
backed by :mod:`proxy.core.refresh` so that concurrent and repeated calls with one
refresh token cost Twitch a single refresh.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from aiohttp import web
from multidict import MultiDictProxy
from yarl import URL

from ...core.sealed_index import token_hash
from ...errors import (
    AccessDenied,
    Forbidden,
    InvalidRequest,
    InvalidState,
    ProxyError,
    ScopesNotAllowed,
    UpstreamBadResponse,
)
from ...services import Services
from ...telemetry.context import note_grant
from ..forwarded import is_https, redirect_uri_for
from . import pages

__all__ = ["STATE_COOKIE", "OAuthRoutes", "read_form", "setup_oauth", "wants_json"]

STATE_COOKIE = "twitch_proxy_state"
#: Real refresh tokens are ~50 characters; anything this long is not one.
MAX_TOKEN_LENGTH = 2048


async def read_form(request: web.Request) -> MultiDictProxy[Any]:
    """The request's form body; 400 when it cannot be parsed (a broken multipart
    body, bytes that are not text) instead of aiohttp's bare ValueError."""
    try:
        return await request.post()
    except (ValueError, LookupError):  # UnicodeDecodeError; an unknown charset
        raise InvalidRequest("The form body cannot be read.") from None


def wants_json(request: web.Request) -> bool:
    """True when the caller prefers JSON to an HTML page."""
    accept = request.headers.get("Accept", "")
    return "application/json" in accept and "text/html" not in accept


async def _refresh_token_from_body(request: web.Request) -> str:
    """The refresh token of a JSON or form body; 400 for anything else."""
    if request.content_type == "application/json":
        try:
            body = json.loads(await request.read() or b"null")
        except ValueError:
            raise InvalidRequest("The body is not valid JSON.") from None
    elif request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        body = dict(await read_form(request))
    else:
        raise InvalidRequest(
            'Send JSON {"refresh_token": "..."} with Content-Type: application/json.'
        )
    token = body.get("refresh_token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token.strip():
        raise InvalidRequest('The body needs a "refresh_token" string.')
    if len(token) > MAX_TOKEN_LENGTH:
        raise InvalidRequest("The refresh_token is too long to be a Twitch token.")
    token = token.strip()
    if not (token.isascii() and token.isprintable()):
        raise InvalidRequest("The refresh_token is not a Twitch token.")
    return token


class OAuthRoutes:
    """The handlers of ``/login``, ``/callback`` and ``POST /refresh``, holding the services."""

    def __init__(self, services: Services) -> None:
        self._services = services
        self._config = services.config

    async def login(self, request: web.Request) -> web.Response:
        """Redirect to Twitch's consent page; a browser gets an error page if that fails."""
        try:
            return await self._redirect_to_twitch(request)
        except ProxyError as exc:
            # Only a browser's navigation asks for text/html; API clients keep JSON.
            if "text/html" not in request.headers.get("Accept", ""):
                raise
            return pages.error_page(request, exc)


    async def _redirect_to_twitch(self, request: web.Request) -> web.Response:
        """Redirect to Twitch's consent page with a fresh single-use state."""
        config = self._config
        requested = request.query.getall("scope", [])
        scopes = [s for item in requested for s in item.split()] or list(config.twitch.scopes)
        not_allowed = sorted(set(scopes) - set(config.twitch.allowed_scopes))
        if not_allowed:
            raise InvalidRequest(f"scopes not offered by this proxy: {' '.join(not_allowed)}")
        state = secrets.token_urlsafe(24)
        browser_nonce = secrets.token_urlsafe(24)
        await self._services.grants.put_state(
            state,
            {"nonce": token_hash(browser_nonce), "scopes": scopes, "created_at": time.time()},
            ttl=config.auth.state_ttl,
        )
        query = {
            "response_type": "code",
            "client_id": config.twitch.client_id,
            "redirect_uri": redirect_uri_for(request, self._config.server),
            "scope": " ".join(scopes),
            "state": state,
        }
        if request.query.get("force_verify", "").lower() == "true":
            query["force_verify"] = "true"
        target = URL(self._services.twitch.authorize_url).with_query(query)
        response = web.Response(status=302, headers={"Location": str(target)})
        response.set_cookie(
            STATE_COOKIE, browser_nonce, max_age=int(config.auth.state_ttl), path="/callback",
            httponly=True, samesite="Lax", secure=is_https(request, self._config.server),
        )
        response.headers["Cache-Control"] = "no-store"
        return response


    async def callback(self, request: web.Request) -> web.StreamResponse:
        """Finish the login: check state, exchange the code, store the grant, mint a key."""
        try:
            result = await self._finish_login(request)
        except ProxyError as exc:
            if wants_json(request):
                raise
            response = pages.error_page(request, exc)
        else:
            if wants_json(request):
                response = web.json_response(result, headers={"Cache-Control": "no-store"})
            else:
                response = pages.callback_page(request, result)
        response.del_cookie(STATE_COOKIE, path="/callback")
        return response


    async def _finish_login(self, request: web.Request) -> dict[str, Any]:
        config = self._config
        grants = self._services.grants
        twitch = self._services.twitch
        query = request.query
        state = query.get("state", "")

        if "error" in query:
            if state:
                await grants.consume_state(state)
            raise AccessDenied(
                "You declined the authorization on Twitch, so no token was created. "
                "Start again from the login page if that was a mistake.",
                twitch_error=query.get("error", "")[:100],
            )
        if not state:
            raise InvalidState("The login has no state. Start again from /login.")
        pending = await grants.peek_state(state)
        if pending is None:
            raise InvalidState(
                "This login is unknown, expired or already used. Start again from /login."
            )
        cookie = request.cookies.get(STATE_COOKIE, "")
        if not cookie or not secrets.compare_digest(token_hash(cookie), pending["nonce"]):
            raise InvalidState(
                "This login was started in another browser. Start again from /login.")
        if not await grants.consume_state(state):
            raise InvalidState("This login was already used. Start again from /login.")
        code = query.get("code", "")
        if not code or len(code) > MAX_TOKEN_LENGTH:
            raise InvalidRequest("Twitch's answer has no authorization code.")

        tokens = await twitch.exchange_code(code, redirect_uri_for(request, self._config.server))
        identity = await twitch.validate(tokens.access_token)
        if identity is None or identity.user_id is None:
            raise UpstreamBadResponse("Twitch did not confirm the new token.")
        # The user can edit Twitch's authorize URL: what Twitch granted must stay
        # within what this login asked for, which /login kept within what the
        # proxy offers (checked again: the configuration may have changed since).
        granted = set(tokens.scopes or identity.scopes)
        beyond = sorted(granted - (set(pending["scopes"]) & set(config.twitch.allowed_scopes)))
        if beyond:
            await twitch.revoke_quietly(tokens.refresh_token, tokens.access_token)
            raise ScopesNotAllowed(
                "Twitch granted permissions this login did not ask for "
                f"({' '.join(beyond)}), so its tokens were revoked and nothing was stored. "
                "Start again from this proxy's front page without changing Twitch's address.",
                scopes=beyond,
            )
        allowed = {login.lower() for login in config.auth.allowed_logins}
        if allowed and (identity.login or "").lower() not in allowed:
            await twitch.revoke_quietly(tokens.refresh_token, tokens.access_token)
            raise Forbidden("This Twitch account is not allowed to use this proxy.")

        now = time.time()
        grant = await self._services.refresher.store_login(identity, tokens)
        key, _ = await grants.create_key(grant.grant_id)
        note_grant(grant.grant_id)
        return {
            "proxy_key": key,
            "access_token": grant.access_token,
            "refresh_token": grant.refresh_token,
            "expires_in": grant.expires_in(now),
            "scope": list(grant.scopes),
            "user_id": grant.user_id,
            "login": grant.login,
        }

    async def refresh(self, request: web.Request) -> web.Response:
        """``POST /refresh``: the old tool's call, answered with Twitch's token JSON."""
        token = await _refresh_token_from_body(request)
        grant = await self._services.refresher.exchange(token)
        note_grant(grant.grant_id)
        return web.json_response(grant.token_response(), headers={"Cache-Control": "no-store"})


def setup_oauth(app: web.Application, services: Services) -> None:
    """Register /login, /callback and /refresh."""
    routes = OAuthRoutes(services)
    app.router.add_get("/login", routes.login, name="login")
    app.router.add_get("/callback", routes.callback, name="callback")
    app.router.add_post("/refresh", routes.refresh, name="refresh")
