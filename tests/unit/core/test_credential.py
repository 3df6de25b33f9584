"""proxy.core.credential: Bearer parsing, proxy keys and bucket names, each in one place."""

from __future__ import annotations

import pytest

from proxy.core.credential import Credential, bearer_token, proxy_key_in


@pytest.mark.parametrize(("header", "token"), [
    ("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("BEARER abc", "abc"),
    ("Bearer", None), ("Bearer ", None), ("Basic abc", None), ("", None), ("abc", None),
])
def test_bearer_token(header, token):
    assert bearer_token(header) == token


def test_proxy_key_in():
    assert proxy_key_in("Bearer tpk_x") == "tpk_x"
    assert proxy_key_in("Bearer twitch-token") is None
    assert proxy_key_in("Basic tpk_x") is None


def test_buckets_are_named_once():
    from proxy.core.grant_records import Grant
    grant = Grant.new(user_id="1", login="a", scopes=(), access_token="a", refresh_token="r",
                      expires_at=0)
    assert Credential("key", "a", grant).bucket == "user:1"
    assert Credential("app", "a").bucket == "app"
    bare = Credential("passthrough", "secret-token").bucket
    assert bare.startswith("token:") and "secret-token" not in bare
