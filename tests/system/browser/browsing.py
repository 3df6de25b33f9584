"""Plain helpers of the browser tests: server pieces, a watched browser context, screenshots."""

from __future__ import annotations

import html
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp import web
from yarl import URL

from tests.helpers import login

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

try:
    from playwright.async_api import async_playwright
except ImportError:  # pragma: no cover - depends on the environment
    async_playwright = None


CHROMIUM = "/usr/bin/chromium"


CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


ROOT = Path(__file__).resolve().parents[3]


ARTIFACTS = ROOT / "artifacts" / "pages"


KIT = ROOT / "examples" / "streamelements"


ALLOWED_SCOPES = ("user:read:email", "bits:read", "channel:read:subscriptions")


WAIT_MS = 20_000  # generous: the machine is shared and slow; nothing here times anything


def browser_missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so the browser tests must run)")
    pytest.skip(reason)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Debian's Chromium through Playwright, for one test (a skip, or under CI a failure,
    when either is missing)."""
    if async_playwright is None:
        browser_missing("Playwright is not installed (pip install -e '.[test]')")
    if not os.access(CHROMIUM, os.X_OK):
        browser_missing(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@web.middleware
async def twitch_cors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Real id.twitch.tv and api.twitch.tv answer browsers' CORS; the mock does not."""
    if request.method == "OPTIONS":
        response: web.StreamResponse = web.Response(status=204)
    else:
        response = await handler(request)
    response.headers["Access-Control-Allow-Origin"] = "*"
    response.headers["Access-Control-Allow-Headers"] = "Authorization, Client-Id, Content-Type"
    response.headers["Access-Control-Expose-Headers"] = "Ratelimit-Remaining, Ratelimit-Reset"
    return response


def sandboxed_iframe(document: str, title: str) -> str:
    """A StreamElements-like frame: ``sandbox="allow-scripts"``, so its origin is null."""
    return (f'<iframe sandbox="allow-scripts" title="{html.escape(title)}" width="640" '
            f'height="160" srcdoc="{html.escape(document, quote=True)}"></iframe>')


def host_page(body: str) -> web.Response:
    page = ("<!doctype html><html lang=en><meta charset=utf-8><title>kit</title>"
            f"<body style='background:#444'>{body}</body></html>")
    return web.Response(text=page, content_type="text/html")


def se_widget_document(field_data: dict[str, Any]) -> str:
    """What StreamElements builds from the four tabs: CSS, HTML, JS, then onWidgetLoad."""
    return (
        "<!doctype html><html><head><meta charset=utf-8>"
        f"<style>{(KIT / 'widget.css').read_text()}</style></head><body>"
        f"{(KIT / 'widget.html').read_text()}"
        f"<script>{(KIT / 'widget.js').read_text()}</script>"
        "<script>window.dispatchEvent(new CustomEvent('onWidgetLoad', {detail: "
        f"{{fieldData: {json.dumps(field_data)}}}}}));</script></body></html>"
    )


def legacy_widget_document(proxy_url: str, twitch_url: str, field_data: dict[str, Any]) -> str:
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


async def login_over_http(proxy_client, mock) -> dict[str, Any]:
    """A grant without clicking: the mock approves this once, like a returning user."""
    mock.auto_approve = True
    try:
        return await login(proxy_client)
    finally:
        mock.auto_approve = False
