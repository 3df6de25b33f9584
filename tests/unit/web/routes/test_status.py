"""proxy.web.routes.status: GET /status and POST /revoke, against the mock Twitch over real HTTP."""

from __future__ import annotations

import json

import pytest

from proxy.web.keys import grants_key
from tests.helpers import login

SCOPES = "user:read:email user:write:chat"


@pytest.fixture
def config_flags():
    return {"twitch.scopes": tuple(SCOPES.split())}


@pytest.fixture
async def key(proxy):
    """A proxy key from a real login."""
    return (await login(proxy))["proxy_key"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def get_grant(proxy, proxy_key):
    grants = proxy.app[grants_key]
    return await grants.get((await grants.key_record(proxy_key)).grant_id)


async def test_status_json(proxy, mock, key):
    response = await proxy.get("/status", headers=bearer(key))
    assert response.status == 200
    status = await response.json()
    assert status["login"] == "twitchdev" and status["state"] == "active"
    assert status["scopes"] == SCOPES.split()
    assert 14000 < status["expires_in"] <= 14124
    assert key not in json.dumps(status)
    grant = await get_grant(proxy, key)
    assert grant.access_token not in json.dumps(status)


async def test_revoke_with_twitch(proxy, mock, key):
    grant = await get_grant(proxy, key)
    response = await proxy.post("/revoke?twitch=true", headers=bearer(key))
    assert response.status == 200
    assert (await response.json())["twitch_revoked"] is True
    assert mock.live_access_token(grant.access_token) is None
    assert (await proxy.get("/status", headers=bearer(key))).status == 401
