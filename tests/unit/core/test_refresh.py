"""POST /refresh and proxy.core.refresh: the old widgets' call, single flight and replay."""

from __future__ import annotations

import asyncio
import json

import pytest

from proxy.core.grant_records import NEEDS_REAUTH
from proxy.web.app import create_app
from proxy.web.keys import grants_key
from tests.helpers import login

# The old tool's widgets call it exactly like this, from a sandboxed iframe.
OLD_WIDGET_HEADERS = {"content-type": "application/json", "Origin": "null"}


def old_widget_body(refresh_token: str) -> str:
    return json.dumps({"refresh_token": refresh_token})  # JSON.stringify({refresh_token})


async def grant_of(proxy, proxy_key):
    grants = proxy.app[grants_key]
    return await grants.get((await grants.key_record(proxy_key)).grant_id)


async def test_old_widget_preflight_from_null_origin(proxy):
    response = await proxy.options("/refresh", headers={
        "Origin": "null",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    })
    assert response.status == 200
    assert response.headers["Access-Control-Allow-Origin"] in ("*", "null")
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    assert "CONTENT-TYPE" in response.headers["Access-Control-Allow-Headers"].upper()
    assert "Access-Control-Allow-Credentials" not in response.headers


@pytest.mark.parametrize("path", ["/refresh", "/helix/users", "/status"])
async def test_private_network_preflight(proxy, path):
    response = await proxy.options(path, headers={
        "Origin": "https://streamelements.com",
        "Access-Control-Request-Method": "POST" if path == "/refresh" else "GET",
        "Access-Control-Request-Private-Network": "true",
    })
    assert response.status == 200
    assert response.headers["Access-Control-Allow-Private-Network"] == "true"
    plain = await proxy.options(path, headers={
        "Origin": "https://streamelements.com", "Access-Control-Request-Method": "GET"})
    assert "Access-Control-Allow-Private-Network" not in plain.headers


async def test_old_widget_refresh_rotates_and_updates_grant(proxy, mock):
    tokens = await login(proxy)
    response = await proxy.post("/refresh", data=old_widget_body(tokens["refresh_token"]),
                                headers=OLD_WIDGET_HEADERS)
    assert response.status == 200
    assert response.headers["Access-Control-Allow-Origin"] in ("*", "null")
    body = await response.json()
    assert set(body) == {"access_token", "refresh_token", "expires_in", "scope", "token_type"}
    assert body["access_token"] != tokens["access_token"]
    assert body["refresh_token"] != tokens["refresh_token"]
    assert body["token_type"] == "bearer" and body["scope"] == ["user:read:email"]
    assert mock.calls["token:refresh_token"] == 1
    # The new pair is real at Twitch, and the proxy's grant follows it.
    assert mock.live_access_token(body["access_token"]) is not None
    grant = await grant_of(proxy, tokens["proxy_key"])
    assert grant.refresh_token == body["refresh_token"]
    assert grant.last_refresh_at is not None


async def test_form_body_accepted(proxy, mock):
    tokens = mock.issue_tokens("141981764", ["user:read:email"])
    response = await proxy.post("/refresh", data={"refresh_token": tokens["refresh_token"]})
    assert response.status == 200
    assert mock.calls["token:refresh_token"] == 1


@pytest.mark.parametrize("body, content_type", [
    ("", "application/json"),
    ("{not json", "application/json"),
    ("[]", "application/json"),
    ('{"refresh_token": 5}', "application/json"),
    ('{"refresh_token": ""}', "application/json"),
    ('{"other": "x"}', "application/json"),
    ("refresh_token=x", "text/plain"),
    ('{"refresh_token": "' + "a" * 5000 + '"}', "application/json"),
])
async def test_malformed_bodies(proxy, mock, body, content_type):
    response = await proxy.post("/refresh", data=body, headers={"content-type": content_type})
    assert response.status == 400
    payload = await response.json()
    assert payload["error"] == "invalid_request" and payload["message"]
    assert mock.calls["token"] == 0


async def test_twenty_concurrent_refreshes_one_twitch_call(proxy, mock):
    tokens = await login(proxy)
    mock.token_delay = 0.2  # keep the first refresh in flight while the others arrive
    responses = await asyncio.gather(*(
        proxy.post("/refresh", data=old_widget_body(tokens["refresh_token"]),
                   headers=OLD_WIDGET_HEADERS)
        for _ in range(20)
    ))
    bodies = [await r.json() for r in responses]
    assert [r.status for r in responses] == [200] * 20
    assert mock.calls["token:refresh_token"] == 1
    assert len({(b["access_token"], b["refresh_token"]) for b in bodies}) == 1


async def test_twenty_concurrent_with_unknown_token(proxy, mock):
    tokens = mock.issue_tokens("141981764", ["user:read:email"])
    mock.token_delay = 0.2
    responses = await asyncio.gather(*(
        proxy.post("/refresh", json={"refresh_token": tokens["refresh_token"]})
        for _ in range(20)
    ))
    bodies = [await r.json() for r in responses]
    assert [r.status for r in responses] == [200] * 20
    assert mock.calls["token:refresh_token"] == 1
    assert len({b["refresh_token"] for b in bodies}) == 1


