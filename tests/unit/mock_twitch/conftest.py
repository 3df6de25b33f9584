"""Fixtures of the mock Twitch's own tests: a fresh state, served over real HTTP.

These ``mock`` and ``client`` replace the suite-wide ones in this directory: here the mock
is the thing under test, so each test gets its own state and a test client of its app.
"""

from __future__ import annotations

import pytest

from proxy.mock_twitch import DEFAULT_USER_ID, MockTwitch, create_mock_app
from tests.unit.mock_twitch.twitch_calls import SCOPES, post_token


@pytest.fixture
def mock():
    return MockTwitch()


@pytest.fixture
async def client(aiohttp_client, mock):
    return await aiohttp_client(create_mock_app(state=mock))


# -- tokens for the Helix tests -------------------------------------------------------


@pytest.fixture
def user_token(mock):
    return mock.issue_tokens(DEFAULT_USER_ID, SCOPES)["access_token"]


@pytest.fixture
async def app_token(client):
    return (await post_token(client, grant_type="client_credentials"))[1]["access_token"]
