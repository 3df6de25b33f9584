"""proxy.web.routes.pages over real HTTP (no browser): headers, content, escaping, the kit.

What a browser does with these pages (clicking, copying, CSP enforcement, the widget
kit on other origins) is in tests/system/browser/.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from markupsafe import escape
from yarl import URL

from proxy.errors import ProxyError, StoreUnavailable, UpstreamTimeout
from proxy.web.keys import config_key
from proxy.web.routes import pages
from proxy.web.routes.oauth import STATE_COOKIE
from tests.helpers import authorize, login

ROOT = Path(__file__).resolve().parents[4]
STYLE = ROOT / "proxy" / "static" / "style.css"
KIT = ROOT / "examples" / "streamelements"


@pytest.fixture
def config_flags():
    return {"twitch.scopes": "user:read:email",
            "twitch.allowed_scopes": "user:read:email,bits:read"}


def assert_page_headers(response, proxy_config) -> None:
    for name, value in pages.PAGE_HEADERS.items():
        if name != "Content-Security-Policy":
            assert response.headers[name] == value
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self';" in csp and "'unsafe-inline'" not in csp
    assert "frame-ancestors 'none'" in csp
    # /login redirects to Twitch, and form-action also governs a form's redirects.
    assert f"form-action 'self' {proxy_config.twitch.id_url};" in csp


def assert_no_inline_code(page: str) -> None:
    """What the CSP would block anyway: inline scripts, styles and handlers."""
    assert not re.search(r"<script(?![^>]*\bsrc=)", page)
    assert not re.search(r"<style", page)
    assert not re.search(r"\sstyle=", page)
    assert not re.search(r"\son[a-z]+=", page)


async def test_landing_offers_the_allowed_scopes(proxy, proxy_config):
    response = await proxy.get("/")
    assert response.status == 200 and response.content_type == "text/html"
    assert_page_headers(response, proxy_config)
    page = await response.text()
    assert_no_inline_code(page)
    boxes = re.findall(r'<input type="checkbox" id="(scope-\d+)" name="scope" value="([^"]+)"'
                       r'( checked)?>', page)
    assert [(value, bool(checked)) for _, value, checked in boxes] == [
        ("user:read:email", True), ("bits:read", False)]
    # Every box has a label that names it (for="..." matches its id).
    for element_id, _, _ in boxes:
        assert f'<label for="{element_id}">' in page
    assert "mock-client-id" in page
    assert f"{proxy_config.server.public_url}/callback" in page
    assert '<form class="card" method="get" action="/login">' in page
    # What the picker sends, /login accepts; anything else it refuses.
    picked = await proxy.get("/login", params=[("scope", "user:read:email"),
                                               ("scope", "bits:read")],
                             allow_redirects=False)
    assert picked.status == 302
    refused = await proxy.get("/login", params={"scope": "channel:manage:broadcast"},
                              allow_redirects=False, headers={"Accept": "application/json"})
    assert refused.status == 400


async def test_callback_page_hides_secrets_and_fills_the_snippet(proxy, proxy_config):
    back = await authorize(proxy)
    response = await proxy.get("/callback", params=back.query)
    assert response.status == 200
    assert_page_headers(response, proxy_config)
    page = await response.text()
    assert_no_inline_code(page)
    key = re.search(r'<code id="proxy-key">(tpk_[^<]+)</code>', page).group(1)
    for element_id in ("proxy-key", "access-token", "refresh-token", "snippet"):
        # Each secret sits inside a closed <details> ("show"), with a copy button
        # that stays hidden until page.js runs.
        assert re.search(rf'<details><summary>Show [^<]+</summary><pre><code id="{element_id}">',
                         page), element_id
        assert (f'<button type="button" class="small copy" data-copy="{element_id}" hidden>'
                in page)
    assert "<details open" not in page
    assert "These are secrets." in page
    snippet = pages.widget_snippet(proxy_config.server.public_url, key)
    assert f'const PROXY = "{proxy_config.server.public_url}";' in snippet
    assert f'const KEY = "{key}";' in snippet
    assert escape(snippet) in page
    # The key works.
    status = await proxy.get("/status", headers={"Authorization": f"Bearer {key}"})
    assert (await status.json())["login"] == "twitchdev"


async def test_page_values_are_escaped(proxy, proxy_config):
    request = make_mocked_request("GET", "/callback", app=proxy.app)
    hostile = "<script>alert(1)</script>"
    response = pages.callback_page(request, {
        "proxy_key": "tpk_x", "access_token": hostile, "refresh_token": '"><img src=x>',
        "expires_in": 60, "scope": [hostile], "user_id": "1", "login": hostile,
    })
    page = response.text
    assert hostile not in page and "<img src=x>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert_no_inline_code(page)


async def test_autoescape_is_on_for_values_from_the_query_and_twitch(proxy):
    """Values reach the templates unescaped; only Jinja's autoescape stands in the way."""
    hostile = ["<script>alert(1)</script>", '"><svg/onload=alert(1)>']
    refused = await proxy.get("/login", params={"scope": " ".join(hostile)},
                              headers={"Accept": "text/html"}, allow_redirects=False)
    assert refused.status == 400 and refused.content_type == "text/html"
    page = await refused.text()
    assert "scopes not offered by this proxy:" in page
    shown = f"{escape(hostile[1])} {escape(hostile[0])}"  # sorted, as the message lists them
    assert f"<p>scopes not offered by this proxy: {shown}</p>" in page
    assert hostile[0] not in page and "<svg" not in page

    # A grant's facts come from Twitch: a login, a user id, scopes, even a state.
    request = make_mocked_request("POST", "/status", app=proxy.app)
    page = pages.status_page(request, {
        "login": hostile[0], "user_id": hostile[1], "scopes": hostile, "state": hostile[0],
        "expires_in": 60, "last_refresh_at": None, "last_validated_at": None,
    }).text
    assert hostile[0] not in page and "<svg" not in page
    assert f"<dd>{escape(hostile[0])} (user id <code>{escape(hostile[1])}</code>)</dd>" in page
    assert f'<span class="state-bad">{escape(hostile[0])}</span>' in page
    assert_no_inline_code(page)


