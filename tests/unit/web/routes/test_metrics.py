"""proxy.web.routes.metrics: grant counting at scrape time, and the outcome labels it exposes.

Scraping over HTTP (who may, what it shows) is tested in tests/unit/telemetry/test_metrics.py.
"""

from __future__ import annotations

from proxy.core.grant_locks import RefreshOutcome
from proxy.core.grant_records import Grant
from proxy.core.grants import GrantStore
from proxy.core.validator import ValidationOutcome
from proxy.store import MemoryStore
from proxy.store.crypto import PlainCipher
from proxy.telemetry.metrics import REFRESH_OUTCOMES, VALIDATION_OUTCOMES, Metrics
from proxy.web.routes.metrics import GrantCounter


def _grant(user_id: str) -> Grant:
    return Grant.new(user_id=user_id, login=f"user{user_id}", scopes=(),
                     access_token=f"at-{user_id}", refresh_token=f"rt-{user_id}",
                     expires_at=0.0)


def _grants_gauge(metrics: Metrics, state: str) -> float | None:
    return metrics.registry.get_sample_value("twitch_proxy_grants", {"state": state})


async def test_one_count_serves_the_scrapes_of_its_interval():
    grants = GrantStore(MemoryStore(), PlainCipher())
    await grants.create(_grant("1"))
    now = [100.0]
    metrics = Metrics()
    counter = GrantCounter(metrics, interval=60.0, clock=lambda: now[0])

    await counter.count(grants)
    assert _grants_gauge(metrics, "active") == 1
    assert _grants_gauge(metrics, "needs_reauth") == 0

    await grants.create(_grant("2"))
    now[0] += 59.0
    await counter.count(grants)
    assert _grants_gauge(metrics, "active") == 1  # the last count is recent enough
    now[0] += 1.0
    await counter.count(grants)
    assert _grants_gauge(metrics, "active") == 2


def test_validation_outcomes_shown_from_the_start_are_the_validators():
    """The metric declares its label values (telemetry sits below the core): they must
    be exactly the outcomes the validator counts (every one but skipped and purged)."""
    counted = {value for name, value in vars(ValidationOutcome).items()
               if name.isupper()} - {ValidationOutcome.SKIPPED, ValidationOutcome.PURGED}
    assert set(VALIDATION_OUTCOMES) == counted


def test_refresh_outcomes_shown_from_the_start_are_the_refreshers():
    """Likewise every outcome the refresher reports."""
    reported = {value for name, value in vars(RefreshOutcome).items() if name.isupper()}
    assert set(REFRESH_OUTCOMES) == reported