async def test_reuse_of_rotated_token_gets_current_pair(proxy, mock):
    tokens = await login(proxy)
    response = await proxy.post("/refresh", json={"refresh_token": tokens["refresh_token"]})
    first = await response.json()
    # Another copy of the widget still holds the old token.
    again = await proxy.post("/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert again.status == 200
    body = await again.json()
    assert (body["access_token"], body["refresh_token"]) == \
        (first["access_token"], first["refresh_token"])
    assert mock.calls["token:refresh_token"] == 1
    # The new token, used by the first copy, rotates normally.
    newer = await proxy.post("/refresh", json={"refresh_token": first["refresh_token"]})
    assert (await newer.json())["refresh_token"] != first["refresh_token"]
    assert mock.calls["token:refresh_token"] == 2


@pytest.mark.parametrize("config_flags", [{"auth.replay_window": 0.3}])
async def test_replay_window_ends(proxy, mock):
    tokens = await login(proxy)
    await proxy.post("/refresh", json={"refresh_token": tokens["refresh_token"]})
    await asyncio.sleep(0.4)
    calls = mock.calls["token:refresh_token"]
    late = await proxy.post("/refresh", json={"refresh_token": tokens["refresh_token"]})
    # Spent and past its window: refused here, without a refresh Twitch would refuse.
    assert late.status == 401
    assert (await late.json())["error"] == "reauthorization_required"
    assert mock.calls["token:refresh_token"] == calls


async def test_twitch_refusal_passed_on(proxy, mock):
    response = await proxy.post("/refresh", json={"refresh_token": "never-issued"})
    assert response.status == 400
    assert await response.json() == {"status": 400, "message": "Invalid refresh token"}


async def test_dead_grant_needs_reauth_and_stops_calling_twitch(proxy, mock):
    tokens = await login(proxy)
    mock.revoke_refresh_tokens()  # the user changed their password
    first = await proxy.post("/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert first.status == 401
    body = await first.json()
    assert body["error"] == "reauthorization_required"
    assert body["login_url"] == "http://localhost:3000/login"
    assert (await grant_of(proxy, tokens["proxy_key"])).state == NEEDS_REAUTH
    second = await proxy.post("/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert second.status == 401
    assert mock.calls["token:refresh_token"] == 1
    # Logging in again revives the grant behind the same proxy key.
    await login(proxy)
    assert (await grant_of(proxy, tokens["proxy_key"])).state == "active"


@pytest.mark.parametrize("config_flags", [{"twitch.client_secret": "wrong"}])
async def test_invalid_client_secret_is_not_a_dead_grant(proxy, mock):
    tokens = mock.issue_tokens("141981764", ["user:read:email"])
    response = await proxy.post("/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert response.status == 403
    assert await response.json() == {"status": 403, "message": "invalid client secret"}


async def test_twitch_5xx_keeps_token(proxy, mock):
    tokens = await login(proxy)
    mock.fail_next["token"] = [(503, {"status": 503, "message": "down"})]
    failed = await proxy.post("/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert failed.status == 503
    assert failed.headers["Retry-After"]
    assert (await failed.json())["error"] == "upstream_unavailable"
    retried = await proxy.post("/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert retried.status == 200


@pytest.mark.parametrize("config_flags", [{"twitch.timeout": 0.3}])
async def test_twitch_slow_is_504(proxy, mock):
    tokens = await login(proxy)
    mock.token_delay = 1.0
    response = await proxy.post("/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert response.status == 504
    assert (await response.json())["error"] == "upstream_timeout"


@pytest.mark.parametrize("config_flags", [{"twitch.id_url": "http://127.0.0.1:9"}])
async def test_twitch_down_is_502(proxy):
    response = await proxy.post("/refresh", json={"refresh_token": "anything"})
    assert response.status == 502
    body = await response.json()
    assert body == {"error": "upstream_unreachable", "message": "Twitch could not be reached."}


async def test_client_hanging_up_does_not_lose_the_rotation(proxy, mock):
    tokens = await login(proxy)
    mock.token_delay = 0.3
    request = asyncio.ensure_future(
        proxy.post("/refresh", json={"refresh_token": tokens["refresh_token"]}))
    await asyncio.sleep(0.1)
    request.cancel()  # the widget navigates away mid-refresh
    await asyncio.sleep(0.5)
    assert mock.calls["token:refresh_token"] == 1
    grant = await grant_of(proxy, tokens["proxy_key"])
    assert grant.refresh_token != tokens["refresh_token"]
    assert mock.live_access_token(grant.access_token) is not None


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_restart_on_same_sqlite_file_keeps_grant(aiohttp_client, proxy_config, mock):
    config = proxy_config
    first = await aiohttp_client(create_app(config))
    tokens = await login(first)
    await first.close()
    second = await aiohttp_client(create_app(config))
    grant = await grant_of(second, tokens["proxy_key"])
    assert grant is not None and grant.refresh_token == tokens["refresh_token"]
    response = await second.post("/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert response.status == 200
    assert len(await second.app[grants_key].all_ids()) == 1


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_shutdown_mid_refresh_stores_the_rotation(aiohttp_client, proxy_config, mock):
    first = await aiohttp_client(create_app(proxy_config))
    tokens = await login(first)
    mock.token_delay = 0.3
    request = asyncio.ensure_future(
        first.post("/refresh", json={"refresh_token": tokens["refresh_token"]}))
    while mock.calls["token:refresh_token"] == 0:
        await asyncio.sleep(0.01)
    request.cancel()
    await first.close()  # shutdown waits for the refresh in flight
    second = await aiohttp_client(create_app(proxy_config))
    grant = await grant_of(second, tokens["proxy_key"])
    assert grant.refresh_token != tokens["refresh_token"]
    assert grant.refresh_token in mock.refresh_tokens  # the live one at Twitch
