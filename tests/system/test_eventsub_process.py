"""/eventsub in a real ``python -m proxy --mock-twitch`` process, as a streamer runs it.

What only the production server shows: aiohttp does not cancel a stream's
handler when the widget goes away (no ``handler_cancellation``), so the proxy
must notice a closed connection itself rather than at the next heartbeat write.
"""

from __future__ import annotations

import asyncio
import re
import time

import aiohttp
import pytest
from yarl import URL

from tests.processes import (
    REPO,
    clean_environ,
    free_port,
    start_proxy,
    stop,
    wait_ready,
)

pytestmark = pytest.mark.timeout(120)


async def consent(session: aiohttp.ClientSession, base: URL, mock: URL) -> str:
    """Log in as a streamer does: /login, the mock's consent page, approve; the proxy key."""
    async with session.get(base / "login") as page:
        text = await page.text()
    action = re.search(r'<form[^>]*action="([^"]+)"', text)
    assert action is not None, text
    fields = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', text))
    async with session.post(mock.join(URL(action[1])), data=fields,
                            headers={"Accept": "application/json"}) as callback:
        assert callback.status == 200, await callback.text()
        return str((await callback.json())["proxy_key"])


async def test_a_widget_that_leaves_frees_its_place_within_seconds(tmp_path):
    config = tmp_path / "proxy.yaml"
    config.write_text("limits:\n  eventsub_streams_per_grant: 3\n")
    port, mock_port = free_port(), free_port()
    process = start_proxy(clean_environ(), REPO, "--mock-twitch", "--port", str(port),
                          "--mock-port", str(mock_port), "--config", str(config))
    base = URL(f"http://localhost:{port}")  # the public URL: the state cookie is for it
    widgets = [aiohttp.ClientSession() for _ in range(3)]
    streams: list[aiohttp.ClientResponse] = []
    try:
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, base, process)
            key = await consent(session, base, URL(f"http://127.0.0.1:{mock_port}"))
            headers = {"Authorization": f"Bearer {key}"}
            url = base.with_path("/eventsub").with_query(type="channel.follow:2")
            streams += [await widget.get(url, headers=headers) for widget in widgets]
            assert [stream.status for stream in streams] == [200, 200, 200]
            async with session.get(url, headers=headers) as full:
                assert full.status == 429 and (await full.json())["error"] == "too_many_streams"
            for gone in (0, 1):  # two widgets go away, as closed OBS scenes do
                streams[gone].close()
                await widgets[gone].close()
            opened, started = 0, time.monotonic()
            while opened < 2 and time.monotonic() - started < 10:  # a heartbeat is 20 s
                answer = await widgets[2].get(url, headers=headers)
                if answer.status == 200:
                    streams.append(answer)
                    opened += 1
                else:
                    assert answer.status == 429
                    answer.release()
                    await asyncio.sleep(0.2)
            assert opened == 2, "closed streams still counted against the grant"
    finally:
        for stream in streams:
            stream.close()
        for widget in widgets:
            await widget.close()
        stop(process)
