"""The live-events relay's metrics: Twitch sockets, subscriptions, widget streams, events.

:class:`EventSubMetrics` lives on the app's :class:`~proxy.telemetry.metrics.Metrics`
registry and is what the relay (:mod:`proxy.core.relay.local`) and each EventSub
socket (:mod:`proxy.upstream.eventsub`) are handed as their observer: they
call its hooks where things happen, and it imports nothing of theirs
(telemetry sits below them). Metrics, all prefixed ``twitch_proxy_``:

- ``eventsub_sockets{grant}``, ``eventsub_subscriptions{grant}``,
  ``eventsub_subscription_cost{grant}``, ``eventsub_widget_streams{grant}``:
  gauges read from the relay at scrape time, one series per grant whose
  channel is open in this process (a series goes when its channel closes, so
  there are never more than the grants with widgets; the label is the grant
  id, as ``helix_ratelimit_remaining``'s, never a login). Subscriptions and
  cost count what Twitch created, not what is still being asked for.
- ``eventsub_messages_total{message_type}``: notifications and revocations
  received from Twitch, after duplicates were dropped.
- ``eventsub_deliveries_total``: event frames queued to widget streams (one
  event for 50 widgets is 50 deliveries; replays on resume count too).
- ``eventsub_duplicates_dropped_total``: messages Twitch sent again (same
  ``message_id``) and the socket dropped.
- ``eventsub_reconnects_total{reason}``: ``session_reconnect`` when Twitch
  asked for one (followed without a gap), else why the session ended before
  a new one was opened (``keepalive_timeout``, ``network``, ``closed_4000``...).
- ``eventsub_gaps_total{cause}``: ``gap`` events sent to widget streams:
  ``session_lost`` (a session died; events in between were missed),
  ``resume_unavailable`` (a ``Last-Event-ID`` older than the buffer),
  ``store_unavailable`` (Redis was unreachable) or ``leader_lost`` (the process
  holding the grant's Twitch session died or lost its lease).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["GAP_CAUSES", "ChannelGauges", "EventSubMetrics"]

#: ``eventsub_gaps_total``'s causes, shown at 0 from the first scrape.
GAP_CAUSES = ("session_lost", "resume_unavailable", "store_unavailable", "leader_lost")
_MESSAGE_TYPES = ("notification", "revocation")


class ChannelGauges(Protocol):
    """What the relay reports of one grant's channel at scrape time."""

    @property
    def grant_id(self) -> str: ...
    @property
    def sockets(self) -> int: ...
    @property
    def subscriptions(self) -> int: ...
    @property
    def cost(self) -> int: ...
    @property
    def streams(self) -> int: ...


#: Gauge name (after the prefix), help, and the :class:`ChannelGauges` field it shows.
_GAUGES = (
    ("eventsub_sockets", "Open EventSub WebSockets to Twitch, per grant.", "sockets"),
    ("eventsub_subscriptions", "EventSub subscriptions created at Twitch, per grant.",
     "subscriptions"),
    ("eventsub_subscription_cost", "Total cost of the grant's subscriptions (Twitch's "
     "max_total_cost is 10).", "cost"),
    ("eventsub_widget_streams", "Widget streams (GET /eventsub) connected, per grant.",
     "streams"),
)


class _ChannelCollector(Collector):
    """The per-grant gauges, read from the relay when scraped."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self.read: Callable[[], Iterable[ChannelGauges]] = tuple

    def describe(self) -> Iterator[Metric]:
        for name, text, _ in _GAUGES:
            yield GaugeMetricFamily(self._prefix + name, text, labels=["grant"])

    def collect(self) -> Iterator[Metric]:
        channels = list(self.read())
        for name, text, field in _GAUGES:
            family = GaugeMetricFamily(self._prefix + name, text, labels=["grant"])
            for channel in channels:
                family.add_metric([channel.grant_id], getattr(channel, field))
            yield family


class EventSubMetrics:
    """The relay's and the sockets' metrics, and the hooks that feed them."""

    def __init__(self, registry: CollectorRegistry, prefix: str) -> None:
        self.messages = Counter(f"{prefix}eventsub_messages",
                                "Notifications and revocations received from Twitch.",
                                ["message_type"], registry=registry)
        self.deliveries = Counter(f"{prefix}eventsub_deliveries",
                                  "Event frames queued to widget streams.", registry=registry)
        self.duplicates = Counter(f"{prefix}eventsub_duplicates_dropped",
                                  "Messages Twitch sent again, dropped.", registry=registry)
        self.reconnects = Counter(f"{prefix}eventsub_reconnects",
                                  "New EventSub sessions after one ended, by why it ended.",
                                  ["reason"], registry=registry)
        self.gaps = Counter(f"{prefix}eventsub_gaps", "Gap events sent to widget streams.",
                            ["cause"], registry=registry)
        self._channels = _ChannelCollector(prefix)
        registry.register(self._channels)
        # Label children looked up once; the common ones show from the start, at 0.
        self._message_children: dict[str, Any] = {
            kind: self.messages.labels(kind) for kind in _MESSAGE_TYPES}
        self._gap_children: dict[str, Any] = {cause: self.gaps.labels(cause)
                                              for cause in GAP_CAUSES}
        self.reconnects.labels("session_reconnect")

    def watch(self, read: Callable[[], Iterable[ChannelGauges]]) -> None:
        """Read the per-grant gauges from ``read`` at every scrape (the relay's state)."""
        self._channels.read = read

    def message_received(self, message_type: str) -> None:
        """Count a notification or revocation Twitch delivered (not a duplicate)."""
        child = self._message_children.get(message_type)
        if child is None:
            child = self._message_children[message_type] = self.messages.labels(message_type)
        child.inc()

    def delivered(self, deliveries: int) -> None:
        """Count ``deliveries`` frames queued to widget streams."""
        if deliveries:
            self.deliveries.inc(deliveries)

    def duplicate_dropped(self) -> None:
        """Count a message dropped because its ``message_id`` was seen already."""
        self.duplicates.inc()

    def reconnected(self, reason: str) -> None:
        """Count a new session: ``session_reconnect``, or why the last one ended."""
        self.reconnects.labels(reason).inc()

    def gap_sent(self, cause: str, streams: int) -> None:
        """Count a ``gap`` event sent to ``streams`` widget streams."""
        child = self._gap_children.get(cause)
        if child is None:
            child = self._gap_children[cause] = self.gaps.labels(cause)
        child.inc(streams)
