"""Abuse limits (proxy.core.limits): the building blocks, and the per-address rate limits over
real HTTP.

Each rejected request a test observes is added to the reliability summary's
"abuse cases rejected".
"""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request

from proxy.config import ConfigError, LimitsConfig, load_config
from proxy.core.limits import MAX_TRACKED_ADDRESSES, AbuseGuard, RateLimiter, TokenBucket
from proxy.errors import RateLimited
from proxy.web.forwarded import client_address
from proxy.web.keys import abuse_guard_key, config_key
from tests.helpers import bearer, login, proxy_config_flags
from tests.unit.core.limits_checks import proxy_with, rejected

# -- the building blocks --------------------------------------------------------------


def test_token_bucket_refills_at_its_rate():
    bucket = TokenBucket(capacity=2, rate=1.0, now=0.0)
    assert bucket.take(0.0) == 0 and bucket.take(0.0) == 0
    assert bucket.take(0.0) == pytest.approx(1.0)
    assert bucket.take(0.5) == pytest.approx(0.5)
    assert bucket.take(1.0) == 0


def test_rate_limiter_is_per_address_and_bounded():
    now = [0.0]
    limiter = RateLimiter(2, clock=lambda: now[0])
    assert limiter.take("a") == 0 and limiter.take("a") == 0
    assert limiter.take("a") > 0
    assert limiter.take("b") == 0
    now[0] += 60
    assert limiter.take("a") == 0
    assert RateLimiter(0).take("a") == 0  # 0 turns it off


def test_a_flood_of_new_networks_does_not_reset_a_throttled_bucket():
    """Filling the table (a /48 holds 65536 /64s) must not evict the flooder's own bucket."""
    now = [0.0]
    limiter = RateLimiter(2, clock=lambda: now[0])
    throttled = "2001:db8:1:ffff::1"
    assert limiter.take(throttled) == 0 and limiter.take(throttled) == 0
    for network in range(2 * MAX_TRACKED_ADDRESSES):
        limiter.take(f"2001:db8:1:{network:x}::1")
    assert limiter.take(throttled) > 0
    assert len(limiter) <= MAX_TRACKED_ADDRESSES


def test_helix_allow_patterns():
    guard = AbuseGuard(LimitsConfig(), ("GET /users", "* /channels/*"))
    assert guard.helix_allowed("GET", "/users")
    assert not guard.helix_allowed("POST", "/users")
    assert guard.helix_allowed("PATCH", "/channels/vips")
    assert not guard.helix_allowed("GET", "/streams")
    assert AbuseGuard(LimitsConfig()).helix_allowed("DELETE", "/anything")


def test_bad_limits_are_reported_together(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError) as caught:
        load_config(path=empty, environ={}, flags={
            **proxy_config_flags("http://127.0.0.1:1"), "store.url": "memory://",
            "limits.login_per_minute": "-1", "limits.concurrent_total": "0",
            "helix.allow": "users"})
    text = str(caught.value)
    assert "limits.login_per_minute" in text and "limits.concurrent_total" in text
    assert "helix.allow" in text


# -- per-address rate limits ----------------------------------------------------------


async def test_login_rate_limited_per_address(aiohttp_client, twitch_server, tmp_path,
                                              reliability):
    proxy = await proxy_with(aiohttp_client, twitch_server, tmp_path,
                             **{"limits.login_per_minute": "3"})
    for _ in range(3):
        assert (await proxy.get("/login", allow_redirects=False)).status == 302
    body = await rejected(reliability, await proxy.get("/login", allow_redirects=False), 429)
    assert body["error"] == "rate_limited"
    # Other routes are not affected.
    assert (await proxy.get("/healthz")).status == 200


async def test_callback_rate_limited(aiohttp_client, twitch_server, tmp_path, reliability):
    proxy = await proxy_with(aiohttp_client, twitch_server, tmp_path,
                             **{"limits.login_per_minute": "2"})
    for _ in range(2):
        assert (await proxy.get("/callback", params={"state": "nope"},
                                headers={"Accept": "application/json"})).status == 400
    await rejected(reliability, await proxy.get("/callback", params={"state": "x"}), 429)


async def test_refresh_rate_limited(aiohttp_client, twitch_server, mock, tmp_path, reliability):
    proxy = await proxy_with(aiohttp_client, twitch_server, tmp_path,
                             **{"limits.refresh_per_minute": "3", "limits.login_per_minute": "0"})
    result = await login(proxy)
    for _ in range(3):
        # A browser's preflight before each POST is not a refresh: it spends nothing.
        preflight = await proxy.options("/refresh", headers={
            "Origin": "null", "Access-Control-Request-Method": "POST"})
        assert preflight.status == 200
        response = await proxy.post("/refresh", json={"refresh_token": result["refresh_token"]})
        assert response.status == 200
    calls = mock.calls["token"]
    await rejected(reliability, await proxy.post(
        "/refresh", json={"refresh_token": result["refresh_token"]}), 429)
    assert mock.calls["token"] == calls  # refused before Twitch


