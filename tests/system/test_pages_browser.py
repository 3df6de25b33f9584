"""The pages and the widget kit in a real browser: Debian's Chromium driven by Playwright.

The proxy, the mock Twitch (showing its consent page, ``auto_approve=False``) and a
server for the widget kit (another origin) run as real aiohttp servers on loopback
in the test's event loop; Chromium talks to them over HTTP and nothing else (any
request to a non-loopback host is aborted and fails the test). Screenshots of every
page go to ``artifacts/pages/`` (git-ignored).

Without Chromium (``/usr/bin/chromium``) or Playwright these tests skip, except
under CI (``$CI`` set), where they fail.
"""

from __future__ import annotations

import asyncio
import html
import json
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from yarl import URL

from proxy.mock_twitch import DEFAULT_USER_ID, create_mock_app
from proxy.web.app import create_app
from tests.helpers import login

try:
    from playwright.async_api import Browser, Page, async_playwright
except ImportError:  # pragma: no cover - depends on the environment
    async_playwright = None

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts" / "pages"
KIT = ROOT / "examples" / "streamelements"
ALLOWED_SCOPES = ("user:read:email", "bits:read", "channel:read:subscriptions")
WAIT_MS = 20_000  # generous: the machine is shared and slow; nothing here times anything


def _browser_missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so the browser tests must run)")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- servers -------------------------------------------------------------------

@web.middleware
async def _twitch_cors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Real id.twitch.tv and api.twitch.tv answer browsers' CORS; the mock does not."""
    if request.method == "OPTIONS":
        response: web.StreamResponse = web.Response(status=204)
    else:
        response = await handler(request)
    response.headers["Access-Control-Allow-Origin"] = "*"
    response.headers["Access-Control-Allow-Headers"] = "Authorization, Client-Id, Content-Type"
    response.headers["Access-Control-Expose-Headers"] = "Ratelimit-Remaining, Ratelimit-Reset"
    return response


@pytest.fixture
async def twitch_server(aiohttp_server):
    """The mock Twitch with its consent page (overrides conftest's auto-approving one)."""
    app = create_mock_app(auto_approve=False)
    app.middlewares.append(_twitch_cors)
    return await aiohttp_server(app)


@pytest.fixture
def proxy_port() -> int:
    return _free_port()


@pytest.fixture
def config_flags(proxy_port):
    # The proxy's public URL must be where the browser reaches it: Twitch (the mock)
    # redirects there after consent.
    return {"server.public_url": f"http://127.0.0.1:{proxy_port}",
            "twitch.scopes": "user:read:email",
            "twitch.allowed_scopes": ",".join(ALLOWED_SCOPES)}


@pytest.fixture
async def proxy_server(aiohttp_server, proxy_config, proxy_port):
    return await aiohttp_server(create_app(proxy_config), port=proxy_port)


@pytest.fixture
def proxy_url(proxy_server) -> str:
    return str(proxy_server.make_url("")).rstrip("/")


@pytest.fixture
async def proxy_client(aiohttp_client, proxy_server):
    """An HTTP client of the same proxy server the browser uses."""
    return await aiohttp_client(proxy_server)


def _sandboxed_iframe(document: str, title: str) -> str:
    """A StreamElements-like frame: ``sandbox="allow-scripts"``, so its origin is null."""
    return (f'<iframe sandbox="allow-scripts" title="{html.escape(title)}" width="640" '
            f'height="160" srcdoc="{html.escape(document, quote=True)}"></iframe>')


def _host_page(body: str) -> web.Response:
    page = ("<!doctype html><html lang=en><meta charset=utf-8><title>kit</title>"
            f"<body style='background:#444'>{body}</body></html>")
    return web.Response(text=page, content_type="text/html")


