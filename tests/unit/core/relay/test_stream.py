"""proxy.core.relay.stream: frames encoded once, the resume buffer, outboxes."""

from __future__ import annotations

import asyncio
import json

from proxy.core.relay.catalog import SubscriptionKey
from proxy.core.relay.stream import Outbox, ResumeBuffer, encode_frame

FOLLOW = SubscriptionKey("channel.follow", "2", (("broadcaster_user_id", "1"),
                                                 ("moderator_user_id", "1")))
SUB = SubscriptionKey("channel.subscribe", "1", (("broadcaster_user_id", "1"),))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _parse(frame: bytes) -> dict[str, str]:
    text = frame.decode()
    assert text.endswith("\n\n")
    fields = {}
    for line in text[:-2].split("\n"):
        name, _, value = line.partition(": ")
        assert name not in fields, "one line per field"
        fields[name] = value
    return fields


def test_a_frame_has_id_event_retry_and_one_data_line():
    frame = encode_frame("channel.follow", {"user_name": "a\nb", "n": 1}, event_id="e-1",
                         retry_ms=3000)
    fields = _parse(frame)
    assert fields["id"] == "e-1"
    assert fields["event"] == "channel.follow"
    assert fields["retry"] == "3000"
    assert json.loads(fields["data"]) == {"user_name": "a\nb", "n": 1}


def test_buffer_numbers_events_and_replays_what_follows_an_id():
    buffer = ResumeBuffer(max_events=10, max_age=60, clock=Clock())
    first = buffer.append(frozenset((FOLLOW,)), "channel.follow", {"n": 1})
    second = buffer.append(frozenset((SUB,)), "channel.subscribe", {"n": 2})
    assert _parse(second.frame)["id"] == buffer.last_id == f"{buffer.epoch}-2"
    assert buffer.since(f"{buffer.epoch}-0") == [first, second]
    assert buffer.since(f"{buffer.epoch}-1") == [second]
    assert buffer.since(buffer.last_id) == []
    assert first.wanted_by(frozenset((FOLLOW,))) and not first.wanted_by(frozenset((SUB,)))


def test_buffer_answers_none_for_ids_it_cannot_place():
    buffer = ResumeBuffer(max_events=10, max_age=60, clock=Clock())
    buffer.append(None, "gap", {})
    other = ResumeBuffer(clock=Clock())
    assert buffer.since(f"{other.epoch}-1") is None  # another buffer (another process)
    assert buffer.since(f"{buffer.epoch}-5") is None  # from the future
    for junk in ("", "x", f"{buffer.epoch}-", f"{buffer.epoch}-1x", f"{buffer.epoch}-" + "9" * 40,
                 f"{buffer.epoch}-\u00b2", f"{buffer.epoch}-\u0661"):  # digits, but not ASCII
        assert buffer.since(junk) is None


def test_buffer_keeps_the_last_events_only_and_says_when_some_are_gone():
    buffer = ResumeBuffer(max_events=3, max_age=60, clock=Clock())
    for n in range(5):
        buffer.append(None, "x", {"n": n})
    assert buffer.since(f"{buffer.epoch}-1") is None  # events 2 is gone
    assert [event.seq for event in buffer.since(f"{buffer.epoch}-2")] == [3, 4, 5]


def test_buffer_forgets_events_older_than_its_age():
    clock = Clock()
    buffer = ResumeBuffer(max_events=100, max_age=600, clock=clock)
    buffer.append(None, "x", {})
    clock.now += 601
    assert buffer.since(f"{buffer.epoch}-0") is None
    # Nothing was missed by a widget that had seen the dropped event.
    assert buffer.since(f"{buffer.epoch}-1") == []


async def test_outbox_hands_over_everything_queued_in_one_piece():
    outbox = Outbox([FOLLOW])
    frame = encode_frame("x", {})
    outbox.put(frame)
    assert await outbox.take() is frame  # the shared bytes, not a copy
    outbox.put(b"a")
    outbox.put(b"b")
    assert await outbox.take() == b"ab"
    waiting = asyncio.ensure_future(outbox.take())
    await asyncio.sleep(0)
    assert not waiting.done()
    outbox.put(b"c")
    assert await waiting == b"c"
    outbox.put(b"d")
    outbox.close("left")
    outbox.put(b"e")  # closed: dropped
    assert await outbox.take() == b"d"
    assert await outbox.take() is None
    assert outbox.reason == "left"


async def test_a_stalled_outbox_is_closed_not_grown():
    outbox = Outbox([FOLLOW], limit=3)
    for n in range(4):
        outbox.put(b"%d" % n)
    assert outbox.closed and outbox.reason == "too_slow"
    assert outbox.pending() == 0
    assert await outbox.take() is None
