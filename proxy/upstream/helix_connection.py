"""One keep-alive HTTP/1.1 connection to Helix, read with llhttp: the protocol under HelixClient.

:class:`HelixConnection` writes one request at a time and parses its answer
with llhttp's callbacks (httptools), passing the body on as it came, with
back-pressure when it is streamed. :class:`Origin` says where an origin's
connections go and keeps its idle ones; the pool is
:class:`proxy.upstream.helix_client.HelixClient`.

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
"""

from __future__ import annotations

import asyncio
import collections
import select
import ssl
import sys
from typing import cast

import httptools
from yarl import URL

from ..errors import ConnectionBroken

__all__ = ["HelixConnection", "Origin"]

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


class HelixConnection(asyncio.Protocol):
    """One keep-alive connection: the protocol llhttp's callbacks report to.

    ``reusable`` turns False for good once the connection is closed, not kept
    alive, or out of step with its server (see the module docstring).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, origin: Origin) -> None:
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


class Origin:
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
        self.idle: list[HelixConnection] = []
