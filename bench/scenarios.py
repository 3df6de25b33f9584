"""The benchmark's scenarios: each starts what it measures, runs wrk (or a client) against it
and returns the rows and notes for bench/results.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.loadgen import WrkResult, hold_idle_connections, storm, widgets, wrk
from bench.processes import (
    BOTH_CPUS,
    LOAD_CPUS,
    SERVER_CPUS,
    ProxySetup,
    Service,
    cpu_seconds,
    fetch,
    free_port,
    get_json,
    post_json,
    rss_kib,
    services,
)
from bench.results import Row


def alternate(runs: dict[str, Callable[[], WrkResult]], pairs: int) -> dict[str, list[WrkResult]]:
    """Run each measurement in turn, ``pairs`` times: A B A B ... so drift cancels."""
    results: dict[str, list[WrkResult]] = {name: [] for name in runs}
    for _ in range(pairs):
        for name, run in runs.items():
            results[name].append(run())
    return results


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
