"""Logs: one line per request and per refresh, text or JSON, and never a secret.

The leak test drives every flow (login, callback, refresh, Helix in all
credential modes, and failures: Twitch down, slow, refusing, bad input, an
unexpected exception) with distinctive secrets, captures the logs through the
production handlers in both formats, and looks for every token, key, code and
secret in them and in every error body.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from aiohttp import web
from cryptography.fernet import Fernet
from yarl import URL

from proxy.config import load_config
from proxy.core.grants import GrantStore
from proxy.mock_twitch import DEFAULT_USER_ID, create_mock_app
from proxy.telemetry.logs import config_secrets
from proxy.web.app import create_app
from tests.helpers import login, proxy_config_flags
from tests.processes import free_port
from tests.unit.telemetry.log_capture import Captured

CLIENT_SECRET = "cs-LEAKCHECK-7f3a9b2c1d"


ENCRYPTION_KEY = Fernet.generate_key().decode()


METRICS_TOKEN = "mt-LEAKCHECK-55aa11bb"


@pytest.fixture
def captured(proxy_config) -> Iterator[Captured]:
    with Captured.installed(config_secrets(proxy_config)) as capture:
        yield capture


@pytest.fixture
async def twitch_server(aiohttp_server):
    """The mock with a distinctive client secret; no access log (as in production)."""
    return await aiohttp_server(create_mock_app(client_secret=CLIENT_SECRET), access_log=None)


@pytest.fixture
def store_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/tokens.sqlite3"


@pytest.fixture
def config_flags() -> dict:
    return {"twitch.client_secret": CLIENT_SECRET, "store.encryption_key": ENCRYPTION_KEY,
            "metrics.token": METRICS_TOKEN, "helix.app_token": True, "twitch.timeout": 1.0}


@pytest.fixture
async def proxy(aiohttp_client, proxy_config):
    # The production servers run without aiohttp's access log (proxy.web.middleware.requestlog
    # logs requests, without their query strings).
    return await aiohttp_client(create_app(proxy_config), server_kwargs={"access_log": None})


# -- the request log -----------------------------------------------------------------

async def test_one_json_line_per_request_with_its_fields(proxy, captured):
    tokens = await login(proxy)
    response = await proxy.get("/helix/users", headers={
        "Authorization": f"Bearer {tokens['proxy_key']}", "X-Request-Id": "req-0123456789"})
    assert response.status == 200
    assert response.headers["X-Request-Id"] == "req-0123456789"

    lines = captured.json_lines()
    requests = [line for line in lines if line.get("event") == "request"]
    helix = [line for line in requests if line["route"] == "/helix/{path}"]
    assert len(helix) == 1
    (line,) = helix
    assert line["method"] == "GET" and line["path"] == "/helix/users"
    assert line["status"] == 200 and line["upstream_status"] == 200
    assert line["grant_id"].startswith("g_") and line["request_id"] == "req-0123456789"
    assert isinstance(line["duration_ms"], float) and line["client"] == "127.0.0.1"
    assert line["level"] == "INFO" and line["logger"] == "proxy.request"
    callback = [line for line in requests if line["route"] == "/callback"]
    assert callback[0]["grant_id"] == line["grant_id"]
    text_lines = [t for t in captured.text.getvalue().splitlines() if "route=/helix/{path}" in t]
    assert len(text_lines) == 1 and f"grant_id={line['grant_id']}" in text_lines[0]


async def test_request_ids_are_checked_made_and_returned(proxy, captured):
    bad = await proxy.get("/healthz", headers={"X-Request-Id": "x\" injected=1 " + "a" * 300})
    made = bad.headers["X-Request-Id"]
    assert len(made) == 32 and made.isalnum()
    missing = await proxy.get("/no/such/page")
    assert missing.status == 404 and len(missing.headers["X-Request-Id"]) == 32
    ids = [line["request_id"] for line in captured.json_lines() if line.get("event") == "request"]
    assert ids == [made, missing.headers["X-Request-Id"]]
    assert "injected" not in captured.text.getvalue()


async def test_every_kind_of_answer_carries_its_request_id(aiohttp_client, aiohttp_server,
                                                           twitch_server, tmp_path):
    """Plain, static, preflight, error and streamed answers (a handler prepares the last)."""
    big = b'{"data": ["' + b"x" * 200_000 + b'"]}'

    async def large(request: web.Request) -> web.Response:
        return web.Response(body=big, content_type="application/json")

    upstream = web.Application()
    upstream.router.add_post("/helix/chat/messages", large)
    helix = await aiohttp_server(upstream)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    flags = {**proxy_config_flags(str(twitch_server.make_url("")).rstrip("/")),
             "twitch.helix_url": str(helix.make_url("/helix")), "store.url": "memory://"}
    client = await aiohttp_client(create_app(load_config(path=empty, environ={}, flags=flags)))
    answers = {
        "plain": await client.get("/healthz"),
        "static": await client.get("/static/style.css"),
        "preflight": await client.options("/refresh", headers={
            "Origin": "null", "Access-Control-Request-Method": "POST"}),
        "error": await client.get("/helix/users/../x", headers={"Authorization": "Bearer t"}),
        "streamed": await client.post("/helix/chat/messages", data=b"{}", headers={
            "Authorization": "Bearer bare-token", "Content-Type": "application/json"}),
    }
    for name, answer in answers.items():
        assert answer.status < 500, name
        assert len(answer.headers.getall("X-Request-Id", [])) == 1, name
    # Over 64 KiB and not a GET: proxy.web.routes.helix streams it, preparing the response itself.
    assert await answers["streamed"].read() == big


async def test_one_line_per_refresh_with_its_outcome(proxy, mock, captured):
    tokens = await login(proxy)
    mock.expire_access_tokens()
    assert (await proxy.get("/helix/users", headers={
        "Authorization": f"Bearer {tokens['proxy_key']}"})).status == 200
    mock.revoke_refresh_tokens()
    mock.expire_access_tokens()
    assert (await proxy.get("/helix/users", headers={
        "Authorization": f"Bearer {tokens['proxy_key']}"})).status == 401
    refreshes = [line for line in captured.json_lines() if line.get("event") == "refresh"]
    assert [(r["outcome"], r["level"]) for r in refreshes] == [
        ("success", "INFO"), ("permanent_failure", "WARNING")]
    assert refreshes[0]["grant_id"] == refreshes[1]["grant_id"]
    assert "refresh outcome=success grant_id=g_" in captured.text.getvalue()


# -- the leak test -----------------------------------------------------------------

async def test_no_secret_reaches_a_log_line_or_an_error_body(
        proxy, mock, captured, aiohttp_client, proxy_config, monkeypatch):
    error_bodies: list[str] = []
    codes: list[str] = []
    proxy_keys: list[str] = []

    issued: set[str] = set()

    def harvest() -> None:
        """Every token the mock holds now (it forgets expired and revoked ones)."""
        issued.update(mock.access_tokens, mock.refresh_tokens, mock.spent_refresh_tokens)

    async def call(method: str, path: str, **kwargs) -> int:
        harvest()
        response = await proxy.request(method, path, **kwargs)
        body = await response.text()
        harvest()
        if response.status >= 400:
            error_bodies.append(f"{response.status} {dict(response.headers)} {body}")
        return response.status

    async def full_login() -> dict:
        start = await proxy.get("/login", allow_redirects=False)
        async with proxy.session.get(URL(start.headers["Location"]),
                                     allow_redirects=False) as consent:
            back = URL(consent.headers["Location"])
        codes.append(back.query["code"])
        harvest()
        answer = await proxy.get("/callback", params=back.query,
                                 headers={"Accept": "application/json"})
        assert answer.status == 200
        tokens = await answer.json()
        harvest()
        proxy_keys.append(tokens["proxy_key"])
        return tokens

    # Login and callback (JSON and HTML), Helix with a proxy key, POST /refresh.
    tokens = await full_login()
    key = tokens["proxy_key"]
    assert await call("GET", "/helix/users", headers={"Authorization": f"Bearer {key}"}) == 200
    assert await call("POST", "/refresh", json={"refresh_token": tokens["refresh_token"]}) == 200
    mock.expire_access_tokens()
    assert await call("GET", "/helix/users", headers={"Authorization": f"Bearer {key}"}) == 200
    # An old widget's pair (legacy), a bare Twitch token (passthrough), the app token.
    pair = mock.issue_tokens(DEFAULT_USER_ID, ["user:read:email"])
    legacy = {"Authorization": f"Bearer {pair['access_token']}",
              "X-Refresh-Token": pair["refresh_token"]}
    assert await call("GET", "/helix/users", headers=legacy) == 200
    other = mock.issue_tokens(DEFAULT_USER_ID, ["user:read:email"])
    assert await call("GET", "/helix/users",
                      headers={"Authorization": f"Bearer {other['access_token']}"}) == 200
    assert await call("GET", "/helix/users?login=twitchdev") == 200
    # Status, metrics.
    assert await call("GET", "/status", headers={"Authorization": f"Bearer {key}",
                                                 "Accept": "application/json"}) == 200
    assert await call("GET", "/metrics", headers={"Authorization": "Bearer wrong"}) == 401

    # Refusals: an unknown refresh token, a bad code, a revoked grant, a bad key.
    unknown = "rt-LEAKCHECK-unknown/%2Ftoken"
    assert await call("POST", "/refresh", json={"refresh_token": unknown}) == 400
    start = await proxy.get("/login", allow_redirects=False)
    state = URL(start.headers["Location"]).query["state"]
    bad_code = "code-LEAKCHECK-0000"
    codes.append(bad_code)
    assert await call("GET", "/callback", params={"code": bad_code, "state": state},
                      headers={"Accept": "application/json"}) == 400
    bogus_key = "tpk_LEAKCHECKbogusKey0123456789"
    assert await call("GET", "/helix/users",
                      headers={"Authorization": f"Bearer {bogus_key}"}) == 401
    # Bad input carrying tokens: broken JSON, a path that leaves Helix, a long token.
    assert await call("POST", "/refresh", data=f'{{"refresh_token": "{tokens["refresh_token"]}"',
                      headers={"Content-Type": "application/json"}) == 400
    assert await call("GET", f"/helix/users/..%2F?token={tokens['access_token']}",
                      headers={"Authorization": f"Bearer {key}"}) in (400, 404)
    assert await call("POST", "/refresh", json={"refresh_token": key * 100}) == 400

    # Twitch failing: 5xx on refresh, 503 twice on Helix, too slow, unreachable.
    mock.expire_access_tokens()
    mock.queue_failure("token", 500, "<html>Internal Server Error</html>")
    assert await call("GET", "/helix/users", headers={"Authorization": f"Bearer {key}"}) == 503
    mock.queue_failure("helix", 503, None, times=2)
    assert await call("GET", "/helix/users", headers={"Authorization": f"Bearer {key}"}) == 503
    mock.token_delay = 1.5  # beyond twitch.timeout
    assert await call("POST", "/refresh", json={"refresh_token": pair["refresh_token"]}) in (
        200, 504)
    mock.token_delay = 0
    dead = f"http://127.0.0.1:{free_port()}"
    empty = proxy_config.store.url  # same store, Twitch unreachable
    down_config = load_config(environ={}, path=None, flags={
        **proxy_config_flags(dead), "store.url": empty,
        "twitch.client_secret": CLIENT_SECRET, "store.encryption_key": ENCRYPTION_KEY})
    down = await aiohttp_client(create_app(down_config), server_kwargs={"access_log": None})
    # A token the proxy has not seen must be proven at Twitch, which is unreachable.
    unseen = mock.issue_tokens(DEFAULT_USER_ID, ["user:read:email"])
    response = await down.post("/refresh", json={"refresh_token": unseen["refresh_token"]})
    assert response.status == 502
    error_bodies.append(await response.text())
    response = await down.get("/helix/users", headers=legacy)
    error_bodies.append(await response.text())
    assert response.status in (200, 502)

    # Permanent refusal: the user disconnected the app.
    mock.revoke_refresh_tokens()
    mock.expire_access_tokens()
    assert await call("GET", "/helix/users", headers={"Authorization": f"Bearer {key}"}) == 401

    # A bug: an unexpected exception while a token is in flight.
    async def broken(self, grant_id):
        raise RuntimeError("unexpected")

    monkeypatch.setattr(GrantStore, "get", broken)
    assert await call("GET", "/helix/users", headers=legacy) == 500
    monkeypatch.undo()

    # Every secret there is: the mock's tokens (all ever issued), codes, keys, secrets.
    harvest()
    secrets = {CLIENT_SECRET, ENCRYPTION_KEY, METRICS_TOKEN, bogus_key, unknown,
               *codes, *proxy_keys, *issued}
    assert len(issued) >= 10  # users (login, refreshes, old pairs) and the app
    logs = captured.text.getvalue() + captured.json.getvalue()
    assert "Traceback" in logs and "RuntimeError" in logs  # the bug was logged
    assert "refresh outcome=" in logs and "route=/callback" in logs
    leaks = sorted(s for s in secrets if s in logs)
    assert leaks == [], "secrets in the log"
    leaks = sorted(s for s in secrets for body in error_bodies if s in body)
    assert leaks == [], "secrets in an error body"
    await asyncio.sleep(0)


async def test_one_line_per_validation_with_its_outcome(proxy, mock, captured):
    from proxy.core.validator import CLAIM_PREFIX
    from proxy.web.keys import grants_key, validator_key

    await login(proxy)
    app = proxy.server.app
    (grant_id,) = await app[grants_key].all_ids()
    await app[grants_key].store.delete(CLAIM_PREFIX + grant_id)  # due again
    await app[validator_key].sweep([grant_id])
    lines = [line for line in captured.json_lines() if line.get("event") == "validation"]
    assert lines[-1]["outcome"] == "valid" and lines[-1]["grant_id"] == grant_id
    assert lines[-1]["login"] == "twitchdev" and lines[-1]["level"] == "INFO"
    assert f"validation outcome=valid grant_id={grant_id}" in captured.text.getvalue()