async def test_status_form_posts_the_key_and_never_echoes_it(proxy, proxy_config):
    form = await proxy.get("/status")
    assert form.status == 200
    assert_page_headers(form, proxy_config)
    page = await form.text()
    assert_no_inline_code(page)
    assert '<form class="card" method="post" action="/status">' in page
    assert '<label class="block" for="key">Proxy key</label>' in page
    assert 'id="key" name="key" type="password"' in page

    result = await login(proxy)
    shown = await proxy.post("/status", data={"key": result["proxy_key"]})
    assert shown.status == 200
    assert_page_headers(shown, proxy_config)
    page = await shown.text()
    assert "twitchdev" in page and "Working" in page and "user:read:email" in page
    assert result["proxy_key"] not in page
    assert result["access_token"] not in page and result["refresh_token"] not in page
    assert "Log in again" not in page

    unknown = await proxy.post("/status", data={"key": "tpk_unknown"})
    assert unknown.status == 401
    assert "unknown or was revoked" in await unknown.text()
    not_a_key = await proxy.post("/status", data={"key": "oauth:abc"})
    assert not_a_key.status == 401
    assert "oauth:abc" not in await not_a_key.text()


async def test_status_page_offers_log_in_again(proxy, mock):
    result = await login(proxy, scope="user:read:email bits:read")
    mock.revoke_refresh_tokens()
    mock.expire_access_tokens()
    helix = await proxy.get("/helix/users",
                            headers={"Authorization": f"Bearer {result['proxy_key']}"})
    assert (await helix.json())["error"] == "reauthorization_required"
    shown = await proxy.post("/status", data={"key": result["proxy_key"]})
    page = await shown.text()
    assert "Twitch no longer accepts this connection" in page
    # A GET form to /login carrying the grant's scopes: no key in the URL it builds.
    relogin = re.search(r'<form method="get" action="/login">(.*?)</form>', page).group(1)
    assert re.findall(r'name="scope" value="([^"]+)"', relogin) == ["user:read:email",
                                                                    "bits:read"]
    assert "Log in again with Twitch" in relogin
    assert result["proxy_key"] not in relogin


async def test_login_refusal_is_a_page_for_a_browser(proxy, proxy_config):
    browser = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    refused = await proxy.get("/login", params={"scope": "channel:manage:broadcast"},
                              headers=browser, allow_redirects=False)
    assert refused.status == 400 and refused.content_type == "text/html"
    assert_page_headers(refused, proxy_config)
    page = await refused.text()
    assert "This login could not go on" in page
    assert "scopes not offered by this proxy: channel:manage:broadcast" in page
    # API clients still get the JSON error.
    as_json = await proxy.get("/login", params={"scope": "channel:manage:broadcast"},
                              allow_redirects=False)
    assert (await as_json.json())["error"] == "invalid_request"


