"""proxy.core.relay.local and .channel: sharing, limits, session ends, reauth, resume.

The channel's decisions, driven through in-memory stand-ins for the two
services it is handed (a socket factory and the subscriptions API), so that
each edge (a session dying while a subscription is being created, connects
failing, Twitch refusing) happens exactly when the test says. The same paths
against the real mock Twitch, over real WebSockets and HTTP, are in
tests/system/test_eventsub*.py.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator

import pytest

from proxy.core.relay.catalog import SubscriptionKey, resolve_subscriptions
from proxy.core.relay.local import Relay, RelaySettings
from proxy.core.relay.stream import Outbox
from proxy.core.relay.subscriptions import CreatedSubscription, SubscriptionRefused
from proxy.errors import ReauthorizationRequired
from proxy.upstream.eventsub import EventSubMessage, SessionEnded

ME = "141981764"
LOGIN_URL = "http://proxy.test/login"
FAST = RelaySettings(grace=0.05, backoff_initial=0.01, backoff_max=0.02)


class FakeSocket:
    """One session: connect() gives its id; messages() yields what the test pushes."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.session_id = f"session-{next(hub.ids)}"
        self.inbox: asyncio.Queue[EventSubMessage | SessionEnded | None] = asyncio.Queue()
        self.closed = False

    async def connect(self) -> str:
        if self.hub.refuse_connects:
            self.hub.refuse_connects -= 1
            raise SessionEnded("connect_failed", None, True, "refused")
        self.hub.sockets.append(self)
        return self.session_id

    async def messages(self) -> AsyncIterator[EventSubMessage]:
        while True:
            item = await self.inbox.get()
            if item is None:
                return
            if isinstance(item, SessionEnded):
                raise item
            yield item

    async def close(self) -> None:
        self.closed = True
        self.inbox.put_nowait(None)


class Hub:
    """The fake Twitch: sockets opened, subscriptions created and deleted."""

    def __init__(self) -> None:
        self.ids = itertools.count(1)
        self.sockets: list[FakeSocket] = []
        self.refuse_connects = 0
        self.created: dict[str, tuple[SubscriptionKey, str]] = {}
        self.deleted: list[str] = []
        self.creates = 0
        self.refusal: Exception | None = None
        self.refuse_once: list[Exception] = []
        self.hold: asyncio.Event | None = None

    def open_socket(self) -> FakeSocket:
        return FakeSocket(self)

    async def create(self, grant_id: str, key: SubscriptionKey,
                     session_id: str) -> CreatedSubscription:
        self.creates += 1
        if self.hold is not None:
            await self.hold.wait()
        if self.refuse_once:
            raise self.refuse_once.pop()
        if self.refusal is not None:
            raise self.refusal
        twitch_id = f"sub-{next(self.ids)}"
        self.created[twitch_id] = (key, session_id)
        return CreatedSubscription(twitch_id, 0, 0, 10)

    async def delete(self, grant_id: str, subscription_id: str) -> None:
        self.deleted.append(subscription_id)

    def socket_of(self, key: SubscriptionKey) -> tuple[str, FakeSocket]:
        for twitch_id, (created, session_id) in reversed(self.created.items()):
            if created == key:
                return twitch_id, next(s for s in self.sockets if s.session_id == session_id)
        raise AssertionError(f"{key} was never created")

    def notify(self, key: SubscriptionKey, message_id: str, **event: str) -> None:
        twitch_id, socket = self.socket_of(key)
        socket.inbox.put_nowait(EventSubMessage(
            message_id, "notification", "2026-12-01T00:00:00Z",
            {"id": twitch_id, "type": key.type, "version": key.version}, event))


@pytest.fixture
def hub() -> Hub:
    return Hub()


@pytest.fixture
async def relay(hub: Hub) -> AsyncIterator[Relay]:
    relay = Relay(api=hub, open_socket=hub.open_socket, login_url=LOGIN_URL, settings=FAST)
    yield relay
    await relay.aclose()


def keys(*types: str, **conditions: str) -> list[SubscriptionKey]:
    return resolve_subscriptions(list(types), conditions, user_id=ME)


async def settle(until) -> None:
    """Let the relay's tasks run until ``until()`` holds."""
    async with asyncio.timeout(5):
        while not until():
            await asyncio.sleep(0.005)


async def received(outbox: Outbox, count: int) -> list[tuple[str, dict]]:
    """The next ``count`` events of ``outbox`` as (event, data)."""
    events: list[tuple[str, dict]] = []
    async with asyncio.timeout(5):
        while len(events) < count:
            chunk = await outbox.take()
            assert chunk is not None, f"closed ({outbox.reason}) after {events}"
            for frame in chunk.decode().split("\n\n")[:-1]:
                fields = dict(line.split(": ", 1) for line in frame.split("\n"))
                events.append((fields["event"], json.loads(fields["data"])))
    return events


