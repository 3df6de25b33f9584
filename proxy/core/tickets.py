"""Single-use tickets: how a browser's ``EventSource``, which cannot send headers, authenticates.

A widget holding a proxy key calls ``POST /eventsub/tickets`` with it in the
``Authorization`` header and gets a short random ticket, valid for ``ttl``
seconds and good for one stream (``GET /eventsub?ticket=...``). The key never
appears in a URL; a ticket that leaks through a URL (a log, a referrer) is
worthless once used or a minute later.

Redeeming a ticket gives back the proxy key it was issued for, and the caller
resolves that key exactly as if it had come in the header: a key revoked in
the meantime opens nothing. Tickets live in this process's memory only,
indexed by their SHA-256 (the book never holds a usable ticket), at most
``max_tickets`` at once (the oldest are forgotten first).
"""

from __future__ import annotations

import collections
import secrets
import time
from collections.abc import Callable

from .sealed_index import token_hash

__all__ = ["TICKET_PREFIX", "TicketBook"]

TICKET_PREFIX = "tkt_"


class TicketBook:
    """Issues and redeems single-use tickets; see the module docstring."""

    def __init__(self, *, ttl: float = 60.0, max_tickets: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._max = max_tickets
        self._clock = clock
        # sha256(ticket) -> (expires at, the proxy key); insertion order is expiry order.
        self._tickets: collections.OrderedDict[str, tuple[float, str]] = \
            collections.OrderedDict()

    def __repr__(self) -> str:
        return f"TicketBook(ttl={self.ttl!r}, tickets={len(self._tickets)})"

    def __len__(self) -> int:
        return len(self._tickets)

    def issue(self, proxy_key: str) -> str:
        """A new ticket for ``proxy_key``, valid for :attr:`ttl` seconds, once."""
        now = self._clock()
        self._forget_expired(now)
        while len(self._tickets) >= self._max:
            self._tickets.popitem(last=False)
        ticket = TICKET_PREFIX + secrets.token_urlsafe(24)
        self._tickets[token_hash(ticket)] = (now + self.ttl, proxy_key)
        return ticket

    def redeem(self, ticket: str) -> str | None:
        """The proxy key ``ticket`` was issued for, once; None if unknown, used or expired."""
        if not ticket.startswith(TICKET_PREFIX) or len(ticket) > 100:
            return None
        found = self._tickets.pop(token_hash(ticket), None)
        if found is None:
            return None
        expires_at, proxy_key = found
        return proxy_key if self._clock() < expires_at else None

    def _forget_expired(self, now: float) -> None:
        tickets = self._tickets
        while tickets:
            name, (expires_at, _) = next(iter(tickets.items()))
            if expires_at > now:
                return
            del tickets[name]
