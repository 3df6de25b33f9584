"""proxy.core.helix_call: the /helix retry policy, real Helix client against the mock Twitch."""

from __future__ import annotations

import json
import time

import pytest
from yarl import URL

from proxy.core.credential import Credential
from proxy.core.grant_records import Grant
from proxy.core.helix_call import HelixCaller, HelixRequest, classify_401
from proxy.errors import BucketEmpty
from proxy.mock_twitch import DEFAULT_USER_ID
from proxy.services import open_services


@pytest.fixture
async def services(proxy_config):
    """The proxy's services, opened against the mock Twitch."""
    async with open_services(proxy_config) as opened:
        yield opened


@pytest.fixture
async def keyed(services, mock) -> Credential:
    """A proxy-key credential on a stored grant whose tokens the mock issued."""
    tokens = mock.issue_tokens(DEFAULT_USER_ID, ["user:read:email"])
    grant = Grant.new(user_id=DEFAULT_USER_ID, login="mockuser", scopes=("user:read:email",),
                      access_token=tokens["access_token"],
                      refresh_token=tokens["refresh_token"], expires_at=time.time() + 3600)
    await services.grants.create(grant)
    return Credential("key", grant.access_token, grant)


def users_request(proxy_config) -> HelixRequest:
    url = URL(proxy_config.twitch.helix_url.rstrip("/") + "/users")
    return HelixRequest("GET", url, [("Accept", "application/json")])


def recording_caller(services, seen: list[int | None]) -> HelixCaller:
    """A caller like the app's, whose observe hook records each send's status."""
    return HelixCaller(services.helix_client, services.ratelimit_gate, services.twitch,
                       services.refresher, services.app_token,
                       client_id=services.config.twitch.client_id,
                       observe=lambda credential, status, seconds, remaining: seen.append(status))


async def test_a_good_token_is_sent_once(services, keyed, proxy_config, mock):
    seen: list[int | None] = []
    answer = await recording_caller(services, seen).call(users_request(proxy_config), keyed)
    try:
        assert answer.response.status == 200
        assert answer.credential is keyed and answer.body is None
        body = json.loads(await answer.response.read())
        assert body["data"][0]["id"] == DEFAULT_USER_ID
    finally:
        answer.response.release()
    assert seen == [200]


async def test_an_expired_token_is_refreshed_once_and_sent_again(services, keyed,
                                                                 proxy_config, mock):
    mock.expire_access_tokens(DEFAULT_USER_ID)
    seen: list[int | None] = []
    answer = await recording_caller(services, seen).call(users_request(proxy_config), keyed)
    answer.response.release()
    assert answer.response.status == 200
    assert seen == [401, 200]
    assert mock.calls["token:refresh_token"] == 1
    assert answer.credential.mode == "key"
    assert answer.credential.access_token != keyed.access_token
    stored = await services.grants.get(keyed.grant.grant_id)
    assert stored is not None and stored.access_token == answer.credential.access_token


async def test_a_second_401_after_the_refresh_is_passed_on(services, keyed, proxy_config,
                                                           mock):
    expired = {"error": "Unauthorized", "status": 401, "message": "Invalid OAuth token"}
    mock.queue_failure("helix", 401, expired, times=2)
    seen: list[int | None] = []
    answer = await recording_caller(services, seen).call(users_request(proxy_config), keyed)
    answer.response.release()
    assert seen == [401, 401]
    assert answer.response.status == 401
    assert mock.calls["token:refresh_token"] == 1


async def test_a_401_a_refresh_cannot_help_is_passed_on_with_its_body(services, keyed,
                                                                      proxy_config, mock):
    mock.queue_failure("helix", 401, {"error": "Unauthorized", "status": 401,
                                      "message": "Missing scope: moderator:read:chatters"})
    seen: list[int | None] = []
    answer = await recording_caller(services, seen).call(users_request(proxy_config), keyed)
    answer.response.release()
    assert seen == [401]
    assert answer.response.status == 401
    assert answer.body is not None and b"Missing scope" in answer.body
    assert answer.credential is keyed
    assert mock.calls["token:refresh_token"] == 0


async def test_a_bare_token_is_never_renewed(services, proxy_config, mock):
    bare = Credential("passthrough", "not-a-token-twitch-knows")
    seen: list[int | None] = []
    answer = await recording_caller(services, seen).call(users_request(proxy_config), bare)
    answer.response.release()
    assert seen == [401]
    assert answer.response.status == 401 and answer.body is None
    assert mock.calls["token"] == 0 and mock.calls["validate"] == 0


async def test_a_503_is_sent_once_more(services, keyed, proxy_config, mock):
    mock.queue_failure("helix", 503, {"error": "Service Unavailable", "status": 503,
                                      "message": ""})
    seen: list[int | None] = []
    answer = await recording_caller(services, seen).call(users_request(proxy_config), keyed)
    answer.response.release()
    assert seen == [503, 200]
    assert answer.response.status == 200


async def test_a_second_503_is_the_answer(services, keyed, proxy_config, mock):
    mock.queue_failure("helix", 503, {"error": "Service Unavailable", "status": 503,
                                      "message": ""}, times=2)
    seen: list[int | None] = []
    answer = await recording_caller(services, seen).call(users_request(proxy_config), keyed)
    answer.response.release()
    assert seen == [503, 503]
    assert answer.response.status == 503


async def test_a_503_then_an_expired_token_still_gets_one_refresh(services, keyed,
                                                                  proxy_config, mock):
    mock.queue_failure("helix", 503, {"error": "Service Unavailable", "status": 503,
                                      "message": ""})
    mock.expire_access_tokens(DEFAULT_USER_ID)
    seen: list[int | None] = []
    answer = await recording_caller(services, seen).call(users_request(proxy_config), keyed)
    answer.response.release()
    assert seen == [503, 401, 200]
    assert answer.response.status == 200
    assert mock.calls["token:refresh_token"] == 1


async def test_an_empty_bucket_far_from_its_reset_costs_twitch_nothing(services, keyed,
                                                                      proxy_config, mock):
    services.ratelimit_gate.observe(keyed.bucket, 429,
                                    {"Ratelimit-Reset": str(time.time() + 3600)})
    seen: list[int | None] = []
    with pytest.raises(BucketEmpty):
        await recording_caller(services, seen).call(users_request(proxy_config), keyed)
    assert seen == []
    assert mock.helix_requests == []


async def test_an_empty_bucket_about_to_refill_is_waited_for(services, keyed, proxy_config,
                                                             mock):
    services.ratelimit_gate.observe(keyed.bucket, 200, {"Ratelimit-Remaining": "0",
                                                        "Ratelimit-Reset": str(time.time())})
    seen: list[int | None] = []
    answer = await recording_caller(services, seen).call(users_request(proxy_config), keyed)
    answer.response.release()
    assert seen == [200]


@pytest.mark.parametrize(("message", "kind"), [
    ("Invalid OAuth token", "refresh"),
    ("Missing scope: channel:read:subscriptions", "final"),
    ("Client ID and OAuth token do not match", "final"),
    ("something Twitch never said", "unknown"),
])
def test_classify_401_reads_twitchs_messages(message, kind):
    body = json.dumps({"error": "Unauthorized", "status": 401, "message": message}).encode()
    assert classify_401(body) == kind
    assert classify_401(b"<html>not json</html>") == "unknown"
