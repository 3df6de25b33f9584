"""Abuse limits (proxy.core.limits) over real HTTP: request sizes, and concurrency per grant
and in total.

Each rejected request a test observes is added to the reliability summary's
"abuse cases rejected".
"""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers import bearer, login
from tests.unit.core.limits_checks import proxy_with, rejected

# -- sizes -------------------------------------------------------------------------------


async def test_oversized_headers_refused_and_server_keeps_serving(
        aiohttp_client, twitch_server, tmp_path, reliability):
    proxy = await proxy_with(aiohttp_client, twitch_server, tmp_path,
                             **{"limits.max_header_line": "2048", "limits.max_headers": "32"})
    host, port = proxy.host, proxy.port
    for request in (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4096 + b"\r\n\r\n",
        b"GET /healthz?" + b"q" * 4096 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-H%d: v\r\n" % i for i in range(64)) + b"\r\n",
    ):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(request)
        await writer.drain()
        status_line = await reader.readline()
        writer.close()
        await writer.wait_closed()
        status = int(status_line.split()[1])
        assert status in (400, 413, 414, 431), status_line
        reliability.abuse_rejected += 1
    assert (await proxy.get("/healthz", headers={"X-Ok": "a" * 1000})).status == 200


@pytest.mark.parametrize("method,path", [("POST", "/refresh"), ("POST", "/status"),
                                         ("POST", "/revoke")])
async def test_form_bodies_are_small(aiohttp_client, twitch_server, tmp_path, reliability,
                                     method, path):
    proxy = await proxy_with(aiohttp_client, twitch_server, tmp_path,
                             **{"limits.max_form_body": "1024"})
    body = '{"refresh_token": "' + "x" * 4096 + '"}'
    response = await proxy.request(method, path, data=body,
                                   headers={"Content-Type": "application/json",
                                            **bearer("tpk_x")})
    await rejected(reliability, response, 413)


async def test_multipart_without_boundary_is_a_400(proxy, reliability):
    for path in ("/refresh", "/status"):
        response = await proxy.post(path, data="key=x",
                                    headers={"Content-Type": "multipart/form-data"})
        await rejected(reliability, response, 400)


# -- concurrency -------------------------------------------------------------------------


async def test_concurrency_per_grant(aiohttp_client, twitch_server, mock, tmp_path,
                                     reliability):
    proxy = await proxy_with(aiohttp_client, twitch_server, tmp_path,
                             **{"limits.concurrent_per_grant": "2",
                                 "limits.concurrency_wait": "0"})
    key = (await login(proxy))["proxy_key"]
    mock.helix_delay = 3  # long enough that all five overlap on any machine
    # Distinct URLs: five calls to Twitch (identical GETs would share one call).
    responses = await asyncio.gather(*(proxy.get(f"/helix/users?login=twitchdev&n={n}",
                                                 headers=bearer(key)) for n in range(5)))
    statuses = sorted(r.status for r in responses)
    assert statuses == [200, 200, 429, 429, 429]
    for response in responses:
        if response.status == 429:
            await rejected(reliability, response, 429)
    mock.helix_delay = 0
    assert (await proxy.get("/helix/users", headers=bearer(key))).status == 200


async def test_shared_gets_hold_no_grant_slot(aiohttp_client, twitch_server, mock, tmp_path):
    proxy = await proxy_with(aiohttp_client, twitch_server, tmp_path,
                             **{"limits.concurrent_per_grant": "2",
                                 "limits.concurrency_wait": "0"})
    key = (await login(proxy))["proxy_key"]
    mock.helix_delay = 1
    before = len(mock.helix_requests)
    # Twenty widget copies asking the same thing cost Twitch one call: no 429.
    responses = await asyncio.gather(*(proxy.get("/helix/users", headers=bearer(key))
                                       for _ in range(20)))
    assert [r.status for r in responses] == [200] * 20
    assert len(mock.helix_requests) == before + 1


async def test_concurrency_per_grant_waits_briefly(aiohttp_client, twitch_server, mock,
                                                   tmp_path):
    proxy = await proxy_with(aiohttp_client, twitch_server, tmp_path,
                             **{"limits.concurrent_per_grant": "2",
                                 "limits.concurrency_wait": "30"})
    key = (await login(proxy))["proxy_key"]
    mock.helix_delay = 0.2
    before = len(mock.helix_requests)
    responses = await asyncio.gather(*(proxy.get(f"/helix/users?n={n}", headers=bearer(key))
                                       for n in range(6)))
    assert [r.status for r in responses] == [200] * 6
    assert len(mock.helix_requests) == before + 6


async def test_concurrency_in_total(aiohttp_client, twitch_server, mock, tmp_path,
                                    reliability):
    proxy = await proxy_with(aiohttp_client, twitch_server, tmp_path,
                             **{"limits.concurrent_total": "1",
                                 "limits.concurrency_wait": "0"})
    key = (await login(proxy))["proxy_key"]
    mock.helix_delay = 3
    before = len(mock.helix_requests)
    slow = asyncio.ensure_future(proxy.get("/helix/users", headers=bearer(key)))
    while len(mock.helix_requests) == before:  # the slow one is now at "Twitch"
        await asyncio.sleep(0.01)
    body = await rejected(reliability, await proxy.get("/helix/users?another=1",
                                                        headers=bearer(key)), 503)
    assert body["error"] == "overloaded"
    assert (await proxy.get("/healthz")).status == 200  # not upstream work
    assert (await slow).status == 200
