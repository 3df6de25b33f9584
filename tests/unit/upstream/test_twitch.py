"""proxy.upstream.twitch: the OAuth client against the mock Twitch, over real HTTP.

Exchanging a code, refreshing, minting an app token, validate and revoke; and how
Twitch's refusals, its 5xx, a body that is not a token, silence and a closed port
become the proxy's errors.
"""

from __future__ import annotations

import aiohttp
import pytest
from yarl import URL

from proxy.errors import (
    TwitchRefused,
    UpstreamBadResponse,
    UpstreamTimeout,
    UpstreamUnavailable,
    UpstreamUnreachable,
)
from proxy.mock_twitch import DEFAULT_USER_ID
from proxy.upstream.twitch import TwitchClient

REDIRECT_URI = "http://localhost:3000/callback"
SCOPES = ["user:read:email", "chat:read"]


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def observed() -> list[tuple[str, int | None, float]]:
    """What the client reported after each call: (endpoint, status or None, seconds)."""
    return []


@pytest.fixture
def twitch(session, proxy_config, observed) -> TwitchClient:
    return TwitchClient(session, proxy_config.twitch,
                        observe=lambda *call: observed.append(call))


async def authorization_code(session, twitch_server) -> str:
    """A code from the mock's consent, as the browser would bring it to /callback."""
    params = {"response_type": "code", "client_id": "mock-client-id",
              "redirect_uri": REDIRECT_URI, "scope": " ".join(SCOPES), "state": "s"}
    async with session.get(twitch_server.make_url("/oauth2/authorize"), params=params,
                           allow_redirects=False) as answer:
        assert answer.status == 302
        return URL(answer.headers["Location"]).query["code"]


async def test_a_code_is_exchanged_for_a_user_token_set(twitch, session, twitch_server, mock):
    code = await authorization_code(session, twitch_server)

    tokens = await twitch.exchange_code(code, REDIRECT_URI)

    assert tokens.access_token in mock.access_tokens
    assert tokens.refresh_token in mock.refresh_tokens
    assert tokens.scopes == tuple(SCOPES) and tokens.token_type == "bearer"
    assert tokens.expires_in == 14124
    assert tokens.expires_at(now=1000.0) == 1000.0 + 14124
    assert mock.calls["token:authorization_code"] == 1


async def test_a_refused_code_is_a_refusal_but_not_permanent(twitch, session, twitch_server):
    code = await authorization_code(session, twitch_server)

    with pytest.raises(TwitchRefused) as wrong_uri:
        await twitch.exchange_code(code, "http://localhost:3000/elsewhere")
    with pytest.raises(TwitchRefused) as invented:
        await twitch.exchange_code("invented-code", REDIRECT_URI)

    for refusal in (wrong_uri.value, invented.value):
        assert refusal.status == 400 and not refusal.permanent
    assert invented.value.body()["message"] == "Invalid authorization code"


async def test_refresh_rotates_both_tokens(twitch, mock):
    issued = mock.issue_tokens(DEFAULT_USER_ID, SCOPES)

    tokens = await twitch.refresh(issued["refresh_token"])

    assert tokens.access_token != issued["access_token"]
    assert tokens.refresh_token not in ("", issued["refresh_token"])
    assert issued["refresh_token"] in mock.spent_refresh_tokens
    assert tokens.refresh_token in mock.refresh_tokens
    assert tokens.scopes == tuple(SCOPES)


async def test_a_dead_refresh_token_is_a_permanent_refusal(twitch, mock):
    with pytest.raises(TwitchRefused) as refused:
        await twitch.refresh("never-issued")

    assert refused.value.status == 400 and refused.value.permanent
    assert refused.value.body() == {"status": 400, "message": "Invalid refresh token"}


@pytest.mark.parametrize(("config_flags", "status", "message"), [
    ({"twitch.client_secret": "not-the-secret"}, 403, "invalid client secret"),
    ({"twitch.client_id": "someone-else"}, 400, "invalid client"),
])
async def test_a_wrong_client_is_configuration_not_a_dead_token(twitch, mock, status, message):
    issued = mock.issue_tokens(DEFAULT_USER_ID, SCOPES)

    with pytest.raises(TwitchRefused) as refused:
        await twitch.refresh(issued["refresh_token"])

    assert refused.value.status == status and not refused.value.permanent
    assert refused.value.body()["message"] == message
    assert issued["refresh_token"] in mock.refresh_tokens  # not spent