def _se_widget_document(field_data: dict[str, Any]) -> str:
    """What StreamElements builds from the four tabs: CSS, HTML, JS, then onWidgetLoad."""
    return (
        "<!doctype html><html><head><meta charset=utf-8>"
        f"<style>{(KIT / 'widget.css').read_text()}</style></head><body>"
        f"{(KIT / 'widget.html').read_text()}"
        f"<script>{(KIT / 'widget.js').read_text()}</script>"
        "<script>window.dispatchEvent(new CustomEvent('onWidgetLoad', {detail: "
        f"{{fieldData: {json.dumps(field_data)}}}}}));</script></body></html>"
    )


def _legacy_widget_document(proxy_url: str, twitch_url: str, field_data: dict[str, Any]) -> str:
    """The legacy widget as its user would paste it: only the PROXY line edited."""
    code = (KIT / "legacy-widget.js").read_text()
    original = 'const PROXY = "https://your-proxy.example";'
    assert code.count(original) == 1
    code = code.replace(original, f"const PROXY = {json.dumps(proxy_url)};")
    return (
        "<!doctype html><html><head><meta charset=utf-8></head><body>"
        "<div id=name style='font:24px sans-serif;color:#fff'>loading</div>"
        f"<script>window.TWITCH_VALIDATE_URL = {json.dumps(twitch_url + '/oauth2/validate')};"
        f"window.TWITCH_HELIX_URL = {json.dumps(twitch_url + '/helix')};</script>"
        f"<script>{code}</script>"
        "<script>window.dispatchEvent(new CustomEvent('onWidgetLoad', {detail: "
        f"{{fieldData: {json.dumps(field_data)}}}}}));</script></body></html>"
    )


kit_settings = web.AppKey("kit_settings", dict)

AVATAR_SVG = ("<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 64 64'>"
              "<rect width='64' height='64' fill='#9146ff'/>"
              "<text x='32' y='42' font-size='30' text-anchor='middle' fill='#fff' "
              "font-family='sans-serif'>TD</text></svg>")


@pytest.fixture
async def kit_server(aiohttp_server):
    """The widget kit and test host pages, served from another origin than the proxy.

    ``app[kit_settings]["field_data"]`` / ``["legacy"]`` are filled by the test
    before it opens the host pages.
    """
    async def se_widget(request: web.Request) -> web.Response:
        copies = int(request.query.get("copies", "1"))
        document = _se_widget_document(request.app[kit_settings]["field_data"])
        return _host_page("".join(_sandboxed_iframe(document, f"widget {n}")
                                  for n in range(copies)))

    async def legacy(request: web.Request) -> web.Response:
        document = _legacy_widget_document(**request.app[kit_settings]["legacy"])
        return _host_page(_sandboxed_iframe(document, "legacy 1")
                          + _sandboxed_iframe(document, "legacy 2"))

    async def avatar(request: web.Request) -> web.Response:
        return web.Response(text=AVATAR_SVG, content_type="image/svg+xml")

    async def blank(request: web.Request) -> web.Response:
        return _host_page("")

    app = web.Application()
    app[kit_settings] = {}
    app.router.add_get("/se-widget.html", se_widget)
    app.router.add_get("/legacy.html", legacy)
    app.router.add_get("/avatar.svg", avatar)
    app.router.add_get("/blank.html", blank)
    app.router.add_static("/kit", KIT)
    return await aiohttp_server(app)


# --- the browser -----------------------------------------------------------------

