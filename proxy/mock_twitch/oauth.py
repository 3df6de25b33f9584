"""The mock's id.twitch.tv: ``/oauth2/authorize``, ``token``, ``validate`` and ``revoke``.

Errors have id.twitch.tv's shape, ``{"status": ..., "message": ...}``; every
request is counted in :attr:`MockTwitch.calls` and may be answered by a queued
failure instead.
"""

from __future__ import annotations

import asyncio
import math
import secrets
from typing import Any

from aiohttp import web
from yarl import URL

from .consent import consent_page
from .records import AuthorizationCode, random_token
from .state import MockTwitch

__all__ = ["CODE_TTL", "COUNTED_GRANTS", "OAuthEndpoints"]

CODE_TTL = 600  # authorization codes live ten minutes
# Grants counted on their own, as "token:<grant_type>" in MockTwitch.calls.
COUNTED_GRANTS = frozenset({"authorization_code", "refresh_token", "client_credentials"})


def _id_error(status: int, message: str) -> web.Response:
    """An id.twitch.tv error: ``{"status": ..., "message": ...}``."""
    return web.json_response({"status": status, "message": message}, status=status)


async def _form(request: web.Request) -> dict[str, str]:
    """The form-encoded body as a dict (first value wins); empty for any other body."""
    if request.content_type != "application/x-www-form-urlencoded":
        return {}
    fields: dict[str, str] = {}
    for name, value in (await request.post()).items():
        if isinstance(value, str):
            fields.setdefault(name, value)
    return fields


# -- /oauth2/authorize -------------------------------------------------------


def _check_authorize(state: MockTwitch, params: dict[str, str]) -> web.Response | None:
    """Refuse an authorize request that no browser should be redirected from."""
    if params.get("client_id") != state.client_id:
        return _id_error(400, "invalid client")
    if params.get("response_type") != "code":
        return _id_error(400, "unsupported response_type")
    redirect_uri = params.get("redirect_uri", "")
    if not redirect_uri or not URL(redirect_uri).absolute:
        return _id_error(400, "missing or invalid redirect_uri")
    if (
        state.registered_redirect_uris is not None
        and redirect_uri not in state.registered_redirect_uris
    ):
        return _id_error(400, "Parameter redirect_uri does not match registered URI")
    return None


def _redirect(params: dict[str, str], answer: dict[str, str]) -> web.HTTPFound:
    if "state" in params:
        answer["state"] = params["state"]
    return web.HTTPFound(str(URL(params["redirect_uri"]).update_query(answer)))


def _approve(state: MockTwitch, params: dict[str, str]) -> web.HTTPFound:
    scopes = params.get("scope", "").split()
    code = AuthorizationCode(
        value=random_token(),
        client_id=state.client_id,
        redirect_uri=params["redirect_uri"],
        scopes=scopes,
        user_id=state.signed_in_user_id,
        expires_at=state.now() + CODE_TTL,
    )
    state.codes[code.value] = code
    return _redirect(params, {"code": code.value, "scope": " ".join(scopes)})


def _deny(params: dict[str, str]) -> web.HTTPFound:
    return _redirect(
        params,
        {"error": "access_denied", "error_description": "The user denied you access"},
    )


# -- /oauth2/token -----------------------------------------------------------


def _check_client(state: MockTwitch, form: dict[str, str]) -> web.Response | None:
    client_id = form.get("client_id")
    if not client_id:
        return _id_error(400, "missing client id")
    if client_id != state.client_id:
        return _id_error(400, "invalid client")
    secret = form.get("client_secret")
    if not secret:
        return _id_error(400, "missing client secret")
    if not secrets.compare_digest(secret, state.client_secret):
        return _id_error(403, "invalid client secret")
    return None


def _authorization_code_grant(state: MockTwitch, form: dict[str, str]) -> web.Response:
    code = state.codes.get(form.get("code", ""))
    if code is None or code.expires_at <= state.now() or code.client_id != form["client_id"]:
        return _id_error(400, "Invalid authorization code")
    if form.get("redirect_uri") != code.redirect_uri:
        return _id_error(400, "Parameter redirect_uri does not match registered URI")
    del state.codes[code.value]  # single use
    return web.json_response(state.mint_user_tokens(code.client_id, code.user_id, code.scopes))


