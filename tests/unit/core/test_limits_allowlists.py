"""Allowlists (Helix paths, logins, CORS origins), the state cookie and the pages' security
headers, over real HTTP.

Each rejected request a test observes is added to the reliability summary's
"abuse cases rejected".
"""

from __future__ import annotations

import re

import pytest
from yarl import URL

from proxy.web.keys import grants_key
from proxy.web.routes.oauth import STATE_COOKIE
from proxy.web.routes.pages import PAGE_HEADERS
from tests.helpers import authorize, bearer, login
from tests.unit.core.limits_checks import proxy_with, rejected

# -- allowlists ---------------------------------------------------------------------------


async def test_helix_allowlist(aiohttp_client, twitch_server, mock, tmp_path, reliability):
    proxy = await proxy_with(aiohttp_client, twitch_server, tmp_path,
                             **{"helix.allow": "GET /users,GET /streams"})
    key = (await login(proxy))["proxy_key"]
    before = len(mock.helix_requests)
    for method, path in [("POST", "/helix/chat/messages"), ("GET", "/helix/subscriptions"),
                         ("DELETE", "/helix/users")]:
        body = await rejected(reliability, await proxy.request(
            method, path, headers=bearer(key)), 403)
        assert body["error"] == "forbidden"
    # Refused before anything: even without credentials, Twitch is never called.
    await rejected(reliability, await proxy.get("/helix/subscriptions"), 403)
    assert len(mock.helix_requests) == before
    assert (await proxy.get("/helix/users", headers=bearer(key))).status == 200


async def test_allowed_logins(aiohttp_client, twitch_server, mock, tmp_path, reliability):
    proxy = await proxy_with(aiohttp_client, twitch_server, tmp_path,
                             **{"auth.allowed_logins": "someoneelse"})
    back = await authorize(proxy)
    response = await proxy.get("/callback", params=back.query,
                               headers={"Accept": "application/json"})
    await rejected(reliability, response, 403)
    assert await proxy.app[grants_key].all_ids() == []
    assert mock.calls["revoke"] >= 1  # the token Twitch issued was given back

    allowed = await proxy_with(aiohttp_client, twitch_server, tmp_path,
                               **{"auth.allowed_logins": "TwitchDev"})
    assert (await login(allowed))["login"] == "twitchdev"


async def test_cors_origin_not_allowed_gets_no_cors_headers(aiohttp_client, twitch_server,
                                                            tmp_path, reliability):
    proxy = await proxy_with(aiohttp_client, twitch_server, tmp_path,
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
    proxy = await proxy_with(aiohttp_client, twitch_server, tmp_path, **flags)
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
