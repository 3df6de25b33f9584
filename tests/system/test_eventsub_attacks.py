"""Attacks on /eventsub's credentials: keys, tickets, grants, resume ids, conditions, junk.

Each test names a promise of the live-events credential model (SECURITY.md,
the module docstrings of ``proxy.web.routes.eventsub`` and ``proxy.core.tickets``)
and tries to break it over real HTTP: a real proxy server, the mock Twitch's
EventSub WebSocket and subscriptions API, widgets as plain HTTP streams. Each
was seen failing before its fix (revocation, echoed secrets, ticket spending,
unbounded streams and tickets).
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest

from tests.helpers import bearer
from tests.system import test_eventsub_support as support
from tests.system.test_eventsub_support import (
    ME,
    SCOPES,
    control,
    grant_key,
    open_widget,
    settle,
    subscriptions_at_twitch,
)

config_flags, eventsub_options, proxy = (support.config_flags, support.eventsub_options,
                                         support.proxy)

pytestmark = pytest.mark.timeout(180)

RIVAL = "424242"


async def _rival_key(proxy, mock) -> str:
    """A proxy key of a second Twitch user's grant."""
    mock.add_user(RIVAL, "rival")
    mock.signed_in_user_id = RIVAL
    try:
        return (await grant_key(proxy))["proxy_key"]
    finally:
        mock.signed_in_user_id = ME


async def _ticket(proxy, key: str) -> str:
    answer = await proxy.post("/eventsub/tickets", headers={"Authorization": f"Bearer {key}"})
    assert answer.status == 201, await answer.text()
    return (await answer.json())["ticket"]


async def _subscribed(twitch_server, count: int) -> None:
    async def check() -> bool:
        return len(await subscriptions_at_twitch(twitch_server)) == count
    await settle(check)



# -- a revoked key, grant or login ends streams already open ---------------------------


async def test_revoking_a_key_ends_the_streams_it_opened(proxy, twitch_server):
    key = (await grant_key(proxy))["proxy_key"]
    by_header = await open_widget(proxy, "channel.follow:2", key=key)
    by_ticket = await open_widget(proxy, "channel.follow:2", ticket=await _ticket(proxy, key))
    await _subscribed(twitch_server, 1)
    assert (await proxy.post("/revoke", headers=bearer(key))).status == 200
    await control(twitch_server, "trigger", type="channel.follow")
    for widget in (by_header, by_ticket):  # a last event says why, then the stream ends
        assert await widget.rest() == (["access_revoked"], True)


async def test_revoking_the_grant_at_twitch_ends_every_stream_of_the_grant(proxy,
                                                                           twitch_server):
    first = (await grant_key(proxy))["proxy_key"]
    second = (await grant_key(proxy))["proxy_key"]  # another key of the same grant
    widgets = [await open_widget(proxy, "channel.follow:2", key=key) for key in (first, second)]
    await _subscribed(twitch_server, 1)
    revoked = await proxy.post("/revoke", params={"twitch": "true"}, headers=bearer(first))
    assert revoked.status == 200
    await control(twitch_server, "trigger", type="channel.follow")
    for widget in widgets:
        assert await widget.rest() == (["access_revoked"], True)


async def test_a_grant_found_needing_a_login_ends_its_open_streams(proxy, twitch_server,
                                                                   mock):
    key = (await grant_key(proxy))["proxy_key"]
    widget = await open_widget(proxy, "channel.follow:2", key=key)
    await _subscribed(twitch_server, 1)
    mock.expire_access_tokens(ME)
    mock.revoke_refresh_tokens(ME)  # the user disconnected the app at Twitch
    answer = await proxy.get("/helix/users", headers=bearer(key))
    assert answer.status == 401
    assert (await answer.json())["error"] == "reauthorization_required"
    assert await widget.rest() == (["reauthorization_required"], True)


# -- tickets ----------------------------------------------------------------------------


async def test_concurrent_replays_of_one_ticket_open_exactly_one_stream(proxy):
    key = (await grant_key(proxy))["proxy_key"]
    ticket = await _ticket(proxy, key)
    answers = await asyncio.gather(*(
        proxy.get("/eventsub", params={"type": "channel.follow:2", "ticket": ticket})
        for _ in range(20)))
    statuses = sorted(answer.status for answer in answers)
    assert statuses == [200] + [401] * 19
    for answer in answers:
        if answer.status == 401:
            assert (await answer.json())["error"] == "invalid_ticket"
        answer.close()