async def test_unknown_proxy_keys_are_counted_per_address(aiohttp_client, twitch_server,
                                                          tmp_path, reliability):
    proxy = await proxy_with(aiohttp_client, twitch_server, tmp_path,
                             **{"limits.invalid_keys_per_minute": "3",
                                 "server.trust_forwarded": "true"})
    key = (await login(proxy))["proxy_key"]
    guesser = {"X-Forwarded-For": "203.0.113.7"}
    for attempt in range(3):
        response = await proxy.get("/helix/users",
                                   headers={**bearer(f"tpk_guess{attempt}"), **guesser})
        assert response.status == 401
    # Now blocked for any key, even a real one, and on /status and /revoke too.
    await rejected(reliability, await proxy.get(
        "/helix/users", headers={**bearer("tpk_guess9"), **guesser}), 429)
    await rejected(reliability, await proxy.get(
        "/status", headers={**bearer(key), **guesser}), 429)
    await rejected(reliability, await proxy.post(
        "/revoke", headers={**bearer(key), **guesser}), 429)
    # Another address is not affected, and the real key still works there.
    ok = await proxy.get("/helix/users",
                         headers={**bearer(key), "X-Forwarded-For": "198.51.100.1"})
    assert ok.status == 200


def _from(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


async def test_an_ipv6_64_shares_one_bucket(aiohttp_client, twitch_server, tmp_path,
                                            reliability):
    proxy = await proxy_with(aiohttp_client, twitch_server, tmp_path,
                             **{"limits.login_per_minute": "3",
                                 "server.trust_forwarded": "true"})
    # One host's /64 holds 2**64 addresses: each must not get a bucket of its own.
    for address in ("2001:db8:1:2::a", "2001:db8:1:2::b", "2001:db8:1:2:ffff:ffff:ffff:ffff"):
        login = await proxy.get("/login", headers=_from(address), allow_redirects=False)
        assert login.status == 302
    await rejected(reliability, await proxy.get(
        "/login", headers=_from("2001:db8:1:2:1234::99"), allow_redirects=False), 429)
    # The neighbouring /64 is another network, with its own bucket.
    other = await proxy.get("/login", headers=_from("2001:db8:1:3::a"), allow_redirects=False)
    assert other.status == 302


async def test_an_ipv4_mapped_address_counts_as_its_ipv4_address(
        aiohttp_client, twitch_server, tmp_path, reliability):
    proxy = await proxy_with(aiohttp_client, twitch_server, tmp_path,
                             **{"limits.login_per_minute": "2",
                                 "server.trust_forwarded": "true"})
    for address in ("203.0.113.5", "::ffff:203.0.113.5"):
        login = await proxy.get("/login", headers=_from(address), allow_redirects=False)
        assert login.status == 302
    await rejected(reliability, await proxy.get(
        "/login", headers=_from("::ffff:cb00:7105"), allow_redirects=False), 429)
    await rejected(reliability, await proxy.get(
        "/login", headers=_from("203.0.113.5"), allow_redirects=False), 429)
    # IPv4 is counted per full address: the next one is another client.
    other = await proxy.get("/login", headers=_from("203.0.113.6"), allow_redirects=False)
    assert other.status == 302


async def test_unknown_proxy_keys_are_counted_per_64(aiohttp_client, twitch_server, tmp_path,
                                                     reliability):
    proxy = await proxy_with(aiohttp_client, twitch_server, tmp_path,
                             **{"limits.invalid_keys_per_minute": "2",
                                 "server.trust_forwarded": "true"})
    for attempt in range(2):
        response = await proxy.get("/helix/users", headers={
            **bearer(f"tpk_guess{attempt}"), **_from(f"2001:db8:7:8::{attempt + 1}")})
        assert response.status == 401
    await rejected(reliability, await proxy.get("/helix/users", headers={
        **bearer("tpk_guess9"), **_from("2001:db8:7:8::99")}), 429)
    elsewhere = await proxy.get("/helix/users", headers={
        **bearer("tpk_guess9"), **_from("2001:db8:7:9::1")})
    assert elsewhere.status == 401


async def test_spend_draws_on_the_middlewares_bucket(aiohttp_client, twitch_server, tmp_path,
                                                     reliability):
    """``AbuseGuard.spend``, as /helix calls it for an adopted pair, and POST /refresh share
    one bucket per network."""
    proxy = await proxy_with(aiohttp_client, twitch_server, tmp_path,
                             **{"limits.refresh_per_minute": "2",
                                 "server.trust_forwarded": "true"})
    guard = proxy.app[abuse_guard_key]
    request = make_mocked_request("GET", "/helix/users", app=proxy.app,
                                  headers=_from("2001:db8:5:6::1"))
    address = client_address(request, proxy.app[config_key].server)
    guard.spend("refresh", address)
    guard.spend("refresh", address)
    with pytest.raises(RateLimited) as caught:
        guard.spend("refresh", address)
    assert caught.value.retry_after >= 1
    await rejected(reliability, await proxy.post(
        "/refresh", json={"refresh_token": "x" * 30}, headers=_from("2001:db8:5:6::2")), 429)
    elsewhere = await proxy.post("/refresh", json={"refresh_token": "x" * 30},
                                 headers=_from("2001:db8:5:7::1"))
    assert elsewhere.status != 429


async def test_status_form_guesses_are_counted(aiohttp_client, twitch_server, tmp_path,
                                               reliability):
    proxy = await proxy_with(aiohttp_client, twitch_server, tmp_path,
                             **{"limits.invalid_keys_per_minute": "2"})
    for attempt in range(2):
        page = await proxy.post("/status", data={"key": f"tpk_guess{attempt}"})
        assert page.status == 401 and page.content_type == "text/html"
    await rejected(reliability, await proxy.post("/status", data={"key": "tpk_x"}), 429)
