"""Shared fixtures; each concern has its own section."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from proxy.config import load_config
from proxy.mock_twitch import MockTwitch, create_mock_app, mock_twitch_key
from proxy.web.app import create_app
from tests.helpers import proxy_config_flags
from tests.processes import free_port

# ---------------------------------------------------------------------------
# Redis: a real server for the Redis store tests.
#
# ``redis_url`` is $REDIS_URL if set, else a Redis already answering on
# 127.0.0.1:6379, else a throwaway ``redis-server`` from PATH. Without any of
# them the Redis tests are skipped, except under CI (``$CI`` set), where they
# fail. Tests never flush the database: each one works under its own prefix.
#
# ``redis_tls_url`` is a throwaway TLS-only ``redis-server`` with a self-signed
# certificate (like Heroku's), skipped where redis-server or openssl cannot
# provide one.
# ---------------------------------------------------------------------------

_LOCAL_REDIS_URL = "redis://127.0.0.1:6379/0"
_REDIS_STARTUP_TIMEOUT = 5.0


def _redis_answers(url: str, **kwargs: object) -> bool:
    client = redis.Redis.from_url(
        url, socket_connect_timeout=0.5, socket_timeout=0.5, retry=None, **kwargs
    )
    try:
        return bool(client.ping())
    except redis.exceptions.RedisError:
        return False
    finally:
        client.close()


def _start_redis_server(
    directory: Path, url: str, args: list[str], **ping_kwargs: object
) -> subprocess.Popen[bytes] | None:
    """Start ``redis-server`` with ``args``; None if it does not answer in time."""
    process = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(directory), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + _REDIS_STARTUP_TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        if _redis_answers(url, **ping_kwargs):
            return process
        time.sleep(0.05)
    _stop_redis_server(process)
    return None


def _stop_redis_server(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _redis_missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so Redis tests must run)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a Redis for the store tests (see the section comment)."""
    url = os.environ.get("REDIS_URL")
    if url:
        if not _redis_answers(url):
            pytest.fail("REDIS_URL is set but that Redis does not answer PING")
        yield url
        return
    if _redis_answers(_LOCAL_REDIS_URL):
        yield _LOCAL_REDIS_URL
        return
    if shutil.which("redis-server") is None:
        _redis_missing("no Redis: REDIS_URL unset, nothing on 127.0.0.1:6379, no redis-server")
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    process = _start_redis_server(tmp_path_factory.mktemp("redis"), url, ["--port", str(port)])
    if process is None:
        _redis_missing("redis-server from PATH did not start")
    assert process is not None
    try:
        yield url
    finally:
        _stop_redis_server(process)


@pytest.fixture(scope="session")
def redis_tls_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A ``rediss://`` URL of a TLS-only Redis with a self-signed certificate."""
    if shutil.which("redis-server") is None or shutil.which("openssl") is None:
        pytest.skip("a TLS Redis needs redis-server and openssl on PATH")
    directory = tmp_path_factory.mktemp("redis-tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    port = free_port()
    url = f"rediss://127.0.0.1:{port}/0"
    process = _start_redis_server(
        directory,
        url,
        ["--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert),
         "--tls-key-file", str(key), "--tls-auth-clients", "no"],
        ssl_cert_reqs="none",
    )
    if process is None:
        pytest.skip("redis-server did not start with TLS (built without TLS support?)")
    assert process is not None
    try:
        yield url
    finally:
        _stop_redis_server(process)


# ---------------------------------------------------------------------------
# The proxy against the mock Twitch, over real HTTP.
#
# Fixtures chain: ``twitch_server`` (the mock, a real aiohttp server) ->
# ``mock`` (its state, to count calls and expire tokens) -> ``proxy_config``
# (built by the real loader from flags; tests change it through
# ``config_flags``) -> ``proxy`` (a test client of a real proxy server).
# ``store_url`` picks the backend (memory by default).
# ---------------------------------------------------------------------------



@pytest.fixture
async def twitch_server(aiohttp_server):
    """The mock Twitch, served on a real port."""
    return await aiohttp_server(create_mock_app())


@pytest.fixture
def mock(twitch_server) -> MockTwitch:
    """The mock's state: counters, tokens, fault knobs."""
    return twitch_server.app[mock_twitch_key]


@pytest.fixture
def store_url(request, tmp_path) -> str:
    """memory:// unless a test asks for ``sqlite`` (indirect parametrize)."""
    kind = getattr(request, "param", "memory")
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/tokens.sqlite3"
    return "memory://"


@pytest.fixture
def config_flags() -> dict:
    """Extra dotted config keys a test module can override."""
    return {}


@pytest.fixture
def proxy_config(twitch_server, store_url, config_flags, tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    flags = {**proxy_config_flags(str(twitch_server.make_url("")).rstrip("/")),
             "store.url": store_url, **config_flags}
    return load_config(path=empty, environ={}, flags=flags)


@pytest.fixture
async def proxy(aiohttp_client, proxy_config):
    """A client of a real proxy server pointed at the mock Twitch."""
    return await aiohttp_client(create_app(proxy_config))


# ---------------------------------------------------------------------------
# Reliability figures (docs/reliability.md): the fuzz, fault and abuse tests add to one
# session-wide tally, printed at the end of the run by pytest_terminal_summary.
# A figure only counts what a test actually observed: a fault scenario counts
# once its assertions passed, a leak once a secret was found in a log line or
# a response the test saw.
# ---------------------------------------------------------------------------

class Reliability:
    """The session's tally; tests add through the ``reliability`` fixture."""

    def __init__(self) -> None:
        self.fuzz_cases = 0
        self.fault_scenarios = 0
        self.abuse_rejected = 0
        self.tokens_lost = 0
        self.tokens_leaked = 0
        self.used = False

    def leaks(self, secrets: list[str], *texts: str) -> list[str]:
        """The secrets found in ``texts``; each one found is counted as leaked."""
        self.used = True
        found = [s for s in secrets if s and any(s in text for text in texts)]
        self.tokens_leaked += len(found)
        return found

    def lines(self) -> list[str]:
        return [
            f"fuzz cases run: {self.fuzz_cases}",
            f"fault scenarios survived: {self.fault_scenarios}",
            f"abuse cases rejected: {self.abuse_rejected}",
            f"tokens lost: {self.tokens_lost}",
            f"tokens leaked: {self.tokens_leaked}",
        ]


_reliability_key = pytest.StashKey[Reliability]()


@pytest.fixture(scope="session")
def reliability(request) -> Reliability:
    """The session's reliability tally (see the section comment)."""
    tally = request.config.stash.setdefault(_reliability_key, Reliability())
    tally.used = True
    return tally


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    tally = config.stash.get(_reliability_key, None)
    if tally is not None and tally.used:
        terminalreporter.section("reliability")
        for line in tally.lines():
            terminalreporter.write_line(line)
