"""``GET /metrics``: Prometheus text exposition of what the proxy is doing.

Every metric lives in one :class:`Metrics` object per app, with its own
``CollectorRegistry`` (no module-level registry: two apps in one process, as in
the tests, never mix their numbers). Metrics, all prefixed ``twitch_proxy_``:

- ``requests_total{route,method,status}``: requests answered, by route template.
- ``request_duration_seconds{route}``: time to answer, histogram.
- ``upstream_request_duration_seconds{endpoint}``: time until Twitch's answer
  headers, histogram; ``endpoint`` is ``helix``, ``token``, ``validate``,
  ``revoke`` or ``other``; ``upstream_responses_total{endpoint,status}`` counts
  the answers (``status="error"`` for no answer).
- ``refreshes_total{outcome}``: success, coalesced, permanent_failure,
  transient_failure (fed by :class:`proxy.refresh.Refresher`'s ``on_outcome``).
- ``validations_total{outcome}``: valid, refreshed, needs_reauth, unavailable,
  refresh_failed (fed by :class:`proxy.validator.Validator`'s ``on_outcome``;
  grants another process validated are not counted).
- ``grants{state}``: grants in the store by state. Counting reads and
  decrypts every grant, so one count serves the scrapes of the next
  ``metrics.grants_interval`` seconds (60 by default): the figure is at most
  that old, and a scrape costs the store nothing in between. (The validator's
  sweeps load grants too, but each process only those it claimed, and each
  grant once an hour: too partial and too late for a gauge.)
- ``grants_purged_total``: ``needs_reauth`` grants the validator deleted after
  ``auth.purge_needs_reauth_after`` (fed by its ``on_purged``).
- ``helix_ratelimit_remaining{bucket}``: Twitch's ``Ratelimit-Remaining`` last
  seen per bucket; the bucket is the grant id (never a login or a token),
  ``app`` for the app token.

With several worker processes each keeps its own counters and a scrape sees
the worker that answered it; ``grants`` comes from the shared store and is the
same everywhere (within the interval).

Who may scrape: ``METRICS_TOKEN`` (``metrics.token``), when set, must come as
``Authorization: Bearer <token>`` (401 JSON otherwise), from anywhere. Without
it only this host may: :func:`proxy.forwarded.is_loopback_client`, so a request
a router or reverse proxy passed on (``X-Forwarded-For``, ``Forwarded``) is
refused even though its socket comes from loopback; others get 403 JSON.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections import Counter as Tally
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from ..core.credential import bearer_token
from ..core.grant_records import ACTIVE, NEEDS_REAUTH
from ..core.grants import GrantStore
from ..core.refresh import RefreshOutcome
from ..core.validator import ValidationOutcome
from ..errors import Forbidden, json_error
from ..web.forwarded import is_loopback_client
from ..web.keys import config_key, grants_key, metrics_key
from ..web.middleware.requestlog import current_request

__all__ = ["Metrics", "setup_metrics"]

_PREFIX = "twitch_proxy_"

#: The classic text format every Prometheus version reads. Our metric names are
#: plain ASCII, for which newer prometheus-client's 1.0.0 output is identical.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Seconds; Twitch answers in tens of milliseconds, its slow path in seconds.
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The app's metrics and the hooks that feed them.

    ``grants_interval``: seconds one count of grants by state is reused (see
    the module docstring); ``clock`` measures it.
    """

    def __init__(self, *, grants_interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
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
        self.grants_interval = grants_interval
        self._clock = clock
        self._grants_counted_at: float | None = None
        # Scrapes arriving together share one count instead of each decrypting everything.
        self._grants_counting = asyncio.Lock()
        self.ratelimit_remaining = Gauge(
            f"{_PREFIX}helix_ratelimit_remaining",
            "Twitch's Ratelimit-Remaining last seen, per rate-limit bucket (grant id).",
            ["bucket"], registry=r)
        # Label children by label values, looked up once per series (hot path).
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._upstream_children: dict[tuple[str, int | None], tuple[Any, Any]] = {}
        self._ratelimit_children: dict[str, Any] = {}
        # Every outcome shows from the start, at 0, so rates work from the first scrape.
        self._refresh_children = {
            outcome: self.refreshes.labels(outcome)
            for outcome in (RefreshOutcome.SUCCESS, RefreshOutcome.COALESCED,
                            RefreshOutcome.PERMANENT_FAILURE, RefreshOutcome.TRANSIENT_FAILURE)}
        self._validation_children = {
            outcome: self.validations.labels(outcome)
            for outcome in (ValidationOutcome.VALID, ValidationOutcome.REFRESHED,
                            ValidationOutcome.NEEDS_REAUTH, ValidationOutcome.UNAVAILABLE,
                            ValidationOutcome.REFRESH_FAILED)}

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
        """Count one answered request (called by :mod:`proxy.requestlog`)."""
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

        Called by :mod:`proxy.helix` and :class:`proxy.twitch.TwitchClient`
        around their own calls: a client trace on the session would cost every
        request aiohttp's whole tracing machinery.
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

    async def count_grants(self, grants: GrantStore) -> None:
        """Set ``grants{state}`` from the store, unless the last count is recent enough."""
        async with self._grants_counting:
            started = self._clock()
            if self._grants_counted_at is not None and \
                    started - self._grants_counted_at < self.grants_interval:
                return
            tally: Tally[str] = Tally({ACTIVE: 0, NEEDS_REAUTH: 0})
            for grant_id in await grants.all_ids():
                grant = await grants.get(grant_id)
                if grant is not None:
                    tally[grant.state] += 1
            for state, count in tally.items():
                self.grants.labels(state).set(count)
            self._grants_counted_at = started


def _same_secret(given: str, expected: str) -> bool:
    """Compare in constant time; hashing first hides the expected length too."""
    return hmac.compare_digest(hashlib.sha256(given.encode()).digest(),
                               hashlib.sha256(expected.encode()).digest())


async def metrics_endpoint(request: web.Request) -> web.Response:
    """``GET /metrics``: the exposition, behind ``METRICS_TOKEN`` or to this host only."""
    token = request.app[config_key].metrics.token
    if token:
        given = bearer_token(request.headers.get("Authorization", ""))
        if given is None or not _same_secret(given, token.reveal()):
            return json_error(401, "unauthorized",
                              "Send Authorization: Bearer <METRICS_TOKEN>.",
                              headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
    elif not is_loopback_client(request):
        raise Forbidden("Without METRICS_TOKEN, /metrics answers only requests from this "
                        "host; set METRICS_TOKEN to scrape from elsewhere.")
    metrics = request.app[metrics_key]
    await metrics.count_grants(request.app[grants_key])
    return web.Response(body=generate_latest(metrics.registry),
                        headers={"Content-Type": CONTENT_TYPE,
                                 "Cache-Control": "no-store"})


def setup_metrics(app: web.Application) -> None:
    """Create the app's :class:`Metrics` and register ``/metrics``."""
    app[metrics_key] = Metrics(grants_interval=app[config_key].metrics.grants_interval)
    app.router.add_get("/metrics", metrics_endpoint, name="metrics")
