"""The hourly validator: real proxy apps against the mock Twitch over HTTP."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time

import pytest

from proxy.config import ConfigError, load_config
from proxy.core.grant_records import ACTIVE, NEEDS_REAUTH, Grant
from proxy.core.grants import GrantStore
from proxy.core.validator import CLAIM_PREFIX, ValidationOutcome, Validator
from proxy.mock_twitch import MockTwitch
from proxy.web.app import create_app
from proxy.web.keys import grants_key, metrics_key, refresher_key, validator_key
from tests.helpers import login, proxy_config_flags, seed_grants

sqlite = pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)


async def started(app) -> Validator:
    """The app's validator, once its start-up sweep is over."""
    validator = app[validator_key]
    while validator.completed_sweeps < 1:
        await asyncio.sleep(0.01)
    return validator


async def sweep_an_interval_later(app) -> dict[str, str]:
    """A sweep as it runs once the interval has passed (every claim has expired)."""
    validator = await started(app)
    store = app[grants_key].store
    for key in await store.keys(CLAIM_PREFIX):
        await store.delete(key)
    return await validator.sweep()


async def logged_in(proxy) -> tuple[str, str]:
    """Log in once the start-up sweep is over; (grant id, proxy key)."""
    await started(proxy.app)
    body = await login(proxy)
    grant_id = await proxy.app[grants_key].grant_of_user(body["user_id"])
    return grant_id, body["proxy_key"]


async def status_of(proxy, key: str) -> dict:
    response = await proxy.get("/status", headers={"Authorization": f"Bearer {key}"})
    assert response.status == 200
    return await response.json()


@sqlite
async def test_grants_are_validated_at_start(aiohttp_client, proxy_config, mock, caplog):
    seeded = await seed_grants(proxy_config, mock, 2)
    caplog.set_level(logging.INFO, logger="proxy.core.validator")

    client = await aiohttp_client(create_app(proxy_config))
    validator = await started(client.app)

    assert mock.calls["validate"] == 2
    assert validator.last_outcomes == {g.grant_id: ValidationOutcome.VALID for g in seeded}
    for grant in seeded:
        stored = await client.app[grants_key].get(grant.grant_id)
        assert stored.last_validated_at is not None
        assert stored.access_token == grant.access_token  # nothing refreshed
    lines = [r.getMessage() for r in caplog.records if r.name == "proxy.core.validator"]
    assert len(lines) == 2 and all("outcome=valid" in line for line in lines)
    for grant in seeded:
        assert not any(grant.access_token in line or grant.refresh_token in line
                       for line in lines)


@pytest.mark.parametrize("config_flags", [{"auth.validate_interval": 0.2}])
async def test_validation_repeats_every_interval(proxy, mock):
    await logged_in(proxy)
    after_login = mock.calls["validate"]
    # No manual sweeps: the background task comes back by itself.
    while mock.calls["validate"] < after_login + 2:
        await asyncio.sleep(0.05)
    assert mock.calls["token:refresh_token"] == 0


async def test_invalid_token_is_refreshed_through_the_refresher(proxy, mock, caplog):
    grant_id, key = await logged_in(proxy)
    before = await proxy.app[grants_key].get(grant_id)
    mock.expire_access_tokens()
    caplog.set_level(logging.INFO, logger="proxy.core.validator")

    outcomes = await sweep_an_interval_later(proxy.app)

    assert outcomes == {grant_id: ValidationOutcome.REFRESHED}
    assert mock.calls["token:refresh_token"] == 1
    after = await proxy.app[grants_key].get(grant_id)
    assert after.access_token != before.access_token
    assert after.refresh_token in mock.refresh_tokens  # the rotation was stored
    assert after.last_validated_at > before.last_validated_at
    assert (await status_of(proxy, key))["state"] == ACTIVE
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "outcome=refreshed" in text
    for token in (before.access_token, before.refresh_token, after.access_token,
                  after.refresh_token):
        assert token not in text


