"""``python -m bench eventsub``: the live-events fan-out benchmark.

One real ``python -m proxy`` (CPU 1) relays the mock Twitch's EventSub
(``python -m proxy.mock_twitch``, CPU 0) to SSE widgets read by this process
(CPU 0, uvloop). Events are follows fired through the mock's
``/_mock/eventsub/trigger``; latency runs from the time the mock built the
event (its ``followed_at``) to the widget's read; every measurement's
exactly-once check counts the notifications in the mock's own log (each with
its ``sequence``) and compares every widget's serials with them.

Measured, in order: the naive design (each widget its own Twitch socket)
against the proxy for 50 widgets; RSS per idle stream (0 -> 1,000 streams);
latency at 10, 100 and 1,000 widgets receiving 10 events/s; the most
deliveries per second at 1,000 widgets (offered rates stepped up until the
proxy stops keeping up); a reconnect storm (``session_reconnect`` every second
for 30 s under 50 events/s); then, with the proxy as the Procfile runs it
with ``WEB_CONCURRENCY=2`` (gunicorn, on Redis: :mod:`bench.eventsub_redis`),
latency at 1,000 widgets spread over the 2 workers, each worker's widgets
checked apart, the mock's Twitch sockets counted all along. The figures go to a section of
``bench/results.md`` that ``python -m bench`` keeps.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.eventsub_redis import REDIS_HEAD, SocketCount, redis_line, redis_stack, redis_where
from bench.eventsub_stack import MockControl, Stack, naive_widgets, start_stack
from bench.eventsub_widgets import (
    Delivery,
    LoopLag,
    WidgetFleet,
    check_deliveries,
    percentiles,
)
from bench.processes import LOAD_CPUS, rss_kib, tree_cpu_seconds
from bench.results import RESULTS, eventsub_section, write_section

__all__ = ["Measurement", "Plan", "main"]

LATENCY_HEAD = ("| widgets | events/s | notifications sent (mock log) | deliveries | "
                "p50 ms | p95 ms | p99 ms | exactly once, in order | proxy CPU | "
                "load generator loop lag p50 / p99 / max ms |")
LADDER_HEAD = ("| offered events/s x widgets | deliveries | deliveries/s | "
               "p99 ms | drain after the last send | exactly once, in order | proxy CPU | "
               "proxy CPU us/delivery | load generator loop lag p50 / p99 / max ms |")


@dataclass(frozen=True)
class Plan:
    """The counts of one run (the full one, or ``--quick``'s)."""

    latency_widgets: tuple[int, ...] = (10, 100, 1000)
    latency_seconds: float = 8.0
    latency_rate: int = 10
    ladder_rates: tuple[int, ...] = (20, 50, 100, 150, 200)
    ladder_seconds: float = 3.0
    idle_widgets: int = 1000
    naive_widgets: int = 50
    storm_widgets: int = 100
    storm_seconds: float = 30.0
    storm_rate: int = 50
    redis_widgets: int = 1000
    redis_workers: int = 2

    @classmethod
    def quick(cls) -> Plan:
        return cls(latency_widgets=(2, 5), latency_seconds=1.0, ladder_rates=(20,),
                   ladder_seconds=1.0, idle_widgets=20, naive_widgets=6, storm_widgets=5,
                   storm_seconds=3.0, storm_rate=20, redis_widgets=10)


@dataclass(frozen=True)
class Measurement:
    """One paced run: what the mock sent, what the widgets got, what it cost."""

    sent: int  # distinct notifications in the mock's log
    resent: int  # the mock's resends of a notification (same message_id)
    undelivered: int  # events the mock had no socket to send on
    delivery: Delivery
    latency: list[float]  # p50, p95, p99 in seconds
    lag: str
    wall: float  # first send to last delivery, seconds
    busy: float  # the proxy's CPU seconds meanwhile
    drain: float  # seconds from the last send to the last delivery

    @property
    def cpu(self) -> float:
        return self.busy / self.wall

    def verdict(self) -> str:
        delivery = self.delivery
        if delivery.exactly_once:
            return "yes"
        return (f"**no**: lost {delivery.lost}, duplicated {delivery.duplicated}, "
                f"out of order {delivery.out_of_order}")


class Run:
    """One benchmark run over a started stack: the scenarios, and the lines they report."""

    def __init__(self, stack: Stack, plan: Plan, session: aiohttp.ClientSession) -> None:
        self.stack, self.plan = stack, plan
        self.mock = MockControl(session, stack.mock.url)
        self.user_id = str(stack.login["user_id"])
        self.fleet = WidgetFleet("127.0.0.1", stack.proxy.port, stack.login["proxy_key"])
        self.lag = LoopLag()
        self.lines: dict[str, list[str]] = {"naive": [], "memory": [], "latency": [],
                                            "ladder": [], "ladder_notes": [], "storm": [],
                                            "redis": []}
        self.failures: list[str] = []

    def say(self, part: str, line: str) -> None:
        print(line, flush=True)
        self.lines[part].append(line)

    @property
    def proxy_pid(self) -> int:
        return self.stack.proxy.process.pid

    async def paced(self, rate: int, seconds: float) -> tuple[int, int]:
        """Fire ``rate`` follows a second for ``seconds`` (in tenths); (sent, undelivered)
        as the mock answered."""
        loop = asyncio.get_running_loop()
        per_tick, ticks = max(1, rate // 10), max(1, round(seconds * 10))
        sent = undelivered = 0
        start = loop.time()
        for tick in range(ticks):
            answer = await self.mock.trigger(per_tick)
            sent += len(answer["sent"])
            undelivered += answer["undelivered"]
            delay = start + (tick + 1) / 10 - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        return sent, undelivered

    async def warm(self) -> None:
        """One event every widget must get: the subscription is in place, streams attached."""
        for _ in range(3):
            self.fleet.reset()
            await self.mock.trigger(1)
            await self.fleet.drained(1, 5.0)
            if all(w.serials for w in self.fleet.widgets):
                break
        self.fleet.reset()

    async def measure(self, rate: int, seconds: float,
                      meanwhile: Callable[[], Coroutine[Any, Any, None]] | None = None,
                      ) -> Measurement:
        """Fire at ``rate`` for ``seconds`` (running ``meanwhile`` alongside) and check every
        widget against the mock's log."""
        await self.warm()
        after = await self.mock.last_sequence()
        cpu_before, started = tree_cpu_seconds(self.proxy_pid), time.time()
        self.lag.start()
        beside = asyncio.ensure_future(meanwhile()) if meanwhile is not None else None
        try:
            sent, undelivered = await self.paced(rate, seconds)
        finally:
            if beside is not None:
                beside.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await beside
        fired = time.time()
        drain = await self.fleet.drained(sent, 10.0)
        lag = self.lag.stop()
        busy = tree_cpu_seconds(self.proxy_pid) - cpu_before
        logged = await self.mock.notifications(after)
        unique = [entry for entry in logged if not entry["duplicate"]]
        delivery = check_deliveries((w.serials for w in self.fleet.widgets), len(unique))
        wall = max(self.fleet.last_at, fired) - started
        if not delivery.exactly_once or undelivered:
            self.failures.append(f"{len(self.fleet.widgets)} widgets at {rate}/s: "
                                 f"{delivery.text()}, undelivered at the mock {undelivered}; "
                                 f"{self._missing(len(unique))}")
        return Measurement(
            sent=len(unique), resent=len(logged) - len(unique), undelivered=undelivered,
            delivery=delivery, latency=percentiles(self.fleet.latencies), lag=lag, wall=wall,
            busy=busy, drain=max(0.0, self.fleet.last_at - fired) if drain < 10.0 else drain)

    def _missing(self, sent: int) -> str:
        """Which serials were missed, and by how many widgets (for the report's notes)."""
        everything = set().union(*(w.serials for w in self.fleet.widgets))
        short = [w for w in self.fleet.widgets if len(set(w.serials)) < sent]
        missed: dict[int, int] = {}
        for widget in short:
            for serial in everything - set(widget.serials):
                missed[serial] = missed.get(serial, 0) + 1
        first = min(everything, default=0)
        shown = ", ".join(f"#{serial - first + 1} by {n}" for serial, n in sorted(missed.items()))
        return (f"{len(short)} widget(s) short, {sent - len(everything)} event(s) no widget "
                f"got; missed (position in the run: widgets) {shown[:300]}")

    # -- the scenarios ------------------------------------------------------------------

    async def naive(self) -> None:
        count = self.plan.naive_widgets
        naive = await naive_widgets(self.stack.mock.url, self.stack.login["access_token"],
                                    self.user_id, count)
        refused = ", ".join(f"{n} x {status}" for status, n in sorted(naive.refused.items()))
        self.say("naive", f"| {count} widgets, each its own Twitch socket (naive) | "
                          f"{naive.sockets_opened} | {naive.open_sockets_at_twitch} | "
                          f"{naive.subscribed} | {refused or 'none'} | {naive.total_cost} |")
        await self.mock.sockets_closed()
        await self.fleet.open(count)
        await self.warm()
        state = await self.mock.state()
        subs = [sub for s in state["sessions"] for sub in s["subscriptions"]]
        self.say("naive", f"| {count} widgets through the proxy | "
                          f"{len(self.fleet.widgets) - self.fleet.closed_streams()} SSE streams | "
                          f"{state['open_sockets']} | {len(subs)} | none | "
                          f"{sum(sub['cost'] for sub in subs)} |")
        self.fleet.close()

    async def memory(self) -> None:
        count = self.plan.idle_widgets
        await asyncio.sleep(0.5)
        before, _ = rss_kib(self.proxy_pid)
        await self.fleet.open(count)
        await asyncio.sleep(1.0)
        after, peak = rss_kib(self.proxy_pid)
        self.say("memory", f"- RSS of the proxy with 0 streams **{before / 1024:.1f} MB**, "
                           f"with {count:,} idle streams **{after / 1024:.1f} MB** (VmHWM "
                           f"{peak / 1024:.1f} MB): **{(after - before) / count:.1f} KB per "
                           f"idle stream** (target < 20 KB).")

    async def latency(self) -> None:
        plan = self.plan
        for count in plan.latency_widgets:
            have = len(self.fleet.widgets)
            if have > count:
                self.fleet.close(have - count)
            elif have < count:
                await self.fleet.open(count - have)
            r = await self.measure(plan.latency_rate, plan.latency_seconds)
            p50, p95, p99 = r.latency
            self.say("latency", f"| {count:,} | {plan.latency_rate} | {r.sent} | "
                                f"{r.delivery.received:,} | {p50 * 1000:.1f} | "
                                f"{p95 * 1000:.1f} | {p99 * 1000:.1f} | "
                                f"{r.verdict()} | {r.cpu:.0%} | {r.lag} |")

    async def ladder(self) -> None:
        plan = self.plan
        count = max(plan.latency_widgets)
        best: tuple[float, float] | None = None
        for rate in plan.ladder_rates:
            r = await self.measure(rate, plan.ladder_seconds)
            per_second = r.delivery.received / r.wall
            us = r.busy / max(r.delivery.received, 1) * 1e6
            closed = self.fleet.closed_streams()
            kept_up = r.delivery.exactly_once and r.drain < 1.0 and not closed
            self.say("ladder", f"| {rate} x {count:,} = {rate * count:,}/s | "
                               f"{r.delivery.received:,} | **{per_second:,.0f}** | "
                               f"{r.latency[2] * 1000:.0f} | {r.drain:.2f} s | "
                               f"{r.verdict()} | {r.cpu:.0%} | {us:.1f} | {r.lag} |")
            if kept_up and (best is None or per_second > best[0]):
                best = (per_second, us)
            if not kept_up:
                why = f"{closed} streams closed by the proxy" if closed else (
                    f"drain {r.drain:.1f} s" if r.drain >= 1.0 else "not exactly once")
                self.say("ladder_notes", f"- Stopped at {rate} events/s: {why}.")
                break
        if best is not None:
            # The CPU time is counted in clock ticks: a short quick run may show none.
            cost = (f", at {best[1]:.1f} us of proxy CPU per delivery, i.e. about "
                    f"{1e6 / best[1]:,.0f}/s for a whole core" if best[1] > 0 else "")
            self.say("ladder_notes",
                     f"- Most deliveries per second one process kept up with at {count:,} "
                     f"widgets: **{best[0]:,.0f}/s** (target 50,000/s){cost}.")

    async def storm(self) -> None:
        plan = self.plan
        have = len(self.fleet.widgets)
        if have > plan.storm_widgets:
            self.fleet.close(have - plan.storm_widgets)
        else:
            await self.fleet.open(plan.storm_widgets - have)
        reconnects: list[int] = []

        async def reconnect_every_second() -> None:
            while True:
                await asyncio.sleep(1.0)
                reconnects.append(len(await self.mock.reconnect(self.user_id)))

        r = await self.measure(plan.storm_rate, plan.storm_seconds, reconnect_every_second)
        gaps = sum(w.controls.get("gap", 0) for w in self.fleet.widgets)
        self.say("storm", f"- {len(reconnects)} `session_reconnect`s (one a second, "
                          f"{sum(reconnects)} answered with a reconnect URL) over "
                          f"{plan.storm_seconds:g} s of {plan.storm_rate} events/s to "
                          f"{len(self.fleet.widgets)} widgets: the mock's log holds "
                          f"**{r.sent}** notifications (by sequence number; {r.resent} "
                          f"resends), {r.undelivered} the mock had no socket for; the widgets "
                          f"received {r.delivery.text()}; {gaps} `gap` events; p99 "
                          f"{r.latency[2] * 1000:.0f} ms; load generator loop lag {r.lag} ms.")

    async def redis(self) -> None:
        """Latency over the workers of one proxy on Redis (this run's stack is that proxy)."""
        plan = self.plan
        await self.mock.sockets_closed()  # the one-process proxy's
        await self.fleet.open_spread(plan.redis_widgets, plan.redis_workers)
        await self.warm()
        sockets = SocketCount(self.mock)
        sockets.start()
        try:
            r = await self.measure(plan.latency_rate, plan.latency_seconds)
        finally:
            await sockets.stop()
        line, failures = redis_line(self.fleet.widgets, plan.latency_rate, r, sockets)
        self.say("redis", line)
        self.failures += failures


ONE_PROCESS = (Run.naive, Run.memory, Run.latency, Run.ladder, Run.storm)


async def _run(stack: Stack, plan: Plan,
               scenarios: tuple[Callable[[Run], Coroutine[Any, Any, None]], ...]) -> Run:
    async with aiohttp.ClientSession() as session:
        run = Run(stack, plan, session)
        try:
            for scenario in scenarios:
                await scenario(run)
        finally:
            run.fleet.close()
        return run


@contextlib.contextmanager
def _on_load_cpu() -> Iterator[None]:
    """This process (the load generator) on CPU 0 with the mock, the proxy alone on CPU 1."""
    if (os.cpu_count() or 1) < 2 or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {int(LOAD_CPUS)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _runner() -> asyncio.Runner:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency of the proxy
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench eventsub", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small counts, a few seconds")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    plan = Plan.quick() if args.quick else Plan()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="twitch-proxy-eventsub-") as tmp, _on_load_cpu():
        stack = start_stack(Path(tmp))
        try:
            with _runner() as runner:
                run = runner.run(_run(stack, plan, ONE_PROCESS))
                with redis_stack(Path(tmp), stack, plan.redis_workers) as on_redis:
                    if on_redis is not None:
                        redis = runner.run(_run(on_redis, plan, (Run.redis,)))
                        run.lines["redis"] += redis.lines["redis"]
                        run.failures += redis.failures
                    else:
                        run.lines["redis"].append(
                            f"- Not measured: no Redis answered at {redis_where()}.")
        finally:
            stack.stop()
    elapsed = time.monotonic() - started
    command = "python -m bench eventsub" + (" --quick" if args.quick else "")
    write_section(args.output, eventsub_section(
        command=command, elapsed=elapsed, lines=run.lines, latency_head=LATENCY_HEAD,
        ladder_head=LADDER_HEAD, redis_head=REDIS_HEAD, workers=plan.redis_workers,
        redis_at=redis_where()))
    for failure in run.failures:
        print(f"NOT EXACTLY ONCE: {failure}", flush=True)
    print(f"\nwritten to {args.output} in {elapsed:.0f} s", flush=True)
    return 1 if run.failures else 0