async def test_widgets_share_one_subscription_and_each_gets_every_event_once(relay, hub):
    (follow,) = keys("channel.follow:2")
    widgets = [relay.attach("g1", ME, [follow]) for _ in range(50)]
    await settle(lambda: relay.channel("g1").subscriptions[follow] is not None)
    assert hub.creates == 1 and len(hub.sockets) == 1
    hub.notify(follow, "m1", user_name="ada")
    for widget in widgets:
        assert await received(widget, 1) == [("channel.follow", {
            "user_name": "ada", "subscription_type": "channel.follow",
            "subscription_version": "2"})]
        assert widget.pending() == 0


async def test_the_last_widget_leaving_deletes_after_the_grace_period(relay, hub):
    follow, sub = keys("channel.follow:2", "channel.subscribe:1")
    both = relay.attach("g1", ME, [follow, sub])
    only_follow = relay.attach("g1", ME, [follow])
    channel = relay.channel("g1")
    await settle(lambda: None not in channel.subscriptions.values())
    sub_id, _ = hub.socket_of(sub)
    relay.detach(both)
    await settle(lambda: hub.deleted == [sub_id])
    assert list(channel.subscriptions) == [follow]
    relay.detach(only_follow)
    await settle(lambda: relay.channel("g1") is None and hub.sockets[0].closed)
    assert len(hub.deleted) == 1  # the closed session took the last one with it


async def test_a_widget_back_within_the_grace_period_costs_nothing(relay, hub):
    (follow,) = keys("channel.follow:2")
    relay.detach(relay.attach("g1", ME, [follow]))
    again = relay.attach("g1", ME, [follow])
    await settle(lambda: relay.channel("g1").subscriptions[follow] is not None)
    await asyncio.sleep(FAST.grace * 2)
    assert hub.creates == 1 and hub.deleted == [] and not again.closed


async def test_cost_over_twitchs_maximum_is_refused_before_twitch(hub):
    relay = Relay(api=hub, open_socket=hub.open_socket, login_url=LOGIN_URL,
                  settings=RelaySettings(max_total_cost=2))
    try:
        widgets = [relay.attach("g1", ME, keys("channel.subscribe:1",
                                               broadcaster_user_id=channel))
                   for channel in ("1", "2", "3")]
        (event, data), = await received(widgets[2], 1)
        assert event == "error" and data["error"] == "cost_exceeded"
        assert data["condition"] == {"broadcaster_user_id": "3"} and data["status"] is None
        await settle(lambda: hub.creates == 2)
        own = relay.attach("g1", ME, keys("channel.subscribe:1"))  # cost 0: still fine
        await settle(lambda: hub.creates == 3)
        assert own.pending() == 0
    finally:
        await relay.aclose()


async def test_a_second_socket_only_when_the_first_is_full_and_never_a_fourth(hub):
    relay = Relay(api=hub, open_socket=hub.open_socket, login_url=LOGIN_URL,
                  settings=RelaySettings(per_socket=2, max_sockets=2))
    try:
        rewards = [relay.attach("g1", ME, keys(
            "channel.channel_points_custom_reward_redemption.add:1", reward_id=f"r{n}"))
            for n in range(5)]
        (event, data), = await received(rewards[4], 1)
        assert event == "error" and data["error"] == "subscription_limit"
        await settle(lambda: hub.creates == 4)
        assert len(hub.sockets) == 2
    finally:
        await relay.aclose()


async def test_twitch_refusing_reaches_the_widgets_that_asked(relay, hub):
    hub.refusal = SubscriptionRefused(403, "subscription missing proper authorization")
    first, second = (relay.attach("g1", ME, keys("channel.subscribe:1")) for _ in range(2))
    for widget in (first, second):
        (event, data), = await received(widget, 1)
        assert event == "error"
        assert (data["error"], data["status"], data["message"]) == (
            "twitch_refused", 403, "subscription missing proper authorization")
        assert data["subscription_type"] == "channel.subscribe"
    assert hub.creates == 1 and relay.channel("g1").subscriptions == {}
    hub.refusal = None
    relay.attach("g1", ME, keys("channel.subscribe:1"))  # a later widget tries again
    await settle(lambda: hub.creates == 2)


async def test_a_dropped_session_tells_of_the_gap_and_resubscribes(relay, hub):
    (follow,) = keys("channel.follow:2")
    widget = relay.attach("g1", ME, [follow])
    await settle(lambda: relay.channel("g1").subscriptions[follow] is not None)
    hub.sockets[0].inbox.put_nowait(SessionEnded("keepalive_timeout", None, True, "silent"))
    (event, data), = await received(widget, 1)
    assert event == "gap" and data["reason"] == "keepalive_timeout"
    assert data["subscription_types"] == ["channel.follow:2"]
    await settle(lambda: hub.creates == 2 and relay.channel("g1").subscriptions[follow])
    assert len(hub.sockets) == 2 and hub.sockets[0].closed
    assert hub.socket_of(follow)[1] is hub.sockets[1]
    hub.notify(follow, "m2", user_name="bob")
    assert (await received(widget, 1))[0][1]["user_name"] == "bob"


