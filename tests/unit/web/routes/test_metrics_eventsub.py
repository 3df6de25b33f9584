"""/metrics for live events: real events through the mock Twitch, read with prometheus_client.

A real proxy (short grace periods, as in tests/system/test_eventsub_support.py)
relays the mock Twitch's EventSub to real widget streams; every figure is
read from a scrape of ``GET /metrics`` parsed by prometheus_client's own
parser, after the events, duplicates, reconnects and drops that move it.
"""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.web.keys import grants_key
from tests.system import test_eventsub_support as support
from tests.system.test_eventsub_support import (
    ME,
    control,
    grant_key,
    mock_state,
    open_widget,
    settle,
    subscriptions_at_twitch,
)

config_flags, eventsub_options, proxy = (support.config_flags, support.eventsub_options,
                                         support.proxy)

pytestmark = pytest.mark.timeout(120)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(proxy) -> Samples:
    """``{(sample name, sorted labels): value}`` of one scrape."""
    response = await proxy.get("/metrics")
    assert response.status == 200, await response.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(await response.text()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def sample(samples: Samples, name: str, **labels: str) -> float:
    """The sample's value; a missing sample fails (0 is not assumed)."""
    key = (f"twitch_proxy_{name}", tuple(sorted(labels.items())))
    assert key in samples, f"{key} not scraped"
    return samples[key]


def per_grant(samples: Samples, name: str) -> dict[str, float]:
    """Every series of a per-grant gauge, by grant id."""
    return {dict(labels)["grant"]: value for (sample_name, labels), value in samples.items()
            if sample_name == f"twitch_proxy_{name}"}


async def _setup(proxy, twitch_server):
    """A grant with three widgets: two on its follows, one on another channel's stream."""
    key = (await grant_key(proxy))["proxy_key"]
    grant = await proxy.app[grants_key].grant_for_key(key)
    assert grant is not None
    follows = [await open_widget(proxy, "channel.follow:2", key=key) for _ in range(2)]
    online = await open_widget(proxy, "stream.online:1", key=key, broadcaster_user_id="98765")

    async def subscribed() -> bool:
        return len(await subscriptions_at_twitch(twitch_server)) == 2
    await settle(subscribed)
    return grant.grant_id, follows, online


async def test_sockets_subscriptions_cost_and_streams_per_grant(proxy, twitch_server):
    before = await scrape(proxy)
    assert per_grant(before, "eventsub_sockets") == {}
    grant_id, follows, online = await _setup(proxy, twitch_server)

    async def created() -> bool:  # the Twitch ids arrive just after the mock holds them
        return per_grant(await scrape(proxy), "eventsub_subscriptions") == {grant_id: 2}
    await settle(created)
    samples = await scrape(proxy)
    assert per_grant(samples, "eventsub_sockets") == {grant_id: 1}
    # Our own channel's follows cost 0, another channel's stream.online 1.
    assert per_grant(samples, "eventsub_subscription_cost") == {grant_id: 1}
    assert per_grant(samples, "eventsub_widget_streams") == {grant_id: 3}
    assert (await mock_state(twitch_server))["open_sockets_by_user"] == {ME: 1}

    for widget in (*follows, online):
        widget.close()

    async def gone() -> bool:  # the grace period passes: the channel closes, its series go
        return per_grant(await scrape(proxy), "eventsub_sockets") == {}
    await settle(gone)
    assert per_grant(await scrape(proxy), "eventsub_widget_streams") == {}


async def test_messages_deliveries_and_duplicates(proxy, twitch_server):
    _, follows, online = await _setup(proxy, twitch_server)
    before = await scrape(proxy)
    # Two follows, each sent twice with one message_id: two messages, four deliveries.
    await control(twitch_server, "trigger", type="channel.follow", count=2, duplicate=True)
    await control(twitch_server, "trigger", type="stream.online")
    for widget in follows:
        assert [event.event for event in await widget.events(2)] == ["channel.follow"] * 2
    assert (await online.next()).event == "stream.online"
    after = await scrape(proxy)

    def grew(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)
    assert grew("eventsub_messages_total", message_type="notification") == 3
    assert grew("eventsub_deliveries_total") == 5
    assert grew("eventsub_duplicates_dropped_total") == 2
    assert grew("eventsub_gaps_total", cause="session_lost") == 0


async def test_reconnects_by_reason_and_gaps(proxy, twitch_server):
    _, follows, online = await _setup(proxy, twitch_server)
    before = await scrape(proxy)
    # Twitch asks for a reconnect: followed without a gap.
    await control(twitch_server, "reconnect", user_id=ME)

    async def reconnected() -> bool:
        samples = await scrape(proxy)
        return sample(samples, "eventsub_reconnects_total", reason="session_reconnect") \
            == sample(before, "eventsub_reconnects_total", reason="session_reconnect") + 1
    await settle(reconnected)
    # Twitch drops the session with 4000: every widget gets a gap, and a new session opens.
    await control(twitch_server, "drop", user_id=ME, code=4000)
    for widget in (*follows, online):
        assert (await widget.next()).event == "gap"
    after = await scrape(proxy)
    assert sample(after, "eventsub_reconnects_total", reason="closed_4000") == 1
    assert sample(after, "eventsub_gaps_total", cause="session_lost") \
        - sample(before, "eventsub_gaps_total", cause="session_lost") == 3


async def test_a_resume_too_old_counts_a_gap(proxy, twitch_server):
    key = (await grant_key(proxy))["proxy_key"]
    before = await scrape(proxy)
    widget = await open_widget(proxy, "channel.follow:2", key=key, resume_from="0000-7")
    assert (await widget.next()).event == "gap"
    after = await scrape(proxy)
    assert sample(after, "eventsub_gaps_total", cause="resume_unavailable") \
        - sample(before, "eventsub_gaps_total", cause="resume_unavailable") == 1


def test_the_gap_causes_the_metric_declares_are_the_relays():
    """Telemetry imports nothing from core, so the two lists are compared here."""
    from proxy.core.relay.settings import GAP_CAUSES as counted
    from proxy.core.relay.settings import gap_cause
    from proxy.telemetry.eventsub_metrics import GAP_CAUSES as declared

    assert declared == counted
    for reason in ("keepalive_timeout", "network", "closed", "lease_lost", "leader_lost",
                   "store_unavailable", "resume_unavailable"):
        assert gap_cause(reason) in declared
