"""Plain helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp.test_utils import TestClient
from yarl import URL

from proxy.mock_twitch import MockTwitch


def proxy_config_flags(mock_url: str) -> dict[str, Any]:
    """Flags that point a proxy at a mock Twitch served at ``mock_url``."""
    return {
        "twitch.client_id": "mock-client-id",
        "twitch.client_secret": "mock-client-secret",
        "twitch.id_url": mock_url,
        "twitch.helix_url": f"{mock_url}/helix",
    }


async def authorize(proxy: TestClient, **login_params: str) -> URL:
    """Run /login and the mock's consent; return the callback URL Twitch sent back."""
    login = await proxy.get("/login", params=login_params, allow_redirects=False)
    assert login.status == 302, await login.text()
    authorize_url = URL(login.headers["Location"])
    # The mock auto-approves: it answers with a redirect to our /callback.
    async with proxy.session.get(authorize_url, allow_redirects=False) as consent:
        assert consent.status == 302, await consent.text()
        return URL(consent.headers["Location"])


async def login(proxy: TestClient, **login_params: str) -> dict[str, Any]:
    """The whole browser flow, ending with /callback's JSON answer."""
    back = await authorize(proxy, **login_params)
    response = await proxy.get("/callback", params=back.query,
                               headers={"Accept": "application/json"})
    body = await response.json()
    assert response.status == 200, body
    return body


def calls(mock: MockTwitch, name: str) -> int:
    """How often the mock saw ``name`` (e.g. ``"token:refresh_token"``)."""
    return mock.calls[name]


def dumps(value: Any) -> str:
    return json.dumps(value)


async def seed_grants(config: Any, mock: MockTwitch, count: int) -> list[Any]:
    """Store ``count`` grants of new mock users in ``config``'s store, as a past login would.

    Returns the grants (with their tokens); the store is closed again, so an app
    started afterwards finds them there.
    """
    from proxy.core.grant_records import Grant
    from proxy.core.grants import GrantStore
    from proxy.services import cipher_for
    from proxy.store import open_store

    store = await open_store(config.store.url, prefix=config.store.prefix)
    grants = GrantStore(store, cipher_for(config))
    seeded = []
    try:
        for _ in range(count):
            user_id = str(50_000_000 + len(mock.users))
            mock.add_user(user_id, f"seeded{user_id}")
            tokens = mock.issue_tokens(user_id, ["user:read:email"])
            now = time.time()
            grant = Grant.new(
                user_id=user_id, login=f"seeded{user_id}", scopes=tuple(tokens["scope"]),
                access_token=tokens["access_token"], refresh_token=tokens["refresh_token"],
                expires_at=now + tokens["expires_in"], now=now,
            )
            await grants.create(grant)
            await grants.claim_user(user_id, grant.grant_id)
            seeded.append(grant)
    finally:
        await store.close()
    return seeded


def bearer(token: str) -> dict[str, str]:
    """The ``Authorization`` header for a proxy key or a token."""
    return {"Authorization": f"Bearer {token}"}


async def grant_of_key(proxy: TestClient, proxy_key: str) -> Any:
    """The grant a proxy key opens, read from the running app's grant store."""
    from proxy.web.keys import grants_key

    grants = proxy.app[grants_key]
    return await grants.get((await grants.key_record(proxy_key)).grant_id)
