"""The HTTP client ``/helix`` uses to reach Twitch: a small keep-alive pool.

Every widget request becomes one call to Helix, so this is the hot path's
biggest cost. aiohttp's ``ClientSession`` is general: a cookie jar, redirects,
tracing signals, proxies, a timer object per request, a Python stream reader
fed chunk by chunk. A pass-through needs none of it. This client does only
what ``/helix`` needs, on asyncio's transports (uvloop's when installed) and
llhttp's parser (httptools):

- one pool of keep-alive connections per origin, at most ``pool_size`` in
  use at once (callers beyond that queue); an idle connection older than
  ``keepalive`` seconds is closed instead of reused;
- a request head assembled as one string (the caller's headers plus Host,
  User-Agent and Content-Length), written with its body in one call;
- one deadline per request (connect, answer and body), ``timeout`` seconds;
- bodies passed through as they came (no decompression), read whole or
  streamed with back-pressure;
- a reused connection the server had closed is retried once on a new one
  for idempotent methods (nothing was received, so nothing was processed);
- a connection out of step with its server is never used again
  (:mod:`proxy.upstream.helix_connection`, which also reads the answers).

Failures are :class:`~proxy.errors.ConnectFailed` (Twitch not reachable),
:class:`~proxy.errors.ConnectionBroken` (the connection failed or the answer
was not HTTP), both :class:`~proxy.errors.HelixTransportError`, and
:class:`TimeoutError`; :class:`proxy.upstream.errors.upstream_errors` turns
them into the proxy's 502 and 504 answers.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import AsyncIterator, Iterable

from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from .. import __version__
from ..errors import ConnectFailed, ConnectionBroken
from .helix_connection import HelixConnection, Origin

__all__ = ["HelixClient", "HelixResponse"]

#: Methods a server cannot have acted on twice when they are sent again.
_IDEMPOTENT = frozenset(("GET", "HEAD", "OPTIONS", "PUT", "DELETE"))


class HelixResponse:
    """Status and headers of one answer; the body is read or streamed once."""

    __slots__ = ("_client", "_conn", "_deadline", "headers", "status")

    def __init__(self, client: HelixClient, conn: HelixConnection,
                 deadline: asyncio.TimerHandle) -> None:
        self._client = client
        self._conn: HelixConnection | None = conn
        self._deadline = deadline
        self.status = conn.status
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict(conn.headers))

    @property
    def content_type(self) -> str:
        """The media type, lower case, without parameters (aiohttp's default if absent)."""
        value = self.headers.get("Content-Type")
        if not value:
            return "application/octet-stream"
        return value.partition(";")[0].strip().lower()

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        return int(value) if value is not None and value.isdigit() else None

    async def read(self) -> bytes:
        """The whole body."""
        conn = self._conn
        assert conn is not None, "the body was released"
        parts: list[bytes] = []
        while True:
            if conn.chunks:
                parts += conn.take_chunks()  # and reading resumes if it was paused
            if conn.complete:
                return parts[0] if len(parts) == 1 else b"".join(parts)
            await conn.wait()

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives."""
        conn = self._conn
        assert conn is not None, "the body was released"
        while True:
            if conn.chunks:
                for chunk in conn.take_chunks():
                    yield chunk
            if conn.complete:
                return
            await conn.wait()

    def release(self) -> None:
        """Give the connection back (kept alive only when its answer was read whole)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._deadline.cancel()
            self._client.give_back(conn)


class HelixClient:
    """A keep-alive pool of HTTP/1.1 connections; see the module docstring."""

    def __init__(self, *, pool_size: int, timeout: float, keepalive: float = 30.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self._pool_size = pool_size
        self._timeout = timeout
        self._keepalive = keepalive
        self._ssl_context = ssl_context
        self._origins: dict[tuple[str, str | None, int | None], Origin] = {}
        self._in_use = 0
        self._queue: collections.deque[asyncio.Future[None]] = collections.deque()
        self._busy: set[HelixConnection] = set()
        self._closed = False
        self._agent = f"twitch-oauth-proxy/{__version__}"

    async def request(self, method: str, url: URL, headers: Iterable[tuple[str, str]],
                      body: bytes = b"") -> HelixResponse:
        """Send one request and wait for the answer's status and headers.

        The caller must :meth:`HelixResponse.release` the answer.
        """
        if self._closed:
            raise ConnectionBroken("The client is closed.")
        origin = self._origin(url)
        head = self._head(method, url, origin, headers, body)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        await self._take_slot(deadline)
        try:
            for attempt in (1, 2):
                # A retry always gets a new connection: the other idle ones may
                # have been closed by the server at the same moment.
                conn = self._idle_connection(origin, loop.time()) if attempt == 1 else None
                if conn is None:
                    conn = await self._connect(origin, loop, deadline)
                timer = loop.call_at(deadline, conn.timed_out)
                self._busy.add(conn)
                try:
                    conn.start(head, body, head_request=method == "HEAD")
                    while not conn.headers_done:
                        await conn.wait()
                except ConnectionBroken:
                    timer.cancel()
                    self._drop(conn)
                    if attempt == 1 and conn.reused and not conn.received_any \
                            and method in _IDEMPOTENT:
                        continue  # the server had closed the idle connection
                    raise
                except BaseException:
                    timer.cancel()
                    self._drop(conn)
                    raise
                return HelixResponse(self, conn, timer)
            raise AssertionError("unreachable")  # pragma: no cover
        except BaseException:
            self._free_slot()
            raise

    def give_back(self, conn: HelixConnection) -> None:
        """Called by :meth:`HelixResponse.release`."""
        self._busy.discard(conn)
        self._free_slot()
        if conn.complete and conn.reusable and not self._closed:
            conn.take_chunks()  # a body left unread: dropped, and reading resumes if paused
            conn.reused = True
            conn.idle_since = asyncio.get_running_loop().time()
            conn.origin.idle.append(conn)
        else:
            conn.close()

    async def close(self) -> None:
        """Close every connection, idle or busy."""
        self._closed = True
        for origin in self._origins.values():
            for conn in origin.idle:
                conn.close()
            origin.idle.clear()
        for conn in list(self._busy):
            conn.close()
        for waiter in self._queue:
            if not waiter.done():
                waiter.set_exception(ConnectionBroken("The client is closed."))

    # -- internals -----------------------------------------------------------------------------

    def _origin(self, url: URL) -> Origin:
        key = (url.scheme, url.host, url.port)
        origin = self._origins.get(key)
        if origin is None:
            origin = self._origins[key] = Origin(url, self._ssl_context)
        return origin

    def _head(self, method: str, url: URL, origin: Origin,
              headers: Iterable[tuple[str, str]], body: bytes) -> bytes:
        lines = [f"{method} {url.raw_path_qs} HTTP/1.1\r\nHost: {origin.host_header}\r\n"
                 f"User-Agent: {self._agent}\r\n"]
        for name, value in headers:
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise ValueError(f"header {name!r} holds a line break")
            lines.append(f"{name}: {value}\r\n")
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}\r\n")
        lines.append("\r\n")
        return "".join(lines).encode("utf-8")

    def _idle_connection(self, origin: Origin, now: float) -> HelixConnection | None:
        while origin.idle:
            conn = origin.idle.pop()
            if conn.reusable and now - conn.idle_since < self._keepalive \
                    and not conn.has_unread_input():
                return conn
            conn.close()
        return None

    async def _connect(self, origin: Origin, loop: asyncio.AbstractEventLoop,
                       deadline: float) -> HelixConnection:
        conn = HelixConnection(loop, origin)
        try:
            async with asyncio.timeout_at(deadline):
                await loop.create_connection(
                    lambda: conn, origin.host, origin.port, ssl=origin.ssl,
                    server_hostname=origin.host if origin.ssl else None)
        except OSError as exc:  # refused, unreachable, DNS, TLS (ssl.SSLError)
            raise ConnectFailed(f"cannot connect to {origin.host}:{origin.port}: "
                                f"{type(exc).__name__}") from None
        return conn

    def _drop(self, conn: HelixConnection) -> None:
        self._busy.discard(conn)
        conn.close()

    async def _take_slot(self, deadline: float) -> None:
        if self._in_use < self._pool_size and not self._queue:
            self._in_use += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._queue.append(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                await waiter
        except BaseException:
            # A cancelled waiter stays queued; _free_slot skips it.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._free_slot()  # handed a slot just as we gave up: pass it on
            raise

    def _free_slot(self) -> None:
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes straight to the next caller
                return
        self._in_use -= 1
