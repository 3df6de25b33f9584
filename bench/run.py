"""Run every benchmark scenario and write ``bench/results.md``.

``python -m bench`` (``--quick`` for a short smoke run, ``--seconds`` per run,
``--pairs`` alternating pairs). Everything listens on 127.0.0.1 only.

How the two cores are shared: the load generator (wrk or the aiohttp
clients), nginx and the fake Twitch are pinned to CPU 0; the server under test
(proxy, reference forwarder or the old tool) to CPU 1, so the two sides never
steal each other's core. Scenario 5 cannot leave a core free on a 2-core
machine: there, the servers may use both CPUs (1 and 2 processes alike) and
the load generator stays on CPU 0; the table says so.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import resource
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.loadgen import WrkResult, hold_idle_connections, storm, widgets, wrk, wrk_available
from bench.upstream import Nginx, nginx_available

__all__ = ["main"]

LOAD_CPUS = "0"
SERVER_CPUS = "1"
BOTH_CPUS = "0,1"
CLIENT_ID = "bench-client"
ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).with_name("results.md")
TABLE_HEAD = ("| scenario | A req/s | B req/s | A/B req/s | p50 ms A / B | p99 ms A / B | "
              "p99 A/B | server CPU us/req A / B | errors | note |")


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


# -- the proxy under test ------------------------------------------------------------


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
        from proxy.store import open_store
        from proxy.web.app import cipher_for

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


# -- measuring -------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the results table."""

    scenario: str
    a: list[WrkResult]
    b: list[WrkResult]
    note: str = ""

    @staticmethod
    def median(results: list[WrkResult], attribute: str) -> float:
        return statistics.median(getattr(r, attribute) for r in results)

    @property
    def ratio(self) -> float:
        """Median over pairs of A's requests/s divided by B's."""
        return statistics.median(a.rps / b.rps for a, b in zip(self.a, self.b, strict=True))

    @property
    def p99_ratio(self) -> float:
        return statistics.median(a.p99_ms / b.p99_ms for a, b in zip(self.a, self.b, strict=True))

    def markdown(self) -> str:
        m = self.median
        errors = sum(r.errors for r in self.a + self.b)
        cpu = (f"{m(self.a, 'cpu_us'):.0f} / {m(self.b, 'cpu_us'):.0f}"
               if m(self.a, "cpu_us") and m(self.b, "cpu_us") else "")
        return (f"| {self.scenario} | {m(self.a, 'rps'):,.0f} | {m(self.b, 'rps'):,.0f} | "
                f"**{self.ratio:.2f}** | {m(self.a, 'p50_ms'):.2f} / {m(self.b, 'p50_ms'):.2f} | "
                f"{m(self.a, 'p99_ms'):.2f} / {m(self.b, 'p99_ms'):.2f} | "
                f"{self.p99_ratio:.2f} | {cpu} | {errors} | {self.note} |")


def alternate(runs: dict[str, Callable[[], WrkResult]], pairs: int) -> dict[str, list[WrkResult]]:
    """Run each measurement in turn, ``pairs`` times: A B A B ... so drift cancels."""
    results: dict[str, list[WrkResult]] = {name: [] for name in runs}
    for _ in range(pairs):
        for name, run in runs.items():
            results[name].append(run())
    return results


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


# -- the machine -------------------------------------------------------------------------


def machine() -> list[str]:
    import aiohttp as aiohttp_module

    def version(command: list[str]) -> str:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=10)
        except OSError:
            return "absent"
        return (done.stdout + done.stderr).strip().splitlines()[0]

    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    try:
        import uvloop
        uv = uvloop.__version__
    except ImportError:
        uv = "not installed"
    return [
        f"- CPUs: {os.cpu_count()} (`nproc`), model: {model}; {platform.platform()}",
        f"- Python {platform.python_version()}, aiohttp {aiohttp_module.__version__}, "
        f"uvloop {uv}",
        f"- Load generator: {version(['wrk', '-v'])}; fast upstream: "
        f"{version(['nginx', '-v'])}",
    ]