async def test_a_ticket_opens_only_its_own_grants_events(proxy, twitch_server, mock):
    mine = (await grant_key(proxy))["proxy_key"]
    rival = await _rival_key(proxy, mock)
    widget = await open_widget(proxy, "channel.follow:2", ticket=await _ticket(proxy, rival))
    keeper = await open_widget(proxy, "channel.follow:2", key=mine)
    await _subscribed(twitch_server, 2)
    await control(twitch_server, "trigger", type="channel.follow", user_id=ME,
                  event={"user_name": "for-me"})
    await control(twitch_server, "trigger", type="channel.follow", user_id=RIVAL,
                  event={"user_name": "for-rival"})
    assert (await keeper.next()).data["user_name"] == "for-me"
    event = await widget.next()
    assert event.data["user_name"] == "for-rival"
    assert event.data["broadcaster_user_id"] == RIVAL


async def test_the_ticket_in_the_header_or_a_ticket_with_a_key_is_refused(proxy):
    key = (await grant_key(proxy))["proxy_key"]
    ticket = await _ticket(proxy, key)
    for headers in ({"Authorization": f"Bearer {ticket}"}, {"Authorization": ticket}):
        answer = await proxy.get("/eventsub", params={"type": "channel.follow:2"},
                                 headers=headers)
        assert answer.status == 401
        body = await answer.json()
        assert body["error"] == "invalid_proxy_key" and ticket not in str(body)
    # a ticket cannot be exchanged for another ticket
    answer = await proxy.post("/eventsub/tickets", headers={"Authorization": f"Bearer {ticket}"})
    assert answer.status == 401
    await open_widget(proxy, "channel.follow:2", ticket=ticket)  # none of that spent it


async def test_a_bad_condition_does_not_spend_the_ticket(proxy):
    key = (await grant_key(proxy))["proxy_key"]
    ticket = await _ticket(proxy, key)
    for condition in ({"moderator_user_id": "42"}, {"broadcaster_user_id": "not-digits"},
                      {"reward_id": "1"}):
        answer = await proxy.get("/eventsub", params={"type": "channel.follow:2",
                                                      "ticket": ticket, **condition})
        assert answer.status == 400
        assert (await answer.json())["error"] == "invalid_subscription"
    await open_widget(proxy, "channel.follow:2", ticket=ticket)


@pytest.mark.parametrize("config_flags", [{"twitch.scopes": SCOPES,
                                           "limits.eventsub_per_minute": 0}])
async def test_one_key_cannot_evict_another_grants_tickets(proxy, mock):
    """Even with the per-address limit off, tickets are kept apart, not in one shared queue."""
    mine = (await grant_key(proxy))["proxy_key"]
    rival = await _rival_key(proxy, mock)
    ticket = await _ticket(proxy, mine)
    connector = aiohttp.TCPConnector(limit=50)
    async with aiohttp.ClientSession(connector=connector) as session:
        url = proxy.make_url("/eventsub/tickets")

        async def issue() -> int:
            async with session.post(url, headers=bearer(rival)) as answer:
                return answer.status
        for _ in range(20):
            statuses = await asyncio.gather(*(issue() for _ in range(500)))
            if any(status != 201 for status in statuses):
                break  # refused: a bound per key or per address holds
    await open_widget(proxy, "channel.follow:2", ticket=ticket)


async def test_one_key_cannot_mint_unbounded_tickets(proxy):
    key = (await grant_key(proxy))["proxy_key"]
    connector = aiohttp.TCPConnector(limit=50)
    async with aiohttp.ClientSession(connector=connector) as session:
        url = proxy.make_url("/eventsub/tickets")

        async def issue() -> tuple[int, str]:
            async with session.post(url, headers=bearer(key)) as answer:
                return answer.status, await answer.text()
        answers = await asyncio.gather(*(issue() for _ in range(2000)))
    refused = [(status, text) for status, text in answers if status != 201]
    assert refused, "2000 unused tickets of one key, all issued"
    assert refused[0][0] == 429 and '"error"' in refused[0][1]


# -- keys never in a URL, and never echoed -----------------------------------------------


