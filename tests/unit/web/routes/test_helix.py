"""proxy.web.routes.helix with a proxy key: the Helix pass-through and its refresh on a 401,
against the mock Twitch over real HTTP.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
import zlib

import pytest
from yarl import URL

from proxy.core.grant_records import NEEDS_REAUTH
from proxy.web.keys import grants_key, refresher_key
from tests.helpers import bearer, grant_of_key, login

SCOPES = "user:read:email user:write:chat"


@pytest.fixture
def config_flags():
    return {"twitch.scopes": tuple(SCOPES.split())}


@pytest.fixture
async def key(proxy):
    """A proxy key from a real login."""
    return (await login(proxy))["proxy_key"]




# -- credential mode 1: proxy key --------------------------------------------------


async def test_proxy_key_get_users(proxy, mock, key):
    response = await proxy.get("/helix/users", headers=bearer(key))
    assert response.status == 200
    body = await response.json()
    assert body["data"][0]["login"] == "twitchdev"
    sent = mock.helix_requests[-1]
    assert sent.headers["Client-Id"] == "mock-client-id"
    grant = await grant_of_key(proxy, key)
    assert sent.headers["Authorization"] == f"Bearer {grant.access_token}"
    for header in ("Ratelimit-Limit", "Ratelimit-Remaining", "Ratelimit-Reset"):
        assert header in response.headers


async def test_unknown_or_revoked_key_is_401_without_upstream_call(proxy, mock, key):
    before = len(mock.helix_requests)
    unknown = await proxy.get("/helix/users", headers=bearer("tpk_" + "x" * 43))
    assert unknown.status == 401
    assert (await unknown.json())["error"] == "invalid_proxy_key"
    revoked = await proxy.post("/revoke", headers=bearer(key))
    assert revoked.status == 200
    after = await proxy.get("/helix/users", headers=bearer(key))
    assert after.status == 401 and (await after.json())["error"] == "invalid_proxy_key"
    assert len(mock.helix_requests) == before


async def test_query_string_kept_byte_for_byte(proxy, mock, key):
    mock.add_user("1", "one")
    mock.add_user("2", "two")
    raw = "id=2&id=1&login=twitchdev&after=eyJiIjpudWxsLCJhIjp7Ik9mZnNldCI6MjB9fQ%3D%3D"
    response = await proxy.get(f"/helix/users?{raw}", headers=bearer(key))
    assert response.status == 200
    assert mock.helix_requests[-1].query_string == raw
    assert [u["id"] for u in (await response.json())["data"]][:2] == ["2", "1"]


async def test_headers_forwarded_and_dropped(proxy, mock, key):
    response = await proxy.get("/helix/users", headers={
        **bearer(key), "Accept": "application/json", "Cookie": "session=secret-cookie",
        "Origin": "https://streamelements.com", "X-Refresh-Token": "should-not-pass",
        "X-Custom": "nope",
    })
    assert response.status == 200
    sent = mock.helix_requests[-1].headers
    assert sent["Accept"] == "application/json"
    for header in ("Cookie", "Origin", "X-Refresh-Token", "X-Custom"):
        assert header not in sent
    assert key not in json.dumps(dict(sent))
    assert sent["Host"].startswith("127.0.0.1")  # the upstream's host, not ours
    # Twitch's cookie never reaches the widget; rate-limit headers are exposed.
    assert "Set-Cookie" not in response.headers
    assert response.headers["Access-Control-Allow-Origin"] == "https://streamelements.com"
    exposed = response.headers["Access-Control-Expose-Headers"].lower()
    for header in ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"):
        assert header in exposed


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_compressed_bodies_pass_through_as_twitch_sent_them(proxy, mock, key, encoding):
    response = await proxy.get("/helix/users", headers={**bearer(key),
                                                        "Accept-Encoding": encoding},
                               auto_decompress=False)
    assert response.status == 200
    assert mock.helix_requests[-1].headers["Accept-Encoding"] == encoding
    assert response.headers["Content-Encoding"] == encoding
    raw = await response.read()
    decoded = zlib.decompress(raw, 47 if encoding == "gzip" else 15)
    assert json.loads(decoded)["data"][0]["login"] == "twitchdev"
    assert int(response.headers["Content-Length"]) == len(raw)


async def test_no_encoding_is_asked_for_that_the_widget_did_not_ask_for(proxy, mock, key):
    response = await proxy.get("/helix/users", headers=bearer(key),
                               skip_auto_headers=["Accept-Encoding"])
    assert response.status == 200
    assert "Accept-Encoding" not in mock.helix_requests[-1].headers
    assert "Content-Encoding" not in response.headers
    assert json.loads(await response.read())["data"][0]["login"] == "twitchdev"


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_compressed_401_still_refreshes(proxy, mock, key, encoding):
    """The 401's body is decoded only to read its message; the retry's answer passes as is."""
    validations = mock.calls["validate"]  # the login validated its token
    mock.expire_access_tokens()
    response = await proxy.get("/helix/users", headers={**bearer(key),
                                                        "Accept-Encoding": encoding})
    assert response.status == 200
    assert response.headers["Content-Encoding"] == encoding
    assert mock.calls["token:refresh_token"] == 1
    assert mock.calls["validate"] == validations  # the message was read, not left to /validate


async def test_cors_preflight_for_helix_from_null_origin(proxy):
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        response = await proxy.options("/helix/users", headers={
            "Origin": "null", "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization, x-refresh-token",
        })
        assert response.status == 200, method
        assert response.headers["Access-Control-Allow-Methods"] == method


@pytest.mark.parametrize("path", [
    "/helix/../oauth2/token", "/helix/%2e%2e/oauth2/token", "/helix/users%2f..%2f..%2fx",
    "/helix/users/..", "/helix/.%2e/x", "/helix/users\\..\\x", "/helix//evil.example/x",
    "/helix/http://evil.example/", "/helix/https:%2f%2fevil.example", "/helix/users/",
    "/helix/", "/helix/users;x", "/helix/%00", "/helix/users%3Fa=b", "/helix/us%65rs",
])
async def test_path_escapes_rejected_before_upstream(proxy, mock, key, path):
    before = len(mock.helix_requests)
    # Sent exactly as written: no client-side normalisation of dots or escapes.
    raw = URL(str(proxy.make_url("")).rstrip("/") + path, encoded=True)
    response = await proxy.session.get(raw, headers=bearer(key))
    assert response.status in (400, 404), await response.text()
    body = await response.json()
    assert body["error"] in ("invalid_path", "not_found")
    assert len(mock.helix_requests) == before
    assert mock.calls["token"] == 1  # only the login's code exchange


async def test_unknown_helix_path_is_twitchs_404(proxy, mock, key):
    response = await proxy.get("/helix/no/such/endpoint", headers=bearer(key))
    assert response.status == 404
    assert (await response.json())["status"] == 404


# -- refresh on 401 -----------------------------------------------------------------


async def test_expired_token_refreshed_once_and_retried(proxy, mock, key):
    old = (await grant_of_key(proxy, key)).access_token
    mock.expire_access_tokens()
    response = await proxy.get("/helix/users", headers=bearer(key))
    assert response.status == 200
    assert mock.calls["token:refresh_token"] == 1
    assert [r.headers["Authorization"] for r in mock.helix_requests[-2:]][0] == f"Bearer {old}"
    new = (await grant_of_key(proxy, key)).access_token
    assert new != old and mock.helix_requests[-1].headers["Authorization"] == f"Bearer {new}"


async def test_post_body_replayed_byte_for_byte(proxy, mock, key):
    grant = await grant_of_key(proxy, key)
    body = json.dumps({"broadcaster_id": grant.user_id, "sender_id": grant.user_id,
                       "message": "héllo \u2603 {\"x\": [1,2]}"}, ensure_ascii=False).encode()
    mock.expire_access_tokens()
    response = await proxy.post("/helix/chat/messages", data=body,
                                headers={**bearer(key), "Content-Type": "application/json"})
    assert response.status == 200, await response.text()
    first, second = mock.helix_requests[-2:]
    assert first.body == body and second.body == body
    assert second.headers["Content-Type"] == "application/json"
    assert mock.calls["token:refresh_token"] == 1
    assert len(mock.sent_chat_messages) == 1


async def test_two_hundred_concurrent_requests_across_expiry(proxy, mock, key):
    mock.expire_access_tokens()
    mock.token_delay = 0.1
    responses = await asyncio.gather(*(
        proxy.get("/helix/users", headers=bearer(key)) for _ in range(200)))
    statuses = [r.status for r in responses]
    assert statuses == [200] * 200
    assert mock.calls["token:refresh_token"] == 1


async def test_token_past_stored_expiry_refreshed_before_request(proxy, mock, key):
    grants = proxy.app[grants_key]
    grant = await grant_of_key(proxy, key)
    await grants.update(grant.grant_id, expires_at=time.time() + 30)  # inside the margin
    before = len(mock.helix_requests)
    response = await proxy.get("/helix/users", headers=bearer(key))
    assert response.status == 200
    assert mock.calls["token:refresh_token"] == 1
    assert len(mock.helix_requests) == before + 1  # no 401 was ever seen


async def test_missing_scope_401_is_passed_through_without_refresh(proxy, mock, key):
    grant = await grant_of_key(proxy, key)
    response = await proxy.get(f"/helix/subscriptions?broadcaster_id={grant.user_id}",
                               headers=bearer(key))
    assert response.status == 401
    assert (await response.json())["message"] == "Missing scope: channel:read:subscriptions"
    assert mock.calls["token:refresh_token"] == 0
    assert mock.calls["validate"] == 1  # the login's only


async def test_unknown_401_message_asks_validate(proxy, mock, key):
    mock.fail_next["helix"] = [(401, {"error": "Unauthorized", "status": 401,
                                      "message": "something new"})]
    response = await proxy.get("/helix/users", headers=bearer(key))
    # The token is fine per /validate: the 401 is Twitch's answer, passed on.
    assert response.status == 401
    assert mock.calls["validate"] == 2
    assert mock.calls["token:refresh_token"] == 0


async def test_a_token_rotated_by_someone_else_is_retried_without_refreshing(proxy, mock, key):
    grant = await grant_of_key(proxy, key)
    refresher = proxy.app[refresher_key]
    mock.expire_access_tokens()
    # Someone (another request, another process) rotates the grant first...
    await refresher.refresh(grant.grant_id, stale_access_token=grant.access_token)
    assert mock.calls["token:refresh_token"] == 1
    # ...then a request that failed with the old token is handed the new one.
    again = await refresher.refresh(grant.grant_id, stale_access_token=grant.access_token)
    assert again.access_token != grant.access_token
    assert mock.calls["token:refresh_token"] == 1
    response = await proxy.get("/helix/users", headers=bearer(key))
    assert response.status == 200
    assert mock.calls["token:refresh_token"] == 1


async def test_permanent_refresh_failure_needs_reauth(proxy, mock, key):
    mock.revoke_refresh_tokens()
    response = await proxy.get("/helix/users", headers=bearer(key))
    assert response.status == 401
    assert await response.json() == {
        "error": "reauthorization_required",
        "message": "Twitch no longer accepts this grant: log in again.",
        "login_url": "http://localhost:3000/login",
    }
    assert (await grant_of_key(proxy, key)).state == NEEDS_REAUTH
    calls = mock.calls["token"]
    again = await proxy.get("/helix/users", headers=bearer(key))
    assert again.status == 401
    assert mock.calls["token"] == calls  # Twitch is not asked again
    status = await (await proxy.get("/status", headers=bearer(key))).json()
    assert status["state"] == NEEDS_REAUTH and status["login_url"].endswith("/login")


async def test_transient_refresh_failure_is_503_and_keeps_token(proxy, mock, key):
    before = await grant_of_key(proxy, key)
    mock.expire_access_tokens()
    mock.fail_next["token"] = [(500, {"status": 500, "message": "oops"})]
    response = await proxy.get("/helix/users", headers=bearer(key))
    assert response.status == 503
    assert int(response.headers["Retry-After"]) >= 1
    assert (await response.json())["error"] == "upstream_unavailable"
    kept = await grant_of_key(proxy, key)
    assert kept.refresh_token == before.refresh_token and kept.state == "active"
    assert (await proxy.get("/helix/users", headers=bearer(key))).status == 200


async def test_twitch_503_retried_once(proxy, mock, key):
    mock.fail_next["helix"] = [(503, {"status": 503, "message": "busy"})]
    response = await proxy.get("/helix/users", headers=bearer(key))
    assert response.status == 200
    mock.fail_next["helix"] = [(503, {"status": 503, "message": "busy"})] * 2
    response = await proxy.get("/helix/users", headers=bearer(key))
    assert response.status == 503


async def test_429_passed_on_with_retry_after(proxy, mock, key):
    mock.ratelimit_limit = 2
    mock.reset_ratelimits()
    statuses = [(await proxy.get("/helix/users", headers=bearer(key))).status for _ in range(3)]
    assert statuses == [200, 200, 429]
    response = await proxy.get("/helix/users", headers=bearer(key))
    assert response.status == 429
    assert response.headers["Ratelimit-Remaining"] == "0"
    retry = int(response.headers["Retry-After"])
    expected = int(response.headers["Ratelimit-Reset"]) - time.time()
    assert 1 <= retry <= expected + 2


@pytest.mark.parametrize("config_flags", [{"twitch.helix_url": "http://127.0.0.1:9/helix"}])
async def test_twitch_down_is_502(proxy, mock):
    token = mock.issue_tokens("141981764", [])["access_token"]
    response = await proxy.get("/helix/users", headers=bearer(token))
    assert response.status == 502
    assert (await response.json())["error"] == "upstream_unreachable"


@pytest.mark.parametrize("config_flags", [{"twitch.timeout": 0.3}])
async def test_twitch_slow_is_504(proxy, mock, key):
    mock.helix_delay = 1.0
    response = await proxy.get("/helix/users", headers=bearer(key))
    assert response.status == 504
    assert (await response.json())["error"] == "upstream_timeout"


async def test_body_over_limit_is_413(proxy, mock, key):
    response = await proxy.post("/helix/chat/messages", data=io.BytesIO(b"x" * (1024 * 1024 + 1)),
                                headers={**bearer(key), "Content-Type": "application/json"})
    assert response.status == 413
    assert (await response.json())["error"] == "payload_too_large"