# -- the scenarios -------------------------------------------------------------------------


@dataclass
class Bench:
    """Shared state of one benchmark run."""

    seconds: float
    pairs: int
    directory: Path
    fake: Service
    helix_url: str  # nginx, or the aiohttp fake when nginx is absent
    lines: list[str] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    redis_url: str = field(
        default_factory=lambda: os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))

    def say(self, text: str) -> None:
        print(text, flush=True)

    def setup(self, store: str, *, helix_url: str | None = None, **extra: Any) -> ProxySetup:
        key = ""
        if store == "sqlite":
            url = f"sqlite:///{self.directory}/tokens-{secrets.token_hex(3)}.sqlite3"
        elif store == "redis":
            url = self.redis_url
        else:
            url = "memory://"
        from cryptography.fernet import Fernet
        key = Fernet.generate_key().decode()
        return ProxySetup(self.directory, id_url=self.fake.url,
                          helix_url=helix_url or self.helix_url, store_url=url,
                          encryption_key=key, extra=extra)

    def measure(self, url: str, connections: int, headers: dict[str, str], *,
                cpus: str = LOAD_CPUS, server: Service | None = None,
                **kwargs: Any) -> Callable[[], WrkResult]:
        """A wrk run; with ``server``, also the CPU time that process spent per request."""
        def run() -> WrkResult:
            before = cpu_seconds(server.process.pid) if server else 0.0
            result = wrk(url, connections=connections, duration=self.seconds,
                         headers=headers, cpus=cpus, **kwargs)
            if server is None or not result.requests:
                return result
            spent = cpu_seconds(server.process.pid) - before
            return dataclasses.replace(result, cpu_us=spent * 1e6 / result.requests)
        return run

    def warm(self, *runs: Callable[[], WrkResult]) -> None:
        """A 1-second run of each: pools, caches and the JIT-less interpreter warm up."""
        seconds, self.seconds = self.seconds, 1.0
        try:
            for run in runs:
                run()
        finally:
            self.seconds = seconds

    def pair(self, scenario: str, a: Callable[[], WrkResult], b: Callable[[], WrkResult],
             note: str = "") -> Row:
        self.warm(a, b)
        results = alternate({"a": a, "b": b}, self.pairs)
        row = Row(scenario, results["a"], results["b"], note)
        self.rows.append(row)
        self.say(row.markdown())
        return row


def scenarios_1_to_3(bench: Bench, seeded: dict[str, str], proxy: Service,
                     reference: Service, reference2: Service, direct: str) -> list[str]:
    key = {"Authorization": f"Bearer {seeded['proxy_key']}"}
    token = {"Authorization": f"Bearer {seeded['access_token']}"}
    legacy = {"Authorization": f"Bearer {seeded['legacy_access']}",
              "X-Refresh-Token": seeded["legacy_refresh"]}
    users = "/helix/users"
    bench.pair("A/A: reference vs reference, 32 conns, distinct URLs",
               bench.measure(reference.url + users, 32, token, distinct=True, server=reference),
               bench.measure(reference2.url + users, 32, token, distinct=True,
                             server=reference2), "noise floor")
    bench.pair("1: proxy key, 32 conns, distinct URLs",
               bench.measure(proxy.url + users, 32, key, distinct=True, server=proxy),
               bench.measure(reference.url + users, 32, token, distinct=True, server=reference),
               "every request reaches the upstream")
    bench.pair("1: proxy key, 32 conns, one URL",
               bench.measure(proxy.url + users, 32, key, server=proxy),
               bench.measure(reference.url + users, 32, token, server=reference),
               "identical concurrent GETs share upstream calls")
    bench.pair("2: old header pair, 32 conns, distinct URLs",
               bench.measure(proxy.url + users, 32, legacy, distinct=True, server=proxy),
               bench.measure(reference.url + users, 32, token, distinct=True, server=reference))
    row = bench.pair("3: proxy key, 1 conn",
                     bench.measure(proxy.url + users, 1, key, server=proxy),
                     bench.measure(reference.url + users, 1, token, server=reference))
    direct_runs = alternate({"direct": bench.measure(direct + users, 1, token)}, bench.pairs)
    direct_p50 = Row.median(direct_runs["direct"], "p50_ms")
    proxy_p50 = Row.median(row.a, "p50_ms")
    reference_p50 = Row.median(row.b, "p50_ms")
    return [f"- Scenario 3, added latency at p50 over calling the upstream directly "
            f"(direct p50 {direct_p50:.3f} ms): proxy **+{proxy_p50 - direct_p50:.3f} ms**, "
            f"reference forwarder +{reference_p50 - direct_p50:.3f} ms (target <= 1 ms)."]


