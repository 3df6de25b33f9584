"""The processes under the benchmark: started pinned to CPUs, the proxy's set-up, and what
they cost (CPU time, resident memory) and answer (small HTTP helpers).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOAD_CPUS = "0"


SERVER_CPUS = "1"


BOTH_CPUS = "0,1"


CLIENT_ID = "bench-client"


ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(cpus: str | None, command: list[str]) -> list[str]:
    cpu_count = os.cpu_count() or 1
    if not cpus or cpu_count < 2:
        return command
    return ["taskset", "-c", cpus, *command]


class Service:
    """A server process under the benchmark's control."""

    def __init__(self, name: str, command: list[str], port: int, *, env: dict[str, str] | None
                 = None, cpus: str | None = SERVER_CPUS, ready_path: str = "/") -> None:
        self.name, self.port, self.ready_path = name, port, ready_path
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(pinned(cpus, command), env={**os.environ, **(env or {})},
                                        stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        self._wait_ready()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        self.log.seek(0)
        raise RuntimeError(f"{self.name} did not start:\n{self.log.read().decode()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


@dataclass
class ProxySetup:
    """What a proxy process needs: store, upstreams, a config file."""

    directory: Path
    id_url: str
    helix_url: str
    store_url: str
    encryption_key: str
    prefix: str = field(default_factory=lambda: f"bench-{secrets.token_hex(4)}:")
    extra: dict[str, Any] = field(default_factory=dict)

    def config_file(self) -> Path:
        from proxy import config as proxy_config

        sections: dict[str, Any] = {"store": {"prefix": self.prefix}}
        if hasattr(proxy_config, "LimitsConfig"):
            # The abuse limits guard a public server against one client; the
            # benchmark *is* one client on loopback: lift them.
            sections["limits"] = {"login_per_minute": 0, "refresh_per_minute": 0,
                                  "invalid_keys_per_minute": 0, "concurrent_per_grant": 5000,
                                  "concurrent_total": 10000}
        for dotted, value in self.extra.items():
            section, _, key = dotted.partition(".")
            sections.setdefault(section, {})[key] = value
        path = self.directory / f"config-{secrets.token_hex(3)}.yaml"
        path.write_text(json.dumps(sections))  # JSON is YAML
        return path

    def env(self, port: int, workers: int = 1) -> dict[str, str]:
        return {"TWITCH_CLIENT_ID": CLIENT_ID, "TWITCH_CLIENT_SECRET": "bench-secret",
                "TWITCH_ID_URL": self.id_url, "TWITCH_HELIX_URL": self.helix_url,
                "TOKEN_STORE_URL": self.store_url, "TOKEN_ENCRYPTION_KEY": self.encryption_key,
                "HOST": "127.0.0.1", "PORT": str(port), "WEB_CONCURRENCY": str(workers),
                "LOG_LEVEL": "WARNING", "PUBLIC_URL": f"http://127.0.0.1:{port}"}

    def start(self, name: str, *, workers: int = 1, cpus: str | None = SERVER_CPUS) -> Service:
        port = free_port()
        command = [sys.executable, "-m", "proxy", "--config", str(self.config_file())]
        return Service(name, command, port, env=self.env(port, workers), cpus=cpus)

    async def seed(self) -> dict[str, str]:
        """A grant with a proxy key, and an old widget's adopted pair, in the store."""
        from proxy.config import load_config
        from proxy.core.grant_records import Grant
        from proxy.core.grants import GrantStore
        from proxy.services import cipher_for
        from proxy.store import open_store

        config = load_config(path=self.config_file(), environ=self.env(0))
        store = await open_store(config.store.url, prefix=config.store.prefix)
        grants = GrantStore(store, cipher_for(config))
        now = time.time()

        def grant(user_id: str) -> Grant:
            return Grant.new(user_id=user_id, login=f"user{user_id}",
                             scopes=("user:read:email",),
                             access_token="at-" + secrets.token_hex(12),
                             refresh_token="rt-" + secrets.token_hex(20),
                             expires_at=now + 14000, now=now)

        try:
            keyed = grant("141981764")
            await grants.create(keyed)
            proxy_key, _ = await grants.create_key(keyed.grant_id)
            legacy = grant("1002")
            await grants.create(legacy)
            await grants.index_refresh_token(legacy.refresh_token, legacy.grant_id, "adopted",
                                             chain=legacy.chain)
        finally:
            await store.close()
        return {"proxy_key": proxy_key, "access_token": keyed.access_token,
                "legacy_access": legacy.access_token, "legacy_refresh": legacy.refresh_token}


def redis_answers(url: str) -> bool:
    """Whether a Redis answers PING at ``url``."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.exceptions.RedisError:
        return False
    finally:
        client.close()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (a gunicorn master's workers)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if parent == pid:
            found.append(int(stat.parent.name))
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and its children so far (the master and its workers)."""
    total = cpu_seconds(pid)
    for child in children(pid):
        with contextlib.suppress(OSError):
            total += cpu_seconds(child)
    return total


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB: current and peak resident memory."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name] = value.strip()
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def post_json(url: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body or {}).encode()
    request = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"{}")


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def fetch(url: str, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()
        return int(response.status)


@contextlib.contextmanager
def services(*started: Service) -> Iterator[None]:
    try:
        yield
    finally:
        for service in started:
            service.stop()
