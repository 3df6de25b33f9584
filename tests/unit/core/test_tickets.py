"""proxy.core.tickets: single-use, short-lived tickets for EventSource, kept in the store.

On the memory store, a real SQLite file and the real Redis: every worker of a
proxy shares its store, so a ticket made by one must open a stream on another,
exactly once.
"""

from __future__ import annotations

import asyncio
import secrets

import pytest
from cryptography.fernet import Fernet

from proxy.config.secret import Secret
from proxy.core.grants import GrantStore
from proxy.core.tickets import TICKET_PREFIX, TicketBook
from proxy.store import open_store
from proxy.store.crypto import FernetCipher

KEY = "tpk_" + "k" * 43
CIPHER = FernetCipher([Secret(Fernet.generate_key().decode())])


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def store_url(request, tmp_path, redis_url) -> str:
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/tickets.sqlite3"
    return redis_url


@pytest.fixture
async def opened(store_url):
    prefix = f"tickets-{secrets.token_hex(4)}:"
    stores = []

    async def open_one():
        store = await open_store(store_url, prefix=prefix)
        stores.append(store)
        return store

    yield open_one
    for store in stores:
        keys = await store.keys("")
        for name in keys:
            await store.delete(name)
        await store.close()


def book_on(store, *, ttl: float = 60.0) -> TicketBook:
    return TicketBook(GrantStore(store, CIPHER), ttl=ttl)


async def test_a_ticket_opens_its_key_once(opened):
    book = book_on(await opened())
    ticket = await book.issue(KEY)
    assert ticket.startswith(TICKET_PREFIX) and KEY not in ticket
    assert await book.redeem(ticket) == KEY
    assert await book.redeem(ticket) is None


@pytest.mark.parametrize("store_url", ["sqlite", "redis"], indirect=True)
async def test_a_ticket_made_by_one_worker_opens_a_stream_on_another(opened):
    first, second = book_on(await opened()), book_on(await opened())
    ticket = await first.issue(KEY)
    assert await second.redeem(ticket) == KEY
    assert await first.redeem(ticket) is None


@pytest.mark.parametrize("store_url", ["memory"], indirect=True)
async def test_a_memory_store_keeps_its_tickets_to_one_process(opened):
    """Why several workers need SQLite or Redis for live events."""
    first, second = book_on(await opened()), book_on(await opened())
    ticket = await first.issue(KEY)
    assert await second.redeem(ticket) is None
    assert await first.redeem(ticket) == KEY


async def test_of_requests_racing_with_one_ticket_exactly_one_wins(opened):
    book = book_on(await opened())
    ticket = await book.issue(KEY)
    answers = await asyncio.gather(*(book.redeem(ticket) for _ in range(20)))
    assert answers.count(KEY) == 1 and answers.count(None) == 19


async def test_a_ticket_expires(opened):
    book = book_on(await opened(), ttl=0.3)
    ticket = await book.issue(KEY)
    await asyncio.sleep(0.5)
    assert await book.redeem(ticket) is None


async def test_unknown_and_junk_tickets_open_nothing(opened):
    book = book_on(await opened())
    await book.issue(KEY)
    for junk in ("", "tkt_", "tkt_nope", KEY, "tkt_" + "x" * 500):
        assert await book.redeem(junk) is None


async def test_the_store_never_holds_a_usable_ticket_nor_the_key(opened):
    store = await opened()
    book = book_on(store)
    ticket = await book.issue(KEY)
    names = await store.keys("")
    secret_part = ticket[len(TICKET_PREFIX):]
    assert len(names) == 1 and secret_part not in names[0]
    raw = await store.get(names[0])
    assert raw is not None and KEY.encode() not in raw and ticket.encode() not in raw
    assert ticket not in repr(book) and KEY not in repr(book)


async def test_a_ticket_entry_copied_under_another_name_opens_nothing(opened):
    """Write access to the store without its key cannot mint tickets from old entries."""
    store = await opened()
    book = book_on(store)
    ticket = await book.issue(KEY)
    (name,) = await store.keys("")
    other = await book.issue(KEY)
    (other_name,) = [n for n in await store.keys("") if n != name]
    await store.put(other_name, await store.get(name), ttl=60)  # same bytes, another name
    assert await book.redeem(other) is None
    assert await book.redeem(ticket) == KEY


async def test_peeking_leaves_the_ticket_usable(opened):
    """A request checks everything first and spends its ticket last."""
    book = book_on(await opened())
    ticket = await book.issue(KEY)
    assert await book.peek(ticket) == KEY
    assert await book.peek(ticket) == KEY
    assert await book.redeem(ticket) == KEY
    assert await book.peek(ticket) is None
    for junk in ("", "tkt_nope", KEY, "tkt_" + "x" * 500):
        assert await book.peek(junk) is None
