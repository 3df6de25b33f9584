"""proxy.web.routes.health: /healthz is liveness, /readyz says whether the store answers."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from tests.processes import free_port


async def test_healthz_and_readyz_answer_when_all_is_well(proxy):
    health = await proxy.get("/healthz")
    assert health.status == 200 and await health.json() == {"status": "ok"}
    ready = await proxy.get("/readyz")
    assert ready.status == 200 and await ready.json() == {"status": "ready"}


@pytest.mark.parametrize(
    "store_url, config_flags",
    # A Redis store on a port nothing listens on.
    [(f"redis://127.0.0.1:{free_port()}/0",
      {"store.encryption_key": Fernet.generate_key().decode()})],
)
async def test_readyz_is_503_when_the_store_is_unreachable(proxy):
    health = await proxy.get("/healthz")
    assert health.status == 200  # alive, just not ready
    ready = await proxy.get("/readyz")
    assert ready.status == 503
    assert (await ready.json())["error"] == "not_ready"
    assert ready.headers["Retry-After"]
