"""The proxy's Prometheus metrics: one registry per app, and the hooks that feed it.

Every metric lives in one :class:`Metrics` object per app, with its own
``CollectorRegistry`` (no module-level registry: two apps in one process, as in
the tests, never mix their numbers). ``/metrics`` itself, who may scrape it and
the count of grants by state are the web layer's (:mod:`proxy.web.routes.metrics`).
Metrics, all prefixed ``twitch_proxy_``:

- ``requests_total{route,method,status}``: requests answered, by route template.
- ``request_duration_seconds{route}``: time to answer, histogram.
- ``upstream_request_duration_seconds{endpoint}``: time until Twitch's answer
  headers, histogram; ``endpoint`` is ``helix``, ``token``, ``validate``,
  ``revoke`` or ``other``; ``upstream_responses_total{endpoint,status}`` counts
  the answers (``status="error"`` for no answer).
- ``refreshes_total{outcome}``: success, coalesced, permanent_failure,
  transient_failure (fed by :class:`proxy.core.refresh.Refresher`'s ``on_outcome``).
- ``validations_total{outcome}``: valid, refreshed, needs_reauth, unavailable,
  refresh_failed (fed by :class:`proxy.core.validator.Validator`'s ``on_outcome``;
  grants another process validated are not counted).
- ``grants{state}``: grants in the store by state (set by :meth:`Metrics.set_grant_counts`).
- ``grants_purged_total``: ``needs_reauth`` grants the validator deleted after
  ``auth.purge_needs_reauth_after`` (fed by its ``on_purged``).
- ``helix_ratelimit_remaining{bucket}``: Twitch's ``Ratelimit-Remaining`` last
  seen per bucket; the bucket is the grant id (never a login or a token),
  ``app`` for the app token.
- ``eventsub_*``: the live-events relay's, on :attr:`Metrics.eventsub`
  (:mod:`proxy.telemetry.eventsub_metrics`).

The outcome label values are part of the metrics' public interface, so they
are declared here (:data:`REFRESH_OUTCOMES`, :data:`VALIDATION_OUTCOMES`) rather
than imported from the core that produces them: telemetry sits below the core.
With several worker processes each keeps its own counters and a scrape sees
the worker that answered it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from .context import current_request
from .eventsub_metrics import EventSubMetrics

__all__ = ["CONTENT_TYPE", "REFRESH_OUTCOMES", "VALIDATION_OUTCOMES", "Metrics"]

_PREFIX = "twitch_proxy_"

#: The classic text format every Prometheus version reads. Our metric names are
#: plain ASCII, for which newer prometheus-client's 1.0.0 output is identical.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: ``refreshes_total``'s outcomes, shown at 0 from the first scrape so rates work
#: (the values of :class:`proxy.core.refresh.RefreshOutcome`).
REFRESH_OUTCOMES = ("success", "coalesced", "permanent_failure", "transient_failure")
#: ``validations_total``'s outcomes, likewise (the values of
#: :class:`proxy.core.validator.ValidationOutcome` that count as a validation).
VALIDATION_OUTCOMES = ("valid", "refreshed", "needs_reauth", "unavailable", "refresh_failed")

#: Seconds; Twitch answers in tens of milliseconds, its slow path in seconds.
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The app's metrics and the hooks that feed them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(f"{_PREFIX}requests", "Requests answered.",
                                ["route", "method", "status"], registry=r)
        self.request_duration = Histogram(f"{_PREFIX}request_duration_seconds",
                                          "Time to answer a request.", ["route"],
                                          buckets=_LATENCY_BUCKETS, registry=r)
        self.upstream_duration = Histogram(
            f"{_PREFIX}upstream_request_duration_seconds",
            "Time until Twitch's answer headers arrived.", ["endpoint"],
            buckets=_LATENCY_BUCKETS, registry=r)
        self.upstream_responses = Counter(f"{_PREFIX}upstream_responses",
                                          "Answers from Twitch by endpoint and status.",
                                          ["endpoint", "status"], registry=r)
        self.refreshes = Counter(f"{_PREFIX}refreshes", "Refreshes by outcome.",
                                 ["outcome"], registry=r)
        self.validations = Counter(f"{_PREFIX}validations", "Token validations by outcome.",
                                   ["outcome"], registry=r)
        self.grants = Gauge(f"{_PREFIX}grants", "Grants in the store by state.",
                            ["state"], registry=r)
        self.grants_purged = Counter(
            f"{_PREFIX}grants_purged",
            "Grants deleted after staying needs_reauth for auth.purge_needs_reauth_after.",
            registry=r)
        self.ratelimit_remaining = Gauge(
            f"{_PREFIX}helix_ratelimit_remaining",
            "Twitch's Ratelimit-Remaining last seen, per rate-limit bucket (grant id).",
            ["bucket"], registry=r)
        #: The relay's and the EventSub sockets' observer.
        self.eventsub = EventSubMetrics(r, _PREFIX)
        # Label children by label values, looked up once per series (hot path).
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._upstream_children: dict[tuple[str, int | None], tuple[Any, Any]] = {}
        self._ratelimit_children: dict[str, Any] = {}
        # Every outcome shows from the start, at 0, so rates work from the first scrape.
        self._refresh_children = {
            outcome: self.refreshes.labels(outcome) for outcome in REFRESH_OUTCOMES}
        self._validation_children = {
            outcome: self.validations.labels(outcome) for outcome in VALIDATION_OUTCOMES}

    # -- hooks -------------------------------------------------------------------------

    def refresh_outcome(self, outcome: str) -> None:
        """Count one refresh outcome (``Refresher(on_outcome=...)``)."""
        child = self._refresh_children.get(outcome)
        if child is None:
            child = self._refresh_children[outcome] = self.refreshes.labels(outcome)
        child.inc()

    def validation_outcome(self, outcome: str) -> None:
        """Count one validation outcome (``Validator(on_outcome=...)``)."""
        child = self._validation_children.get(outcome)
        if child is None:
            child = self._validation_children[outcome] = self.validations.labels(outcome)
        child.inc()

    def grant_purged(self) -> None:
        """Count one purged grant (``Validator(on_purged=...)``)."""
        self.grants_purged.inc()

    def request_done(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request (called by the request middleware)."""
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:  # labels() takes a lock and builds tuples: once per series
            children = (self.requests.labels(route, method, str(status)),
                        self.request_duration.labels(route))
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def upstream_answer(self, endpoint: str, status: int | None, seconds: float,
                        remaining: str | None = None) -> None:
        """Count one call to Twitch (``status`` None: it failed) and its latency.

        The hook of the Helix calls (:class:`proxy.core.helix_call.HelixCaller`)
        and of :class:`proxy.upstream.twitch.TwitchClient`, around their own
        calls: a client trace on the session would cost every request aiohttp's
        whole tracing machinery.
        """
        key = (endpoint, status)
        children = self._upstream_children.get(key)
        if children is None:
            children = (self.upstream_duration.labels(endpoint),
                        self.upstream_responses.labels(endpoint,
                                                       "error" if status is None else str(status)))
            self._upstream_children[key] = children
        children[0].observe(seconds)
        children[1].inc()
        record = current_request()
        if record is None:
            return
        if status is not None:
            record.upstream_status = status
        bucket = record.ratelimit_bucket
        if endpoint == "helix" and bucket and remaining and remaining.isdigit():
            gauge = self._ratelimit_children.get(bucket)
            if gauge is None:
                gauge = self._ratelimit_children[bucket] = self.ratelimit_remaining.labels(bucket)
            gauge.set(int(remaining))

    def set_grant_counts(self, counts: Mapping[str, int]) -> None:
        """Set ``grants{state}`` to ``counts`` (grants in the store by state)."""
        for state, count in counts.items():
            self.grants.labels(state).set(count)

    def exposition(self) -> bytes:
        """Every metric in the text format of :data:`CONTENT_TYPE`."""
        return generate_latest(self.registry)
