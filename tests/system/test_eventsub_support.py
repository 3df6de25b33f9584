"""Fixtures and helpers shared by the ``test_eventsub*`` suites (no tests of its own).

The proxy is the real app from ``create_app`` (with short grace periods and
backoff), served on a real port; the mock Twitch serves its
EventSub WebSocket at ``/ws`` and its subscriptions API on the same port, and
is driven through its ``/_mock/eventsub/*`` control endpoints. Widgets are
plain HTTP clients reading the ``text/event-stream`` line by line.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from proxy.core.relay.local import RelaySettings
from proxy.mock_twitch import DEFAULT_USER_ID
from proxy.mock_twitch.eventsub_state import ws_url
from proxy.web.app import create_app
from proxy.web.routes.eventsub import EventSubOptions
from tests.helpers import login

__all__ = ["ME", "SCOPES", "Event", "Widget", "control", "eventsub_options", "grant_key",
           "mock_state", "open_widget", "proxy", "settle", "subscriptions_at_twitch"]

ME = DEFAULT_USER_ID
SCOPES = "user:read:email,moderator:read:followers,channel:read:subscriptions"


@pytest.fixture
def config_flags() -> dict[str, Any]:
    """The login asks for the scopes the alert types need."""
    return {"twitch.scopes": SCOPES}


@pytest.fixture
def eventsub_options(twitch_server) -> EventSubOptions:
    """Short grace periods and a quick backoff: nothing waits Twitch-long in a test."""
    return EventSubOptions(
        ws_url=ws_url(twitch_server.make_url("")), keepalive_timeout=10,
        relay=RelaySettings(grace=0.3, backoff_initial=0.05, backoff_max=0.2),
        heartbeat=20.0, retry_ms=1500)


@pytest.fixture
async def proxy(aiohttp_client, proxy_config, eventsub_options) -> TestClient:
    """A client of a real proxy server with the test's live-events options."""
    return await aiohttp_client(create_app(proxy_config, eventsub=eventsub_options))


async def grant_key(proxy: TestClient) -> dict[str, Any]:
    """Log in through the browser flow; the callback's JSON (proxy_key, tokens)."""
    return await login(proxy)


async def control(twitch_server, name: str, **body: Any) -> Any:
    """``POST /_mock/eventsub/<name>`` on the mock; its JSON answer."""
    async with aiohttp.ClientSession() as session, session.post(
            twitch_server.make_url(f"/_mock/eventsub/{name}"), json=body) as answer:
        assert answer.status == 200, await answer.text()
        return await answer.json()


async def mock_state(twitch_server) -> dict[str, Any]:
    """``GET /_mock/eventsub/state``."""
    async with aiohttp.ClientSession() as session, session.get(
            twitch_server.make_url("/_mock/eventsub/state")) as answer:
        return await answer.json()


async def subscriptions_at_twitch(twitch_server) -> list[dict[str, Any]]:
    """Every enabled subscription the mock holds, over every live session."""
    state = await mock_state(twitch_server)
    return [sub for session in state["sessions"] for sub in session["subscriptions"]]


async def settle(check, *, seconds: float = 20.0) -> None:
    """Wait until the coroutine function ``check`` answers true."""
    async with asyncio.timeout(seconds):
        while not await check():
            await asyncio.sleep(0.05)


@dataclass
class Event:
    """One Server-Sent Event as a browser would dispatch it."""

    event: str
    data: dict[str, Any]
    id: str | None = None


@dataclass
class Widget:
    """One open ``/eventsub`` stream, read line by line."""

    response: aiohttp.ClientResponse
    retry: int | None = None
    comments: list[str] = field(default_factory=list)
    last_id: str | None = None

    async def next(self, seconds: float = 20.0) -> Event:
        """The next event (comments and ``retry:`` are noted, not returned)."""
        fields: dict[str, str] = {}
        async with asyncio.timeout(seconds):
            while True:
                raw = await self.response.content.readline()
                assert raw, "the stream ended"
                line = raw.decode().rstrip("\r\n")
                if not line:
                    if "data" in fields:
                        if "id" in fields:
                            self.last_id = fields["id"]
                        return Event(fields.get("event", "message"), json.loads(fields["data"]),
                                     fields.get("id"))
                    fields = {}
                    continue
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "retry":
                    self.retry = int(value)
                else:
                    fields[name] = value

    async def events(self, count: int, seconds: float = 20.0) -> list[Event]:
        return [await self.next(seconds) for _ in range(count)]

    async def rest(self, seconds: float = 5.0) -> tuple[list[str], bool]:
        """The names of the events that come within ``seconds``, and whether it ended by then."""
        names: list[str] = []
        try:
            async with asyncio.timeout(seconds):
                while True:
                    try:
                        names.append((await self.next(seconds)).event)
                    except AssertionError:  # "the stream ended"
                        return names, True
        except TimeoutError:
            return names, False

    async def ended(self, seconds: float = 20.0) -> bool:
        """Whether the stream ends (after any events still to come, which are dropped)."""
        async with asyncio.timeout(seconds):
            while await self.response.content.readline():
                pass
        return True

    def close(self) -> None:
        self.response.close()


async def open_widget(proxy: TestClient, *types: str, key: str | None = None,
                      ticket: str | None = None, resume_from: str | None = None,
                      headers: dict[str, str] | None = None, **params: str) -> Widget:
    """Open ``GET /eventsub`` for ``types``; fails unless it answers 200 text/event-stream.

    ``params`` go into the query (condition fields, ``last_event_id``).
    """
    query: list[tuple[str, str]] = [("type", name) for name in types]
    query += list(params.items())
    if ticket is not None:
        query.append(("ticket", ticket))
    sent = dict(headers or {})
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    if resume_from is not None:
        sent["Last-Event-ID"] = resume_from  # as a reconnecting EventSource sends it
    response = await proxy.get("/eventsub", params=query, headers=sent)
    assert response.status == 200, await response.text()
    assert response.content_type == "text/event-stream"
    return Widget(response)

