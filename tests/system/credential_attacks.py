"""Helpers of the credential attack suites (tests/system/test_credential_*.py).

Those suites try the credential model as an attacker would: every credential the proxy
honours is one Twitch and the user still honour. They run over real HTTP against the mock
Twitch; each test names what an attacker holds and asserts what it must not give them.
"""

from __future__ import annotations

from yarl import URL

from proxy.web.keys import store_key
from tests.helpers import bearer, login

VICTIM = "141981764"  # twitchdev, the mock's signed-in user



def pair(access_token: str, refresh_token: str) -> dict[str, str]:
    """An old widget's headers: its Twitch pair."""
    return {**bearer(access_token), "X-Refresh-Token": refresh_token}


async def login_and_adopt(proxy) -> tuple[dict, dict[str, str]]:
    """Log in, and use the login's pair once as an old widget would (its refresh token is
    then an alias of the chain); the login's answer and the widget's headers."""
    first = await login(proxy)
    widget = pair(first["access_token"], first["refresh_token"])
    assert (await proxy.get("/helix/users", headers=widget)).status == 200
    return first, widget


async def stored(proxy, prefix: str) -> list[str]:
    return await proxy.app[store_key].keys(prefix)


def secrets_in(body: object, *tokens: str) -> list[str]:
    text = str(body)
    return [token for token in tokens if token and token in text]


async def authorized_callback(proxy) -> URL:
    from tests.helpers import authorize
    return await authorize(proxy)


def expiry_of_alias(proxy, refresh_token: str) -> tuple[bool, float | None]:
    """(indexed?, expiry) of a refresh token's alias in the memory store."""
    from proxy.core.sealed_index import token_hash
    store = proxy.app[store_key]
    entry = store._data.get(f"{store._prefix}rt:{token_hash(refresh_token)}")
    return (entry is not None, entry[1] if entry else None)