async def test_permanent_refresh_failure_marks_needs_reauth(proxy, mock):
    grant_id, key = await logged_in(proxy)
    mock.revoke_refresh_tokens()  # the user changed password: both tokens die

    outcomes = await sweep_an_interval_later(proxy.app)

    assert outcomes == {grant_id: ValidationOutcome.NEEDS_REAUTH}
    status = await status_of(proxy, key)
    assert status["state"] == NEEDS_REAUTH and status["login_url"].endswith("/login")
    # A grant that needs a login is not validated (nor refreshed) again.
    validations, refreshes = mock.calls["validate"], mock.calls["token:refresh_token"]
    assert await sweep_an_interval_later(proxy.app) == {grant_id: ValidationOutcome.SKIPPED}
    assert (mock.calls["validate"], mock.calls["token:refresh_token"]) == (validations, refreshes)


async def test_twitch_5xx_leaves_the_grant_alone_and_retries_next_sweep(proxy, mock):
    grant_id, _ = await logged_in(proxy)
    grants = proxy.app[grants_key]
    before = await grants.load(grant_id)
    mock.queue_failure("validate", 503, {"status": 503, "message": "Service Unavailable"})

    outcomes = await sweep_an_interval_later(proxy.app)

    assert outcomes == {grant_id: ValidationOutcome.UNAVAILABLE}
    assert (await grants.load(grant_id)).raw == before.raw  # not even a stamp
    # The claim was given back: the very next sweep tries again, no interval wait.
    validator = proxy.app[validator_key]
    assert await validator.sweep() == {grant_id: ValidationOutcome.VALID}
    assert mock.calls["token:refresh_token"] == 0


async def test_refresh_failing_transiently_keeps_the_token_and_retries(proxy, mock):
    grant_id, _ = await logged_in(proxy)
    before = await proxy.app[grants_key].get(grant_id)
    mock.expire_access_tokens()
    mock.queue_failure("token", 502, "<html>Bad Gateway</html>")

    outcomes = await sweep_an_interval_later(proxy.app)

    assert outcomes == {grant_id: ValidationOutcome.REFRESH_FAILED}
    after = await proxy.app[grants_key].get(grant_id)
    assert (after.refresh_token, after.state) == (before.refresh_token, ACTIVE)
    assert await proxy.app[validator_key].sweep() == {grant_id: ValidationOutcome.REFRESHED}


@sqlite
async def test_two_instances_on_one_sqlite_file_validate_each_grant_once(
    aiohttp_client, proxy_config, mock
):
    seeded = await seed_grants(proxy_config, mock, 30)
    first, second = await asyncio.gather(aiohttp_client(create_app(proxy_config)),
                                         aiohttp_client(create_app(proxy_config)))
    validators = [await started(first.app), await started(second.app)]

    assert mock.calls["validate"] == 30
    for grant in seeded:
        outcomes = sorted(v.last_outcomes[grant.grant_id] for v in validators)
        assert outcomes == [ValidationOutcome.SKIPPED, ValidationOutcome.VALID]

    # Sweeping again within the interval validates nothing, in either instance.
    await asyncio.gather(*(v.sweep() for v in validators))
    assert mock.calls["validate"] == 30
    # An interval later, again once per grant in total.
    await asyncio.gather(sweep_an_interval_later(first.app), second.app[validator_key].sweep())
    assert mock.calls["validate"] == 60


async def test_a_refresh_landing_during_validation_is_not_overwritten(proxy, mock):
    """Twitch's answer about the old token must not stamp the new one's expiry."""
    grant_id, _ = await logged_in(proxy)
    grants = proxy.app[grants_key]
    validator = proxy.app[validator_key]
    old = await grants.get(grant_id)
    refreshed = await proxy.app[refresher_key].refresh(
        grant_id, stale_access_token=old.access_token)

    await validator._stamp(old, expires_at=1.0, last_validated_at=1.0)

    current = await grants.get(grant_id)
    assert current.access_token == refreshed.access_token
    assert current.expires_at == refreshed.expires_at


# -- purging grants that stayed needs_reauth ------------------------------------------------

DAY = 86400.0


