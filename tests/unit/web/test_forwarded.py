"""proxy.web.forwarded: X-Forwarded-* are believed with server.trust_forwarded only."""

from __future__ import annotations

import logging

import pytest
from yarl import URL

from tests.helpers import authorize

ROUTER = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "proxy.example",
          # A client-sent value first, then the one the router appended.
          "X-Forwarded-For": "198.51.100.1, 203.0.113.9"}


async def _login_redirect(proxy, headers):
    response = await proxy.get("/login", headers=headers, allow_redirects=False)
    assert response.status == 302
    return URL(response.headers["Location"]).query["redirect_uri"], response.headers["Set-Cookie"]


@pytest.mark.parametrize("config_flags", [{"server.trust_forwarded": True}])
async def test_trusted_router_sets_redirect_uri_secure_cookie_and_client(proxy, mock, caplog):
    caplog.set_level(logging.INFO, "proxy.request")
    redirect_uri, cookie = await _login_redirect(proxy, ROUTER)
    assert redirect_uri == "https://proxy.example/callback"
    assert "Secure" in cookie
    # Without X-Forwarded-Host the Host header names the proxy.
    redirect_uri, _ = await _login_redirect(proxy, {"X-Forwarded-Proto": "https",
                                                    "Host": "other.example:8443"})
    assert redirect_uri == "https://other.example:8443/callback"
    lines = [r.getMessage() for r in caplog.records if r.name == "proxy.request"]
    assert any("client=203.0.113.9" in line for line in lines), lines
    assert not any("198.51.100.1" in line for line in lines)


@pytest.mark.parametrize("config_flags", [{"server.trust_forwarded": True}])
async def test_trusted_router_login_completes_with_the_forwarded_redirect_uri(proxy, mock):
    # Like Twitch, the mock now demands the registered redirect_uri exactly,
    # at the consent page and again when the code is exchanged.
    mock.registered_redirect_uris = {"https://proxy.example/callback"}
    login = await proxy.get("/login", headers=ROUTER, allow_redirects=False)
    async with proxy.session.get(URL(login.headers["Location"]), allow_redirects=False) as c:
        back = URL(c.headers["Location"])
    cookie = login.cookies["twitch_proxy_state"].value
    callback = await proxy.get("/callback", params=back.query, headers={
        **ROUTER, "Accept": "application/json", "Cookie": f"twitch_proxy_state={cookie}"})
    assert callback.status == 200, await callback.text()


@pytest.mark.parametrize("config_flags", [{"server.trust_forwarded": True,
                                           "server.public_url": "https://fixed.example"}])
async def test_an_explicit_public_url_wins_over_the_router(proxy):
    redirect_uri, cookie = await _login_redirect(proxy, ROUTER)
    assert redirect_uri == "https://fixed.example/callback"
    assert "Secure" in cookie


@pytest.mark.parametrize("config_flags", [{"server.trust_forwarded": False}])
async def test_untrusted_forwarded_headers_are_ignored(proxy, proxy_config, caplog):
    caplog.set_level(logging.INFO, "proxy.request")
    redirect_uri, cookie = await _login_redirect(proxy, ROUTER)
    assert redirect_uri == f"http://localhost:{proxy_config.server.port}/callback"
    assert "Secure" not in cookie
    lines = [r.getMessage() for r in caplog.records if r.name == "proxy.request"]
    assert lines and all("client=127.0.0.1" in line for line in lines), lines
    back = await authorize(proxy)  # the ordinary flow is unaffected
    assert back.path == "/callback"


@pytest.mark.parametrize("config_flags", [{"server.trust_forwarded": True}])
async def test_a_malformed_forwarded_host_is_not_put_into_the_redirect_uri(proxy, proxy_config):
    redirect_uri, _ = await _login_redirect(
        proxy, {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example/path?x=1"})
    assert redirect_uri == f"http://localhost:{proxy_config.server.port}/callback"
