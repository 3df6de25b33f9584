"""Run every benchmark scenario and write ``bench/results.md``.

``python -m bench`` (``--quick`` for a short smoke run, ``--seconds`` per run,
``--pairs`` alternating pairs); ``python -m bench eventsub`` runs the live-events
fan-out benchmark instead (:mod:`bench.eventsub`). Everything listens on 127.0.0.1 only.

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
import resource
import sys
import tempfile
import time
from pathlib import Path

from bench.loadgen import wrk_available
from bench.processes import LOAD_CPUS, Service, free_port, redis_answers, services
from bench.results import RESULTS, TABLE_HEAD, Row, write_results
from bench.scenarios import (
    Bench,
    scenario_4,
    scenario_5,
    scenario_6,
    scenario_7,
    scenarios_1_to_3,
    widget_polling,
)
from bench.upstream import Nginx, nginx_available

# Row is the results table's line, offered here with main() (the smoke test checks it).
__all__ = ["Row", "main"]


def main(argv: list[str] | None = None) -> int:
    args_given = sys.argv[1:] if argv is None else argv
    if args_given[:1] == ["eventsub"]:
        from bench.eventsub import main as eventsub_main

        return eventsub_main(args_given[1:])
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