async def test_a_key_or_ticket_anywhere_in_the_url_is_refused_and_never_echoed(proxy):
    key = (await grant_key(proxy))["proxy_key"]
    ticket = await _ticket(proxy, key)
    echoed: list[str] = []
    for secret in (key, ticket):
        attempts: list[list[tuple[str, str]]] = [
            [("type", "channel.follow:2"), (secret, "")],
            [("type", "channel.follow:2"), (secret, "1")],
            [("type", f"channel.follow:{secret}")],
            [("type", f"{secret}:2")],
            [("type", "channel.follow:2"), ("broadcaster_user_id", f" {secret}")],
        ]
        for params in attempts:
            answer = await proxy.get("/eventsub", params=params)
            assert 400 <= answer.status < 500, params
            assert answer.content_type == "application/json"
            text = await answer.text()
            if secret[4:20] in text:
                echoed.append(text.replace(secret[4:20], "<SECRET>"))
    assert echoed == [], "\n".join(echoed)


async def test_the_request_log_never_prints_a_ticket_or_a_refused_key(proxy, caplog,
                                                                     reliability):
    caplog.set_level(logging.DEBUG)
    key = (await grant_key(proxy))["proxy_key"]
    ticket = await _ticket(proxy, key)
    widget = await open_widget(proxy, "channel.follow:2", ticket=ticket)
    widget.close()
    spare = await _ticket(proxy, key)
    for params in ([("type", "channel.follow:2"), ("ticket", ticket)],
                   [("type", "channel.follow:2"), ("ticket", ticket + "x")],
                   [("type", f"channel.follow:{spare}")],
                   [("type", "channel.follow:2"), (spare, "")],
                   [("type", "channel.follow:2"), ("last_event_id", spare)],
                   [("type", "channel.follow:2"), ("ticket", key)],
                   [("type", "channel.follow:2"), (key, "")]):
        answer = await proxy.get("/eventsub", params=params)
        assert 400 <= answer.status < 500
    await asyncio.sleep(0.5)
    text = "\n".join(record.getMessage() for record in caplog.records
                     if record.name != "aiohttp.access")
    assert "route=/eventsub" in text  # the request log was captured
    secrets = [key, ticket, ticket.removeprefix("tkt_"), spare, spare.removeprefix("tkt_")]
    assert reliability.leaks(secrets, text) == []


async def test_a_line_break_in_a_parameter_cannot_forge_a_log_line(proxy, caplog):
    caplog.set_level(logging.INFO)
    key = (await grant_key(proxy))["proxy_key"]
    forged = "channel.follow:2\nroute=/eventsub status=200 grant_id=forged"
    for params in ({"type": forged}, {"type": "channel.follow:2", "last_event_id": forged},
                   {"type": "channel.follow:2", forged: "1"}):
        answer = await proxy.get("/eventsub", params=params, headers=bearer(key))
        assert answer.status in (200, 400)
        answer.close()
    await asyncio.sleep(0.3)
    messages = [record.getMessage() for record in caplog.records]
    assert any("route=/eventsub" in message for message in messages)
    assert not any("\nroute=" in message or "grant_id=forged" in message
                   for message in messages)


# -- one grant cannot read another's events --------------------------------------------


async def test_another_grants_last_event_id_replays_nothing_of_it(proxy, twitch_server,
                                                                  mock):
    mine = (await grant_key(proxy))["proxy_key"]
    rival = await _rival_key(proxy, mock)
    keeper = await open_widget(proxy, "channel.follow:2", key=rival)
    own = await open_widget(proxy, "channel.follow:2", key=mine)
    await _subscribed(twitch_server, 2)
    await control(twitch_server, "trigger", type="channel.follow", user_id=RIVAL,
                  event={"user_name": "secret-follow"})
    rival_event = await keeper.next()
    # The first of the rival's events: every later one would be "missed".
    first_id = rival_event.id.rsplit("-", 1)[0] + "-0"
    await control(twitch_server, "trigger", type="channel.follow", user_id=RIVAL, count=2)
    for resume in ({"resume_from": first_id}, {"last_event_id": first_id},
                   {"resume_from": rival_event.id}):
        attacker = await open_widget(proxy, "channel.follow:2", key=mine, **resume)
        event = await attacker.next()
        assert event.event == "gap" and event.data["reason"] == "resume_unavailable"
        assert "secret-follow" not in str(event.data)
        attacker.close()
    await control(twitch_server, "trigger", type="channel.follow", user_id=ME,
                  event={"user_name": "mine"})
    assert (await own.next()).data["user_name"] == "mine"


