"""Abuse limits (proxy.core.limits), allowlists, cookies and page headers, over real HTTP.

Each rejected request a test observes is added to the reliability summary's
"abuse cases rejected".
"""

from __future__ import annotations

import asyncio
import re

import pytest
from aiohttp.test_utils import make_mocked_request
from yarl import URL

from proxy.config import ConfigError, LimitsConfig, load_config
from proxy.core.limits import MAX_TRACKED_ADDRESSES, AbuseGuard, RateLimiter, TokenBucket
from proxy.errors import RateLimited
from proxy.web.app import create_app
from proxy.web.keys import abuse_guard_key, grants_key
from proxy.web.routes.oauth import STATE_COOKIE
from proxy.web.routes.pages import PAGE_HEADERS
from tests.helpers import authorize, login, proxy_config_flags


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _rejected(reliability, response, status: int) -> dict:
    """Assert a JSON rejection with ``status``; count it."""
    body = await response.json()
    assert response.status == status, body
    assert set(body) >= {"error", "message"}, body
    if status in (429, 503):
        assert int(response.headers["Retry-After"]) >= 1
    reliability.abuse_rejected += 1
    return body


async def _proxy_with(aiohttp_client, twitch_server, tmp_path, **flags):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    all_flags = {**proxy_config_flags(str(twitch_server.make_url("")).rstrip("/")),
                 "store.url": "memory://", **flags}
    return await aiohttp_client(create_app(load_config(path=empty, environ={}, flags=all_flags)))


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
    proxy = await _proxy_with(aiohttp_client, twitch_server, tmp_path,
                              **{"limits.login_per_minute": "3"})
    for _ in range(3):
        assert (await proxy.get("/login", allow_redirects=False)).status == 302
    body = await _rejected(reliability, await proxy.get("/login", allow_redirects=False), 429)
    assert body["error"] == "rate_limited"
    # Other routes are not affected.
    assert (await proxy.get("/healthz")).status == 200


async def test_callback_rate_limited(aiohttp_client, twitch_server, tmp_path, reliability):
    proxy = await _proxy_with(aiohttp_client, twitch_server, tmp_path,
                              **{"limits.login_per_minute": "2"})
    for _ in range(2):
        assert (await proxy.get("/callback", params={"state": "nope"},
                                headers={"Accept": "application/json"})).status == 400
    await _rejected(reliability, await proxy.get("/callback", params={"state": "x"}), 429)


