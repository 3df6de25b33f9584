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
- a connection out of step with its server is never used again (see below).

Callers of different grants take turns on the same connections, so a byte
parsed into the wrong answer hands one user's data to another. A connection
is reused only while every byte it received belonged to the answer awaited.
It is aborted, never pooled, when anything else comes: a byte after the end
of an answer (in the same read or a later one), bytes while no request is
outstanding (also those already in the socket, unread, when a caller takes
it from the pool), or an answer that ended before the request was sent whole
(the server may read the rest of the body as a next request). The caller
whose answer was whole still gets it. What no HTTP/1.1 client can tell: bytes
a server sends once a request is out are that request's answer. And llhttp
skips bare line breaks between answers unreported; they carry nothing.

Interim answers (100 Continue, 103 Early Hints) are skipped: RFC 9110 says a
client must accept them even unasked. A 101 Switching Protocols, never asked
for, breaks the call. An answer to HEAD has no body whatever its headers say,
and llhttp cannot be told so: that connection is not kept.

Failures are :class:`~proxy.errors.ConnectFailed` (Twitch not reachable),
:class:`~proxy.errors.ConnectionBroken` (the connection failed or the answer
was not HTTP), both :class:`~proxy.errors.HelixTransportError`, and
:class:`TimeoutError`; :class:`proxy.upstream_errors.upstream_errors` turns
them into the proxy's 502 and 504 answers.
"""

from __future__ import annotations

import asyncio
import collections
import select
import ssl
import sys
from collections.abc import AsyncIterator, Iterable
from typing import cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from .. import __version__
from ..errors import ConnectFailed, ConnectionBroken

__all__ = ["HelixClient", "HelixResponse"]

#: Methods a server cannot have acted on twice when they are sent again.
_IDEMPOTENT = frozenset(("GET", "HEAD", "OPTIONS", "PUT", "DELETE"))

#: Streamed bodies: stop reading from Twitch while this much waits unsent.
_HIGH_WATER = 256 * 1024

#: A server that sends more header bytes than this is not Helix.
_MAX_HEAD = 64 * 1024


class _StopParsing(Exception):
    """Raised in an llhttp callback so that it reports nothing more from this read."""


if sys.platform == "win32":
    def _readable(fd: int) -> bool:
        return bool(select.select([fd], [], [], 0)[0])
else:
    def _readable(fd: int) -> bool:
        # poll, not select: select refuses descriptors above FD_SETSIZE (1024).
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))


class _Connection(asyncio.Protocol):
    """One keep-alive connection: the protocol llhttp's callbacks report to.

    ``reusable`` turns False for good once the connection is closed, not kept
    alive, or out of step with its server (see the module docstring).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, origin: _Origin) -> None:
        self._loop = loop
        self.origin = origin
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self._fd = -1
        self.reusable = True
        self.reused = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._head_size = 0
        # A request was sent and its final answer has not ended: only then are
        # bytes from the server expected.
        self._awaiting = False
        self._head_request = False
        # The answer being received.
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.headers_done = False
        self.complete = False
        self.received_any = False
        self._until_eof = False
        self.chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._paused = False

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport: no isinstance.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self._fd = sock.fileno()

    def data_received(self, data: bytes) -> None:
        if not self._awaiting:
            # Nothing was asked, or the answer has ended: these bytes are nobody's,
            # and what follows them could not be told apart from an answer.
            self._drop_out_of_step()
            return
        self.received_any = True
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):  # not a subclass
            if self.complete:
                self._drop_out_of_step()  # the answer is whole; what came after it is not
            else:
                self._fail(ConnectionBroken("The upstream's answer is not valid HTTP."))

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        if not self._awaiting:
            return  # idle, or the answer had ended: nobody is waiting
        if exc is None and self.headers_done and self._until_eof:
            self.on_message_complete()  # the body ran until the server closed: done
            return
        self._fail(ConnectionBroken("The upstream closed the connection."))

    # -- llhttp callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:
            # A second answer, or bytes that begin like one, after ours: stop
            # llhttp before it reports any of it into the answer just ended.
            raise _StopParsing

    def on_header(self, name: bytes, value: bytes) -> None:
        # Interim answers' headers count too: an endless run of them ends here.
        self._head_size += len(name) + len(value)
        if self._head_size > _MAX_HEAD:
            self._fail(ConnectionBroken("The upstream sent oversized headers."))
            raise _StopParsing
        self.headers.append((name.decode("latin-1"),
                             value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status == 101:
            self._fail(ConnectionBroken("The upstream switched protocols unasked."))
            raise _StopParsing
        if status < 200:
            self.headers = []  # 1xx: an interim answer; the real one follows
            return
        self.status = status
        self.headers_done = True
        if self._head_request:
            # No body follows, but llhttp would wait for the one the headers
            # announce and take the next answer's bytes for it: stop here, and
            # do not keep the connection.
            self._end(keep_alive=False)
            raise _StopParsing
        self._until_eof = not any(name.lower() in ("content-length", "transfer-encoding")
                                  for name, _ in self.headers) and status not in (204, 304)
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if not self.headers_done:
            return  # the end of a 1xx answer
        self._end(keep_alive=self._parser.should_keep_alive())

    # -- used by the client ----------------------------------------------------------------

    def start(self, head: bytes, body: bytes, *, head_request: bool = False) -> None:
        """Send one request; the answer's state starts over."""
        if not self.reusable or self.transport is None:
            # Closed, or the server spoke between connecting and now.
            raise ConnectionBroken("The connection closed before the request was sent.")
        self.status, self.headers, self.headers_done = 0, [], False
        self.complete = self.received_any = self._until_eof = False
        self.chunks.clear()
        self._buffered = self._head_size = 0
        self._error = None
        self._head_request = head_request
        self._awaiting = True
        self.transport.write(head + body if body else head)

    def has_unread_input(self) -> bool:
        """Whether bytes, or the server's close, wait in the socket, not yet delivered.

        The event loop reads an idle connection's stray bytes only when it gets
        to them; a caller may take the connection from the pool first (a busy
        loop runs many callbacks per turn), and they would read as its answer.
        """
        return self._fd >= 0 and _readable(self._fd)

    async def wait(self) -> None:
        """Until the next thing happens: headers, a body chunk, the end or an error."""
        if self._error is not None:
            raise self._error
        waiter = self._waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def take_chunks(self) -> list[bytes]:
        chunks = list(self.chunks)
        self.chunks.clear()
        self._buffered = 0
        if self._paused and self.transport is not None and not self.transport.is_closing():
            self._paused = False
            self.transport.resume_reading()
        return chunks

    def timed_out(self) -> None:
        self._fail(TimeoutError())

    def close(self) -> None:
        self.reusable = False
        if self.transport is None:
            return
        if self.transport.get_write_buffer_size():
            self.transport.abort()  # the rest of a request that nobody will read the answer to
        else:
            self.transport.close()

    def _end(self, *, keep_alive: bool) -> None:
        """The final answer has ended: nothing more is expected on this connection."""
        self.complete = True
        self._awaiting = False
        # An answer that came while the request was still being sent: the
        # server did not read all of it, and may take the rest for a next one.
        unsent = self.transport is not None and self.transport.get_write_buffer_size() > 0
        if not keep_alive or unsent:
            self.reusable = False
        self._wake()

    def _drop_out_of_step(self) -> None:
        """Bytes came that belong to no answer awaited: never reuse, and close now."""
        self.reusable = False
        self._abort()

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, error: BaseException) -> None:
        self.reusable = False
        if self._error is None:
            self._error = error
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(error)
        self._abort()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class HelixResponse:
    """Status and headers of one answer; the body is read or streamed once."""

    __slots__ = ("_client", "_conn", "_deadline", "headers", "status")

    def __init__(self, client: HelixClient, conn: _Connection,
                 deadline: asyncio.TimerHandle) -> None:
        self._client = client
        self._conn: _Connection | None = conn
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


class _Origin:
    """Where one origin's connections go: scheme, host, port, TLS."""

    __slots__ = ("host", "host_header", "idle", "port", "ssl")

    def __init__(self, url: URL, ssl_context: ssl.SSLContext | None) -> None:
        assert url.host is not None
        default = 443 if url.scheme == "https" else 80
        self.host = url.host
        self.port = url.port or default
        self.ssl = (ssl_context or ssl.create_default_context()) if url.scheme == "https" \
            else None
        self.host_header = url.host if self.port == default else f"{url.host}:{self.port}"
        self.idle: list[_Connection] = []


class HelixClient:
    """A keep-alive pool of HTTP/1.1 connections; see the module docstring."""

    def __init__(self, *, pool_size: int, timeout: float, keepalive: float = 30.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self._pool_size = pool_size
        self._timeout = timeout
        self._keepalive = keepalive
        self._ssl_context = ssl_context
        self._origins: dict[tuple[str, str | None, int | None], _Origin] = {}
        self._in_use = 0
        self._queue: collections.deque[asyncio.Future[None]] = collections.deque()
        self._busy: set[_Connection] = set()
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

    def give_back(self, conn: _Connection) -> None:
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

    def _origin(self, url: URL) -> _Origin:
        key = (url.scheme, url.host, url.port)
        origin = self._origins.get(key)
        if origin is None:
            origin = self._origins[key] = _Origin(url, self._ssl_context)
        return origin

    def _head(self, method: str, url: URL, origin: _Origin,
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

    def _idle_connection(self, origin: _Origin, now: float) -> _Connection | None:
        while origin.idle:
            conn = origin.idle.pop()
            if conn.reusable and now - conn.idle_since < self._keepalive \
                    and not conn.has_unread_input():
                return conn
            conn.close()
        return None

    async def _connect(self, origin: _Origin, loop: asyncio.AbstractEventLoop,
                       deadline: float) -> _Connection:
        conn = _Connection(loop, origin)
        try:
            async with asyncio.timeout_at(deadline):
                await loop.create_connection(
                    lambda: conn, origin.host, origin.port, ssl=origin.ssl,
                    server_hostname=origin.host if origin.ssl else None)
        except OSError as exc:  # refused, unreachable, DNS, TLS (ssl.SSLError)
            raise ConnectFailed(f"cannot connect to {origin.host}:{origin.port}: "
                                f"{type(exc).__name__}") from None
        return conn

    def _drop(self, conn: _Connection) -> None:
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
