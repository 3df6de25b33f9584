"""Helpers for tests that run the proxy as a real process (server, deploy)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

REPO = Path(__file__).resolve().parent.parent
#: Long enough for a busy 2-core CI machine to import and start gunicorn.
START_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_environ(**extra: str) -> dict[str, str]:
    """The test's environment without the proxy's own variables, plus ``extra``."""
    names = ("TWITCH_", "TOKEN_", "REDIS_URL", "PORT", "HOST", "PUBLIC_URL", "WEB_CONCURRENCY",
             "LOG_", "FORWARDED_ALLOW", "METRICS_TOKEN", "PROXY_CONFIG", "CORS_")
    base = {k: v for k, v in os.environ.items() if not k.startswith(names)}
    return {**base, **extra}


def mock_environ(mock_url: str, **extra: str) -> dict[str, str]:
    """Environment variables that point a proxy at the mock Twitch at ``mock_url``."""
    return clean_environ(
        TWITCH_CLIENT_ID="mock-client-id", TWITCH_CLIENT_SECRET="mock-client-secret",
        TWITCH_ID_URL=mock_url, TWITCH_HELIX_URL=f"{mock_url}/helix", **extra,
    )


def start(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    """Start ``args`` in its own process group, output (merged) piped."""
    return subprocess.Popen(
        args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )


def start_proxy(env: dict[str, str], cwd: Path, *args: str) -> subprocess.Popen[str]:
    return start([sys.executable, "-m", "proxy", *args], env, cwd)


async def wait_ready(session: aiohttp.ClientSession, base: URL,
                     process: subprocess.Popen[str], **kwargs: Any) -> None:
    """Wait until ``base``/healthz answers; fail with the output if the process died."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            async with session.get(base / "healthz", **kwargs) as health:
                if health.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        if process.poll() is not None:
            raise AssertionError(f"the process exited: {process.stdout.read()}")  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "the proxy did not start in time"
        await asyncio.sleep(0.2)


async def browser_login(session: aiohttp.ClientSession, base: URL, *,
                        headers: dict[str, str] | None = None, **kwargs: Any) -> dict[str, Any]:
    """/login -> the mock's (auto-approving) consent -> /callback, as JSON.

    The state cookie is carried by hand: behind a router saying https it is
    ``Secure``, which a client jar would not send over the test's plain http.
    """
    headers = headers or {}
    async with session.get(base / "login", allow_redirects=False, headers=headers,
                           **kwargs) as login:
        assert login.status == 302, await login.text()
        authorize = URL(login.headers["Location"])
        cookies = "; ".join(f"{name}={morsel.value}" for name, morsel in login.cookies.items())
    async with session.get(authorize, allow_redirects=False) as consent:
        assert consent.status == 302, await consent.text()
        back = URL(consent.headers["Location"])
    async with session.get((base / "callback").with_query(back.query),
                           headers={**headers, "Accept": "application/json", "Cookie": cookies},
                           **kwargs) as callback:
        body = await callback.json()
        assert callback.status == 200, body
        return body


def stop(process: subprocess.Popen[str], sig: int | None = signal.SIGTERM,
         timeout: float = 60) -> tuple[int, str]:
    """Signal ``process`` (if running and ``sig``) and return its exit code and output."""
    if sig is not None and process.poll() is None:
        process.send_signal(sig)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
    return process.returncode, output


@dataclass
class ProxyProcess:
    """A ``python -m proxy`` started by :func:`spawn_proxy`: where it listens, its output."""

    process: asyncio.subprocess.Process
    base: URL
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


async def spawn_proxy(directory: Path, env: dict[str, str], *args: str) -> ProxyProcess:
    """Start ``python -m proxy`` on a free port of 127.0.0.1, its output in ``directory``."""
    port = free_port()
    log = directory / f"proxy-{port}.log"
    with log.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "--port", str(port),
            "--public-url", f"http://127.0.0.1:{port}", *args,
            cwd=directory, env=env, stdout=output, stderr=output)
    return ProxyProcess(process, URL(f"http://127.0.0.1:{port}"), log)


async def wait_spawned(proxy: ProxyProcess, session: aiohttp.ClientSession) -> None:
    """Wait until ``proxy`` answers /healthz; fail with its output if it died or is slow."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            async with session.get(proxy.base / "healthz") as health:
                if health.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        assert proxy.process.returncode is None, f"the proxy exited:\n{proxy.output()}"
        assert time.monotonic() < deadline, f"the proxy did not start:\n{proxy.output()}"
        await asyncio.sleep(0.1)
