"""How failures talking to Twitch become the proxy's gateway errors.

Both ways the proxy reaches Twitch pass through here: the OAuth client
(:mod:`proxy.upstream.twitch`, on aiohttp) and ``/helix`` (on
:mod:`proxy.upstream.helix_client`). :class:`upstream_errors` maps what broke on the
wire:

- no answer in time (:class:`TimeoutError`) -> :class:`~proxy.errors.UpstreamTimeout` (504)
- no connection (``aiohttp.ClientConnectorError``, :class:`~proxy.errors.ConnectFailed`)
  -> :class:`~proxy.errors.UpstreamUnreachable` (502)
- the connection failed otherwise (any other ``aiohttp.ClientError``,
  :class:`~proxy.errors.HelixTransportError`) -> :class:`~proxy.errors.UpstreamUnreachable` (502)

and :func:`check_gateway_answer` maps an answer that did not come from Twitch
itself: an HTML or empty 5xx page from the gateway in front of Helix.
"""

from __future__ import annotations

from types import TracebackType

import aiohttp

from ..errors import (
    ConnectFailed,
    HelixTransportError,
    UpstreamTimeout,
    UpstreamUnavailable,
    UpstreamUnreachable,
)

__all__ = ["check_gateway_answer", "upstream_errors"]


class upstream_errors:  # lower case: it is used like a function, ``with upstream_errors():``
    """The one boundary where client failures talking to Twitch become gateway errors.

    A class rather than ``@contextmanager``: it wraps every call to Helix, and
    a generator per call costs the hot path more than two plain methods.
    """

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if kind is None:
            return
        if issubclass(kind, TimeoutError):
            raise UpstreamTimeout("Twitch did not answer in time.") from None
        if issubclass(kind, (aiohttp.ClientConnectorError, ConnectFailed)):
            raise UpstreamUnreachable("Twitch could not be reached.") from None
        if issubclass(kind, (aiohttp.ClientError, HelixTransportError)):
            raise UpstreamUnreachable("The connection to Twitch failed.") from None


def check_gateway_answer(status: int, content_type: str) -> None:
    """Raise the proxy's own gateway error for a 5xx that is not Twitch's JSON.

    Helix's own errors are JSON; a 5xx page in HTML (or empty) comes from a load
    balancer or CDN in front of it, and a widget's ``res.json()`` cannot read it.
    Twitch's JSON answers, 5xx included, are passed on as they are.
    """
    if status < 500 or content_type.endswith("json"):
        return
    if status == 504:
        raise UpstreamTimeout("Twitch's gateway timed out.")
    raise UpstreamUnavailable(f"Twitch's gateway answered {status}; try again shortly.")
