"""The widget kit's alert box in a real Chromium: EventSource, tickets, alerts, a lost login.

The proxy (with /eventsub), the mock Twitch and a server for the kit (another
origin) run as real aiohttp servers on loopback; Chromium (driven by
Playwright, as in tests/system/browser) opens ``alerts-obs.html`` on the kit's
origin and the StreamElements build of the alert box in a sandboxed iframe
(origin ``null``). Every request the browser makes is recorded: the proxy key
goes only into headers, never into a URL.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp import web

from proxy.mock_twitch import DEFAULT_USER_ID
from tests.system import test_eventsub_support as support
from tests.system.browser import browsing
from tests.system.browser.browsing import (
    KIT,
    WAIT_MS,
    Problems,
    host_page,
    new_context,
    sandboxed_iframe,
    screenshot,
)
from tests.system.test_eventsub_support import control, grant_key, settle, subscriptions_at_twitch

if TYPE_CHECKING:
    from playwright.async_api import Page

browser = browsing.browser  # Chromium, one per test

config_flags, eventsub_options, proxy = (support.config_flags, support.eventsub_options,
                                         support.proxy)

pytestmark = pytest.mark.timeout(180)


def _se_alerts_document(field_data: dict[str, Any]) -> str:
    """What StreamElements builds from the alert box's tabs: CSS, HTML, JS, then onWidgetLoad."""
    return (
        "<!doctype html><html><head><meta charset=utf-8>"
        f"<style>{(KIT / 'alerts.css').read_text()}</style></head><body>"
        f"{(KIT / 'alerts.html').read_text()}"
        f"<script>{(KIT / 'alerts.js').read_text()}</script>"
        "<script>window.dispatchEvent(new CustomEvent('onWidgetLoad', {detail: "
        f"{{fieldData: {json.dumps(field_data)}}}}}));</script></body></html>"
    )


@pytest.fixture
async def kit_server(aiohttp_server):
    """The kit, and a host page with the StreamElements build, on another origin."""
    fields: dict[str, Any] = {}

    async def se_alerts(request: web.Request) -> web.Response:
        extra = {"showGifts": True} if request.query.get("gifts") else {}
        return host_page(sandboxed_iframe(_se_alerts_document({**fields, **extra}), "alerts"))

    app = web.Application()
    app.router.add_get("/se-alerts.html", se_alerts)
    app.router.add_static("/kit", KIT)
    server = await aiohttp_server(app)
    server.fields = fields
    return server


def _frame(page: Page):
    frames = [f for f in page.frames if f != page.main_frame]
    return frames[0] if frames else page.main_frame


async def _wait(pages: list[Page], condition: str) -> None:
    """Wait until ``condition`` (JS over ``r``, the alert box's root) holds in every box."""
    script = f"(() => {{ const r = document.getElementById('tpa'); return r && ({condition}); }})()"
    for page in pages:
        await _frame(page).wait_for_function(script, timeout=WAIT_MS)


async def _box(page: Page) -> dict[str, str]:
    return await _frame(page).evaluate(
        "(() => { const r = document.getElementById('tpa');"
        " return {...r.dataset, title: document.getElementById('tpa-title').textContent,"
        " detail: document.getElementById('tpa-detail').textContent,"
        " message: document.getElementById('tpa-message').textContent}; })()")


async def test_the_alert_box_shows_follows_and_subs_and_a_lost_login(
        browser, proxy, twitch_server, mock, kit_server):
    key = (await grant_key(proxy))["proxy_key"]
    proxy_url = str(proxy.make_url("")).rstrip("/")
    fields = {"proxyUrl": proxy_url, "proxyKey": key, "alertSeconds": 1}
    kit_server.fields.update(fields)
    problems = Problems()
    context = await new_context(browser, problems)
    urls: list[str] = []
    context.on("request", lambda request: urls.append(request.url))

    obs = problems.watch(await context.new_page())
    fragment = "&".join(f"{name}={value}" for name, value in fields.items())
    await obs.goto(f"{kit_server.make_url('/kit/alerts-obs.html')}#{fragment}")
    se = problems.watch(await context.new_page())
    await se.goto(str(kit_server.make_url("/se-alerts.html")))
    pages = [obs, se]
    await _wait(pages, "r.dataset.state === 'listening'")

    async def subscribed() -> bool:  # follows and subs, shared by both boxes
        return len(await subscriptions_at_twitch(twitch_server)) == 2
    await settle(subscribed)

    await control(twitch_server, "trigger", type="channel.follow",
                  event={"user_name": "<b>Ada</b>"})
    await _wait(pages, "r.dataset.shown === '1'")
    for page in pages:
        box = await _box(page)
        assert (box["title"], box["detail"]) == ("<b>Ada</b>", "just followed!")  # as text
    await screenshot(obs, "alerts-follow")

    # Twitch drops the session: the proxy reconnects and resubscribes; the boxes stay.
    await control(twitch_server, "drop", user_id=DEFAULT_USER_ID, code=4000)
    await settle(subscribed)
    await control(twitch_server, "trigger", type="channel.subscribe",
                  event={"user_name": "Bob", "tier": "2000", "is_gift": False})
    await _wait(pages, "r.dataset.shown === '2'")
    for page in pages:
        box = await _box(page)
        assert (box["title"], box["detail"]) == ("Bob", "subscribed at Tier 2!")
        assert box["state"] == "listening"

    # A box asking for a type Twitch refuses (the mock has no gifted subs) says so,
    # and keeps its stream instead of reconnecting in a loop.
    gifts = problems.watch(await context.new_page())
    await gifts.goto(str(kit_server.make_url("/se-alerts.html").with_query(gifts=1)))
    await _wait([gifts], "r.dataset.state === 'refused'")
    assert "channel.subscription.gift" in (await _box(gifts))["message"]
    streams_opened = sum("/eventsub?" in url for url in urls)
    await asyncio.sleep(3)  # past the box's first reconnect delay (2 s)
    assert sum("/eventsub?" in url for url in urls) == streams_opened
    await gifts.close()

    # The streamer disconnects the app at Twitch; the next subscription finds out.
    mock.expire_access_tokens(DEFAULT_USER_ID)
    mock.revoke_refresh_tokens(DEFAULT_USER_ID)
    await control(twitch_server, "drop", user_id=DEFAULT_USER_ID, code=4000)
    await _wait(pages, "r.dataset.state === 'reauth'")
    for page in pages:
        assert (await _box(page))["message"].endswith("/login")
    await screenshot(obs, "alerts-reauth")

    assert not [url for url in urls if key in url]
    streams = [url for url in urls if "/eventsub?" in url]
    assert streams and all("ticket=tkt_" in url for url in streams)
    problems.assert_clean(expected=("401",))
    await context.close()
