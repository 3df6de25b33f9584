"""Fault injection, upstream: a misbehaving Twitch (faulty_upstream.py) in front of the proxy.

Every scenario checks that the answer is a clear JSON error (or, for Helix,
Twitch's own status passed through as documented), that the proxy served other
requests while the fault was in progress, that no secret appeared in a body or
a log line, and that the grant survived: after the fault clears, the grant's
refresh token is still live at the mock and a request that needs a refresh
succeeds.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from proxy.config import load_config
from proxy.core.grant_records import ACTIVE
from proxy.web.app import create_app
from tests.helpers import bearer, login, proxy_config_flags
from tests.system.faulty_upstream import TIMEOUT, FaultyUpstream, grant_of, second_login, secrets_of

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def faulty(twitch_server):
    upstream = FaultyUpstream(twitch_server.port)
    await upstream.start()
    yield upstream
    await upstream.close()


@pytest.fixture
async def faulted_proxy(aiohttp_client, faulty, tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    flags = {**proxy_config_flags(faulty.url), "store.url": "memory://",
             "twitch.timeout": str(TIMEOUT)}
    return await aiohttp_client(create_app(load_config(path=empty, environ={}, flags=flags)))


TOKEN_FAULTS = {
    # fault: the status the proxy answers when the token endpoint does this
    "refused": 502,
    "reset_before_headers": 502,
    "reset_mid_body": 502,
    "never_ends": 504,
    "one_byte_per_second": 504,
    "status_500": 503,
    "status_502": 503,
    "status_503": 503,
    "status_504": 503,
    "html": 502,
    "invalid_json": 502,
    "missing_fields": 502,
    "huge": 502,
}


HELIX_FAULTS = {
    # Transport faults and 5xx pages that are not Twitch's JSON (a load balancer's
    # HTML) become the proxy's own JSON gateway errors; answers Twitch itself sent
    # in JSON, and any 2xx-4xx, are passed through as the contract says.
    "refused": 502,
    "reset_before_headers": 502,
    "reset_mid_body": 502,
    "never_ends": 504,
    "one_byte_per_second": 504,
    "status_500": 500,  # JSON: Twitch's own answer
    "status_502": 503,  # HTML page
    "status_503": 503,  # JSON, retried once
    "status_504": 504,  # HTML page
    "html": 200,
    "invalid_json": 200,
    "huge": 200,
}


HANGING = {"never_ends", "one_byte_per_second"}


SCENARIOS = (
    [("refresh", fault, status) for fault, status in TOKEN_FAULTS.items()]
    + [("refresh_during_helix", fault, status) for fault, status in TOKEN_FAULTS.items()]
    + [("helix", fault, status) for fault, status in HELIX_FAULTS.items()]
)


async def _faulted_call(proxy, mock, where: str, first: dict) -> tuple[int, bytes, dict]:
    if where == "refresh":
        response = await proxy.post("/refresh", json={"refresh_token": first["refresh_token"]})
    else:
        if where == "refresh_during_helix":
            mock.expire_access_tokens(user_id="141981764")
        response = await proxy.get("/helix/users", headers=bearer(first["proxy_key"]))
    body = await response.read()
    return response.status, body, dict(response.headers)


async def _other_requests(proxy, where: str, fault: str, second: dict) -> None:
    """While the fault is in progress, the proxy answers everybody else."""
    health = await proxy.get("/healthz")
    assert health.status == 200
    status = await proxy.get("/status", headers=bearer(second["proxy_key"]))
    assert status.status == 200
    if fault == "refused":
        return  # nothing listens upstream: only store-backed answers are possible
    if where == "helix":  # the token endpoint still works
        other = await proxy.post("/refresh", json={"refresh_token": second["refresh_token"]})
        assert other.status == 200, await other.text()
        second.update(await other.json())
    else:  # Helix still works for a grant with a fresh token
        other = await proxy.get("/helix/users", headers=bearer(second["proxy_key"]))
        assert other.status == 200, await other.text()


@pytest.mark.parametrize("where,fault,expected", SCENARIOS,
                         ids=[f"{w}-{f}" for w, f, _ in SCENARIOS])
async def test_upstream_fault(faulted_proxy, mock, faulty, caplog, reliability,
                              where, fault, expected):
    proxy = faulted_proxy
    first = await login(proxy)
    second = await second_login(proxy, mock)
    before = await grant_of(proxy, first["proxy_key"])

    faulty.target = "/helix/" if where == "helix" else "/oauth2/token"
    if fault == "refused":
        await faulty.stop_listening()
    else:
        faulty.fault = fault
    call = asyncio.ensure_future(_faulted_call(proxy, mock, where, first))
    if fault in HANGING:
        await asyncio.sleep(0.2)
        assert not call.done()
    await _other_requests(proxy, where, fault, second)
    status, body, headers = await asyncio.wait_for(call, TIMEOUT * 20)

    assert status == expected, body[:300]
    assert fault == "refused" or faulty.hits[fault] >= 1, faulty.hits
    if status >= 500 and not (where == "helix" and fault in ("status_500", "status_503")):
        error = json.loads(body)
        assert set(error) >= {"error", "message"}, error
        assert error["error"].startswith("upstream_"), error
        if status == 503:
            assert int(headers["Retry-After"]) >= 1
    if fault == "huge" and where == "helix":
        assert len(body) > 8 * 1024 * 1024  # passed through whole, streamed

    # The fault clears: the same grant works, refreshing if it must.
    faulty.fault, faulty.target = "pass", ""
    if fault == "refused":
        await faulty.start()
    after = await grant_of(proxy, first["proxy_key"])
    lost = after is None or after.state != ACTIVE or (
        after.refresh_token not in mock.refresh_tokens)
    if not lost:
        assert after.refresh_token == before.refresh_token or \
            before.refresh_token in mock.spent_refresh_tokens  # unchanged, or rotated
        mock.expire_access_tokens(user_id="141981764")
        refreshes = mock.calls["token:refresh_token"]
        healed = await proxy.get("/helix/users", headers=bearer(first["proxy_key"]))
        lost = healed.status != 200
        assert mock.calls["token:refresh_token"] == refreshes + 1
    reliability.tokens_lost += int(lost)
    assert not lost, "the grant did not survive the fault"
    leaked = reliability.leaks(
        secrets_of(mock, first, second),
        body.decode(errors="replace") if status >= 400 else "", caplog.text)
    assert leaked == []
    reliability.fault_scenarios += 1


async def test_helix_body_broken_after_the_headers_is_not_a_silent_truncation(
        faulted_proxy, mock, faulty, reliability):
    """Twitch breaking off an 8 MiB body: a JSON 502, or (when the proxy was already
    streaming) a response that visibly breaks; never a complete-looking truncated 200."""
    proxy = faulted_proxy
    first = await login(proxy)
    faulty.fault, faulty.target = "reset_mid_huge_body", "/helix/"
    response = await proxy.get("/helix/users", headers=bearer(first["proxy_key"]))
    if response.status == 502:
        assert (await response.json())["error"].startswith("upstream_")
    else:
        assert response.status == 200  # the status line went out before the break
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
    faulty.fault, faulty.target = "pass", ""
    healed = await proxy.get("/helix/users", headers=bearer(first["proxy_key"]))
    assert healed.status == 200
    reliability.fault_scenarios += 1
