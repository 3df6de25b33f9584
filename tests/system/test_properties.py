"""Property tests (hypothesis) for the path and query handling of ``/helix``.

- :func:`proxy.web.routes.helix.helix_url_for` never builds a URL outside the Helix base,
  whatever path it is given (it raises InvalidPath instead);
- through a live proxy to the mock Twitch, no generated path reaches anything
  but ``/helix/...`` on the mock, and the query string arrives byte for byte.

The live tests run hypothesis in a worker thread and each example on the test's
event loop, where the proxy and the mock are served.
"""

from __future__ import annotations

import asyncio
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from proxy.errors import InvalidPath
from proxy.web.routes.helix import helix_url_for
from tests.helpers import login

BASES = ["https://api.twitch.tv/helix", "http://127.0.0.1:8080/mock/helix", "http://h:1/helix"]

#: Characters a hostile path is made of: path syntax, escapes, dots, slashes,
#: backslashes, '@' and ':' (authority tricks), and some non-ASCII.
_PATH_ALPHABET = string.ascii_letters + string.digits + "-_./\\%@:;,=+~!$&'()*[]" + "ä€\u2215"
hostile_paths = st.one_of(
    st.text(alphabet=_PATH_ALPHABET, max_size=40),
    st.lists(st.sampled_from(["users", "..", ".", "%2e%2e", "%2F", "", "\\", "@evil.com",
                              "http:", "//evil.com", "%5c", "streams", "a.b", "%00"]),
             max_size=6).map("/".join),
)

#: Query strings as a widget may send them, including odd but legal ones:
#: repeated keys, empty values, raw and invalid escapes, '+', ';', '/', '?'.
_QUERY_ALPHABET = string.ascii_letters + string.digits + "-._~!$'()*+,;=:@/?%&"
raw_queries = st.one_of(
    st.text(alphabet=_QUERY_ALPHABET, max_size=60),
    st.lists(st.tuples(st.text(alphabet=string.ascii_letters + "_%2F", min_size=1, max_size=8),
                       st.text(alphabet=_QUERY_ALPHABET.replace("&", ""), max_size=12)),
             max_size=5).map(lambda pairs: "&".join(f"{k}={v}" for k, v in pairs)),
)

LIVE = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def _inside(url: URL, base: str) -> bool:
    base_url = URL(base)
    return (url.scheme == base_url.scheme and url.host == base_url.host
            and url.port == base_url.port and url.path.startswith(base_url.path + "/")
            and ".." not in url.path.split("/") and "\\" not in url.path)


@settings(max_examples=500, deadline=None)
@given(base=st.sampled_from(BASES), path=hostile_paths, query=raw_queries)
def test_helix_url_for_never_leaves_the_base(base, path, query):
    try:
        url = helix_url_for(base, path, query)
    except InvalidPath:
        return
    assert _inside(url, base), (path, str(url))
    assert url.raw_query_string == query


@settings(max_examples=300, deadline=None)
@given(query=raw_queries)
def test_helix_url_for_keeps_the_query_byte_for_byte(query):
    url = helix_url_for("https://api.twitch.tv/helix", "users", query)
    assert url.raw_query_string == query
    assert str(url) == "https://api.twitch.tv/helix/users" + (f"?{query}" if query else "")


def _run_on(loop: asyncio.AbstractEventLoop, coro):
    return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=30)


async def test_live_paths_never_reach_outside_helix(proxy, mock):
    key = (await login(proxy))["proxy_key"]
    base = str(proxy.make_url("")).rstrip("/")
    loop = asyncio.get_running_loop()
    seen: list[tuple[str, int]] = []

    async def one(path: str) -> None:
        before_helix = len(mock.helix_requests)
        before_other = sum(n for name, n in mock.calls.items() if not name.startswith("helix:"))
        url = URL(f"{base}/helix/{path}", encoded=True)
        async with proxy.session.get(url, headers={"Authorization": f"Bearer {key}"}) as resp:
            body = await resp.read()
        seen.append((path, resp.status))
        other = sum(n for name, n in mock.calls.items() if not name.startswith("helix:"))
        # Nothing but Helix was touched at the mock (token/validate calls would
        # show here; the key's token is fresh, so none are expected).
        assert other == before_other, path
        if resp.status == 400 and b"invalid_path" in body:
            assert len(mock.helix_requests) == before_helix, path
            return
        for recorded in mock.helix_requests[before_helix:]:
            assert recorded.path.startswith("/"), recorded.path
            assert ".." not in recorded.path.split("/") and "\\" not in recorded.path
            assert recorded.path == "/" + path.split("?")[0], (path, recorded.path)

    @LIVE
    @given(path=hostile_paths)
    def check(path):
        _run_on(loop, one(path))

    await asyncio.to_thread(check)
    assert seen and any(status != 400 for _, status in seen)


async def test_live_query_strings_round_trip_exactly(proxy, mock):
    key = (await login(proxy))["proxy_key"]
    base = str(proxy.make_url("")).rstrip("/")
    loop = asyncio.get_running_loop()
    checked = 0

    async def one(query: str) -> None:
        nonlocal checked
        url = URL(f"{base}/helix/users" + (f"?{query}" if query else ""), encoded=True)
        before = len(mock.helix_requests)
        async with proxy.session.get(url, headers={"Authorization": f"Bearer {key}"}) as resp:
            await resp.read()
        assert len(mock.helix_requests) == before + 1, (query, resp.status)
        assert mock.helix_requests[-1].query_string == query
        checked += 1

    @LIVE
    @given(query=raw_queries)
    def check(query):
        _run_on(loop, one(query))

    await asyncio.to_thread(check)
    assert checked >= 30


@pytest.mark.parametrize("path", ["..", "%2e%2e/users", "users/../oauth2/token", "users//x",
                                  "users\\..\\x", "%2F%2Fevil.com", "@evil.com/users"])
async def test_known_escapes_refused_before_twitch(proxy, mock, path):
    key = (await login(proxy))["proxy_key"]
    url = URL(str(proxy.make_url("")).rstrip("/") + "/helix/" + path, encoded=True)
    before = len(mock.helix_requests)
    async with proxy.session.get(url, headers={"Authorization": f"Bearer {key}"}) as resp:
        body = await resp.json()
    assert resp.status in (400, 404), body
    assert len(mock.helix_requests) == before
