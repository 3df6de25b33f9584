"""One WebSocket to Twitch's EventSub: opened up to its welcome, read by a task, closed.

:func:`open_link` connects with aiohttp's WebSocket client and reads up to the
``session_welcome`` (anything else first, a close, a failure to connect or no
welcome within the timeout is :class:`~.eventsub_messages.SessionEnded`,
``"connect_failed"``). :func:`start_reader` then reads the socket all the
time, so that aiohttp answers Twitch's pings however slow the caller is, and
hands every frame on; :func:`close_link` closes it (code 1000) and stops
its reader. :class:`~proxy.upstream.eventsub.EventSubSocket` builds a session,
and its ``session_reconnect`` hand-over, out of these links.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import aiohttp
from aiohttp.http import WS_CLOSED_MESSAGE
from yarl import URL

from .eventsub_messages import (
    MalformedFrame,
    SessionEnded,
    parse_frame,
    parse_session,
    session_closed,
)

__all__ = ["ENDING", "Link", "close_link", "log_url", "open_link", "start_reader"]

# The session's lines, wherever they are written, come from one logger.
log = logging.getLogger("proxy.upstream.eventsub")

#: Frames that end a socket, as aiohttp's ``receive()`` reports them.
ENDING = frozenset((aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                    aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR))

#: How long closing a socket may wait for Twitch's close frame.
_CLOSE_TIMEOUT = 2.0


@dataclass(eq=False, slots=True)
class Link:
    """One WebSocket to Twitch, welcomed, and the task that reads it.

    ``welcome_id`` is the welcome's message id (remembered so that a resend is
    dropped); ``last_frame`` is when the last frame arrived, on the loop's clock.
    """

    ws: aiohttp.ClientWebSocketResponse[Literal[True]]
    session_id: str
    keepalive: float
    last_frame: float
    welcome_id: str
    reader: asyncio.Task[None] | None = None


def log_url(url: str | URL) -> str:
    """A URL without its query and fragment, fit for a log line."""
    return str(URL(url).with_query(None).with_fragment(None))


async def open_link(session: aiohttp.ClientSession, url: URL, *, connect_timeout: float,
                    default_keepalive: int, context: str) -> Link:
    """Connect to ``url`` and read up to the welcome; SessionEnded if none comes.

    ``default_keepalive`` is used when the welcome announces no keepalive
    timeout; ``context`` starts every failure's message (``"connecting"``,
    ``"following session_reconnect"``).
    """
    ws: aiohttp.ClientWebSocketResponse[Literal[True]] | None = None
    welcomed = False
    try:
        async with asyncio.timeout(connect_timeout):
            ws = await session.ws_connect(
                url, autoping=True, autoclose=True, heartbeat=None,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=_CLOSE_TIMEOUT))
            msg = await ws.receive()
            while msg.type is not aiohttp.WSMsgType.TEXT and msg.type not in ENDING:
                msg = await ws.receive()
        if msg.type in ENDING:
            raise session_closed("connect_failed", ws.close_code,
                                 context=f"{context}: closed before the welcome")
        frame = parse_frame(msg.data)
        if frame.message_type != "session_welcome":
            raise MalformedFrame(f"{frame.message_type} before session_welcome")
        welcome = parse_session(frame)
        welcomed = True
    except TimeoutError:
        raise SessionEnded("connect_failed", None, True,
                           f"{context}: no welcome from Twitch within "
                           f"{connect_timeout:g}s: retry with backoff") from None
    except aiohttp.ClientError as exc:
        # The exception's text can hold the URL: only its type is told.
        raise SessionEnded("connect_failed", None, True,
                           f"{context}: Twitch could not be reached "
                           f"({type(exc).__name__}): retry with backoff") from None
    except MalformedFrame as exc:
        raise SessionEnded("connect_failed", None, True,
                           f"{context}: the first frame was not a welcome ({exc}): "
                           "retry with backoff") from None
    finally:
        if not welcomed:  # also when cancelled
            await _close_quietly(ws)
    assert ws is not None
    keepalive = welcome.keepalive_timeout_seconds or default_keepalive
    return Link(ws, welcome.id, float(keepalive), asyncio.get_running_loop().time(),
                frame.message_id)


def start_reader(link: Link, deliver: Callable[[Link, aiohttp.WSMessage], None]) -> None:
    """Read ``link`` in a task of its own, handing every frame to ``deliver``.

    Receiving is what answers pings. The frame that ends the socket is handed
    on too, and is the last.
    """
    link.reader = asyncio.create_task(_read(link, deliver), name="eventsub-reader")


async def _read(link: Link, deliver: Callable[[Link, aiohttp.WSMessage], None]) -> None:
    while True:
        try:
            msg = await link.ws.receive()
        except Exception:  # aiohttp reports failures as messages; this is a bug
            log.exception("eventsub session %s: reading failed", link.session_id)
            msg = WS_CLOSED_MESSAGE
        deliver(link, msg)
        if msg.type in ENDING:
            return


async def close_link(link: Link) -> None:
    """Close ``link`` (code 1000) and stop its reader."""
    await _close_quietly(link.ws)
    if link.reader is not None:
        link.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await link.reader


async def _close_quietly(ws: aiohttp.ClientWebSocketResponse[Literal[True]] | None) -> None:
    if ws is not None:
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            await ws.close()
