"""Fixtures of the browser tests: the pages and the widget kit in Debian's Chromium (Playwright).

The proxy, the mock Twitch (showing its consent page, ``auto_approve=False``) and a
server for the widget kit (another origin) run as real aiohttp servers on loopback
in the test's event loop; Chromium talks to them over HTTP and nothing else (any
request to a non-loopback host is aborted and fails the test). Screenshots of every
page go to ``artifacts/pages/`` (git-ignored).

Without Chromium (``/usr/bin/chromium``) or Playwright these tests skip, except
under CI (``$CI`` set), where they fail.
"""

from __future__ import annotations

import pytest
from aiohttp import web

from proxy.mock_twitch import create_mock_app
from proxy.web.app import create_app
from tests.processes import free_port
from tests.system.browser import browsing
from tests.system.browser.browsing import (
    ALLOWED_SCOPES,
    AVATAR_SVG,
    KIT,
    host_page,
    kit_settings,
    legacy_widget_document,
    sandboxed_iframe,
    se_widget_document,
    twitch_cors,
)

browser = browsing.browser  # Chromium, one per test


@pytest.fixture
async def twitch_server(aiohttp_server):
    """The mock Twitch with its consent page (overrides conftest's auto-approving one)."""
    app = create_mock_app(auto_approve=False)
    app.middlewares.append(twitch_cors)
    return await aiohttp_server(app)


@pytest.fixture
def proxy_port() -> int:
    return free_port()


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


@pytest.fixture
async def kit_server(aiohttp_server):
    """The widget kit and test host pages, served from another origin than the proxy.

    ``app[kit_settings]["field_data"]`` / ``["legacy"]`` are filled by the test
    before it opens the host pages.
    """
    async def se_widget(request: web.Request) -> web.Response:
        copies = int(request.query.get("copies", "1"))
        document = se_widget_document(request.app[kit_settings]["field_data"])
        return host_page("".join(sandboxed_iframe(document, f"widget {n}")
                                  for n in range(copies)))

    async def legacy(request: web.Request) -> web.Response:
        document = legacy_widget_document(**request.app[kit_settings]["legacy"])
        return host_page(sandboxed_iframe(document, "legacy 1")
                         + sandboxed_iframe(document, "legacy 2"))

    async def avatar(request: web.Request) -> web.Response:
        return web.Response(text=AVATAR_SVG, content_type="image/svg+xml")

    async def blank(request: web.Request) -> web.Response:
        return host_page("")

    app = web.Application()
    app[kit_settings] = {}
    app.router.add_get("/se-widget.html", se_widget)
    app.router.add_get("/legacy.html", legacy)
    app.router.add_get("/avatar.svg", avatar)
    app.router.add_get("/blank.html", blank)
    app.router.add_static("/kit", KIT)
    return await aiohttp_server(app)


