"""Load: wrk (Debian's package) driven by ``report.lua``, and bounded aiohttp clients.

wrk measures throughput and latency; the aiohttp clients do what wrk cannot:
500 requests started at once (the refresh storm), 100 widgets polling on
their own schedules, and 1,000 idle keep-alive connections.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

__all__ = ["WrkResult", "hold_idle_connections", "storm", "widgets", "wrk", "wrk_available"]

REPORT_LUA = Path(__file__).with_name("report.lua")


@dataclass(frozen=True)
class WrkResult:
    """One wrk run."""

    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    #: CPU time the server under test spent per request (0 when not measured).
    cpu_us: float = 0.0


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def wrk(url: str, *, connections: int, duration: float, headers: dict[str, str] | None = None,
        method: str | None = None, body: str | None = None, cpus: str | None = None,
        distinct: bool = False) -> WrkResult:
    """Run wrk once (one thread) and parse the line report.lua prints.

    ``distinct`` gives every request its own URL (``?id=n``).
    """
    seconds = max(1, round(duration))  # wrk takes whole seconds
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
               "-s", str(REPORT_LUA)]
    for name, value in (headers or {}).items():
        command += ["-H", f"{name}: {value}"]
    command.append(url)
    if cpus:
        command = ["taskset", "-c", cpus, *command]
    env = dict(os.environ)
    if method:
        env["BENCH_METHOD"] = method
    if body is not None:
        env["BENCH_BODY"] = body
    if distinct:
        env["BENCH_DISTINCT"] = "1"
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("BENCH "))
    data = json.loads(line.removeprefix("BENCH "))
    seconds = data["duration_us"] / 1e6
    return WrkResult(rps=data["requests"] / seconds, p50_ms=data["p50_us"] / 1000,
                     p99_ms=data["p99_us"] / 1000, requests=data["requests"],
                     errors=data["errors"])


async def storm(base: str, count: int, headers: dict[str, str]) -> tuple[list[int], float]:
    """``count`` GETs started together (distinct URLs: no sharing); statuses and seconds."""
    connector = aiohttp.TCPConnector(limit=count)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def one(index: int) -> int:
            async with session.get(f"{base}/helix/users?id={index}", headers=headers) as r:
                await r.read()
                return r.status

        started = time.perf_counter()
        statuses = await asyncio.gather(*(one(i) for i in range(count)))
        return list(statuses), time.perf_counter() - started


async def widgets(url: str, count: int, seconds: float, headers: dict[str, str]) -> list[int]:
    """``count`` widget copies each polling ``url`` every second; their statuses."""
    statuses: list[int] = []
    connector = aiohttp.TCPConnector(limit=count)
    async with aiohttp.ClientSession(connector=connector) as session:
        deadline = time.monotonic() + seconds

        async def widget() -> None:
            await asyncio.sleep(random.random())  # copies start out of step
            while time.monotonic() < deadline:
                async with session.get(url, headers=headers) as response:
                    await response.read()
                    statuses.append(response.status)
                await asyncio.sleep(1.0)

        await asyncio.gather(*(widget() for _ in range(count)))
    return statuses


async def hold_idle_connections(host: str, port: int, count: int,
                                path: str = "/healthz") -> list[asyncio.StreamWriter]:
    """Open ``count`` keep-alive connections, one request each, and keep them open."""
    writers = []
    request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
               "Connection: keep-alive\r\n\r\n").encode()

    async def one() -> asyncio.StreamWriter:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        await reader.readexactly(length)
        return writer

    for start in range(0, count, 100):  # in batches: the accept backlog is finite
        writers += await asyncio.gather(*(one() for _ in range(min(100, count - start))))
    return writers
