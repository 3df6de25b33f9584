"""Attacks on live events across processes on one Redis: credentials, resume ids, leftovers.

The promises of ``test_eventsub_attacks.py`` (SECURITY.md, "The credential
model"), tried again where live events cross processes: two ``python -m proxy``
processes on the real Redis and one mock Twitch (test_eventsub_redis_support.py).
A ticket is good once in any process and only for its grant; revoking a key in
one process ends its streams in the other; one grant's widgets never get another
grant's events, whatever ``Last-Event-ID`` they send; nothing the proxy writes to
Redis is a usable credential nor lives forever; no log line prints a secret.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import aiohttp
import pytest
import redis.asyncio

from tests.processes import browser_login
from tests.system import test_eventsub_redis_support as support
from tests.system import test_eventsub_support as one_process
from tests.system.test_eventsub_redis_support import (
    Cluster,
    ProxyProcess,
    open_stream,
    trigger,
    wait_for,
)
from tests.system.test_eventsub_support import ME, Widget, control, grant_key, open_widget

cluster, session = support.cluster, support.session
config_flags, eventsub_options, proxy = (one_process.config_flags, one_process.eventsub_options,
                                         one_process.proxy)

pytestmark = pytest.mark.timeout(120)

RIVAL = "424242"


async def _login_as(session: aiohttp.ClientSession, proxy: ProxyProcess, mock,
                    user_id: str) -> dict[str, Any]:
    """The callback's JSON for a login of ``user_id`` (added to the mock if new)."""
    if user_id not in mock.users:
        mock.add_user(user_id, f"user{user_id}")
    mock.signed_in_user_id = user_id
    try:
        return await browser_login(session, proxy.base)
    finally:
        mock.signed_in_user_id = ME


async def _subscriptions(cluster: Cluster, count: int) -> None:
    async def subscribed() -> bool:
        state = await cluster.state()
        return sum(len(s["subscriptions"]) for s in state["sessions"]) == count
    await wait_for(subscribed)


async def _ticket(session: aiohttp.ClientSession, proxy: ProxyProcess, key: str) -> str:
    async with session.post(proxy.base / "eventsub/tickets",
                            headers={"Authorization": f"Bearer {key}"}) as answer:
        assert answer.status == 201, await answer.text()
        return str((await answer.json())["ticket"])


async def _follows(widget: Widget, count: int, seconds: float = 10) -> list[str]:
    events = [await widget.next(seconds) for _ in range(count)]
    assert [event.event for event in events] == ["channel.follow"] * count, events
    return [event.data["user_name"] for event in events]


async def _redis_dump(cluster: Cluster) -> dict[str, tuple[int, bytes]]:
    """Every key under the cluster's prefix: (its TTL in ms, its value as bytes)."""
    client = redis.asyncio.Redis.from_url(cluster.redis_url)
    dump: dict[str, tuple[int, bytes]] = {}
    try:
        async for raw in client.scan_iter(match=f"{cluster.prefix}*"):
            name = raw.decode()
            kind = (await client.type(raw)).decode()
            if kind == "string":
                value = await client.get(raw) or b""
            elif kind == "hash":
                value = repr(await client.hgetall(raw)).encode()
            else:
                value = repr(await client.xrange(raw)).encode()  # the relay's streams
            dump[name] = (await client.pttl(raw), value)
    finally:
        await client.aclose()
    return dump


# -- tickets, in any process ---------------------------------------------------------------


