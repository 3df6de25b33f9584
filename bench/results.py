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
    args.output.write_text("\n".join(text))
