"""/eventsub's door: tickets, keys never in URLs, clear 4xx before the stream, CORS, logs."""

from __future__ import annotations

import asyncio
import logging

import pytest
from yarl import URL

from proxy.core.relay.local import RelaySettings
from proxy.web.routes.eventsub import EventSubOptions
from tests.system import test_eventsub_support as support
from tests.system.test_eventsub_support import (
    ME,
    control,
    grant_key,
    open_widget,
    settle,
    subscriptions_at_twitch,
)

config_flags, proxy = support.config_flags, support.proxy

#: Live events work the same on the one-process stores (tickets live in the store).
pytestmark = [pytest.mark.timeout(120),
              pytest.mark.parametrize("store_url", ["memory", "sqlite"], indirect=True)]


@pytest.fixture
def eventsub_options(twitch_server) -> EventSubOptions:
    """Tickets live half a second and the heartbeat comes quickly, so tests see both."""
    from proxy.mock_twitch.eventsub_state import ws_url
    return EventSubOptions(ws_url=ws_url(twitch_server.make_url("")), keepalive_timeout=10,
                           relay=RelaySettings(grace=0.3), ticket_ttl=0.5, heartbeat=0.2)


async def _ticket(proxy, key: str) -> str:
    answer = await proxy.post("/eventsub/tickets", headers={"Authorization": f"Bearer {key}"})
    assert answer.status == 201, await answer.text()
    assert answer.headers["Cache-Control"] == "no-store"
    body = await answer.json()
    assert body["expires_in"] == 0 or body["expires_in"] <= 60
    return body["ticket"]


async def _refused(proxy, status: int, code: str, params, headers=None) -> str:
    answer = await proxy.get("/eventsub", params=params, headers=headers or {})
    assert answer.status == status, await answer.text()
    assert answer.content_type == "application/json"
    body = await answer.json()
    assert body["error"] == code and body["message"]
    return body["message"]


async def test_a_ticket_opens_one_stream_once(proxy, twitch_server):
    key = (await grant_key(proxy))["proxy_key"]
    ticket = await _ticket(proxy, key)
    widget = await open_widget(proxy, "channel.follow:2", ticket=ticket)
    await _refused(proxy, 401, "invalid_ticket", [("type", "channel.follow:2"),
                                                   ("ticket", ticket)])

    async def subscribed() -> bool:
        return len(await subscriptions_at_twitch(twitch_server)) == 1
    await settle(subscribed)
    await control(twitch_server, "trigger", type="channel.follow")
    assert (await widget.next()).event == "channel.follow"


async def test_a_ticket_expires_and_a_typo_does_not_spend_it(proxy):
    key = (await grant_key(proxy))["proxy_key"]
    ticket = await _ticket(proxy, key)
    await _refused(proxy, 400, "invalid_subscription", [("type", "channel.folow:2"),
                                                        ("ticket", ticket)])
    await open_widget(proxy, "channel.follow:2", ticket=ticket)  # still good after the typo
    late = await _ticket(proxy, key)
    await asyncio.sleep(0.6)
    await _refused(proxy, 401, "invalid_ticket", [("type", "channel.follow:2"),
                                                   ("ticket", late)])


async def test_tickets_need_a_valid_key_in_the_header(proxy):
    key = (await grant_key(proxy))["proxy_key"]
    for headers in ({}, {"Authorization": "Bearer tpk_unknown"}, {"Authorization": key}):
        answer = await proxy.post("/eventsub/tickets", headers=headers)
        assert answer.status == 401
        assert (await answer.json())["error"] == "invalid_proxy_key"
    revoked = await proxy.post("/revoke", headers={"Authorization": f"Bearer {key}"})
    assert revoked.status == 200
    answer = await proxy.post("/eventsub/tickets", headers={"Authorization": f"Bearer {key}"})
    assert answer.status == 401


async def test_a_ticket_of_a_key_revoked_since_opens_nothing(proxy):
    key = (await grant_key(proxy))["proxy_key"]
    ticket = await _ticket(proxy, key)
    assert (await proxy.post("/revoke", headers={"Authorization": f"Bearer {key}"})).status \
        == 200
    await _refused(proxy, 401, "invalid_proxy_key", [("type", "channel.follow:2"),
                                                      ("ticket", ticket)])