async def test_connect_failures_back_off_and_recover(relay, hub):
    hub.refuse_connects = 2
    (follow,) = keys("channel.follow:2")
    relay.attach("g1", ME, [follow])
    await settle(lambda: relay.channel("g1").subscriptions[follow] is not None)
    assert len(hub.sockets) == 1 and hub.creates == 1


async def test_a_session_dying_during_a_create_moves_it_to_the_next(relay, hub):
    (follow,) = keys("channel.follow:2")
    hub.hold = asyncio.Event()
    widget = relay.attach("g1", ME, [follow])
    await settle(lambda: hub.creates == 1)
    hub.sockets[0].inbox.put_nowait(SessionEnded("closed", 4005, True, "timeout"))
    (event, _), = await received(widget, 1)
    assert event == "gap"
    hub.refuse_once.append(SubscriptionRefused(400, "session does not exist"))
    hub.hold.set()  # the create on the dead session fails: not the widget's problem
    await settle(lambda: relay.channel("g1").subscriptions[follow] is not None)
    assert hub.creates == 2 and len(hub.sockets) == 2
    assert hub.socket_of(follow)[1] is hub.sockets[1]
    assert widget.pending() == 0


async def test_a_session_not_to_retry_ends_the_streams(relay, hub):
    (follow,) = keys("channel.follow:2")
    widget = relay.attach("g1", ME, [follow])
    await settle(lambda: relay.channel("g1").subscriptions[follow] is not None)
    hub.sockets[0].inbox.put_nowait(SessionEnded("closed", 4001, False, "bug"))
    (event, data), = await received(widget, 1)
    assert event == "error" and data["error"] == "session_ended"
    assert await widget.take() is None and widget.reason == "session_ended"
    assert hub.creates == 1


async def test_a_grant_needing_a_login_stops_and_says_where(relay, hub):
    hub.refusal = ReauthorizationRequired("log in again", login_url=LOGIN_URL)
    widget = relay.attach("g1", ME, keys("channel.follow:2"))
    (event, data), = await received(widget, 1)
    assert event == "reauthorization_required" and data["login_url"] == LOGIN_URL
    assert await widget.take() is None
    await settle(lambda: hub.sockets[0].closed)
    relay.detach(widget)
    assert relay.channel("g1") is None
    hub.refusal = None
    relay.attach("g1", ME, keys("channel.follow:2"))  # after a new login: a new channel
    await settle(lambda: hub.creates == 2)


async def test_a_revocation_is_forwarded_and_the_subscription_dropped(relay, hub):
    (follow,) = keys("channel.follow:2")
    widget = relay.attach("g1", ME, [follow])
    await settle(lambda: relay.channel("g1").subscriptions[follow] is not None)
    twitch_id, socket = hub.socket_of(follow)
    socket.inbox.put_nowait(EventSubMessage("m9", "revocation", "t", {
        "id": twitch_id, "type": "channel.follow", "version": "2",
        "status": "authorization_revoked"}, None))
    (event, data), = await received(widget, 1)
    assert event == "revoked" and data["status"] == "authorization_revoked"
    assert relay.channel("g1").subscriptions == {}
    hub.notify(follow, "m10", user_name="late")  # nothing more for it
    await asyncio.sleep(0.05)
    assert widget.pending() == 0


async def test_resume_replays_only_what_the_widget_wants_or_says_gap(relay, hub):
    follow, sub = keys("channel.follow:2", "channel.subscribe:1")
    first = relay.attach("g1", ME, [follow, sub])
    await settle(lambda: None not in relay.channel("g1").subscriptions.values())
    hub.notify(follow, "a", n="1")
    hub.notify(sub, "b", n="2")
    hub.notify(follow, "c", n="3")
    await received(first, 3)
    buffer = relay.channel("g1").buffer
    resumed = relay.attach("g1", ME, [follow], last_event_id=f"{buffer.epoch}-1")
    assert [data["n"] for _, data in await received(resumed, 1)] == ["3"]
    stale = relay.attach("g1", ME, [follow], last_event_id="0123abcd-2")
    (event, data), = await received(stale, 1)
    assert event == "gap" and data["reason"] == "resume_unavailable"


async def test_a_session_closed_as_unused_is_not_reopened_for_nothing(relay, hub):
    (follow,) = keys("channel.follow:2")
    widget = relay.attach("g1", ME, [follow])
    await settle(lambda: relay.channel("g1").subscriptions[follow] is not None)
    twitch_id, socket = hub.socket_of(follow)
    socket.inbox.put_nowait(EventSubMessage("m1", "revocation", "t", {
        "id": twitch_id, "status": "version_removed"}, None))
    assert (await received(widget, 1))[0][0] == "revoked"
    socket.inbox.put_nowait(SessionEnded("closed", 4003, True, "connection unused"))
    await settle(lambda: relay.channel("g1").sockets == 0)
    await asyncio.sleep(0.05)
    assert len(hub.sockets) == 1 and widget.pending() == 0  # no reconnect, no gap