# -- conditions ---------------------------------------------------------------------------


async def test_conditions_naming_another_user_as_the_token_user_are_refused(proxy, mock):
    key = (await grant_key(proxy))["proxy_key"]
    await _rival_key(proxy, mock)
    for params in ({"type": "channel.follow:2", "moderator_user_id": RIVAL,
                    "broadcaster_user_id": RIVAL},
                   {"type": "channel.chat.message:1", "user_id": RIVAL},
                   {"type": "user.update:1", "user_id": RIVAL}):
        answer = await proxy.get("/eventsub", params=params, headers=bearer(key))
        assert answer.status == 400, params
        assert (await answer.json())["error"] == "invalid_subscription"


async def test_another_channels_private_events_are_an_error_not_a_stream_of_them(
        proxy, twitch_server, mock):
    key = (await grant_key(proxy))["proxy_key"]
    await _rival_key(proxy, mock)
    widget = await open_widget(proxy, "channel.subscribe:1", key=key,
                               broadcaster_user_id=RIVAL)
    event = await widget.next()
    assert event.event == "error" and event.data["status"] == 403
    assert event.data["condition"] == {"broadcaster_user_id": RIVAL}
    assert await subscriptions_at_twitch(twitch_server) == []


# -- limits and junk ----------------------------------------------------------------------


async def test_one_key_cannot_hold_unbounded_streams(proxy):
    key = (await grant_key(proxy))["proxy_key"]
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        url = proxy.make_url("/eventsub")
        answers: list[aiohttp.ClientResponse] = []
        try:
            for _ in range(6):
                batch = await asyncio.gather(*(
                    session.get(url, params={"type": "channel.follow:2"}, headers=bearer(key))
                    for _ in range(50)))
                answers += batch
                if any(answer.status != 200 for answer in batch):
                    break
            refused = [answer for answer in answers if answer.status != 200]
            assert refused, f"{len(answers)} streams of one key all open"
            assert refused[0].status == 429
            assert "error" in await refused[0].json()
        finally:
            for answer in answers:
                answer.close()


async def test_junk_types_and_resume_ids_are_bounded_4xx(proxy):
    key = (await grant_key(proxy))["proxy_key"]
    auth = bearer(key)
    cases: list[tuple[list[tuple[str, str]], dict[str, str], int]] = [
        ([("type", "channel.follow:2")] * 21, {}, 400),
        ([("type", "x" * 5000)], {}, 400),
        ([("type", "channel.follow:" + "9" * 5000)], {}, 400),
        ([("type", "channel.follow:2"), ("broadcaster_user_id", "1" * 21)], {}, 400),
        ([("type", "channel.follow:2"), ("last_event_id", "a"), ("last_event_id", "b")], {},
         400),
    ]
    for params, headers, status in cases:
        answer = await proxy.get("/eventsub", params=params, headers={**auth, **headers})
        assert answer.status == status, params[:2]
        body = await answer.json()
        assert body["error"] and len(body["message"]) < 2000
    # A junk resume id is not an error: the stream starts with a gap.
    for junk in ("-", "x" * 4000, "deadbeef-" + "9" * 30, "\u00e9-1", "0-0"):
        widget = await open_widget(proxy, "channel.follow:2", key=key, last_event_id=junk)
        event = await widget.next()
        assert event.event == "gap"
        widget.close()


async def test_the_stream_and_the_ticket_are_never_cached_nor_sniffed(proxy):
    key = (await grant_key(proxy))["proxy_key"]
    answer = await proxy.post("/eventsub/tickets", headers={**bearer(key), "Origin": "null"})
    assert answer.headers["Cache-Control"] == "no-store"
    assert "Access-Control-Allow-Credentials" not in answer.headers
    assert "Set-Cookie" not in answer.headers
    widget = await open_widget(proxy, "channel.follow:2", key=key,
                               headers={"Origin": "https://evil.example"})
    headers = widget.response.headers
    assert headers["Cache-Control"] == "no-store"
    assert "Access-Control-Allow-Credentials" not in headers
    assert "Set-Cookie" not in headers
    assert headers["Content-Type"].startswith("text/event-stream")
