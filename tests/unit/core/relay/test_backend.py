"""The relay chosen for a store and worker count, and the messages processes exchange."""

from __future__ import annotations

import pytest

from proxy.core.relay.backend import (
    NEEDS_REDIS,
    Entry,
    RelayKeys,
    key_from_token,
    key_token,
    relay_mode,
    stream_id,
)
from proxy.core.relay.catalog import SubscriptionKey

FOLLOW = SubscriptionKey("channel.follow", "2", (("broadcaster_user_id", "1"),
                                                 ("moderator_user_id", "1")))


@pytest.mark.parametrize(("url", "workers", "mode"), [
    ("redis://127.0.0.1:6379/0", 1, "redis"),
    ("redis://127.0.0.1:6379/0", 4, "redis"),
    ("rediss://example.com:6380", 4, "redis"),
    ("sqlite:///tokens.sqlite3", 1, "local"),
    ("memory://", 1, "local"),
    ("sqlite:///tokens.sqlite3", 2, "refused"),
    ("memory://", 3, "refused"),
])
def test_the_relay_for_each_store_and_worker_count(url, workers, mode):
    assert relay_mode(url, workers) == mode


def test_the_refusal_says_how_to_fix_it():
    assert "Redis" in NEEDS_REDIS and "WEB_CONCURRENCY=1" in NEEDS_REDIS


def test_a_key_survives_its_token():
    assert key_from_token(key_token(FOLLOW)) == FOLLOW
    other = SubscriptionKey("channel.follow", "2", (("broadcaster_user_id", "2"),
                                                    ("moderator_user_id", "1")))
    assert key_token(other) != key_token(FOLLOW)


def test_an_entry_round_trips_and_says_who_wants_it():
    entry = Entry.of("channel.follow", {"user_name": "Ada"}, [FOLLOW])
    decoded = Entry.decode(entry.encode())
    assert decoded == entry
    assert decoded.wanted_by(frozenset((key_token(FOLLOW),)))
    assert not decoded.wanted_by(frozenset(("other",)))
    everyone = Entry.decode(Entry.of("reauthorization_required", {}, None).encode())
    assert everyone.keys is None and everyone.wanted_by(frozenset())


@pytest.mark.parametrize(("text", "position"), [
    ("1733024433000-0", (1733024433000, 0)),
    ("5-12", (5, 12)),
    ("abcd1234-3", None),
    ("17", None),
    ("-1", None),
    ("1-" + "9" * 19, None),
    (" 5-12 ", (5, 12)),  # padding is dropped, and the padded id is never sent to Redis
    ("\u0661\u0667\u0663-0", None),  # Arabic-Indic digits: str.isdigit() would take them
    ("5-\u00b2", None),  # a superscript two: so would int() fail on it
])
def test_stream_ids_compare_as_pairs(text, position):
    assert stream_id(text) == position


def test_every_name_is_under_the_prefix():
    keys = RelayKeys("p:eventsub:")
    names = [keys.lease("g"), keys.led("g"), keys.wants("g"), keys.alive("proc"),
             keys.events("g"), keys.channel("g")]
    assert all(name.startswith("p:eventsub:") for name in names)
    assert len(set(names)) == len(names)
    assert keys.grant_of_channel(keys.channel("g:1")) == "g:1"
