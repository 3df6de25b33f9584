"""What the platform's router says about a request: ``X-Forwarded-*``.

On Heroku-style platforms every request arrives through a router that
terminates TLS and adds ``X-Forwarded-Proto`` / ``-For`` (and some add
``-Host``). Those headers are only believed with ``server.trust_forwarded``
(``FORWARDED_ALLOW=1``): without a router in front anyone can send them.

When a list is given (``X-Forwarded-For: spoofed, real``), the *last* entry is
used: it is the one the router in front of us appended; the ones before it came
from the client and prove nothing.

Call :func:`client_address` for the address of the client (logs, rate limits),
:func:`public_url_for` for the proxy's public base URL (the OAuth
redirect_uri), :func:`is_https` to decide on secure cookies, and
:func:`is_loopback_client` for whether a request came straight from this host.
Each is given the server's configuration by its caller, which got it once,
when :mod:`proxy.web.app` built it.
"""

from __future__ import annotations

import ipaddress
import re

from aiohttp import web

from ..config import ServerConfig, default_public_url

__all__ = ["client_address", "forwarded_scheme", "is_https", "is_loopback_client",
           "public_url_for", "redirect_uri_for"]

#: Headers by which a router or reverse proxy says it passed a request on
#: (RFC 7239's, the de facto ones platforms set, nginx's usual X-Real-IP, Via).
FORWARDING_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Forwarded-Proto",
                      "X-Forwarded-Host", "X-Real-IP", "Via")

#: What :func:`client_address` says for a forwarded value that is no address:
#: all such clients share one rate-limit bucket and one word in the log.
UNREADABLE_ADDRESS = "unreadable"

#: ``a.b.c.d:port`` or ``[v6]:port``, as some routers write the client.
_PORT = re.compile(r":[0-9]{1,5}")

#: A host (name, IPv4 or [IPv6]) with an optional port; anything else in
#: X-Forwarded-Host is ignored rather than put into a redirect_uri.
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9\-.]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])"
                   r"(?::[0-9]{1,5})?")


def _last(request: web.BaseRequest, server: ServerConfig, header: str) -> str:
    """The last comma-separated value of ``header``, if trusted and present."""
    if not server.trust_forwarded:
        return ""
    values = ",".join(request.headers.getall(header, []))
    return values.rsplit(",", 1)[-1].strip()


def client_address(request: web.BaseRequest, server: ServerConfig) -> str:
    """The client's address: the router's ``X-Forwarded-For`` when trusted, else the peer.

    A forwarded value is read as an IP address (a port, as some routers add,
    is dropped); anything else, including an empty last entry, is
    :data:`UNREADABLE_ADDRESS`, so a client can neither pick a fresh
    rate-limit bucket by varying it nor write words into the log line.
    """
    if not server.trust_forwarded or "X-Forwarded-For" not in request.headers:
        return request.remote or ""
    return _ip_address(_last(request, server, "X-Forwarded-For")) or UNREADABLE_ADDRESS


def _ip_address(value: str) -> str | None:
    """``value`` as a normalised IP address (``1.2.3.4``, ``1.2.3.4:80``, ``::1``, ``[::1]:80``)."""
    if len(value) > 64:
        return None
    host = value
    if value.startswith("["):
        host, _, port = value[1:].partition("]")
        if port and not _PORT.fullmatch(port):
            return None
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
        if not _PORT.fullmatch(":" + port):
            return None
    if "%" in host:
        return None  # a zone id names an interface of the router's, and may hold any text
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def is_loopback_client(request: web.BaseRequest) -> bool:
    """Whether the request came straight from this host, not through a router.

    The socket's peer must be a loopback address (127.0.0.0/8, ``::1``, or
    ``::ffff:127.x.y.z``), read from the socket itself: with a trusted router
    ``request.remote`` is the forwarded client instead. And no forwarding
    header may be present, trusted or not: a router or reverse proxy on this
    host connects from loopback for every internet client, and the header it
    adds is the only sign of that. A client sending one can only lose the
    exemption, never gain it.
    """
    if any(name in request.headers for name in FORWARDING_HEADERS):
        return False
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    if not isinstance(peer, tuple | list) or not peer:
        return False  # a Unix socket, or the connection is gone
    try:
        address = ipaddress.ip_address(peer[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # a dual-stack socket's view of an IPv4 peer
    return address.is_loopback


def forwarded_scheme(request: web.BaseRequest, server: ServerConfig) -> str:
    """The browser's scheme: the router's ``X-Forwarded-Proto`` when trusted, else ours."""
    proto = _last(request, server, "X-Forwarded-Proto").lower()
    if proto in ("http", "https"):
        return proto
    return request.scheme


def is_https(request: web.BaseRequest, server: ServerConfig) -> bool:
    """Whether the browser reached us over https (cookies get ``Secure`` then)."""
    return forwarded_scheme(request, server) == "https" \
        or public_url_for(request, server).startswith("https://")


def public_url_for(request: web.BaseRequest, server: ServerConfig) -> str:
    """The proxy's public base URL, as the browser sees it.

    ``PUBLIC_URL``, when set, always wins. Otherwise, with a trusted router,
    the forwarded scheme and host (``X-Forwarded-Host``, else ``Host``) make it,
    so a platform deploy works before PUBLIC_URL is set; without one, it is the
    configured default (``http://localhost:PORT``).
    """
    if not server.trust_forwarded or server.public_url != default_public_url(server):
        return server.public_url
    host = _last(request, server, "X-Forwarded-Host") or request.headers.get("Host", "")
    if not _HOST.fullmatch(host):
        return server.public_url
    return f"{forwarded_scheme(request, server)}://{host}"


def redirect_uri_for(request: web.BaseRequest, server: ServerConfig) -> str:
    """The OAuth redirect_uri for this request: :func:`public_url_for` + ``/callback``."""
    return f"{public_url_for(request, server)}/callback"