async def test_refresh_rate_limited(aiohttp_client, twitch_server, mock, tmp_path, reliability):
    proxy = await _proxy_with(aiohttp_client, twitch_server, tmp_path,
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
    await _rejected(reliability, await proxy.post(
        "/refresh", json={"refresh_token": result["refresh_token"]}), 429)
    assert mock.calls["token"] == calls  # refused before Twitch


async def test_unknown_proxy_keys_are_counted_per_address(aiohttp_client, twitch_server,
                                                          tmp_path, reliability):
    proxy = await _proxy_with(aiohttp_client, twitch_server, tmp_path,
                              **{"limits.invalid_keys_per_minute": "3",
                                 "server.trust_forwarded": "true"})
    key = (await login(proxy))["proxy_key"]
    guesser = {"X-Forwarded-For": "203.0.113.7"}
    for attempt in range(3):
        response = await proxy.get("/helix/users",
                                   headers={**_bearer(f"tpk_guess{attempt}"), **guesser})
        assert response.status == 401
    # Now blocked for any key, even a real one, and on /status and /revoke too.
    await _rejected(reliability, await proxy.get(
        "/helix/users", headers={**_bearer("tpk_guess9"), **guesser}), 429)
    await _rejected(reliability, await proxy.get(
        "/status", headers={**_bearer(key), **guesser}), 429)
    await _rejected(reliability, await proxy.post(
        "/revoke", headers={**_bearer(key), **guesser}), 429)
    # Another address is not affected, and the real key still works there.
    ok = await proxy.get("/helix/users",
                         headers={**_bearer(key), "X-Forwarded-For": "198.51.100.1"})
    assert ok.status == 200


def _from(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


async def test_an_ipv6_64_shares_one_bucket(aiohttp_client, twitch_server, tmp_path,
                                            reliability):
    proxy = await _proxy_with(aiohttp_client, twitch_server, tmp_path,
                              **{"limits.login_per_minute": "3",
                                 "server.trust_forwarded": "true"})
    # One host's /64 holds 2**64 addresses: each must not get a bucket of its own.
    for address in ("2001:db8:1:2::a", "2001:db8:1:2::b", "2001:db8:1:2:ffff:ffff:ffff:ffff"):
        login = await proxy.get("/login", headers=_from(address), allow_redirects=False)
        assert login.status == 302
    await _rejected(reliability, await proxy.get(
        "/login", headers=_from("2001:db8:1:2:1234::99"), allow_redirects=False), 429)
    # The neighbouring /64 is another network, with its own bucket.
    other = await proxy.get("/login", headers=_from("2001:db8:1:3::a"), allow_redirects=False)
    assert other.status == 302


async def test_an_ipv4_mapped_address_counts_as_its_ipv4_address(
        aiohttp_client, twitch_server, tmp_path, reliability):
    proxy = await _proxy_with(aiohttp_client, twitch_server, tmp_path,
                              **{"limits.login_per_minute": "2",
                                 "server.trust_forwarded": "true"})
    for address in ("203.0.113.5", "::ffff:203.0.113.5"):
        login = await proxy.get("/login", headers=_from(address), allow_redirects=False)
        assert login.status == 302
    await _rejected(reliability, await proxy.get(
        "/login", headers=_from("::ffff:cb00:7105"), allow_redirects=False), 429)
    await _rejected(reliability, await proxy.get(
        "/login", headers=_from("203.0.113.5"), allow_redirects=False), 429)
    # IPv4 is counted per full address: the next one is another client.
    other = await proxy.get("/login", headers=_from("203.0.113.6"), allow_redirects=False)
    assert other.status == 302


async def test_unknown_proxy_keys_are_counted_per_64(aiohttp_client, twitch_server, tmp_path,
                                                     reliability):
    proxy = await _proxy_with(aiohttp_client, twitch_server, tmp_path,
                              **{"limits.invalid_keys_per_minute": "2",
                                 "server.trust_forwarded": "true"})
    for attempt in range(2):
        response = await proxy.get("/helix/users", headers={
            **_bearer(f"tpk_guess{attempt}"), **_from(f"2001:db8:7:8::{attempt + 1}")})
        assert response.status == 401
    await _rejected(reliability, await proxy.get("/helix/users", headers={
        **_bearer("tpk_guess9"), **_from("2001:db8:7:8::99")}), 429)
    elsewhere = await proxy.get("/helix/users", headers={
        **_bearer("tpk_guess9"), **_from("2001:db8:7:9::1")})
    assert elsewhere.status == 401


async def test_spend_draws_on_the_middlewares_bucket(aiohttp_client, twitch_server, tmp_path,
                                                     reliability):
    """``AbuseGuard.spend``, as /helix calls it for an adopted pair, and POST /refresh share
    one bucket per network."""
    proxy = await _proxy_with(aiohttp_client, twitch_server, tmp_path,
                              **{"limits.refresh_per_minute": "2",
                                 "server.trust_forwarded": "true"})
    guard = proxy.app[abuse_guard_key]
    request = make_mocked_request("GET", "/helix/users", app=proxy.app,
                                  headers=_from("2001:db8:5:6::1"))
    guard.spend("refresh", request)
    guard.spend("refresh", request)
    with pytest.raises(RateLimited) as caught:
        guard.spend("refresh", request)
    assert caught.value.retry_after >= 1
    await _rejected(reliability, await proxy.post(
        "/refresh", json={"refresh_token": "x" * 30}, headers=_from("2001:db8:5:6::2")), 429)
    elsewhere = await proxy.post("/refresh", json={"refresh_token": "x" * 30},
                                 headers=_from("2001:db8:5:7::1"))
    assert elsewhere.status != 429


async def test_status_form_guesses_are_counted(aiohttp_client, twitch_server, tmp_path,
                                               reliability):
    proxy = await _proxy_with(aiohttp_client, twitch_server, tmp_path,
                              **{"limits.invalid_keys_per_minute": "2"})
    for attempt in range(2):
        page = await proxy.post("/status", data={"key": f"tpk_guess{attempt}"})
        assert page.status == 401 and page.content_type == "text/html"
    await _rejected(reliability, await proxy.post("/status", data={"key": "tpk_x"}), 429)


# -- sizes -------------------------------------------------------------------------------


async def test_oversized_headers_refused_and_server_keeps_serving(
        aiohttp_client, twitch_server, tmp_path, reliability):
    proxy = await _proxy_with(aiohttp_client, twitch_server, tmp_path,
                              **{"limits.max_header_line": "2048", "limits.max_headers": "32"})
    host, port = proxy.host, proxy.port
    for request in (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4096 + b"\r\n\r\n",
        b"GET /healthz?" + b"q" * 4096 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-H%d: v\r\n" % i for i in range(64)) + b"\r\n",
    ):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(request)
        await writer.drain()
        status_line = await reader.readline()
        writer.close()
        await writer.wait_closed()
        status = int(status_line.split()[1])
        assert status in (400, 413, 414, 431), status_line
        reliability.abuse_rejected += 1
    assert (await proxy.get("/healthz", headers={"X-Ok": "a" * 1000})).status == 200


@pytest.mark.parametrize("method,path", [("POST", "/refresh"), ("POST", "/status"),
                                         ("POST", "/revoke")])
async def test_form_bodies_are_small(aiohttp_client, twitch_server, tmp_path, reliability,
                                     method, path):
    proxy = await _proxy_with(aiohttp_client, twitch_server, tmp_path,
                              **{"limits.max_form_body": "1024"})
    body = '{"refresh_token": "' + "x" * 4096 + '"}'
    response = await proxy.request(method, path, data=body,
                                   headers={"Content-Type": "application/json",
                                            **_bearer("tpk_x")})
    await _rejected(reliability, response, 413)


async def test_multipart_without_boundary_is_a_400(proxy, reliability):
    for path in ("/refresh", "/status"):
        response = await proxy.post(path, data="key=x",
                                    headers={"Content-Type": "multipart/form-data"})
        await _rejected(reliability, response, 400)


# -- concurrency -------------------------------------------------------------------------


async def test_concurrency_per_grant(aiohttp_client, twitch_server, mock, tmp_path,
                                     reliability):
    proxy = await _proxy_with(aiohttp_client, twitch_server, tmp_path,
                              **{"limits.concurrent_per_grant": "2",
                                 "limits.concurrency_wait": "0"})
    key = (await login(proxy))["proxy_key"]
    mock.helix_delay = 3  # long enough that all five overlap on any machine
    # Distinct URLs: five calls to Twitch (identical GETs would share one call).
    responses = await asyncio.gather(*(proxy.get(f"/helix/users?login=twitchdev&n={n}",
                                                 headers=_bearer(key)) for n in range(5)))
    statuses = sorted(r.status for r in responses)
    assert statuses == [200, 200, 429, 429, 429]
    for response in responses:
        if response.status == 429:
            await _rejected(reliability, response, 429)
    mock.helix_delay = 0
    assert (await proxy.get("/helix/users", headers=_bearer(key))).status == 200


async def test_shared_gets_hold_no_grant_slot(aiohttp_client, twitch_server, mock, tmp_path):
    proxy = await _proxy_with(aiohttp_client, twitch_server, tmp_path,
                              **{"limits.concurrent_per_grant": "2",
                                 "limits.concurrency_wait": "0"})
    key = (await login(proxy))["proxy_key"]
    mock.helix_delay = 1
    before = len(mock.helix_requests)
    # Twenty widget copies asking the same thing cost Twitch one call: no 429.
    responses = await asyncio.gather(*(proxy.get("/helix/users", headers=_bearer(key))
                                       for _ in range(20)))
    assert [r.status for r in responses] == [200] * 20
    assert len(mock.helix_requests) == before + 1


async def test_concurrency_per_grant_waits_briefly(aiohttp_client, twitch_server, mock,
                                                   tmp_path):
    proxy = await _proxy_with(aiohttp_client, twitch_server, tmp_path,
                              **{"limits.concurrent_per_grant": "2",
                                 "limits.concurrency_wait": "30"})
    key = (await login(proxy))["proxy_key"]
    mock.helix_delay = 0.2
    before = len(mock.helix_requests)
    responses = await asyncio.gather(*(proxy.get(f"/helix/users?n={n}", headers=_bearer(key))
                                       for n in range(6)))
    assert [r.status for r in responses] == [200] * 6
    assert len(mock.helix_requests) == before + 6


async def test_concurrency_in_total(aiohttp_client, twitch_server, mock, tmp_path,
                                    reliability):
    proxy = await _proxy_with(aiohttp_client, twitch_server, tmp_path,
                              **{"limits.concurrent_total": "1",
                                 "limits.concurrency_wait": "0"})
    key = (await login(proxy))["proxy_key"]
    mock.helix_delay = 3
    before = len(mock.helix_requests)
    slow = asyncio.ensure_future(proxy.get("/helix/users", headers=_bearer(key)))
    while len(mock.helix_requests) == before:  # the slow one is now at "Twitch"
        await asyncio.sleep(0.01)
    body = await _rejected(reliability, await proxy.get("/helix/users?another=1",
                                                        headers=_bearer(key)), 503)
    assert body["error"] == "overloaded"
    assert (await proxy.get("/healthz")).status == 200  # not upstream work
    assert (await slow).status == 200


# -- allowlists ---------------------------------------------------------------------------


async def test_helix_allowlist(aiohttp_client, twitch_server, mock, tmp_path, reliability):
    proxy = await _proxy_with(aiohttp_client, twitch_server, tmp_path,
                              **{"helix.allow": "GET /users,GET /streams"})
    key = (await login(proxy))["proxy_key"]
    before = len(mock.helix_requests)
    for method, path in [("POST", "/helix/chat/messages"), ("GET", "/helix/subscriptions"),
                         ("DELETE", "/helix/users")]:
        body = await _rejected(reliability, await proxy.request(
            method, path, headers=_bearer(key)), 403)
        assert body["error"] == "forbidden"
    # Refused before anything: even without credentials, Twitch is never called.
    await _rejected(reliability, await proxy.get("/helix/subscriptions"), 403)
    assert len(mock.helix_requests) == before
    assert (await proxy.get("/helix/users", headers=_bearer(key))).status == 200


async def test_allowed_logins(aiohttp_client, twitch_server, mock, tmp_path, reliability):
    proxy = await _proxy_with(aiohttp_client, twitch_server, tmp_path,
                              **{"auth.allowed_logins": "someoneelse"})
    back = await authorize(proxy)
    response = await proxy.get("/callback", params=back.query,
                               headers={"Accept": "application/json"})
    await _rejected(reliability, response, 403)
    assert await proxy.app[grants_key].all_ids() == []
    assert mock.calls["revoke"] >= 1  # the token Twitch issued was given back

    allowed = await _proxy_with(aiohttp_client, twitch_server, tmp_path,
                                **{"auth.allowed_logins": "TwitchDev"})
    assert (await login(allowed))["login"] == "twitchdev"


async def test_cors_origin_not_allowed_gets_no_cors_headers(aiohttp_client, twitch_server,
                                                            tmp_path, reliability):
    proxy = await _proxy_with(aiohttp_client, twitch_server, tmp_path,
                              **{"cors.allow_origins": "https://streamelements.com"})
    evil = await proxy.get("/healthz", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in evil.headers
    preflight = await proxy.options("/refresh", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in preflight.headers
    assert preflight.status >= 400
    reliability.abuse_rejected += 1
    good = await proxy.get("/healthz", headers={"Origin": "https://streamelements.com"})
    assert good.headers["Access-Control-Allow-Origin"] == "https://streamelements.com"
    assert "Access-Control-Allow-Credentials" not in good.headers


# -- cookies and pages ---------------------------------------------------------------------


@pytest.mark.parametrize("public_url,secure", [("", False), ("https://proxy.example", True)])
async def test_state_cookie_flags(aiohttp_client, twitch_server, tmp_path, public_url, secure):
    flags = {"server.public_url": public_url} if public_url else {}
    proxy = await _proxy_with(aiohttp_client, twitch_server, tmp_path, **flags)
    response = await proxy.get("/login", allow_redirects=False)
    cookie = response.cookies[STATE_COOKIE]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Lax"
    assert cookie["path"] == "/callback"
    assert bool(cookie["secure"]) is secure
    assert "no-store" in response.headers["Cache-Control"]


async def test_every_html_page_has_the_security_headers(proxy, mock):
    """Crawl every HTML answer the proxy gives, success and error pages alike."""
    pages = []

    async def visit(method: str, url, **kwargs) -> str:
        async with proxy.session.request(method, url, allow_redirects=False, **kwargs) as r:
            text = await r.text()
            if r.content_type == "text/html":
                pages.append((method, str(url), r.status, dict(r.headers)))
            return text

    base = proxy.make_url("")
    landing = await visit("GET", base)
    links = set(re.findall(r'href="(/[^"]*)"', landing)) | {"/status"}
    for link in sorted(links):
        if not link.startswith("/static") and not link.startswith("/login"):
            await visit("GET", base.join(URL(link)))
    await visit("POST", proxy.make_url("/status"), data={"key": "tpk_unknown"})
    await visit("POST", proxy.make_url("/status"), data={"key": "not-a-key"})
    await visit("GET", proxy.make_url("/callback"))
    await visit("GET", proxy.make_url("/callback"), params={"state": "unknown", "code": "c"})
    await visit("GET", proxy.make_url("/callback"),
                params={"error": "access_denied", "state": "s"})
    back = await authorize(proxy)
    await visit("GET", proxy.make_url("/callback"), params=back.query)  # the success page
    key = (await login(proxy))["proxy_key"]
    await visit("POST", proxy.make_url("/status"), data={"key": key})
    mock.queue_failure("token", 503, {"status": 503, "message": "Service Unavailable"})
    back = await authorize(proxy)
    await visit("GET", proxy.make_url("/callback"), params=back.query)  # a 5xx page

    statuses = {status for _, _, status, _ in pages}
    assert len(pages) >= 9 and {200, 400, 401}.issubset(statuses), pages
    for method, url, status, headers in pages:
        for name, value in PAGE_HEADERS.items():
            if name == "Content-Security-Policy":  # may name the Twitch origin in form-action
                assert "default-src 'none'" in headers[name], (method, url, status)
                assert "frame-ancestors 'none'" in headers[name], (method, url, status)
                assert "script-src 'self'" in headers[name], (method, url, status)
            else:
                assert headers.get(name) == value, (method, url, status, name)
