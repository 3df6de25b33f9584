"""Writing bench/results.md: the table's rows, the machine's description, the file."""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench.loadgen import WrkResult

if TYPE_CHECKING:  # bench.scenarios imports Row from here
    from bench.scenarios import Bench

RESULTS = Path(__file__).with_name("results.md")

#: ``python -m bench eventsub`` writes its section between these lines; ``python -m bench``
#: rewrites the rest of the file and keeps it.
EVENTSUB_START = "<!-- python -m bench eventsub: start -->"
EVENTSUB_END = "<!-- python -m bench eventsub: end -->"


TABLE_HEAD = ("| scenario | A req/s | B req/s | A/B req/s | p50 ms A / B | p99 ms A / B | "
              "p99 A/B | server CPU us/req A / B | errors | note |")


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
    kept = _eventsub_part(args.output.read_text()) if args.output.exists() else ""
    args.output.write_text("\n".join(text) + (f"\n{kept}\n" if kept else ""))


def _eventsub_part(text: str) -> str:
    """The live-events section of a results file, markers included ("" if none)."""
    start, end = text.find(EVENTSUB_START), text.find(EVENTSUB_END)
    if start < 0 or end < start:
        return ""
    return text[start:end + len(EVENTSUB_END)]


def write_section(path: Path, section: str) -> None:
    """Put the live-events ``section`` into ``path``, replacing the one there (if any)."""
    block = f"{EVENTSUB_START}\n{section.strip()}\n{EVENTSUB_END}"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    old = _eventsub_part(text)
    text = text.replace(old, block) if old else text.rstrip("\n") + f"\n\n{block}\n"
    path.write_text(text)


def eventsub_section(*, command: str, elapsed: float, lines: dict[str, list[str]],
                     latency_head: str, ladder_head: str, redis_head: str,
                     workers: int, redis_at: str) -> str:
    """The live-events section of bench/results.md, from one run's lines."""
    def columns(head: str) -> str:
        return "| --- |" + " ---: |" * (head.count("|") - 2)

    redis = [redis_head, columns(redis_head), *lines["redis"]] if any(
        line.startswith("|") for line in lines["redis"]) else lines["redis"]
    return "\n".join([
        "## Live events fan-out (`GET /eventsub`)",
        "",
        f"`{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
        f"(took {elapsed:.0f} s), one run.",
        "",
        *machine()[:2],
        "- Processes: the mock Twitch (`python -m proxy.mock_twitch`) and the load generator "
        "(one asyncio process on uvloop reading every SSE stream through llhttp) pinned to "
        "CPU 0, one `python -m proxy` (on the in-memory store) pinned to CPU 1. "
        "Every widget listens to `channel.follow` v2 with the proxy key in the header.",
        "- Latency: from the time the mock built the event (its `followed_at`, written into "
        "the frame less than 0.1 ms before the frame is sent) to the load generator's read "
        "of the SSE bytes. Exactly once, in order: every widget's follower serials against "
        "the notifications in the mock's own message log (each with its sequence number); "
        "the mock's resends (same `message_id`) are listed apart.",
        "",
        "### Naive design vs the proxy: 50 widgets",
        "",
        "| design | sockets opened | Twitch sockets open | subscriptions at Twitch | refused | "
        "subscription cost |",
        "| --- | ---: | ---: | ---: | --- | ---: |",
        *lines["naive"],
        "",
        "### Memory per idle widget stream",
        "",
        *lines["memory"],
        "",
        "### Fan-out latency, one process",
        "",
        latency_head,
        columns(latency_head),
        *lines["latency"],
        "",
        f"### Fan-out latency, {workers} gunicorn workers on Redis",
        "",
        f"The proxy as the Procfile runs it with `WEB_CONCURRENCY={workers}` (a gunicorn "
        "master, its workers sharing one listening socket, pinned to CPU 1 like the single "
        f"process above) on the Redis at {redis_at} (not pinned), under a store prefix of "
        "its own. The widgets are spread evenly over the workers by their `X-Request-Id` "
        "(each worker's ids start with its own prefix): streams the kernel gave a worker "
        "beyond its share are closed and more opened. Each worker's widgets are checked "
        "apart against the mock's log; the mock's count of open Twitch sockets is sampled "
        "every 0.1 s through the measurement.",
        "",
        *redis,
        "",
        "### Deliveries per second at 1,000 widgets",
        "",
        "Offered rates go up until the proxy stops keeping up (a drain over 1 s after the "
        "last send, a stream closed as too slow, or a delivery not exactly once).",
        "",
        ladder_head,
        columns(ladder_head),
        *lines["ladder"],
        "",
        *lines["ladder_notes"],
        "",
        "### Reconnect storm",
        "",
        *lines["storm"],
    ])