@pytest.mark.parametrize("config_flags", [{"server.trust_forwarded": "true"}])
async def test_pages_use_the_public_url_behind_a_router(proxy):
    """Without PUBLIC_URL, a trusted router's X-Forwarded-* name the proxy's address."""
    routed = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "proxy.example"}
    page = await (await proxy.get("/", headers=routed)).text()
    assert "<code>https://proxy.example</code>" in page
    assert "<code>https://proxy.example/callback</code>" in page
    start = await proxy.get("/login", headers=routed, allow_redirects=False)
    async with proxy.session.get(start.headers["Location"], allow_redirects=False) as consent:
        back = URL(consent.headers["Location"])
    assert str(back.with_query(None)) == "https://proxy.example/callback"
    # The state cookie is Secure (the browser is on https); this test client is not.
    cookie = f"{STATE_COOKIE}={start.cookies[STATE_COOKIE].value}"
    callback = await proxy.get("/callback", params=back.query,
                               headers={**routed, "Cookie": cookie})
    assert callback.status == 200
    assert escape('const PROXY = "https://proxy.example";') in await callback.text()


async def test_error_page_denied_consent(proxy, proxy_config):
    response = await proxy.get("/callback", params={"error": "access_denied", "state": "x"})
    assert response.status == 400
    assert_page_headers(response, proxy_config)
    page = await response.text()
    assert "You did not approve the connection" in page and "Nothing was stored" in page
    assert '<a class="button primary" href="/">Connect with Twitch</a>' in page
    assert_no_inline_code(page)


async def test_error_page_bad_state_does_not_echo_the_code(proxy):
    response = await proxy.get("/callback", params={"code": "secret-code-123", "state": "bad"})
    assert response.status == 400
    page = await response.text()
    assert "This login is no longer valid" in page and "10 minutes" in page
    assert "secret-code-123" not in page


async def test_error_page_twitch_down(proxy, mock):
    back = await authorize(proxy)
    mock.queue_failure("token", 503, "<html><body>Service Unavailable</body></html>")
    response = await proxy.get("/callback", params=back.query)
    assert response.status == 503
    assert response.headers["Retry-After"]
    page = await response.text()
    assert "Twitch is not answering right now" in page and "Nothing was lost" in page
    assert back.query["code"] not in page


@pytest.mark.parametrize("config_flags", [{"auth.allowed_logins": "someone_else"}])
async def test_error_page_account_not_allowed(proxy):
    back = await authorize(proxy)
    response = await proxy.get("/callback", params=back.query)
    assert response.status == 403
    assert "This Twitch account may not use this proxy" in await response.text()


@pytest.mark.parametrize(("error", "heading", "action"), [
    (ProxyError("The proxy failed."), "Something went wrong", "Start again"),
    (StoreUnavailable("The store is down."), "The proxy cannot reach its storage", "Try again"),
    (UpstreamTimeout("Twitch took too long."), "Twitch is not answering right now", "Try again"),
])
def test_error_page_headings(proxy_config, error, heading, action):
    app = web.Application()
    app[config_key] = proxy_config
    pages.setup_pages(app)
    response = pages.error_page(make_mocked_request("GET", "/callback", app=app), error)
    assert response.status == error.status
    assert f"<h1>{heading}</h1>" in response.text and error.message in response.text
    assert f'href="/">{action}</a>' in response.text
    assert_no_inline_code(response.text)


async def test_static_files(proxy):
    css = await proxy.get("/static/style.css")
    assert css.status == 200 and css.content_type == "text/css"
    assert len(await css.read()) < 16 * 1024  # one small stylesheet
    script = await proxy.get("/static/page.js")
    assert script.status == 200 and script.content_type in ("application/javascript",
                                                            "text/javascript")


# --- contrast: WCAG 2 relative luminance, computed from style.css -----------------

