"""Single-use tickets: how a browser's ``EventSource``, which cannot send headers, authenticates.

A widget holding a proxy key calls ``POST /eventsub/tickets`` with it in the
``Authorization`` header and gets a short random ticket, valid for ``ttl``
seconds and good for one stream (``GET /eventsub?ticket=...``). The key never
appears in a URL; a ticket that leaks through a URL (a log, a referrer) is
worthless once used or a minute later.

Redeeming a ticket gives back the proxy key it was issued for, and the caller
resolves that key exactly as if it had come in the header: a key revoked in
the meantime opens nothing. Tickets live in the token store, so a ticket made
by one worker opens a stream on any other: each under its SHA-256 (the store
never holds a usable ticket), its key sealed with the store's key and bound to
the entry's name (:class:`~proxy.core.sealed_index.SealedIndex`), expiring
with the store's own TTL.
"""

from __future__ import annotations

import secrets

from .sealed_index import SealedIndex, token_hash

__all__ = ["TICKET_PREFIX", "TicketBook"]

TICKET_PREFIX = "tkt_"
#: Longer than any ticket this book makes: anything longer is not looked up.
_MAX_LENGTH = 100


class TicketBook:
    """Issues and redeems single-use tickets; see the module docstring."""

    def __init__(self, grants: SealedIndex, *, ttl: float = 60.0) -> None:
        self.ttl = ttl
        self._grants = grants

    def __repr__(self) -> str:
        return f"TicketBook(ttl={self.ttl!r})"

    async def issue(self, proxy_key: str) -> str:
        """A new ticket for ``proxy_key``, valid for :attr:`ttl` seconds, once."""
        ticket = TICKET_PREFIX + secrets.token_urlsafe(24)
        await self._grants.put_ticket(token_hash(ticket), proxy_key, ttl=self.ttl)
        return ticket

    async def peek(self, ticket: str) -> str | None:
        """The proxy key ``ticket`` was issued for, without spending it (None if unusable).

        A request checks everything it can with the key first and spends the ticket
        (:meth:`redeem`) last, so that a typo costs an error, not the ticket.
        """
        if not ticket.startswith(TICKET_PREFIX) or len(ticket) > _MAX_LENGTH:
            return None
        return await self._grants.peek_ticket(token_hash(ticket))

    async def redeem(self, ticket: str) -> str | None:
        """The proxy key ``ticket`` was issued for, once; None if unknown, used or expired."""
        if not ticket.startswith(TICKET_PREFIX) or len(ticket) > _MAX_LENGTH:
            return None
        return await self._grants.take_ticket(token_hash(ticket))