@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if async_playwright is None:
        _browser_missing("Playwright is not installed (pip install -e '.[test]')")
    if not os.access(CHROMIUM, os.X_OK):
        _browser_missing(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


class Problems:
    """Console errors, uncaught exceptions, CSP violations and off-loopback requests.

    CSP violations are reported from every document the context loads (through
    an exposed function, so none is lost when a page navigates away).
    """

    def __init__(self) -> None:
        self.console: list[str] = []
        self.errors: list[str] = []
        self.csp: list[str] = []
        self.offsite: list[str] = []

    def watch(self, page: Page) -> Page:
        page.on("console", lambda m: self.console.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        return page

    def assert_clean(self, *, expected: tuple[str, ...] = ()) -> None:
        """Nothing went wrong, except console lines containing one of ``expected``."""
        unexpected = [m for m in self.console if not any(e in m for e in expected)]
        assert not unexpected, unexpected
        assert not self.errors, self.errors
        assert not self.csp, self.csp
        assert not self.offsite, self.offsite


# Init scripts are not subject to the page's CSP; the listener reports violations.
_CSP_RECORDER = """
document.addEventListener('securitypolicyviolation', (e) => {
  window.reportCspViolation(e.violatedDirective + ' ' + e.blockedURI + ' ' + location.href);
});
"""


async def new_context(browser: Browser, problems: Problems, *, origin: str | None = None,
                      color_scheme: str = "light"):
    context = await browser.new_context(color_scheme=color_scheme,
                                        viewport={"width": 900, "height": 800})
    if origin is not None:
        await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=origin)
    await context.expose_function("reportCspViolation", lambda text: problems.csp.append(text))
    await context.add_init_script(_CSP_RECORDER)

    async def loopback_only(route):
        host = URL(route.request.url).host
        if host in ("127.0.0.1", "localhost") or route.request.url.startswith(("data:", "about:")):
            await route.continue_()
        else:
            problems.offsite.append(route.request.url)
            await route.abort()

    await context.route("**/*", loopback_only)
    return context


async def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


# --- the pages -----------------------------------------------------------------------

async def test_connect_click_through_copy_buttons_and_csp(browser, proxy_url, proxy_client,
                                                          twitch_server, mock, kit_server):
    problems = Problems()
    context = await new_context(browser, problems, origin=proxy_url)
    page = problems.watch(await context.new_page())

    landing = await page.goto(f"{proxy_url}/")
    assert landing.status == 200
    assert "'unsafe-inline'" not in landing.headers["content-security-policy"]
    await page.get_by_role("heading", name="Connect Twitch to your widgets").wait_for()
    assert await page.get_by_text("mock-client-id").count() == 1
    boxes = page.locator("input[name=scope]")
    assert [await b.get_attribute("value") for b in await boxes.all()] == list(ALLOWED_SCOPES)
    assert [await b.is_checked() for b in await boxes.all()] == [True, False, False]
    await screenshot(page, "landing")
    await page.emulate_media(color_scheme="dark")
    await screenshot(page, "landing-dark")
    await page.emulate_media(color_scheme="light")

    # Pick one more scope by its label, then connect: the mock's consent page lists both.
    await page.get_by_label("See Bits cheered in your channel").check()
    await page.get_by_role("button", name="Connect with Twitch").click()
    await page.get_by_role("button", name="Authorize").wait_for()
    assert URL(page.url).origin() == twitch_server.make_url("").origin()
    assert await page.get_by_text("bits:read").count() == 1
    await screenshot(page, "twitch-consent")
    async with page.expect_response(lambda r: "/callback" in r.url) as callback_info:
        await page.get_by_role("button", name="Authorize").click()
    callback = await callback_info.value
    headers = callback.headers
    assert callback.status == 200
    assert headers["cache-control"] == "no-store"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["x-frame-options"] == "DENY"
    csp = headers["content-security-policy"]
    assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp
    await page.get_by_role("heading", name="Connected as twitchdev").wait_for()
    assert mock.calls["token:authorization_code"] == 1

    # Secrets are hidden until "show"; the copy buttons (added by page.js) copy them.
    key_element = page.locator("#proxy-key")
    assert not await key_element.is_visible()
    await screenshot(page, "callback")
    copied: dict[str, str] = {}
    for element_id, label in (("proxy-key", "proxy key"), ("access-token", "access token"),
                              ("refresh-token", "refresh token"), ("snippet", "widget code"),
                              ("proxy-url", "proxy url")):
        button = page.get_by_role("button", name=f"Copy {label}")
        if element_id == "refresh-token":
            # Keyboard only: focus the button and press Enter.
            await button.focus()
            await page.keyboard.press("Enter")
        else:
            await button.click()
        await page.locator(f'[data-copied-for="{element_id}"]').filter(
            has_text="Copied").wait_for()
        copied[element_id] = await page.evaluate("navigator.clipboard.readText()")
        assert copied[element_id] == await page.locator(f"#{element_id}").text_content()
    assert copied["proxy-key"].startswith("tpk_")
    assert copied["proxy-url"] == proxy_url
    assert not await key_element.is_visible()  # copying did not reveal it
    await page.get_by_text("Show proxy key").click()
    assert await key_element.is_visible()
    await page.get_by_text("Hide proxy key").wait_for()
    await page.set_viewport_size({"width": 390, "height": 800})
    await screenshot(page, "callback-phone")
    await page.set_viewport_size({"width": 900, "height": 800})

    # What was copied works: the key at /status, the token pair at /refresh.
    status = await proxy_client.get("/status",
                                    headers={"Authorization": f"Bearer {copied['proxy-key']}"})
    assert (await status.json())["login"] == "twitchdev"
    assert set((await status.json())["scopes"]) == {"user:read:email", "bits:read"}
    assert copied["access-token"] in mock.access_tokens
    assert copied["refresh-token"] in mock.refresh_tokens

    # Every control is reachable with Tab, in reading order.
    focusable = []
    await page.locator("body").focus()
    for _ in range(30):
        await page.keyboard.press("Tab")
        focusable.append(await page.evaluate(
            "document.activeElement.textContent.trim().slice(0, 40)"))
    for name in ("Hide proxy key", "Copy proxy key", "Show widget code", "Copy refresh token"):
        assert name in focusable, focusable

    # The snippet, pasted into a page on another origin, reaches Twitch through the proxy.
    widget_page = problems.watch(await context.new_page())
    await widget_page.goto(str(kit_server.make_url("/blank.html")))
    async with widget_page.expect_console_message(
            lambda m: m.text.startswith("Connected as")) as message_info:
        await widget_page.add_script_tag(content=copied["snippet"])
    assert (await message_info.value).text == "Connected as TwitchDev"

    await page.emulate_media(color_scheme="dark")
    await screenshot(page, "callback-dark")
    problems.assert_clean()

    # The CSP holds: a script injected into the page (as an XSS would) does not run.
    with pytest.raises(Exception, match="Content Security Policy|CSP|Refused"):
        await page.add_script_tag(content="window.injected = true")
    assert await page.evaluate("window.injected") is None
    assert any(v.startswith("script-src") for v in problems.csp), problems.csp
    await context.close()


async def _login_over_http(proxy_client, mock) -> dict[str, Any]:
    """A grant without clicking: the mock approves this once, like a returning user."""
    mock.auto_approve = True
    try:
        return await login(proxy_client)
    finally:
        mock.auto_approve = False


async def test_status_page_and_log_in_again(browser, proxy_url, proxy_client, mock):
    result = await _login_over_http(proxy_client, mock)
    problems = Problems()
    context = await new_context(browser, problems)
    page = problems.watch(await context.new_page())

    await page.goto(f"{proxy_url}/status")
    key_input = page.get_by_label("Proxy key")
    assert await key_input.get_attribute("type") == "password"
    await key_input.fill(result["proxy_key"])
    await key_input.press("Enter")
    await page.get_by_role("heading", name="This key").wait_for()
    assert page.url == f"{proxy_url}/status"  # the key went in the body, not the URL
    facts = await page.locator("dl.facts").inner_text()
    assert "twitchdev" in facts and "user:read:email" in facts and "Working" in facts
    assert await page.get_by_role("button", name="Log in again with Twitch").count() == 0
    await screenshot(page, "status")

    # Twitch drops the connection (password changed); the next widget call finds out.
    mock.revoke_refresh_tokens()
    mock.expire_access_tokens()
    helix = await proxy_client.get("/helix/users",
                                   headers={"Authorization": f"Bearer {result['proxy_key']}"})
    assert (await helix.json())["error"] == "reauthorization_required"

    await page.get_by_label("Proxy key").fill(result["proxy_key"])
    await page.get_by_role("button", name="Check").click()
    await page.get_by_text("Twitch no longer accepts this connection").first.wait_for()
    await screenshot(page, "status-needs-login")
    await page.get_by_role("button", name="Log in again with Twitch").click()
    await page.get_by_role("button", name="Authorize").click()
    await page.get_by_role("heading", name="Connected as twitchdev").wait_for()
    # The old key works again: logging in revived the same grant.
    again = await proxy_client.get("/helix/users",
                                   headers={"Authorization": f"Bearer {result['proxy_key']}"})
    assert again.status == 200

    await page.goto(f"{proxy_url}/status")
    await page.get_by_label("Proxy key").fill("tpk_not-a-real-key")
    await page.get_by_role("button", name="Check").click()
    await page.get_by_role("alert").filter(has_text="unknown or was revoked").wait_for()
    await screenshot(page, "status-unknown-key")
    # The unknown key's page is a 401, which Chromium reports on the console.
    problems.assert_clean(expected=("status of 401",))
    await context.close()


async def test_error_pages(browser, proxy_url, mock):
    problems = Problems()
    context = await new_context(browser, problems)
    page = problems.watch(await context.new_page())

    # Denied consent.
    await page.goto(f"{proxy_url}/")
    await page.get_by_role("button", name="Connect with Twitch").click()
    await page.get_by_role("button", name="Cancel").click()
    await page.get_by_role("heading", name="You did not approve the connection").wait_for()
    assert "Nothing was stored" in await page.locator("main").inner_text()
    await screenshot(page, "error-denied")
    await page.get_by_role("link", name="Connect with Twitch").click()
    await page.get_by_role("heading", name="Connect Twitch to your widgets").wait_for()

    # A state that is unknown (an old or forged link).
    response = await page.goto(f"{proxy_url}/callback?code=abc&state=forged")
    assert response.status == 400
    await page.get_by_role("heading", name="This login is no longer valid").wait_for()
    assert "only in the browser that started it" in await page.locator("main").inner_text()
    await screenshot(page, "error-bad-state")

    # Twitch failing while the code is exchanged.
    mock.queue_failure("token", 503, "<html><body>Service Unavailable</body></html>")
    await page.goto(f"{proxy_url}/")
    await page.get_by_role("button", name="Connect with Twitch").click()
    async with page.expect_response(lambda r: "/callback" in r.url) as callback_info:
        await page.get_by_role("button", name="Authorize").click()
    callback = await callback_info.value
    assert callback.status == 503 and callback.headers["retry-after"]
    await page.get_by_role("heading", name="Twitch is not answering right now").wait_for()
    await screenshot(page, "error-twitch-down")
    await page.emulate_media(color_scheme="dark")
    await screenshot(page, "error-twitch-down-dark")

    problems.assert_clean(expected=("status of 400", "status of 503"))
    await context.close()


# --- the widget kit ------------------------------------------------------------------

async def _widget_states(page: Page) -> list[dict[str, str]]:
    """data-* of every widget on the page: obs.html's own, or each sandboxed frame's."""
    frames = [f for f in page.frames if f != page.main_frame] or [page.main_frame]
    states = []
    for frame in frames:
        states.append(await frame.evaluate(
            "(() => { const r = document.getElementById('tpw');"
            " return {...r.dataset, name: document.getElementById('tpw-name').textContent,"
            " live: document.getElementById('tpw-live').textContent,"
            " message: document.getElementById('tpw-message').textContent,"
            " origin: self.origin}; })()"))
    return states


async def _wait_for_widgets(pages: list[Page], condition: str) -> None:
    """Wait until ``condition`` (JS over ``r``, the widget root) holds in every widget."""
    for page in pages:
        frames = [f for f in page.frames if f != page.main_frame] or [page.main_frame]
        for frame in frames:
            script = (f"(() => {{ const r = document.getElementById('tpw');"
                      f" return r && ({condition}); }})()")
            await frame.wait_for_function(script, timeout=WAIT_MS)


async def test_widget_kit_cross_origin_and_sandboxed_through_expiry(
        browser, proxy_url, proxy_client, mock, kit_server):
    result = await _login_over_http(proxy_client, mock)
    mock.users[DEFAULT_USER_ID].profile_image_url = str(kit_server.make_url("/avatar.svg"))
    field_data = {"proxyUrl": proxy_url, "proxyKey": result["proxy_key"], "pollSeconds": 5}
    kit_server.app[kit_settings]["field_data"] = field_data
    problems = Problems()
    context = await new_context(browser, problems)
    helix_origins: list[str | None] = []

    async def note_origin(request) -> None:
        if "/helix/" in request.url and request.method == "GET":
            helix_origins.append(await request.header_value("origin"))

    context.on("request", note_origin)

    # obs.html on the kit's origin (fields in the #fragment), and two copies of the
    # StreamElements widget in sandboxed iframes (origin "null") on one page.
    obs = problems.watch(await context.new_page())
    fragment = "&".join(f"{k}={v}" for k, v in field_data.items())
    await obs.goto(f"{kit_server.make_url('/kit/obs.html')}#{fragment}")
    se = problems.watch(await context.new_page())
    await se.goto(str(kit_server.make_url("/se-widget.html").with_query(copies=2)))
    pages = [obs, se]
    await _wait_for_widgets(pages, "r.dataset.state === 'ok'")
    states = await _widget_states(obs) + await _widget_states(se)
    assert [s["name"] for s in states] == ["TwitchDev"] * 3
    assert [s["live"] for s in states] == ["Offline"] * 3
    assert [s["origin"] for s in states] == [str(kit_server.make_url("")).rstrip("/"),
                                             "null", "null"]
    # The listener awaits each request's headers: give the last ones a moment.
    expected = {"null", str(kit_server.make_url("")).rstrip("/")}
    for _ in range(100):
        if expected <= set(helix_origins):
            break
        await asyncio.sleep(0.05)
    assert expected <= set(helix_origins)
    # Ratelimit-* reached the widget's script through CORS.
    assert all(s.get("ratelimitRemaining", "").isdigit() for s in states), states
    await screenshot(obs, "widget-obs")

    # Between polls: Twitch expires the token and the streamer goes live.
    mock.expire_access_tokens()
    mock.set_live(DEFAULT_USER_ID, "Building widgets", "Software and Game Development",
                  viewer_count=1234)
    refreshes = mock.calls["token:refresh_token"]
    polls = [int(s["polls"]) for s in states]
    await _wait_for_widgets(pages, "r.dataset.live === 'true'")
    states = await _widget_states(obs) + await _widget_states(se)
    assert all(int(s["polls"]) > before for s, before in zip(states, polls, strict=True))
    assert [s["name"] for s in states] == ["TwitchDev"] * 3
    assert all(s["live"].startswith("LIVE1,234 viewers") for s in states), states
    # One refresh for all three widgets, done by the proxy.
    assert mock.calls["token:refresh_token"] == refreshes + 1
    await screenshot(obs, "widget-obs-live")
    await screenshot(se, "widget-streamelements-sandboxed")
    problems.assert_clean()

    # Twitch drops the connection: every widget says how to fix it.
    mock.revoke_refresh_tokens()
    mock.expire_access_tokens()
    await _wait_for_widgets(pages, "r.dataset.state === 'reauth'")
    states = await _widget_states(obs) + await _widget_states(se)
    assert all(f"{proxy_url}/login" in s["message"] for s in states), states
    await screenshot(obs, "widget-obs-reauth")
    problems.assert_clean(expected=("status of 401",))
    await context.close()


async def test_widget_polling_schedule(browser, kit_server):
    """nextDelaySeconds: Ratelimit-*, Retry-After and backoff, checked in the browser."""
    problems = Problems()
    context = await new_context(browser, problems)
    page = problems.watch(await context.new_page())
    await page.goto(f"{kit_server.make_url('/kit/obs.html')}")
    delay = "(o, poll, now) => window.TwitchProxyWidget.nextDelaySeconds(o, poll, now)"

    async def next_delay(outcome: dict[str, Any], poll: float = 60, now: float = 1000) -> Any:
        return await page.evaluate(f"([o, p, n]) => ({delay})(o, p, n)", [outcome, poll, now])

    plenty = {"remaining": 700, "reset": 1030}
    assert await next_delay({"kind": "ok", "ratelimit": plenty}) == 60
    assert await next_delay({"kind": "ok", "ratelimit": plenty}, poll=1) == 5  # the floor
    # Nearly out of requests: wait for the bucket to refill.
    assert await next_delay({"kind": "ok", "ratelimit": {"remaining": 1, "reset": 1090}}) == 91
    assert await next_delay({"kind": "ok", "ratelimit": {"remaining": 1, "reset": 1010}}) == 60
    assert await next_delay({"kind": "rate-limited", "retryAfter": 120, "ratelimit": None}) == 120
    assert await next_delay({"kind": "rate-limited", "retryAfter": None,
                             "ratelimit": {"remaining": 0, "reset": 1200}}) == 201
    backoff = [await next_delay({"kind": "error", "failures": n, "ratelimit": None})
               for n in (1, 2, 3, 4, 5, 6)]
    assert backoff == [60, 120, 240, 480, 600, 600]
    assert await next_delay({"kind": "error", "failures": 1, "retryAfter": 90,
                             "ratelimit": None}) == 90
    assert await next_delay({"kind": "reauth", "ratelimit": None}) == 300
    assert await next_delay({"kind": "bad-key", "ratelimit": None}) is None
    # Without fields the widget says what to set and does not poll.
    assert await page.locator("#tpw").get_attribute("data-state") == "config"
    assert "Proxy URL and Proxy key" in await page.locator("#tpw-message").inner_text()
    problems.assert_clean()
    await context.close()


async def test_legacy_widget_refreshes_through_the_proxy(browser, proxy_url, twitch_server,
                                                        mock, kit_server):
    """The old tool's widget, edited only in its PROXY line, two copies, one stale pair."""
    tokens = mock.issue_tokens(DEFAULT_USER_ID, ["user:read:email"])
    mock.expire_access_tokens()
    kit_server.app[kit_settings]["legacy"] = {
        "proxy_url": proxy_url,
        "twitch_url": str(twitch_server.make_url("")).rstrip("/"),
        "field_data": {"accessToken": tokens["access_token"],
                       "refreshToken": tokens["refresh_token"], "clientId": "mock-client-id"},
    }
    problems = Problems()
    context = await new_context(browser, problems)
    page = problems.watch(await context.new_page())
    await page.goto(str(kit_server.make_url("/legacy.html")))
    frames = [f for f in page.frames if f != page.main_frame]
    assert len(frames) == 2
    for frame in frames:
        await frame.wait_for_function(
            "document.getElementById('name').textContent === 'TwitchDev'", timeout=WAIT_MS)
    # Both copies validated at "Twitch", refreshed through the proxy, and Twitch saw
    # one refresh and no reuse of the spent refresh token.
    assert mock.calls["validate"] >= 4
    assert mock.calls["token:refresh_token"] == 1
    assert mock.refresh_reuses == 0
    await screenshot(page, "legacy-widget")
    # The expired token's validation is a 401, which Chromium reports on the console.
    problems.assert_clean(expected=("status of 401",))
    await context.close()