#: (text or border, background, minimum ratio). Text needs 4.5:1 (WCAG AA, normal
#: size); borders of inputs and cards, 3:1 (WCAG 1.4.11 non-text contrast).
CONTRAST_PAIRS = [
    ("--fg", "--bg", 4.5), ("--fg", "--surface", 4.5), ("--fg", "--code-bg", 4.5),
    ("--muted", "--bg", 4.5), ("--muted", "--surface", 4.5),
    ("--link", "--bg", 4.5), ("--link", "--surface", 4.5),
    ("--on-accent", "--accent", 4.5), ("--fg", "--surface", 4.5),
    ("--warn-fg", "--warn-bg", 4.5), ("--error-fg", "--error-bg", 4.5),
    ("--error-fg", "--surface", 4.5), ("--ok-fg", "--surface", 4.5), ("--ok-fg", "--bg", 4.5),
    ("--border", "--bg", 3.0), ("--border", "--surface", 3.0),
    ("--accent", "--surface", 3.0), ("--link", "--surface", 3.0),  # button borders, focus ring
]


def _luminance(hex_colour: str) -> float:
    value = hex_colour.lstrip("#")
    channels = [int(value[i:i + 2], 16) / 255 for i in (0, 2, 4)]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(one: str, other: str) -> float:
    high, low = sorted((_luminance(one), _luminance(other)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def _schemes() -> dict[str, dict[str, str]]:
    css = STYLE.read_text()
    light = re.search(r"^:root \{(.*?)\}", css, re.S | re.M).group(1)
    dark = re.search(r"@media \(prefers-color-scheme: dark\) \{\s*:root \{(.*?)\}", css,
                     re.S).group(1)

    def variables(block: str) -> dict[str, str]:
        return dict(re.findall(r"(--[a-z-]+):\s*(#[0-9a-fA-F]{6});", block))

    return {"light": variables(light), "dark": variables(dark)}


def test_contrast_computation():
    assert contrast("#000000", "#ffffff") == pytest.approx(21.0)
    assert contrast("#777777", "#ffffff") == pytest.approx(4.48, abs=0.01)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_colours_have_enough_contrast(scheme):
    colours = _schemes()[scheme]
    assert set(colours) == set(_schemes()["light"])  # dark overrides every colour
    failures = [
        f"{fg} on {bg}: {contrast(colours[fg], colours[bg]):.2f} < {minimum}"
        for fg, bg, minimum in CONTRAST_PAIRS
        if contrast(colours[fg], colours[bg]) < minimum
    ]
    assert not failures, failures


def test_every_colour_is_a_checked_variable():
    """Outside the two :root blocks, colours only come from the variables."""
    css = STYLE.read_text()
    rules = re.sub(r"^:root \{.*?\}", "", css, count=1, flags=re.S | re.M)
    rules = re.sub(r"@media \(prefers-color-scheme: dark\) \{\s*:root \{.*?\}\s*\}", "",
                   rules, flags=re.S)
    rules = re.sub(r"/\*.*?\*/", "", rules, flags=re.S)
    assert not re.findall(r"#[0-9a-fA-F]{3,8}\b|rgba?\(|hsla?\(", rules)
    used = set(re.findall(r"var\((--[a-z-]+)\)", rules))
    assert used <= set(_schemes()["light"])


# --- the widget kit, statically (the browser test runs it) --------------------------

def test_kit_files_agree():
    fields = json.loads((KIT / "fields.json").read_text())
    assert fields["proxyUrl"]["type"] == "text" and fields["proxyKey"]["type"] == "text"
    assert fields["pollSeconds"]["min"] >= 5
    widget_js = (KIT / "widget.js").read_text()
    for name in fields:
        assert f"{name}:" in widget_js, f"widget.js has no default for field {name}"
    assert 'window.addEventListener("onWidgetLoad"' in widget_js
    # obs.html carries the StreamElements HTML tab verbatim.
    assert (KIT / "widget.html").read_text().strip() in (KIT / "obs.html").read_text()
    legacy = (KIT / "legacy-widget.js").read_text()
    assert legacy.count('const PROXY = "https://your-proxy.example";') == 1
    assert 'fetch(PROXY + "/refresh"' in legacy
    assert 'headers: { "content-type": "application/json" }' in legacy
    assert "JSON.stringify({ refresh_token: refreshToken })" in legacy


def test_app_serves_the_pages_it_renders(proxy_config):
    """Every template renders without a missing value (undefined names are errors)."""
    app = web.Application()
    app[config_key] = proxy_config
    pages.setup_pages(app)
    request = make_mocked_request("GET", "/", app=app)
    assert pages.landing_page(request).status == 200
    assert pages.status_page(request, None).status == 200
