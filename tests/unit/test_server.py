"""proxy.server as real processes: SIGTERM drains in-flight work, workers, TLS.

The mock Twitch runs in the test's event loop; the proxy is a child process
pointed at it, so the mock's delay knobs hold a request open at Twitch while
the test signals the proxy.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import signal
import ssl
import sys

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from yarl import URL

from tests.processes import (
    browser_login,
    clean_environ,
    free_port,
    mock_environ,
    start_proxy,
    stop,
    wait_ready,
)


def _mock_url(twitch_server) -> str:
    return str(twitch_server.make_url("")).rstrip("/")


async def _until(condition, what: str, limit: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def _until_refused(base: URL) -> float:
    """Wait until a new connection to ``base`` is refused; the seconds it took."""
    started = asyncio.get_running_loop().time()
    deadline = started + 30
    while True:
        try:
            # A connection the kernel queued for a socket being closed may never
            # be answered: give up on it quickly and try again.
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as fresh, \
                    fresh.get(base / "healthz"):
                pass
        except aiohttp.ClientConnectorError:
            return asyncio.get_running_loop().time() - started
        except (aiohttp.ClientError, TimeoutError):
            pass
        assert asyncio.get_running_loop().time() < deadline, "still accepting after SIGTERM"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("workers, slow", [(1, "helix"), (1, "refresh"), (2, "refresh")])
async def test_sigterm_finishes_the_request_in_flight_and_exits_0(
        twitch_server, mock, tmp_path, workers, slow):
    port = free_port()
    store = f"sqlite:///{tmp_path}/tokens.sqlite3"
    config = tmp_path / "config.yaml"
    # Twitch's answer may be held for a while below: longer than the default timeout.
    config.write_text("twitch:\n  timeout: 25\n")
    env = mock_environ(_mock_url(twitch_server), PORT=str(port), TOKEN_STORE_URL=store,
                       WEB_CONCURRENCY=str(workers), PROXY_CONFIG=str(config))
    base = URL(f"http://127.0.0.1:{port}")
    process = start_proxy(env, tmp_path)
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
            await wait_ready(session, base, process)
            key = (await browser_login(session, base))["proxy_key"]
            refreshes = mock.calls["token:refresh_token"]
            if slow == "helix":
                mock.helix_delay = 2.0
                started = lambda: len(mock.helix_requests) > 0  # noqa: E731
            else:
                mock.expire_access_tokens()  # the next Helix call refreshes first
                mock.hold_refresh = asyncio.Event()  # Twitch holds the refresh open
                started = lambda: mock.calls["token:refresh_token"] > refreshes  # noqa: E731
            request = asyncio.ensure_future(session.get(
                base / "helix" / "users", headers={"Authorization": f"Bearer {key}"}))
            await _until(started, "the request to reach Twitch")
            process.send_signal(signal.SIGTERM)
            if mock.hold_refresh is not None:
                # While the refresh is held, the proxy stops accepting connections...
                await _until_refused(base)
                # ...and once Twitch answers, the request in flight still completes.
                mock.hold_refresh.set()
                mock.hold_refresh = None
            async with await request as response:
                assert response.status == 200, await response.text()
                assert (await response.json())["data"][0]["login"] == "twitchdev"
            mock.helix_delay = mock.token_delay = 0
        code, output = await asyncio.to_thread(stop, process, None)  # exits by itself
    finally:
        await asyncio.to_thread(stop, process, signal.SIGKILL)
    assert code == 0, output

    if slow == "refresh":
        # The rotation made during shutdown was stored: a new process on the same
        # file uses the new token without refreshing again.
        refreshes = mock.calls["token:refresh_token"]
        process = start_proxy(env | {"WEB_CONCURRENCY": "1"}, tmp_path)
        try:
            async with aiohttp.ClientSession() as session:
                await wait_ready(session, base, process)
                async with session.get(base / "helix" / "users",
                                       headers={"Authorization": f"Bearer {key}"}) as again:
                    assert again.status == 200, await again.text()
        finally:
            code, output = await asyncio.to_thread(stop, process)
        assert code == 0, output
        assert mock.calls["token:refresh_token"] == refreshes


async def test_two_workers_share_one_port_and_one_store(twitch_server, mock, tmp_path):
    port = free_port()
    env = mock_environ(_mock_url(twitch_server), PORT=str(port),
                       TOKEN_STORE_URL=f"sqlite:///{tmp_path}/tokens.sqlite3")
    base = URL(f"http://127.0.0.1:{port}")
    process = start_proxy(env, tmp_path, "--workers", "2")
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
            await wait_ready(session, base, process)
            key = (await browser_login(session, base))["proxy_key"]
            mock.expire_access_tokens()
            refreshes = mock.calls["token:refresh_token"]
            # Fresh connections, so the kernel spreads them over both workers.
            answers = await asyncio.gather(*(
                _get_new_connection(base / "helix" / "users", key) for _ in range(40)))
        assert answers == [200] * 40
        assert mock.calls["token:refresh_token"] == refreshes + 1  # one refresh for both
    finally:
        code, output = await asyncio.to_thread(stop, process)
    assert code == 0, output
    assert output.count("Booting worker") == 2, output


async def _get_new_connection(url: URL, key: str) -> int:
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers={"Authorization": f"Bearer {key}"}) as response:
            return response.status


def test_memory_store_refuses_more_than_one_worker(tmp_path):
    import subprocess

    result = subprocess.run(
        [sys.executable, "-m", "proxy", "--store", "memory://", "--port", str(free_port())],
        env=clean_environ(TWITCH_CLIENT_ID="id", TWITCH_CLIENT_SECRET="secret",
                          WEB_CONCURRENCY="3"),
        cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "memory:// store is private to one process" in result.stderr


def _self_signed(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


@pytest.mark.parametrize("workers", [1, 2])
async def test_tls_serves_https_directly(twitch_server, tmp_path, workers):
    cert, key = _self_signed(tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text(f"server:\n  tls_cert: {cert}\n  tls_key: {key}\n")
    port = free_port()
    env = mock_environ(_mock_url(twitch_server), PORT=str(port), PROXY_CONFIG=str(config),
                       TOKEN_STORE_URL=f"sqlite:///{tmp_path}/tokens.sqlite3",
                       WEB_CONCURRENCY=str(workers))
    trust = ssl.create_default_context(cafile=str(cert))
    process = start_proxy(env, tmp_path)
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
            base = URL(f"https://127.0.0.1:{port}")
            await wait_ready(session, base, process, ssl=trust)
            async with session.get(base / "login", allow_redirects=False, ssl=trust) as login:
                assert login.status == 302
                # Default public URL follows TLS; the state cookie is Secure.
                assert URL(login.headers["Location"]).query["redirect_uri"] == \
                    f"https://localhost:{port}/callback"
                assert "Secure" in login.headers["Set-Cookie"]
            with pytest.raises(aiohttp.ClientError):  # plain http is not served
                async with session.get(URL(f"http://127.0.0.1:{port}/healthz")):
                    pass
    finally:
        code, output = await asyncio.to_thread(stop, process)
    assert code == 0, output


def test_mock_twitch_mode_needs_one_worker(tmp_path):
    import subprocess

    result = subprocess.run(
        [sys.executable, "-m", "proxy", "--mock-twitch", "--workers", "2",
         "--store", f"sqlite:///{tmp_path}/tokens.sqlite3", "--port", str(free_port())],
        env=clean_environ(), cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "needs one worker" in result.stderr and "Traceback" not in result.stderr