async def test_a_ticket_opens_one_stream_once_in_any_process_for_its_grant_only(
        cluster, session, mock):
    first, second = await cluster.start(2, session)
    mine = (await browser_login(session, first.base))["proxy_key"]
    rival = (await _login_as(session, second, mock, RIVAL))["proxy_key"]
    ticket = await _ticket(session, first, mine)

    async def spend(proxy: ProxyProcess) -> int:
        answer = await session.get(proxy.base / "eventsub",
                                   params={"type": "channel.follow:2", "ticket": ticket})
        if answer.status == 200:
            cluster.widgets.append(Widget(answer))
        else:
            body = await answer.json()
            assert body["error"] == "invalid_ticket", body
            assert ticket not in str(body)
            answer.release()
        return answer.status

    statuses = await asyncio.gather(*(spend(p) for p in (first, second, first, second)))
    assert sorted(statuses) == [200, 401, 401, 401], statuses
    assert await spend(second) == 401
    # The stream it opened is its grant's: a rival's follow never reaches it.
    mine_widget = cluster.widgets[-1]
    rival_widget = await open_stream(session, cluster, second, rival, "channel.follow:2")
    await _subscriptions(cluster, 2)
    sent = await cluster.control("trigger", type="channel.follow", user_id=RIVAL,
                                 event={"user_name": "rival-secret"})
    assert len(sent["sent"]) == 1
    assert await _follows(rival_widget, 1) == ["rival-secret"]
    await cluster.control("trigger", type="channel.follow", user_id=ME,
                          event={"user_name": "mine"})
    assert await _follows(mine_widget, 1) == ["mine"]


# -- revocation across processes -------------------------------------------------------------


async def test_revoking_a_key_in_one_process_ends_its_streams_in_the_other(cluster, session):
    first, second = await cluster.start(2, session)
    doomed = (await browser_login(session, first.base))["proxy_key"]
    other = (await browser_login(session, first.base))["proxy_key"]  # the same grant
    by_header = await open_stream(session, cluster, second, doomed, "channel.follow:2")
    answer = await session.get(second.base / "eventsub", params={
        "type": "channel.follow:2", "ticket": await _ticket(session, second, doomed)})
    assert answer.status == 200
    by_ticket = Widget(answer)
    cluster.widgets.append(by_ticket)
    staying = await open_stream(session, cluster, second, other, "channel.follow:2")
    await _subscriptions(cluster, 1)
    await trigger(cluster, ["before"])
    for widget in (by_header, by_ticket, staying):
        assert await _follows(widget, 1) == ["before"]

    async with session.post(first.base / "revoke",
                            headers={"Authorization": f"Bearer {doomed}"}) as revoked:
        assert revoked.status == 200, await revoked.text()
    for widget in (by_header, by_ticket):
        names, ended = await widget.rest(10)
        assert (names, ended) == (["access_revoked"], True)
    await trigger(cluster, ["after"])
    assert await _follows(staying, 1) == ["after"]
    async with session.get(second.base / "eventsub", params={"type": "channel.follow:2"},
                           headers={"Authorization": f"Bearer {doomed}"}) as refused:
        assert refused.status == 401


# -- one grant's events, whatever Last-Event-ID says ------------------------------------------


async def test_another_grants_stream_ids_replay_nothing_of_it_on_any_process(
        cluster, session, mock):
    first, second = await cluster.start(2, session)
    mine = (await browser_login(session, first.base))["proxy_key"]
    rival = (await _login_as(session, second, mock, RIVAL))["proxy_key"]
    rival_widget = await open_stream(session, cluster, second, rival, "channel.follow:2")
    own = await open_stream(session, cluster, first, mine, "channel.follow:2")
    await _subscriptions(cluster, 2)
    await cluster.control("trigger", type="channel.follow", user_id=RIVAL,
                          event={"user_name": "rival-secret"})
    first_rival = await rival_widget.next(10)
    await cluster.control("trigger", type="channel.follow", user_id=RIVAL, count=2)
    await _follows(rival_widget, 2)
    ms, _, seq = str(first_rival.id).partition("-")
    forged = [first_rival.id, f"{ms}-{int(seq) - 1}" if int(seq) else f"{int(ms) - 1}-0",
              f"{ms}-0", "0-0", "0", "-", "+", "$", ">", f"{int(time.time() * 1000)}-0"]
    for proxy in (first, second):
        for resume in forged:
            attacker = await open_stream(session, cluster, proxy, mine, "channel.follow:2",
                                         resume_from=resume)
            event = await attacker.next(10)
            assert (event.event, event.data["reason"]) == ("gap", "resume_unavailable"), \
                (resume, event)
            assert "rival" not in str(event.data)
            attacker.close()
    await cluster.control("trigger", type="channel.follow", user_id=ME,
                          event={"user_name": "mine"})
    assert await _follows(own, 1) == ["mine"]


