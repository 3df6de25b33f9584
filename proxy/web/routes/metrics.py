"""``GET /metrics``: the Prometheus exposition, to whoever may scrape it.

Who may scrape: ``METRICS_TOKEN`` (``metrics.token``), when set, must come as
``Authorization: Bearer <token>`` (401 JSON otherwise), from anywhere. Without
it only this host may: :func:`proxy.web.forwarded.is_loopback_client`, so a
request a router or reverse proxy passed on (``X-Forwarded-For``,
``Forwarded``) is refused even though its socket comes from loopback; others
get 403 JSON.

``grants{state}`` is counted here, at scrape time (:class:`GrantCounter`).
Counting reads and decrypts every grant, so one count serves the scrapes of
the next ``metrics.grants_interval`` seconds (60 by default): the figure is at
most that old, and a scrape costs the store nothing in between. (The
validator's sweeps load grants too, but each process only those it claimed,
and each grant once an hour: too partial and too late for a gauge.) It comes
from the shared store, so it is the same in every worker (within the interval).
The live-events gauges (``eventsub_*{grant}``) are read from this process's
relay at scrape time too (:mod:`proxy.telemetry.eventsub_metrics`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections import Counter as Tally
from collections.abc import Callable

from aiohttp import web

from ...core.credential import bearer_token
from ...core.grant_records import ACTIVE, NEEDS_REAUTH
from ...core.grants import GrantStore
from ...errors import Forbidden, Unauthorized
from ...services import Services
from ...telemetry.metrics import CONTENT_TYPE, Metrics
from ..forwarded import is_loopback_client

__all__ = ["GrantCounter", "setup_metrics"]


class GrantCounter:
    """Sets ``grants{state}`` from the store, at most once per ``interval`` seconds."""

    def __init__(self, metrics: Metrics, *, interval: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.metrics = metrics
        self.interval = interval
        self._clock = clock
        self._counted_at: float | None = None
        # Scrapes arriving together share one count instead of each decrypting everything.
        self._counting = asyncio.Lock()

    async def count(self, grants: GrantStore) -> None:
        """Count the grants by state, unless the last count is recent enough."""
        async with self._counting:
            started = self._clock()
            if self._counted_at is not None and started - self._counted_at < self.interval:
                return
            tally: Tally[str] = Tally({ACTIVE: 0, NEEDS_REAUTH: 0})
            for grant_id in await grants.all_ids():
                grant = await grants.get(grant_id)
                if grant is not None:
                    tally[grant.state] += 1
            self.metrics.set_grant_counts(tally)
            self._counted_at = started


def _same_secret(given: str, expected: str) -> bool:
    """Compare in constant time; hashing first hides the expected length too."""
    return hmac.compare_digest(hashlib.sha256(given.encode()).digest(),
                               hashlib.sha256(expected.encode()).digest())


def setup_metrics(app: web.Application, services: Services) -> None:
    """Register ``GET /metrics`` for ``services.metrics``."""
    token = services.config.metrics.token
    counter = GrantCounter(services.metrics, interval=services.config.metrics.grants_interval)

    async def metrics_endpoint(request: web.Request) -> web.Response:
        """The exposition, behind ``METRICS_TOKEN`` or to this host only."""
        if token:
            given = bearer_token(request.headers.get("Authorization", ""))
            if given is None or not _same_secret(given, token.reveal()):
                raise Unauthorized("Send Authorization: Bearer <METRICS_TOKEN>.",
                                   realm="metrics")
        elif not is_loopback_client(request):
            raise Forbidden("Without METRICS_TOKEN, /metrics answers only requests from this "
                            "host; set METRICS_TOKEN to scrape from elsewhere.")
        await counter.count(services.grants)
        return web.Response(body=services.metrics.exposition(),
                            headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"})

    app.router.add_get("/metrics", metrics_endpoint, name="metrics")
