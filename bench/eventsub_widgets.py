"""The live-events load generator: many SSE widgets read in one asyncio process.

Each widget is a raw asyncio connection to ``GET /eventsub`` whose response
(chunked, as aiohttp sends it) is parsed by llhttp (httptools), so a thousand
streams cost this process little more than the socket reads. A frame is not
decoded as JSON: the widget takes the mock's serial out of the made-up
follower's ``user_id`` (900000000 + serial, :mod:`proxy.mock_twitch.eventsub_catalog`)
and the time the mock built the event out of ``followed_at``, and keeps
(serial, latency) per delivery. :func:`check_deliveries` then says, per
widget, what was lost, duplicated or out of order against the count of
notifications the mock's log shows it sent (:func:`by_worker` splits the
widgets by the process that serves them); :class:`LoopLag` measures this
process's own event-loop lag, since on 2 CPUs it shares the machine with the
proxy.
"""

from __future__ import annotations

import asyncio
import calendar
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import cast

import httptools

__all__ = ["Delivery", "LoopLag", "SseWidget", "WidgetFleet", "by_worker",
           "check_deliveries", "percentiles"]

_SERIAL_BASE = 900_000_000
_USER_ID = b'"user_id":"'
_FOLLOWED_AT = b'"followed_at":"'
#: The proxy's request ids start with 16 hex digits of the serving process's own.
_REQUEST_ID = b"x-request-id"
_PROCESS_PREFIX = 16


def event_time(text: bytes) -> float:
    """Unix seconds of an EventSub timestamp (``2026-12-01T03:41:36.782655954Z``)."""
    whole = calendar.timegm(time.strptime(text[:19].decode(), "%Y-%m-%dT%H:%M:%S"))
    fraction = text[20:-1] if text.endswith(b"Z") else text[20:]
    return whole + (int(fraction) / 10 ** len(fraction) if fraction else 0.0)


class SseWidget(asyncio.Protocol):
    """One widget's ``text/event-stream``: what it received, and when."""

    def __init__(self, fleet: WidgetFleet) -> None:
        self._fleet = fleet
        self._parser = httptools.HttpResponseParser(self)
        self._pending = b""
        self._now = 0.0
        self.transport: asyncio.Transport | None = None
        self.status = 0
        #: The serving process, as its request ids name it ("" if none was sent).
        self.worker = ""
        self.connected: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = False
        #: Serials of the notifications received, in arrival order.
        self.serials: list[int] = []
        #: Typed control events (``gap``, ``error``, ...) by name.
        self.controls: dict[str, int] = {}

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._now = time.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(exc or ConnectionResetError("the proxy closed the stream"))

    # -- httptools callbacks -----------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == _REQUEST_ID:
            self.worker = value[:_PROCESS_PREFIX].decode()

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        if self.status != 200:
            self._fail(ConnectionError(f"GET /eventsub answered {self.status}"))

    def on_body(self, body: bytes) -> None:
        if not self.connected.done():
            self.connected.set_result(None)
        frames = (self._pending + body).split(b"\n\n")
        self._pending = frames.pop()
        for frame in frames:
            if not frame.startswith(b"id:"):
                # aiohttp-sse's heartbeat (": ping\r\n\r\n") ends with CRLFs, so it
                # arrives glued to the frame after it.
                start = frame.find(b"\nid:")
                if start < 0:
                    continue
                frame = frame[start + 1:]
            self._frame(frame)

    def _frame(self, frame: bytes) -> None:
        start = frame.find(b"event: ") + 7
        name = frame[start:frame.index(b"\n", start)]
        if name != b"channel.follow":
            self.controls[name.decode()] = self.controls.get(name.decode(), 0) + 1
            return
        at = frame.index(_USER_ID) + len(_USER_ID)
        serial = int(frame[at:frame.index(b'"', at)]) - _SERIAL_BASE
        self.serials.append(serial)
        self._fleet.delivered(serial, frame, self._now)

    def _fail(self, exc: BaseException) -> None:
        if not self.connected.done():
            self.connected.set_exception(exc)
            self.connected.exception()  # retrieved: the opener reports it

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