@pytest.mark.parametrize("shape", ["arabic-indic digits", "superscript sequence"])
async def test_a_resume_id_of_unicode_digits_is_a_gap_not_a_silent_stream(
        cluster, session, shape):
    first, second = await cluster.start(2, session)
    key = (await browser_login(session, first.base))["proxy_key"]
    keeper = await open_stream(session, cluster, second, key, "channel.follow:2")
    await _subscriptions(cluster, 1)
    now = str(int(time.time() * 1000))
    odd = (now.translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")) + "-0"
           if shape == "arabic-indic digits" else f"{now}-\u00b2")
    answer = await session.get(first.base / "eventsub", params={
        "type": "channel.follow:2", "last_event_id": odd},
        headers={"Authorization": f"Bearer {key}"})
    if answer.status != 200:  # refusing it up front is as good as a gap
        assert answer.status == 400, await answer.text()
        return
    widget = Widget(answer)
    cluster.widgets.append(widget)
    await trigger(cluster, ["after"])
    assert await _follows(keeper, 1) == ["after"]
    names = [(await widget.next(10)).event for _ in range(2)]
    assert names == ["gap", "channel.follow"], names
    assert "unexpected error" not in cluster.outputs()


# -- a stream that ended stays ended, a new login starts afresh ----------------------------------


async def test_a_widget_resuming_after_a_new_login_gets_events_not_the_old_end(
        cluster, session, mock):
    first, second = await cluster.start(2, session)
    key = (await browser_login(session, first.base))["proxy_key"]
    widget = await open_stream(session, cluster, second, key, "channel.follow:2")
    await _subscriptions(cluster, 1)
    await trigger(cluster, ["before"])
    assert await _follows(widget, 1) == ["before"]
    mock.expire_access_tokens(ME)
    mock.revoke_refresh_tokens(ME)  # the user disconnected the app at Twitch
    await open_stream(session, cluster, second, key, "channel.subscribe:1")
    names, ended = await widget.rest(15)
    assert (names, ended) == (["reauthorization_required"], True)
    resume_from = widget.last_id  # what its EventSource sends when it reconnects

    key = (await browser_login(session, second.base))["proxy_key"]
    back = await open_stream(session, cluster, first, key, "channel.follow:2",
                             resume_from=resume_from)
    await _subscriptions(cluster, 1)
    await trigger(cluster, ["after"])
    names, ended = await back.rest(5)
    assert not ended
    assert names == ["channel.follow"], names


# -- what the proxy leaves in Redis and in its logs ------------------------------------------------


async def test_nothing_in_redis_nor_in_a_log_line_is_a_usable_credential_nor_forever(
        cluster, session, mock):
    first, second = await cluster.start(2, session)
    mine = await browser_login(session, first.base)
    rival = await _login_as(session, second, mock, RIVAL)
    secrets = [value for body in (mine, rival) for value in body.values()
               if isinstance(value, str) and len(value) >= 16]
    widgets = []
    for proxy, body in ((first, mine), (second, rival), (second, mine), (first, rival)):
        ticket = await _ticket(session, proxy, body["proxy_key"])
        unused = await _ticket(session, proxy, body["proxy_key"])
        secrets += [ticket, unused]
        answer = await session.get(proxy.base / "eventsub", params={
            "type": "channel.follow:2", "ticket": ticket})
        assert answer.status == 200
        widgets.append(Widget(answer))
        cluster.widgets.append(widgets[-1])
    await _subscriptions(cluster, 2)
    for user in (ME, RIVAL):
        await cluster.control("trigger", type="channel.follow", user_id=user)
    for widget in widgets:
        await _follows(widget, 1)
    secrets.append("mock-client-secret")
    dump = await _redis_dump(cluster)
    relay = {name.removeprefix(f"{cluster.prefix}eventsub:").split(":")[0]
             for name in dump if name.startswith(f"{cluster.prefix}eventsub:")}
    assert {"lease", "led", "wants", "alive", "events"} <= relay, sorted(dump)
    for name, (ttl, value) in dump.items():
        for secret in secrets:
            assert secret not in name and secret.encode() not in value, name
        for marker in (b"tpk_", b"tkt_"):
            assert marker not in value, name
        if name.startswith(f"{cluster.prefix}eventsub:") or ":ticket:" in name:
            assert ttl > 0, f"{name} never expires"
        if ":ticket:" in name:
            assert ttl <= 60_000, name  # eventsub.ticket_ttl
    stored = {name.removeprefix(f"{cluster.prefix}kv:").split(":")[0] for name in dump}
    assert {"grant", "key", "ticket"} <= stored, sorted(dump)
    outputs = cluster.outputs()
    for secret in secrets:
        assert secret not in outputs
    assert "tpk_" not in outputs and "tkt_" not in outputs