def scenario_4(bench: Bench) -> list[str]:
    setup = bench.setup("sqlite")
    proxy = setup.start("proxy /refresh")
    old_port = free_port()
    old = Service("old tool", [sys.executable, "-m", "bench.old_tool", "--port", str(old_port),
                               "--token-url", f"{bench.fake.url}/oauth2/token"], old_port)
    with services(proxy, old):
        post_json(f"{bench.fake.url}/_bench/reset")
        body = json.dumps({"refresh_token": "rt-bench-" + secrets.token_hex(16)})
        headers = {"Content-Type": "application/json"}
        row = bench.pair("4: POST /refresh vs Flask+requests, 32 conns",
                         bench.measure(proxy.url + "/refresh", 32, headers, method="POST",
                                       body=body, server=proxy),
                         bench.measure(old.url + "/refresh", 32, headers, method="POST",
                                       body=body, server=old), "B = old tool's design")
        # Then the proxy alone, to count what it asked Twitch for (the old tool
        # is stopped first: its dev server may still be working off a backlog).
        old.stop()
        post_json(f"{bench.fake.url}/_bench/reset")
        fresh = json.dumps({"refresh_token": "rt-bench-" + secrets.token_hex(16)})
        alone = wrk(proxy.url + "/refresh", connections=32, duration=1, headers=headers,
                    method="POST", body=fresh, cpus=LOAD_CPUS)
        calls = get_json(f"{bench.fake.url}/_bench/calls").get("token:refresh_token", 0)
    return [f"- Scenario 4: the same refresh token posted over and over (as copies of one "
            f"widget do). The old design calls Twitch for every request; in a separate 1-s run "
            f"the proxy answered {alone.requests:,} requests with **{calls}** call(s) to the "
            f"token endpoint (one rotation, then the current pair is replayed). Ratio "
            f"{row.ratio:.1f} x (target >= 10 x), errors {sum(r.errors for r in row.a + row.b)}."]


def scenario_5(bench: Bench, seeded_by_store: dict[str, tuple[ProxySetup, dict[str, str]]]) \
        -> list[str]:
    notes = []
    for store, (setup, seeded) in seeded_by_store.items():
        one = setup.start(f"proxy 1 process {store}", cpus=BOTH_CPUS)
        two = setup.start(f"proxy 2 workers {store}", workers=2, cpus=BOTH_CPUS)
        with services(one, two):
            key = {"Authorization": f"Bearer {seeded['proxy_key']}"}
            row = bench.pair(f"5: WEB_CONCURRENCY=2 vs 1 process, {store}, 64 conns, "
                             "distinct URLs",
                             bench.measure(two.url + "/helix/users", 64, key, distinct=True),
                             bench.measure(one.url + "/helix/users", 64, key, distinct=True),
                             "A = 2 workers, B = 1; servers on both CPUs, wrk on CPU 0")
        notes.append(f"- Scenario 5 ({store}): 2 workers / 1 process = **{row.ratio:.2f} x** "
                     f"(target >= 1.6 x where the load generator leaves a core free; "
                     f"this machine has {os.cpu_count()} CPUs, so it cannot).")
    return notes