async def test_bad_requests_are_json_errors_before_the_stream(proxy):
    key = (await grant_key(proxy))["proxy_key"]
    auth = {"Authorization": f"Bearer {key}"}
    assert "never goes in a URL" in await _refused(
        proxy, 400, "invalid_request", [("type", "channel.follow:2"), ("key", key)])
    assert "never goes in a URL" in await _refused(
        proxy, 400, "invalid_request", [("type", "channel.follow:2"), ("ticket", key)])
    await _refused(proxy, 401, "invalid_proxy_key", [("type", "channel.follow:2")])
    await _refused(proxy, 400, "invalid_subscription", [], auth)
    await _refused(proxy, 400, "invalid_subscription", [("type", "channel.follow:1")], auth)
    await _refused(proxy, 400, "invalid_request", [("type", "channel.follow:2"),
                                                   ("nonsense", "1")], auth)
    await _refused(proxy, 400, "invalid_subscription", [("type", "channel.follow:2"),
                                                        ("moderator_user_id", "42")], auth)
    await _refused(proxy, 400, "invalid_request", [("type", "channel.follow:2"),
                                                   ("broadcaster_user_id", ME),
                                                   ("broadcaster_user_id", "42")], auth)
    await _refused(proxy, 401, "invalid_proxy_key", [("type", "channel.follow:2")],
                   {"Authorization": "Bearer tpk_nope"})


async def test_the_stream_has_cors_no_store_retry_and_a_heartbeat(proxy):
    key = (await grant_key(proxy))["proxy_key"]
    widget = await open_widget(proxy, "channel.follow:2", key=key,
                               headers={"Origin": "null"})
    headers = widget.response.headers
    assert headers["Access-Control-Allow-Origin"] in ("*", "null")
    assert headers["Cache-Control"] == "no-store"
    assert headers["X-Request-Id"]
    async with asyncio.timeout(20):
        while not widget.comments or widget.retry is None:
            line = (await widget.response.content.readline()).decode().strip()
            if line.startswith(":"):
                widget.comments.append(line)
            elif line.startswith("retry:"):
                widget.retry = int(line.split(":")[1])
    assert widget.retry == 3000
    preflight = await proxy.options("/eventsub/tickets", headers={
        "Origin": "null", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "Authorization"})
    assert preflight.status == 200
    assert preflight.headers["Access-Control-Allow-Origin"] in ("*", "null")


async def test_no_key_ticket_or_token_in_any_log_line(proxy, twitch_server, caplog,
                                                      reliability):
    caplog.set_level(logging.DEBUG)
    result = await grant_key(proxy)
    key = result["proxy_key"]
    ticket = await _ticket(proxy, key)
    widget = await open_widget(proxy, "channel.follow:2", ticket=ticket)
    await _refused(proxy, 401, "invalid_ticket", [("type", "channel.follow:2"),
                                                   ("ticket", ticket)])
    await _refused(proxy, 400, "invalid_request", [("type", "channel.follow:2"), ("k", key)])

    async def subscribed() -> bool:
        return len(await subscriptions_at_twitch(twitch_server)) == 1
    await settle(subscribed)
    # Twitch's reconnect URL carries a challenge in its query: never logged.
    urls = (await control(twitch_server, "reconnect", user_id=ME))["reconnect_urls"]
    challenges = [value for url in urls.values() for value in URL(url).query.values()]
    assert challenges

    async def reconnected() -> bool:
        return any("reconnected (was" in record.getMessage() for record in caplog.records)
    await settle(reconnected)
    await control(twitch_server, "drop", user_id=ME, code=4000)
    assert (await widget.next()).event == "gap"
    await settle(subscribed)
    widget.close()
    await asyncio.sleep(0.5)  # the grace period: the session closes
    # aiohttp's own access log is the test server's, off in the proxy's server
    # (proxy/server.py runs without it): every other logger counts.
    lines = [record.getMessage() for record in caplog.records
             if record.name != "aiohttp.access"]
    text = "\n".join(lines)
    ends = [line for line in lines if "route=/eventsub " in line and "status=200" in line]
    assert len(ends) == 1  # the stream's own line: a 200, however it ended
    # One line per session state change and per widget stream start and end.
    for says in ("connected to", "reconnecting to", "reconnected (was",
                 "ended: closed (close code 4000", "closed by the proxy",
                 "widget stream started (channel.follow:2", "widget stream ended ("):
        assert any(says in line for line in lines), says
    secrets = [key, ticket, ticket.removeprefix("tkt_"), result["access_token"],
               result["refresh_token"], "mock-client-secret", *challenges]
    assert reliability.leaks(secrets, text) == []


def test_the_options_follow_the_configuration(proxy_config):
    options = EventSubOptions.from_config(proxy_config)
    eventsub = proxy_config.eventsub
    assert options.ws_url == proxy_config.twitch.eventsub_ws_url == \
        "wss://eventsub.wss.twitch.tv/ws"
    assert (options.keepalive_timeout, options.ticket_ttl, options.heartbeat) == (
        eventsub.keepalive, eventsub.ticket_ttl, eventsub.heartbeat) == (30, 60.0, 20.0)
    assert (options.relay.grace, options.relay.buffer_events, options.relay.buffer_age) == (
        eventsub.grace, eventsub.buffer_events, eventsub.buffer_age) == (60.0, 200, 600.0)