async def _refresh_token_grant(
    state: MockTwitch, form: dict[str, str], request: web.Request
) -> web.Response:
    if state.hold_refresh is not None:
        await state.hold_refresh.wait()
        # The proxy may have been killed while we held it. Twitch would not have
        # processed a request whose sender vanished, so leave the token unspent.
        if request.transport is None or request.transport.is_closing():
            return web.Response(status=503)
    value = form.get("refresh_token", "")
    refresh = state.refresh_tokens.get(value)
    if refresh is None or refresh.client_id != form["client_id"]:
        if value in state.spent_refresh_tokens:
            state.refresh_reuses += 1
        return _id_error(400, "Invalid refresh token")
    # Rotation: the old refresh token dies now; its access token lives on to expiry.
    del state.refresh_tokens[value]
    state.spent_refresh_tokens.add(value)
    return web.json_response(
        state.mint_user_tokens(refresh.client_id, refresh.user_id, refresh.scopes)
    )


class OAuthEndpoints:
    """The ``/oauth2/*`` handlers, all answering from one :class:`MockTwitch`."""

    def __init__(self, state: MockTwitch) -> None:
        self._state = state

    def routes(self) -> list[web.RouteDef]:
        """The routes to add to the mock's app."""
        return [
            web.get("/oauth2/authorize", self.authorize),
            web.post("/oauth2/authorize", self.authorize_decision),
            web.post("/oauth2/token", self.token),
            web.get("/oauth2/validate", self.validate),
            web.post("/oauth2/revoke", self.revoke),
        ]

    async def authorize(self, request: web.Request) -> web.Response:
        """``GET /oauth2/authorize``: approve, deny, or show the consent page."""
        state = self._state
        state.calls["authorize"] += 1
        if (failure := state.take_failure("authorize")) is not None:
            return failure
        params = dict(request.query)
        if (refusal := _check_authorize(state, params)) is not None:
            return refusal
        if "deny" in params:
            raise _deny(params)
        if state.auto_approve:
            raise _approve(state, params)
        return consent_page(state, params)

    async def authorize_decision(self, request: web.Request) -> web.Response:
        """``POST /oauth2/authorize``: the consent page's Authorize or Cancel button."""
        params = await _form(request)
        decision = params.pop("decision", "")
        if (refusal := _check_authorize(self._state, params)) is not None:
            return refusal
        if decision == "authorize":
            raise _approve(self._state, params)
        raise _deny(params)

    async def token(self, request: web.Request) -> web.Response:
        """``POST /oauth2/token``: every grant, from a form-encoded body only."""
        state = self._state
        form = await _form(request)
        grant_type = form.get("grant_type", "")
        state.calls["token"] += 1
        if grant_type in COUNTED_GRANTS:
            state.calls[f"token:{grant_type}"] += 1
        failure = state.take_failure("token")
        if state.token_delay:
            await asyncio.sleep(state.token_delay)
        if failure is not None:
            return failure
        if (refusal := _check_client(state, form)) is not None:
            return refusal
        if grant_type == "authorization_code":
            return _authorization_code_grant(state, form)
        if grant_type == "refresh_token":
            return await _refresh_token_grant(state, form, request)
        if grant_type == "client_credentials":
            return web.json_response(state.mint_app_token(form["client_id"]))
        return _id_error(400, "invalid grant type")

    async def validate(self, request: web.Request) -> web.Response:
        """``GET /oauth2/validate`` with ``Authorization: OAuth <token>`` (or Bearer)."""
        state = self._state
        state.calls["validate"] += 1
        if (failure := state.take_failure("validate")) is not None:
            return failure
        scheme, _, value = request.headers.get("Authorization", "").strip().partition(" ")
        value = value.strip()
        if not value:
            return _id_error(401, "missing authorization token")
        access = state.live_access_token(value) if scheme.lower() in ("oauth", "bearer") else None
        if access is None:
            return _id_error(401, "invalid access token")
        answer: dict[str, Any] = {
            "client_id": access.client_id,
            # Twitch sends null rather than [] when a token has no scopes.
            "scopes": access.scopes or None,
            # Rounded up: a token that is still valid never reports 0.
            "expires_in": math.ceil(access.expires_at - state.now()),
        }
        if access.user_id is not None:
            answer["login"] = state.users[access.user_id].login
            answer["user_id"] = access.user_id
        return web.json_response(answer)

    async def revoke(self, request: web.Request) -> web.Response:
        """``POST /oauth2/revoke``: form client_id and token; 200 with no body."""
        state = self._state
        state.calls["revoke"] += 1
        if (failure := state.take_failure("revoke")) is not None:
            return failure
        form = await _form(request)
        client_id = form.get("client_id")
        if not client_id:
            return _id_error(400, "missing client id")
        if client_id != state.client_id:
            return _id_error(404, "client does not exist")
        if not state.revoke(form.get("token", "")):
            return _id_error(400, "Invalid token")
        return web.Response(status=200)