def scenario_6(bench: Bench, workers: int) -> list[str]:
    setup = bench.setup("sqlite", helix_url=f"{bench.fake.url}/helix")
    seeded = asyncio.run(setup.seed())
    proxy = setup.start(f"proxy storm {workers}", workers=workers,
                        cpus=SERVER_CPUS if workers == 1 else BOTH_CPUS)
    with services(proxy):
        key = {"Authorization": f"Bearer {seeded['proxy_key']}"}
        for _ in range(4):  # every worker has the grant cached and its pool open
            fetch(proxy.url + "/helix/users", key)
        post_json(f"{bench.fake.url}/_bench/delay", {"token": 0.05})
        post_json(f"{bench.fake.url}/_bench/reset")
        post_json(f"{bench.fake.url}/_bench/expire")
        statuses, seconds = asyncio.run(storm(proxy.url, 500, key))
        post_json(f"{bench.fake.url}/_bench/delay", {"token": 0.0})
        calls = get_json(f"{bench.fake.url}/_bench/calls")
    failed = sum(1 for s in statuses if s != 200)
    refreshes = calls.get("token:refresh_token", 0)
    line = (f"| 6: refresh storm, 500 concurrent, {workers} process(es), SQLite | "
            f"{refreshes} | {failed} | {seconds * 1000:.0f} ms |")
    bench.say(line)
    return [line]


def scenario_7(bench: Bench) -> list[str]:
    setup = bench.setup("sqlite")
    seeded = asyncio.run(setup.seed())
    proxy = setup.start("proxy rss")
    with services(proxy):
        key = {"Authorization": f"Bearer {seeded['proxy_key']}"}
        for _ in range(50):
            fetch(proxy.url + "/helix/users", key)
        time.sleep(0.5)
        rest, _ = rss_kib(proxy.process.pid)

        async def hold() -> tuple[int, int]:
            writers = await hold_idle_connections("127.0.0.1", proxy.port, 1000)
            await asyncio.sleep(1.0)
            now, peak = rss_kib(proxy.process.pid)
            for writer in writers:
                writer.close()
            await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)
            return now, peak

        busy, peak = asyncio.run(hold())
    line = (f"- Scenario 7: proxy RSS at rest **{rest / 1024:.1f} MB**; with 1,000 open idle "
            f"keep-alive connections **{busy / 1024:.1f} MB** (peak VmHWM "
            f"{peak / 1024:.1f} MB; target < 80 MB).")
    bench.say(line)
    return [line]


def widget_polling(bench: Bench, seconds: float) -> list[str]:
    lines = []
    for label, extra in (("single flight only", {}),
                         ("single flight + helix.cache /streams: 10",
                          {"helix.cache": {"/streams": 10}})):
        setup = bench.setup("sqlite", helix_url=f"{bench.fake.url}/helix", **extra)
        seeded = asyncio.run(setup.seed())
        proxy = setup.start(f"proxy widgets {label}")
        with services(proxy):
            key = {"Authorization": f"Bearer {seeded['proxy_key']}"}
            post_json(f"{bench.fake.url}/_bench/reset")
            statuses = asyncio.run(widgets(proxy.url + "/helix/streams?user_login=twitchdev",
                                           100, seconds, key))
            calls = get_json(f"{bench.fake.url}/_bench/calls").get("helix:GET /streams", 0)
        failed = sum(1 for s in statuses if s != 200)
        line = (f"| {label} | {len(statuses)} | {calls} | "
                f"{100 * (1 - calls / max(len(statuses), 1)):.0f} % | {failed} |")
        bench.say(line)
        lines.append(line)
    return lines