async def stored(grants: GrantStore, mock: MockTwitch, *, state: str,
                 age: float) -> tuple[Grant, str]:
    """A grant of a new mock user, last changed ``age`` seconds ago, and a proxy key to it."""
    user_id = str(60_000_000 + len(mock.users))
    mock.add_user(user_id, f"dead{user_id}")
    tokens = mock.issue_tokens(user_id, ["user:read:email"])
    changed = time.time() - age
    grant = Grant(grant_id="g_" + secrets.token_hex(8), user_id=user_id, login=f"dead{user_id}",
                  scopes=tuple(tokens["scope"]), access_token=tokens["access_token"],
                  refresh_token=tokens["refresh_token"], expires_at=changed + 3600,
                  state=state, created_at=changed, updated_at=changed)
    await grants.create(grant)
    key, _ = await grants.create_key(grant.grant_id)
    return grant, key


def purged_total(app) -> float:
    return app[metrics_key].registry.get_sample_value("twitch_proxy_grants_purged_total") or 0


async def test_needs_reauth_grants_past_the_age_are_purged(proxy, mock, caplog):
    await started(proxy.app)
    grants = proxy.app[grants_key]
    dead, dead_key = await stored(grants, mock, state=NEEDS_REAUTH, age=31 * DAY)
    young, young_key = await stored(grants, mock, state=NEEDS_REAUTH, age=29 * DAY)
    active, active_key = await stored(grants, mock, state=ACTIVE, age=90 * DAY)
    caplog.set_level(logging.INFO, logger="proxy.core.validator")

    outcomes = await sweep_an_interval_later(proxy.app)

    assert outcomes[dead.grant_id] == ValidationOutcome.PURGED
    assert outcomes[young.grant_id] == ValidationOutcome.SKIPPED
    assert outcomes[active.grant_id] == ValidationOutcome.VALID
    assert await grants.get(dead.grant_id) is None
    gone = await proxy.get("/status", headers={"Authorization": f"Bearer {dead_key}"})
    assert gone.status == 401
    assert (await status_of(proxy, young_key))["state"] == NEEDS_REAUTH
    assert (await status_of(proxy, active_key))["state"] == ACTIVE
    assert purged_total(proxy.app) == 1
    lines = [r.getMessage() for r in caplog.records
             if r.name == "proxy.core.validator" and "purged" in r.getMessage()]
    assert len(lines) == 1 and dead.grant_id in lines[0], lines
    for secret in (dead.access_token, dead.refresh_token, dead_key, dead.login):
        assert secret not in lines[0]


@pytest.mark.parametrize("config_flags", [{"auth.purge_needs_reauth_after": 0}])
async def test_purging_can_be_turned_off(proxy, mock):
    await started(proxy.app)
    grants = proxy.app[grants_key]
    dead, _ = await stored(grants, mock, state=NEEDS_REAUTH, age=365 * DAY)
    assert (await sweep_an_interval_later(proxy.app))[dead.grant_id] == \
        ValidationOutcome.SKIPPED
    assert await grants.get(dead.grant_id) is not None
    assert purged_total(proxy.app) == 0


@sqlite
@pytest.mark.parametrize("config_flags", [{"auth.purge_needs_reauth_after": 3600}])
async def test_two_instances_purge_a_grant_once(aiohttp_client, proxy_config, mock, caplog):
    first, second = await asyncio.gather(aiohttp_client(create_app(proxy_config)),
                                         aiohttp_client(create_app(proxy_config)))
    await asyncio.gather(started(first.app), started(second.app))
    dead, _ = await stored(first.app[grants_key], mock, state=NEEDS_REAUTH, age=7200)
    caplog.set_level(logging.INFO, logger="proxy.core.validator")

    # Nobody has claimed the new grant yet: both sweeps race for it.
    outcomes = await asyncio.gather(first.app[validator_key].sweep(),
                                    second.app[validator_key].sweep())

    assert sorted(o[dead.grant_id] for o in outcomes) == [ValidationOutcome.PURGED,
                                                          ValidationOutcome.SKIPPED]
    assert purged_total(first.app) + purged_total(second.app) == 1
    assert len([r for r in caplog.records if "purged" in r.getMessage()]) == 1
    assert await first.app[grants_key].get(dead.grant_id) is None


def test_a_negative_purge_age_is_refused(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError) as caught:
        load_config(path=empty, environ={}, flags={
            **proxy_config_flags("http://127.0.0.1:1"), "store.url": "memory://",
            "auth.purge_needs_reauth_after": "-1"})
    assert "auth.purge_needs_reauth_after must not be negative" in str(caught.value)
