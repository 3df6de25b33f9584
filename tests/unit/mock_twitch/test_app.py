"""proxy.mock_twitch.app: the app factory exposes its state, and the mock runs on its own."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import aiohttp

from proxy.mock_twitch import create_mock_app, mock_twitch_key

REPO_ROOT = Path(__file__).resolve().parents[3]


async def test_app_exposes_its_state(mock):
    app = create_mock_app(state=mock)

    assert app[mock_twitch_key] is mock
    assert create_mock_app(client_id="x")[mock_twitch_key].client_id == "x"


async def test_runs_standalone():
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy.mock_twitch",
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO_ROOT,
    )
    try:
        url = (await asyncio.wait_for(process.stdout.readline(), 10)).decode().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{url}/_mock/calls") as response,
        ):
            assert await response.json() == {}
    finally:
        process.terminate()
        await process.wait()
