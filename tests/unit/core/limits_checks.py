"""Helpers of the limits tests: a proxy with given flags, and the check of a rejection."""

from __future__ import annotations

from proxy.config import load_config
from proxy.web.app import create_app
from tests.helpers import proxy_config_flags


async def rejected(reliability, response, status: int) -> dict:
    """Assert a JSON rejection with ``status``; count it."""
    body = await response.json()
    assert response.status == status, body
    assert set(body) >= {"error", "message"}, body
    if status in (429, 503):
        assert int(response.headers["Retry-After"]) >= 1
    reliability.abuse_rejected += 1
    return body


async def proxy_with(aiohttp_client, twitch_server, tmp_path, **flags):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    all_flags = {**proxy_config_flags(str(twitch_server.make_url("")).rstrip("/")),
                 "store.url": "memory://", **flags}
    return await aiohttp_client(create_app(load_config(path=empty, environ={}, flags=all_flags)))
