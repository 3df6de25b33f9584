"""Plain helpers that call the mock Twitch as a client of Twitch would (fixtures: conftest.py)."""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs, urlsplit

CLIENT_ID = "mock-client-id"


CLIENT_SECRET = "mock-client-secret"


REDIRECT_URI = "http://localhost:3000/callback"


SCOPES = ["channel:read:subscriptions", "user:write:chat"]


def helix_headers(access_token, client_id=CLIENT_ID):
    return {"Authorization": f"Bearer {access_token}", "Client-Id": client_id}


async def authorize(client, **extra):
    params = {
        "response_type": "code",
        "client_id": CLIENT_ID,
        "redirect_uri": REDIRECT_URI,
        "scope": " ".join(SCOPES),
        "state": "st/ate+1",
        **extra,
    }
    response = await client.get("/oauth2/authorize", params=params, allow_redirects=False)
    return response


def callback_query(response):
    assert response.status == 302
    location = urlsplit(response.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT_URI
    return {name: values[0] for name, values in parse_qs(location.query).items()}


async def post_token(client, **fields):
    form = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, **fields}
    response = await client.post("/oauth2/token", data=form)
    return response.status, await response.json()


async def refresh(client, refresh_token):
    return await post_token(client, grant_type="refresh_token", refresh_token=refresh_token)


async def validate(client, access_token, scheme="OAuth"):
    response = await client.get(
        "/oauth2/validate", headers={"Authorization": f"{scheme} {access_token}"}
    )
    return response.status, await response.json()


async def exchange(client, code, redirect_uri=REDIRECT_URI):
    return await post_token(
        client, grant_type="authorization_code", code=code, redirect_uri=redirect_uri
    )


async def wait_for(condition):
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never became true")


# -- control endpoints ------------------------------------------------------------


async def control(client, name, body=None):
    response = await client.post(f"/_mock/{name}", json=body)
    assert response.status == 200, await response.text()
    return await response.json()
