"""proxy.telemetry.metrics: GET /metrics, parsed with prometheus_client's own parser."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.core.grant_records import NEEDS_REAUTH
from proxy.core.validator import CLAIM_PREFIX
from proxy.telemetry.metrics import Metrics
from proxy.web.app import create_app
from proxy.web.keys import grants_key, store_key, validator_key
from tests.helpers import login, seed_grants


async def scrape(proxy, **headers) -> dict[tuple[str, tuple], float]:
    """``{(sample name, sorted labels): value}`` of one scrape."""
    response = await proxy.get("/metrics", headers=headers)
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    samples = {}
    for family in text_string_to_metric_families(await response.text()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def _helix(proxy, key):
    return await proxy.get("/helix/users", headers={"Authorization": f"Bearer {key}"})


async def test_requests_upstream_latency_refreshes_grants_and_rate_limits(proxy, mock):
    tokens = await login(proxy)
    key = tokens["proxy_key"]
    assert (await _helix(proxy, key)).status == 200
    # Five copies of an old widget refresh one token at once: one refresh at Twitch.
    refreshed = await asyncio.gather(*(
        proxy.post("/refresh", json={"refresh_token": tokens["refresh_token"]})
        for _ in range(5)))
    assert [r.status for r in refreshed] == [200] * 5
    mock.expire_access_tokens()
    answers = await asyncio.gather(*(_helix(proxy, key) for _ in range(5)))
    assert [a.status for a in answers] == [200] * 5
    assert (await proxy.get("/helix/nope/../x")).status in (400, 404)

    samples = await scrape(proxy)
    assert value(samples, "twitch_proxy_requests_total",
                 route="/helix/{path}", method="GET", status="200") == 6
    assert value(samples, "twitch_proxy_requests_total",
                 route="/callback", method="GET", status="200") == 1
    assert value(samples, "twitch_proxy_refreshes_total", outcome="success") == 2
    assert value(samples, "twitch_proxy_refreshes_total", outcome="coalesced") >= 1
    assert value(samples, "twitch_proxy_refreshes_total", outcome="permanent_failure") == 0
    for endpoint in ("helix", "token", "validate"):
        assert value(samples, "twitch_proxy_upstream_request_duration_seconds_count",
                     endpoint=endpoint) >= 1, endpoint
    assert value(samples, "twitch_proxy_upstream_request_duration_seconds_bucket",
                 endpoint="helix", le="+Inf") == value(
        samples, "twitch_proxy_upstream_request_duration_seconds_count", endpoint="helix")
    assert value(samples, "twitch_proxy_upstream_responses_total",
                 endpoint="token", status="200") == 3  # the code, then two refreshes
    assert value(samples, "twitch_proxy_grants", state="active") == 1
    assert value(samples, "twitch_proxy_grants", state="needs_reauth") == 0

    (grant_id,) = await proxy.server.app[grants_key].all_ids()
    remaining = value(samples, "twitch_proxy_helix_ratelimit_remaining", bucket=grant_id)
    assert 0 < remaining < mock.ratelimit_limit
    # Label values are route templates, outcomes and grant ids: no login, no secret.
    text = await (await proxy.get("/metrics")).text()
    for secret in (key, tokens["access_token"], tokens["refresh_token"], tokens["login"]):
        assert secret not in text


@pytest.mark.parametrize("config_flags", [{"metrics.grants_interval": 0}])
async def test_refresh_failures_by_kind(proxy, mock):
    key = (await login(proxy))["proxy_key"]
    mock.expire_access_tokens()
    mock.queue_failure("token", 503, {"status": 503, "message": "down"})
    assert (await _helix(proxy, key)).status == 503
    samples = await scrape(proxy)
    assert value(samples, "twitch_proxy_refreshes_total", outcome="transient_failure") == 1
    assert value(samples, "twitch_proxy_upstream_responses_total",
                 endpoint="token", status="503") == 1

    mock.revoke_refresh_tokens()
    assert (await _helix(proxy, key)).status == 401
    samples = await scrape(proxy)
    assert value(samples, "twitch_proxy_refreshes_total", outcome="permanent_failure") == 1
    assert value(samples, "twitch_proxy_grants", state="needs_reauth") == 1
    assert value(samples, "twitch_proxy_grants", state="active") == 0


async def test_validations_by_outcome(proxy, mock):
    await login(proxy)
    app = proxy.server.app
    (grant_id,) = await app[grants_key].all_ids()
    mock.expire_access_tokens()
    # Whatever the start-up sweep did, make this grant due again and sweep it.
    await app[grants_key].store.delete(CLAIM_PREFIX + grant_id)
    before = await scrape(proxy)
    assert await app[validator_key].sweep([grant_id]) == {grant_id: "refreshed"}
    after = await scrape(proxy)
    assert value(after, "twitch_proxy_validations_total", outcome="refreshed") == \
        value(before, "twitch_proxy_validations_total", outcome="refreshed") + 1
    assert ("twitch_proxy_validations_total", (("outcome", "needs_reauth"),)) in after


@pytest.mark.parametrize("config_flags", [{"metrics.token": "m3trics-t0ken"}])
async def test_metrics_token_is_required_when_set(proxy):
    bare = await proxy.get("/metrics")
    assert bare.status == 401
    assert (await bare.json())["error"] == "unauthorized"
    wrong = await proxy.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401
    assert "m3trics-t0ken" not in await wrong.text()
    samples = await scrape(proxy, Authorization="Bearer m3trics-t0ken")
    assert value(samples, "twitch_proxy_requests_total",
                 route="/metrics", method="GET", status="401") == 2


def test_each_app_has_its_own_registry():
    one, two = Metrics(), Metrics()
    one.refresh_outcome("success")
    assert one.registry.get_sample_value("twitch_proxy_refreshes_total",
                                         {"outcome": "success"}) == 1
    assert two.registry.get_sample_value("twitch_proxy_refreshes_total",
                                         {"outcome": "success"}) == 0


# -- who may scrape ---------------------------------------------------------------------


def _non_loopback_address() -> str | None:
    """An address of this host that is not loopback, or None (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # only picks the interface a route would use
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if ipaddress.ip_address(address).is_loopback else address


@pytest.fixture
async def lan_proxy(aiohttp_client, proxy_config):
    """The proxy served on (and reached through) a non-loopback address of this host."""
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this host has no non-loopback address to serve on")
    return await aiohttp_client(create_app(proxy_config), server_kwargs={"host": address})


async def test_without_a_token_only_loopback_may_scrape(lan_proxy):
    refused = await lan_proxy.get("/metrics")
    body = await refused.json()
    assert refused.status == 403, body
    assert body["error"] == "forbidden" and "METRICS_TOKEN" in body["message"]
    assert (await lan_proxy.get("/healthz")).status == 200  # the same client, served


@pytest.mark.parametrize("config_flags", [{"metrics.token": "m3trics-t0ken"}])
async def test_with_a_token_any_address_may_scrape(lan_proxy):
    assert (await lan_proxy.get("/metrics")).status == 401
    samples = await scrape(lan_proxy, Authorization="Bearer m3trics-t0ken")
    assert value(samples, "twitch_proxy_requests_total",
                 route="/metrics", method="GET", status="401") == 1


@pytest.mark.parametrize("config_flags", [{"server.trust_forwarded": True},
                                          {"server.trust_forwarded": False}])
async def test_a_forwarded_request_is_not_loopback(proxy):
    """A router or reverse proxy on this host connects from loopback for everyone."""
    for forwarded in ({"X-Forwarded-For": "203.0.113.9"},
                      {"X-Forwarded-For": "127.0.0.1"},
                      {"Forwarded": "for=127.0.0.1"}):
        refused = await proxy.get("/metrics", headers=forwarded)
        assert refused.status == 403, forwarded
        assert (await refused.json())["error"] == "forbidden"
    await scrape(proxy)  # straight from this host


# -- what a scrape costs ------------------------------------------------------------------


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_a_scrape_does_not_decrypt_every_grant(aiohttp_client, proxy_config, mock,
                                                     monkeypatch):
    await seed_grants(proxy_config, mock, 5)
    client = await aiohttp_client(create_app(proxy_config))
    validator = client.app[validator_key]
    while validator.completed_sweeps < 1:  # its start-up sweep reads the grants too
        await asyncio.sleep(0.01)
    store = client.app[store_key]
    grant_reads: list[str] = []
    real_get = store.get

    async def counting_get(key: str) -> bytes | None:
        if key.startswith("grant:"):
            grant_reads.append(key)
        return await real_get(key)

    monkeypatch.setattr(store, "get", counting_get)
    first = await scrape(client)
    assert value(first, "twitch_proxy_grants", state="active") == 5
    assert len(grant_reads) == 5
    grant_reads.clear()
    second = await scrape(client)
    assert value(second, "twitch_proxy_grants", state="active") == 5
    assert grant_reads == []  # the tally of a moment ago, not a decryption per grant


@pytest.mark.parametrize("config_flags", [{"metrics.grants_interval": 0.3}])
async def test_grants_are_recounted_once_the_interval_is_over(proxy):
    await login(proxy)
    grants = proxy.server.app[grants_key]
    (grant_id,) = await grants.all_ids()
    assert value(await scrape(proxy), "twitch_proxy_grants", state="active") == 1
    await grants.update(grant_id, state=NEEDS_REAUTH)
    assert value(await scrape(proxy), "twitch_proxy_grants", state="needs_reauth") == 0
    await asyncio.sleep(0.35)
    samples = await scrape(proxy)
    assert value(samples, "twitch_proxy_grants", state="needs_reauth") == 1
    assert value(samples, "twitch_proxy_grants", state="active") == 0
