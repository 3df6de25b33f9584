"""proxy.core.tickets: single-use, short-lived tickets for EventSource."""

from __future__ import annotations

from proxy.core.tickets import TICKET_PREFIX, TicketBook

KEY = "tpk_" + "k" * 43


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_a_ticket_opens_its_key_once():
    book = TicketBook(ttl=60, clock=Clock())
    ticket = book.issue(KEY)
    assert ticket.startswith(TICKET_PREFIX) and KEY not in ticket
    assert book.redeem(ticket) == KEY
    assert book.redeem(ticket) is None


def test_a_ticket_expires():
    clock = Clock()
    book = TicketBook(ttl=60, clock=clock)
    ticket = book.issue(KEY)
    clock.now += 60
    assert book.redeem(ticket) is None


def test_unknown_and_junk_tickets_open_nothing():
    book = TicketBook(clock=Clock())
    book.issue(KEY)
    for junk in ("", "tkt_", "tkt_nope", KEY, "tkt_" + "x" * 500):
        assert book.redeem(junk) is None


def test_the_book_never_holds_a_usable_ticket_nor_shows_a_key():
    book = TicketBook(clock=Clock())
    ticket = book.issue(KEY)
    assert ticket not in repr(book) and KEY not in repr(book)
    assert all(ticket != name for name in book._tickets)


def test_the_book_is_bounded_and_forgets_expired_tickets_first():
    clock = Clock()
    book = TicketBook(ttl=10, max_tickets=3, clock=clock)
    old = [book.issue(KEY) for _ in range(3)]
    newest = book.issue(KEY)  # the oldest is forgotten to make room
    assert len(book) == 3
    assert book.redeem(old[0]) is None and book.redeem(newest) == KEY
    clock.now += 11
    book.issue(KEY)
    assert len(book) == 1
