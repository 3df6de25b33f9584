"""Endpoints for whoever holds a proxy key: ``/status`` and ``POST /revoke``.

``GET /status`` with ``Authorization: Bearer tpk_...`` answers the grant's
state as JSON, so a widget can show "please log in again". In a browser,
``GET /status`` shows a form and the key is POSTed, never put in a URL.
``POST /revoke`` revokes the key (and with ``?twitch=true`` the Twitch token).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ...core.credential import proxy_key_in
from ...core.grant_records import NEEDS_REAUTH, Grant, KeyRecord
from ...core.grants import GrantStore
from ...core.sealed_index import PROXY_KEY_PREFIX
from ...errors import InvalidProxyKey, InvalidRequest, ProxyError
from ...services import Services
from . import pages
from .oauth import read_form, wants_json

__all__ = ["grant_status", "setup_status"]


def grant_status(grant: Grant, login_url: str) -> dict[str, Any]:
    """The public facts about a grant: no token, no key."""
    status: dict[str, Any] = {
        "login": grant.login,
        "user_id": grant.user_id,
        "scopes": list(grant.scopes),
        "expires_in": grant.expires_in(),
        "state": grant.state,
        "last_refresh_at": grant.last_refresh_at,
        "last_validated_at": grant.last_validated_at,
    }
    if grant.state == NEEDS_REAUTH:
        status["login_url"] = login_url
    return status


def _bearer_key(request: web.Request) -> str:
    key = proxy_key_in(request.headers.get("Authorization", ""))
    if key is None:
        raise InvalidRequest("Send Authorization: Bearer <proxy key>.")
    return key


async def _grant_for_key(grants: GrantStore, key: str) -> tuple[KeyRecord, Grant]:
    record = await grants.key_record(key)
    grant = await grants.get(record.grant_id) if record else None
    if record is None or grant is None:
        raise InvalidProxyKey("This proxy key is unknown or was revoked.")
    return record, grant


def setup_status(app: web.Application, services: Services) -> None:
    """Register /status and /revoke."""
    login_url = services.config.server.login_url

    async def status_get(request: web.Request) -> web.Response:
        """JSON for a key in the Authorization header; otherwise the form page."""
        if "Authorization" not in request.headers and not wants_json(request):
            return pages.status_page(request, None)
        _, grant = await _grant_for_key(services.grants, _bearer_key(request))
        return web.json_response(grant_status(grant, login_url),
                                 headers={"Cache-Control": "no-store"})

    async def status_post(request: web.Request) -> web.Response:
        """The status page for a key pasted into the form."""
        form = await read_form(request)
        key = str(form.get("key", "")).strip()
        try:
            if not key.startswith(PROXY_KEY_PREFIX):
                raise InvalidProxyKey("That is not a proxy key: it starts with tpk_.")
            _, grant = await _grant_for_key(services.grants, key)
        except ProxyError as exc:
            return pages.status_page(request, None, error=exc)
        return pages.status_page(request, grant_status(grant, login_url))

    async def revoke(request: web.Request) -> web.Response:
        """Revoke the presented key; with ``?twitch=true`` everything the grant gave out.

        ``?twitch=true`` revokes the grant's tokens at Twitch, ends its chain here
        (no refresh token of it opens anything again) and revokes every proxy key
        of the grant, so a user can cut off a key they no longer hold. Without it,
        only the presented key is revoked; the grant's other keys go on working,
        also across later logins (SECURITY.md).
        """
        key = _bearer_key(request)
        grants = services.grants
        _, grant = await _grant_for_key(grants, key)
        answer: dict[str, Any] = {"revoked": True, "twitch_revoked": False}
        if request.query.get("twitch", "").lower() == "true":
            answer["twitch_revoked"] = await services.refresher.end_chain(
                grant.grant_id, revoke_at_twitch=True)
            answer["keys_revoked"] = await grants.revoke_keys_of(grant.grant_id)
        else:
            await grants.revoke_key(key)
        # Live-event streams opened with what was revoked end now, not at the next check.
        await services.stream_access.check()
        return web.json_response(answer)

    app.router.add_get("/status", status_get, name="status")
    app.router.add_post("/status", status_post)
    app.router.add_post("/revoke", revoke, name="revoke")