@dataclass
class WidgetFleet:
    """Widgets of one proxy, and every delivery's latency since the last :meth:`reset`."""

    host: str
    port: int
    proxy_key: str
    query: str = "type=channel.follow:2"
    widgets: list[SseWidget] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    #: When the last notification arrived (Unix seconds).
    last_at: float = 0.0
    _sent_at: dict[int, float] = field(default_factory=dict)

    def delivered(self, serial: int, frame: bytes, now: float) -> None:
        sent = self._sent_at.get(serial)
        if sent is None:  # the first widget to get it reads the mock's time once
            at = frame.index(_FOLLOWED_AT) + len(_FOLLOWED_AT)
            sent = self._sent_at[serial] = event_time(frame[at:frame.index(b'"', at)])
        self.latencies.append(now - sent)
        self.last_at = now

    async def open(self, count: int, *, batch: int = 100) -> None:
        """Open ``count`` more streams (in batches: the accept backlog is finite)."""
        loop = asyncio.get_running_loop()
        request = (f"GET /eventsub?{self.query} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                   f"Authorization: Bearer {self.proxy_key}\r\nAccept: text/event-stream\r\n"
                   "\r\n").encode()

        async def one() -> SseWidget:
            _, widget = await loop.create_connection(lambda: SseWidget(self), self.host,
                                                     self.port)
            assert widget.transport is not None
            widget.transport.write(request)
            await asyncio.wait_for(asyncio.shield(widget.connected), 30)
            return widget

        for start in range(0, count, batch):
            self.widgets += await asyncio.gather(*(one() for _ in range(min(batch,
                                                                             count - start))))

    def close(self, count: int | None = None) -> None:
        """Close the last ``count`` widgets (all by default)."""
        keep = 0 if count is None else max(0, len(self.widgets) - count)
        for widget in self.widgets[keep:]:
            widget.close()
        del self.widgets[keep:]

    async def open_spread(self, count: int, workers: int, *, attempts: int = 20) -> None:
        """``count`` streams, as evenly as can be over ``workers`` processes sharing one
        listening socket (the kernel, not this process, picks who accepts): open more,
        close those beyond a process's share, until every process has its share."""
        share = -(-count // workers)
        for attempt in range(attempts):
            groups = by_worker(self.widgets)
            keep = {worker: group[:share] for worker, group in groups.items()}
            for group in groups.values():
                for widget in group[share:]:
                    widget.close()
            self.widgets = [widget for group in keep.values() for widget in group]
            missing = count - len(self.widgets)
            if missing <= 0:
                return
            if attempt:  # a worker may still be starting
                await asyncio.sleep(0.2)
            await self.open(missing)
        raise RuntimeError(f"{count} streams could not be spread over {workers} processes: "
                           f"{sorted(len(g) for g in by_worker(self.widgets).values())}")

    def reset(self) -> None:
        """Forget what was received: a new measurement starts."""
        self.latencies.clear()
        self._sent_at.clear()
        for widget in self.widgets:
            widget.serials.clear()
            widget.controls.clear()

    def received(self) -> int:
        return sum(len(widget.serials) for widget in self.widgets)

    async def drained(self, expected_each: int, within: float) -> float:
        """Wait until every widget has ``expected_each`` notifications, at most ``within``
        seconds; the seconds waited."""
        started = time.monotonic()
        while time.monotonic() - started < within:
            if all(len(w.serials) >= expected_each for w in self.widgets):
                break
            await asyncio.sleep(0.02)
        return time.monotonic() - started

    def closed_streams(self) -> int:
        return sum(1 for widget in self.widgets if widget.closed)


@dataclass(frozen=True)
class Delivery:
    """What a set of widgets received against what the mock sent."""

    widgets: int
    sent: int
    received: int
    lost: int
    duplicated: int
    out_of_order: int

    @property
    def exactly_once(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.out_of_order == 0

    def text(self) -> str:
        return (f"{self.received:,} of {self.widgets} x {self.sent} = "
                f"{self.widgets * self.sent:,}: lost {self.lost}, duplicated "
                f"{self.duplicated}, out of order {self.out_of_order}")


def by_worker(widgets: Iterable[SseWidget]) -> dict[str, list[SseWidget]]:
    """Widgets grouped by the process serving them, in opening order."""
    groups: dict[str, list[SseWidget]] = {}
    for widget in widgets:
        groups.setdefault(widget.worker, []).append(widget)
    return groups


def check_deliveries(received: Iterable[list[int]], sent: int) -> Delivery:
    """Each widget's serials in arrival order against the ``sent`` notifications.

    ``sent`` is the number of distinct notifications the mock's log shows for
    the measurement (never a count taken at the widgets). Per widget: a serial
    seen twice is a duplicate, a notification never seen is lost, a serial
    lower than one before it is out of order.
    """
    widgets = lost = duplicated = out_of_order = total = 0
    for serials in received:
        widgets += 1
        total += len(serials)
        unique = set(serials)
        duplicated += len(serials) - len(unique)
        lost += max(0, sent - len(unique))
        highest = -1
        for serial in serials:
            if serial < highest:
                out_of_order += 1
            highest = max(highest, serial)
    return Delivery(widgets, sent, total, lost, duplicated, out_of_order)


def percentiles(values: list[float], points: Iterable[int] = (50, 95, 99)) -> list[float]:
    """The given percentiles of ``values`` (nearest rank); zeros when empty."""
    if not values:
        return [0.0 for _ in points]
    ordered = sorted(values)
    return [ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]
            for p in points]


class LoopLag:
    """This process's event-loop lag: how late a 10 ms sleep wakes up, sampled all along."""

    def __init__(self, interval: float = 0.01) -> None:
        self._interval = interval
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self._interval)
            self.samples.append(loop.time() - before - self._interval)

    def start(self) -> None:
        self.samples.clear()
        self._task = asyncio.get_running_loop().create_task(self._sample())

    def stop(self) -> str:
        """Stop sampling; ``p50 / p99 / max`` in ms."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if not self.samples:
            return "-"
        p50, p99 = percentiles(self.samples, (50, 99))
        return f"{p50 * 1000:.1f} / {p99 * 1000:.1f} / {max(self.samples) * 1000:.0f}"

    def median_ms(self) -> float:
        return statistics.median(self.samples) * 1000 if self.samples else 0.0
