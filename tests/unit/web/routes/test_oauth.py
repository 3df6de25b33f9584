"""proxy.web.routes.oauth: /login and /callback against the mock Twitch over real HTTP."""

from __future__ import annotations

import pytest
from yarl import URL

from proxy.web.keys import grants_key
from proxy.web.routes.oauth import STATE_COOKIE
from tests.helpers import authorize, login


async def test_login_redirects_to_twitch_with_state_and_cookie(proxy, proxy_config, twitch_server):
    response = await proxy.get("/login", allow_redirects=False)
    assert response.status == 302
    target = URL(response.headers["Location"])
    assert str(target.with_query(None)) == f"{proxy_config.twitch.id_url}/oauth2/authorize"
    assert target.query["response_type"] == "code"
    assert target.query["client_id"] == "mock-client-id"
    assert target.query["redirect_uri"] == "http://localhost:3000/callback"
    assert target.query["scope"] == "user:read:email"
    assert len(target.query["state"]) >= 32
    assert "force_verify" not in target.query
    cookie = response.cookies[STATE_COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Lax" and not cookie["secure"]
    assert cookie["path"] == "/callback"
    assert cookie.value != target.query["state"]  # the cookie is a separate browser nonce


async def test_login_force_verify_and_scope_choice(proxy, mock):
    response = await proxy.get("/login", params={"force_verify": "true"}, allow_redirects=False)
    assert URL(response.headers["Location"]).query["force_verify"] == "true"
    refused = await proxy.get("/login", params={"scope": "channel:manage:broadcast"},
                              allow_redirects=False)
    assert refused.status == 400
    assert (await refused.json())["error"] == "invalid_request"


@pytest.mark.parametrize("config_flags", [{"server.public_url": "https://proxy.example"}])
async def test_state_cookie_is_secure_on_https(proxy):
    response = await proxy.get("/login", allow_redirects=False)
    assert response.cookies[STATE_COOKIE]["secure"]
    assert URL(response.headers["Location"]).query["redirect_uri"] == \
        "https://proxy.example/callback"


async def test_full_login_json(proxy, mock, proxy_config):
    result = await login(proxy)
    assert set(result) == {"proxy_key", "access_token", "refresh_token", "expires_in", "scope",
                           "user_id", "login"}
    assert result["proxy_key"].startswith("tpk_") and len(result["proxy_key"]) >= 4 + 43
    assert result["login"] == "twitchdev" and result["user_id"] == "141981764"
    assert result["scope"] == ["user:read:email"]
    assert 14000 <= result["expires_in"] <= 14124
    assert mock.calls["token:authorization_code"] == 1
    assert mock.calls["validate"] == 1
    # The tokens work at Twitch, and the grant is stored with hashes only for the key.
    assert mock.live_access_token(result["access_token"]) is not None
    grants = proxy.app[grants_key]
    record = await grants.key_record(result["proxy_key"])
    grant = await grants.get(record.grant_id)
    assert grant.refresh_token == result["refresh_token"]
    stored_keys = await grants.store.keys("")
    assert not any(result["proxy_key"] in k for k in stored_keys)


async def test_callback_html_page(proxy):
    back = await authorize(proxy)
    response = await proxy.get("/callback", params=back.query)
    assert response.status == 200
    assert response.content_type == "text/html"
    assert response.headers["Cache-Control"] == "no-store"
    text = await response.text()
    assert "tpk_" in text and "twitchdev" in text


async def test_login_again_keeps_one_grant_per_user(proxy):
    first = await login(proxy)
    second = await login(proxy)
    grants = proxy.app[grants_key]
    one = await grants.key_record(first["proxy_key"])
    two = await grants.key_record(second["proxy_key"])
    assert one.grant_id == two.grant_id
    grant = await grants.get(one.grant_id)
    assert grant.access_token == second["access_token"]


async def test_state_missing_unknown_reused_and_foreign(proxy, mock):
    json_accept = {"Accept": "application/json"}
    missing = await proxy.get("/callback", params={"code": "x"}, headers=json_accept)
    assert missing.status == 400 and (await missing.json())["error"] == "invalid_state"
    unknown = await proxy.get("/callback", params={"code": "x", "state": "nope"},
                              headers=json_accept)
    assert unknown.status == 400 and (await unknown.json())["error"] == "invalid_state"

    back = await authorize(proxy)
    # Another browser (no cookie) cannot use the state.
    proxy.session.cookie_jar.clear()
    foreign = await proxy.get("/callback", params=back.query, headers=json_accept)
    assert foreign.status == 400 and (await foreign.json())["error"] == "invalid_state"

    back = await authorize(proxy)
    ok = await proxy.get("/callback", params=back.query, headers=json_accept)
    assert ok.status == 200
    reused = await proxy.get("/callback", params=back.query, headers=json_accept)
    assert reused.status == 400 and (await reused.json())["error"] == "invalid_state"
    # Only the one good callback reached Twitch's token endpoint.
    assert mock.calls["token:authorization_code"] == 1


async def test_state_expires(proxy, mock, proxy_config, monkeypatch):
    back = await authorize(proxy)
    store = proxy.app[grants_key].store
    # Expire it the way time would: drop the state record's TTL to zero.
    await store.put(f"state:{back.query['state']}", b"{}", ttl=0.001)
    import asyncio
    await asyncio.sleep(0.01)
    expired = await proxy.get("/callback", params=back.query,
                              headers={"Accept": "application/json"})
    assert expired.status == 400
    assert mock.calls["token:authorization_code"] == 0


async def test_state_html_error_page(proxy):
    response = await proxy.get("/callback", params={"code": "x", "state": "bad"})
    assert response.status == 400
    assert response.content_type == "text/html"
    assert "Start again" in await response.text()


async def test_access_denied(proxy, mock):
    login_response = await proxy.get("/login", allow_redirects=False)
    denied_url = URL(login_response.headers["Location"]).update_query({"deny": "1"})
    async with proxy.session.get(denied_url, allow_redirects=False) as consent:
        back = URL(consent.headers["Location"])
    assert back.query["error"] == "access_denied"
    as_json = await proxy.get("/callback", params=back.query,
                              headers={"Accept": "application/json"})
    assert as_json.status == 400
    assert (await as_json.json())["error"] == "access_denied"
    as_page = await proxy.get("/callback", params=back.query)
    assert as_page.status == 400 and as_page.content_type == "text/html"
    assert "declined" in await as_page.text()
    assert mock.calls["token:authorization_code"] == 0


async def test_twitch_refuses_code(proxy, mock):
    back = await authorize(proxy)
    query = dict(back.query)
    query["code"] = "forged-code"
    response = await proxy.get("/callback", params=query, headers={"Accept": "application/json"})
    assert response.status == 400
    assert (await response.json())["message"] == "Invalid authorization code"


@pytest.mark.parametrize("config_flags", [{"auth.allowed_logins": ("someoneelse",)}])
async def test_allowed_logins(proxy, mock):
    back = await authorize(proxy)
    response = await proxy.get("/callback", params=back.query,
                               headers={"Accept": "application/json"})
    assert response.status == 403
    assert (await response.json())["error"] == "forbidden"
    assert mock.calls["revoke"] == 2  # the refresh token and the access token
