"""The widget kit in a real browser: cross-origin, sandboxed, polling, and the legacy widget."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from proxy.mock_twitch import DEFAULT_USER_ID
from tests.system.browser.browsing import (
    WAIT_MS,
    Problems,
    kit_settings,
    login_over_http,
    new_context,
    screenshot,
)

if TYPE_CHECKING:
    from playwright.async_api import Page


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
    result = await login_over_http(proxy_client, mock)
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