async def test_revoking_a_grant_in_one_process_ends_every_stream_and_its_twitch_socket(
        cluster, session, mock):
    first, second = await cluster.start(2, session)
    login = await browser_login(session, first.base)
    other = (await browser_login(session, second.base))["proxy_key"]  # the same grant
    rival = (await _login_as(session, first, mock, RIVAL))["proxy_key"]
    doomed = [await open_stream(session, cluster, proxy, key, "channel.follow:2")
              for proxy in (first, second) for key in (login["proxy_key"], other)]
    rival_widget = await open_stream(session, cluster, second, rival, "channel.follow:2")
    await _subscriptions(cluster, 2)
    async with session.post(second.base / "revoke", params={"twitch": "true"},
                            headers={"Authorization": f"Bearer {other}"}) as revoked:
        assert revoked.status == 200, await revoked.text()
    for widget in doomed:
        names, ended = await widget.rest(10)
        assert ended and names[-1:] == ["access_revoked"], names

    async def only_the_rivals_socket() -> bool:
        state = await cluster.state()
        return state["open_sockets"] == 1 and all(
            sub["condition"].get("broadcaster_user_id") == RIVAL
            for s in state["sessions"] for sub in s["subscriptions"])
    await wait_for(only_the_rivals_socket)
    await cluster.control("trigger", type="channel.follow", user_id=RIVAL,
                          event={"user_name": "still"})
    assert await _follows(rival_widget, 1) == ["still"]


# -- a killed process ---------------------------------------------------------------------------


async def test_a_killed_process_leading_two_grants_leaves_neither_grants_widgets_stuck(
        cluster, session, mock):
    doomed, survivor = await cluster.start(2, session)
    mine = (await browser_login(session, doomed.base))["proxy_key"]
    rival = (await _login_as(session, doomed, mock, RIVAL))["proxy_key"]
    # Widgets on the doomed process first: it takes both leases.
    for key in (mine, rival):
        await open_stream(session, cluster, doomed, key, "channel.follow:2")
    await _subscriptions(cluster, 2)
    staying = {user: await open_stream(session, cluster, survivor, key, "channel.follow:2")
               for user, key in ((ME, mine), (RIVAL, rival))}
    assert doomed.output().count("this process leads") == 2, doomed.output()
    doomed.process.send_signal(signal.SIGKILL)
    await doomed.process.wait()
    for widget in staying.values():
        gap = await widget.next(15)
        assert (gap.event, gap.data["reason"]) == ("gap", "leader_lost"), gap
    await _subscriptions(cluster, 2)
    for user, widget in staying.items():
        await cluster.control("trigger", type="channel.follow", user_id=user,
                              event={"user_name": f"for-{user}"})
        assert await _follows(widget, 1) == [f"for-{user}"]


async def test_in_one_process_a_resume_id_of_unicode_digits_is_a_gap_not_a_broken_stream(
        proxy, twitch_server):
    key = (await grant_key(proxy))["proxy_key"]
    keeper = await open_widget(proxy, "channel.follow:2", key=key)
    await one_process.settle(lambda: _one_sub(twitch_server))
    await control(twitch_server, "trigger", type="channel.follow", user_id=ME)
    epoch = str((await keeper.next()).id).partition("-")[0]
    widget = await open_widget(proxy, "channel.follow:2", key=key,
                               last_event_id=f"{epoch}-\u00b2")
    await control(twitch_server, "trigger", type="channel.follow", user_id=ME,
                  event={"user_name": "after"})
    assert (await keeper.next()).data["user_name"] == "after"
    names = [(await widget.next(10)).event for _ in range(2)]
    assert names == ["gap", "channel.follow"], names


async def _one_sub(twitch_server) -> bool:
    return len(await one_process.subscriptions_at_twitch(twitch_server)) == 1