# -- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each wrk run")
    parser.add_argument("--pairs", type=int, default=3, help="alternating A B pairs")
    parser.add_argument("--quick", action="store_true", help="1 s runs, 1 pair (smoke run)")
    parser.add_argument("--no-redis", action="store_true", help="skip the Redis variant")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.pairs = 1.0, 1
    if not wrk_available():
        print("wrk is needed: apt-get install -y wrk", file=sys.stderr)
        return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="twitch-proxy-bench-") as tmp:
        directory = Path(tmp)
        fake_port = free_port()
        fake = Service("fake twitch", [sys.executable, "-m", "bench.upstream", "--port",
                                       str(fake_port)], fake_port, cpus=LOAD_CPUS)
        nginx = None
        if nginx_available():
            nginx = Nginx(directory / "nginx", free_port(), cpus=LOAD_CPUS)
            nginx.start()
            helix_url = nginx.url + "/helix"
        else:
            helix_url = fake.url + "/helix"
        bench = Bench(args.seconds, args.pairs, directory, fake, helix_url)
        notes: list[str] = []
        try:
            bench.say(TABLE_HEAD)
            setup = bench.setup("sqlite")
            seeded = asyncio.run(setup.seed())
            proxy = setup.start("proxy")
            reference_ports = free_port(), free_port()
            references = [Service(f"reference {i}", [sys.executable, "-m", "bench.reference",
                                                     "--port", str(port), "--upstream",
                                                     helix_url], port)
                          for i, port in enumerate(reference_ports)]
            with services(proxy, *references):
                notes += scenarios_1_to_3(bench, seeded, proxy, references[0], references[1],
                                          helix_url.removesuffix("/helix"))
            notes += scenario_4(bench)
            stores = {"sqlite": bench.setup("sqlite")}
            if args.no_redis:
                pass
            elif redis_answers(bench.redis_url):
                stores["redis"] = bench.setup("redis")
            else:
                notes.append(f"- Scenario 5 with Redis skipped: nothing answers at "
                             f"{bench.redis_url} (set BENCH_REDIS_URL).")
            notes += scenario_5(bench, {name: (s, asyncio.run(s.seed()))
                                        for name, s in stores.items()})
            storm_lines = scenario_6(bench, 1) + scenario_6(bench, 2)
            notes += scenario_7(bench)
            widget_lines = widget_polling(bench, 3.0 if args.quick else 6.0)
        finally:
            if nginx is not None:
                nginx.stop()
            fake.stop()
    elapsed = time.monotonic() - started
    write_results(args, bench, notes, storm_lines, widget_lines, elapsed)
    print(f"\nwritten to {args.output} in {elapsed:.0f} s", flush=True)
    return 0


def write_results(args: argparse.Namespace, bench: Bench, notes: list[str],
                  storm_lines: list[str], widget_lines: list[str], elapsed: float) -> None:
    text = [
        "# Benchmark results",
        "",
        f"`python -m bench` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{args.pairs} alternating pairs of {args.seconds:g} s wrk runs per row "
        f"(took {elapsed:.0f} s).",
        "",
        "## Machine",
        "",
        *machine(),
        "- Cores: wrk, nginx and the fake Twitch pinned to CPU 0 (`taskset`), the server "
        "under test to CPU 1; in scenario 5 the servers may use both CPUs.",
        "- Upstream: nginx answers `/helix/*` with a fixed `/users` body; the aiohttp fake "
        "Twitch (bench/upstream.py) is the token endpoint and, for scenarios 6 and the widget "
        "run, Helix (it counts calls and can expire tokens).",
        "",
        "## Throughput and latency (A = proxy unless noted, B = reference forwarder)",
        "",
        "Each row alternates A and B runs; req/s and latencies are medians over the runs, "
        "A/B is the median of the per-pair ratios.",
        "",
        TABLE_HEAD,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        *(row.markdown() for row in bench.rows),
        "",
        *notes,
        "",
        "## Refresh storm (scenario 6)",
        "",
        "The fake Twitch stops accepting the access token while 500 requests (distinct URLs, so "
        "none are shared) are in flight; its token endpoint answers after 50 ms.",
        "",
        "| run | refresh calls to Twitch | failed requests | time until all answered |",
        "| --- | ---: | ---: | ---: |",
        *storm_lines,
        "",
        "## Fewer calls to Twitch: 100 widget copies polling /helix/streams every second",
        "",
        "| proxy | widget requests | calls to Twitch | saved | failed |",
        "| --- | ---: | ---: | ---: | ---: |",
        *widget_lines,
        "",
        "Without the proxy every widget request is a call to Twitch (and a point of the "
        "user's rate-limit bucket, 800 per minute).",
        "",
    ]
    args.output.write_text("\n".join(text))