async def test_an_app_token_has_no_refresh_token(twitch, mock):
    tokens = await twitch.app_token()

    assert tokens.refresh_token == "" and tokens.scopes == ()
    assert tokens.expires_in > 14124
    assert mock.calls["token:client_credentials"] == 1


async def test_validate_tells_whose_token_it_is(twitch, mock):
    user = mock.issue_tokens(DEFAULT_USER_ID, SCOPES)["access_token"]
    app = (await twitch.app_token()).access_token

    identity = await twitch.validate(user)
    app_identity = await twitch.validate(app)

    assert identity is not None and app_identity is not None
    assert (identity.user_id, identity.login) == (DEFAULT_USER_ID, "twitchdev")
    assert identity.client_id == twitch.client_id == "mock-client-id"
    assert identity.scopes == tuple(SCOPES) and 0 < identity.expires_in <= 14124
    assert (app_identity.user_id, app_identity.login, app_identity.scopes) == (None, None, ())


async def test_validate_answers_none_for_a_token_twitch_does_not_know(twitch, mock):
    issued = mock.issue_tokens(DEFAULT_USER_ID, SCOPES)["access_token"]
    mock.expire_access_tokens()

    assert await twitch.validate(issued) is None
    assert await twitch.validate("never-issued") is None


async def test_revoke_ends_a_token_and_says_whether_twitch_knew_it(twitch, mock):
    issued = mock.issue_tokens(DEFAULT_USER_ID, SCOPES)

    assert await twitch.revoke(issued["access_token"]) is True
    assert await twitch.revoke("never-issued") is False
    await twitch.revoke_quietly(issued["refresh_token"])

    assert mock.live_access_token(issued["access_token"]) is None
    assert issued["refresh_token"] not in mock.refresh_tokens


@pytest.mark.parametrize("body", [{"status": 503, "message": "Service Unavailable"},
                                  "<html><body>502 Bad Gateway</body></html>", None])
async def test_a_5xx_is_upstream_unavailable_and_the_token_is_kept(twitch, mock, body):
    issued = mock.issue_tokens(DEFAULT_USER_ID, SCOPES)
    mock.queue_failure("token", 503, body)

    with pytest.raises(UpstreamUnavailable):
        await twitch.refresh(issued["refresh_token"])

    assert issued["refresh_token"] in mock.refresh_tokens
    assert (await twitch.refresh(issued["refresh_token"])).access_token


@pytest.mark.parametrize(("status", "body"), [
    (200, {"access_token": "at-only"}),  # a token answer without its fields
    (200, "<html>a captive portal</html>"),
    (200, ["not", "an", "object"]),
])
async def test_an_answer_that_is_not_a_token_is_a_bad_response(twitch, mock, status, body):
    mock.queue_failure("token", status, body)

    with pytest.raises(UpstreamBadResponse):
        await twitch.app_token()


async def test_a_user_token_answer_without_a_refresh_token_is_a_bad_response(twitch, mock):
    issued = mock.issue_tokens(DEFAULT_USER_ID, SCOPES)
    mock.queue_failure("token", 200, {"access_token": "at-x", "expires_in": 14124,
                                      "token_type": "bearer"})

    with pytest.raises(UpstreamBadResponse):
        await twitch.refresh(issued["refresh_token"])


@pytest.mark.parametrize("body", [{"client_id": "mock-client-id"}, ["not", "an", "object"]])
async def test_a_validate_answer_without_its_fields_is_a_bad_response(twitch, mock, body):
    mock.queue_failure("validate", 200, body)

    with pytest.raises(UpstreamBadResponse):
        await twitch.validate("any")


@pytest.mark.parametrize("config_flags", [{"twitch.timeout": 0.2}])
async def test_silence_is_a_timeout(twitch, mock):
    mock.token_delay = 2.0

    with pytest.raises(UpstreamTimeout):
        await twitch.app_token()


@pytest.mark.parametrize("config_flags", [{"twitch.id_url": "http://127.0.0.1:9"}])
async def test_a_closed_port_is_unreachable(twitch, observed):
    with pytest.raises(UpstreamUnreachable):
        await twitch.validate("any")

    assert [(endpoint, status) for endpoint, status, _ in observed] == [("validate", None)]


async def test_every_call_is_reported_with_its_endpoint_and_status(twitch, mock, observed):
    await twitch.app_token()
    await twitch.validate("never-issued")
    await twitch.revoke("never-issued")

    assert [(endpoint, status) for endpoint, status, _ in observed] == [
        ("token", 200), ("validate", 401), ("revoke", 400)]
    assert all(seconds >= 0 for _, _, seconds in observed)
