"""The proxy's pages in a real browser: connect, copy buttons, the status page, error pages, CSP."""

from __future__ import annotations

import pytest
from yarl import URL

from tests.system.browser.browsing import (
    ALLOWED_SCOPES,
    Problems,
    login_over_http,
    new_context,
    screenshot,
)


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


async def test_status_page_and_log_in_again(browser, proxy_url, proxy_client, mock):
    result = await login_over_http(proxy_client, mock)
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
