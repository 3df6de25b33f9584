"""proxy.core.relay.access: open streams end when their key or grant is revoked.

On a real grant store (memory and a SQLite file): the register looks keys up
the way the route does (``grant_for_key``), so revoking a key, deleting the
grant or marking it ``needs_reauth`` is seen at the next check.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from proxy.core.grant_cache import CachedGrantStore
from proxy.core.grant_records import NEEDS_REAUTH
from proxy.core.relay.access import StreamAccess
from proxy.core.relay.stream import Outbox
from tests.unit.core.test_grants import cipher, new_grant, store  # noqa: F401 (fixture)

LOGIN_URL = "https://proxy.example/login"


@pytest.fixture
def grants(store) -> CachedGrantStore:  # noqa: F811 (the imported fixture)
    """The grant store as the route uses it, its cache off: every check reads the store.

    ``store`` runs every test on the memory store and on a SQLite file.
    """
    return CachedGrantStore(store, cipher(), poll_interval=0)


def drained(outbox: Outbox) -> list[tuple[str, dict]]:
    """The events queued in ``outbox``, as (name, data)."""
    out = []
    for frame in list(outbox._frames):
        fields = dict(line.split(": ", 1) for line in frame.decode().splitlines() if ": " in line)
        out.append((fields["event"], json.loads(fields["data"])))
    return out


async def watched(grants, access, count=1):
    loaded = await grants.create(new_grant())
    key, _ = await grants.create_key(loaded.grant.grant_id)
    outboxes = [Outbox(()) for _ in range(count)]
    for outbox in outboxes:
        access.add(key, loaded.grant.grant_id, outbox)
    return loaded.grant, key, outboxes


async def test_a_live_key_keeps_its_streams(grants):
    access = StreamAccess(grants.grant_for_key, login_url=LOGIN_URL)
    _, _, (outbox,) = await watched(grants, access)
    assert await access.check() == 0
    assert not outbox.closed and drained(outbox) == []


async def test_a_revoked_key_ends_every_stream_it_opened_and_no_other(grants):
    access = StreamAccess(grants.grant_for_key, login_url=LOGIN_URL)
    grant, key, outboxes = await watched(grants, access, count=3)
    _, _, (other,) = await watched(grants, access)
    assert access.streams_of(grant.grant_id) == 3
    assert await grants.revoke_key(key)
    assert await access.check() == 3
    for outbox in outboxes:
        assert outbox.closed
        assert drained(outbox) == [("access_revoked", {
            "error": "invalid_proxy_key",
            "message": "This proxy key was revoked: the stream ends."})]
    assert not other.closed
    assert await access.check() == 0  # ended streams are forgotten
    assert access.streams_of(grant.grant_id) == 0


async def test_a_grant_that_needs_a_login_ends_its_streams_with_the_login_url(grants):
    access = StreamAccess(grants.grant_for_key, login_url=LOGIN_URL)
    grant, _, (outbox,) = await watched(grants, access)
    await grants.update(grant.grant_id, state=NEEDS_REAUTH)
    assert await access.check() == 1
    ((event, data),) = drained(outbox)
    assert event == "reauthorization_required" and data["login_url"] == LOGIN_URL


async def test_a_deleted_grant_ends_its_streams(grants):
    access = StreamAccess(grants.grant_for_key, login_url=LOGIN_URL)
    grant, _, (outbox,) = await watched(grants, access)
    await grants.delete(grant.grant_id)
    assert await access.check() == 1 and outbox.closed


async def test_a_stream_that_ended_is_no_longer_watched(grants):
    access = StreamAccess(grants.grant_for_key, login_url=LOGIN_URL)
    grant, key, (outbox,) = await watched(grants, access)
    outbox_grant = grant.grant_id
    access.discard(key, outbox)
    assert access.streams_of(outbox_grant) == 0
    await grants.revoke_key(key)
    assert await access.check() == 0 and not outbox.closed
    assert key not in repr(access)


async def test_the_task_checks_on_its_own(grants):
    access = StreamAccess(grants.grant_for_key, login_url=LOGIN_URL, interval=0.05)
    access.start()
    try:
        _, key, (outbox,) = await watched(grants, access)
        await grants.revoke_key(key)
        for _ in range(40):
            if outbox.closed:
                break
            await asyncio.sleep(0.05)
        assert outbox.closed
    finally:
        await access.aclose()


async def test_an_unreachable_store_ends_nothing_and_is_retried(grants):
    calls = 0

    async def failing(key: str):
        nonlocal calls
        calls += 1
        raise ConnectionError("store down")

    access = StreamAccess(failing, login_url=LOGIN_URL)
    outbox = Outbox(())
    access.add("tpk_x", "g_1", outbox)
    assert await access.check() == 0 and calls == 1 and not outbox.closed




async def test_a_widget_that_left_is_closed_and_stops_counting(grants):
    access = StreamAccess(grants.grant_for_key, login_url=LOGIN_URL)
    loaded = await grants.create(new_grant())
    key, _ = await grants.create_key(loaded.grant.grant_id)
    connected = {"here": True, "there": True}
    here, there = Outbox(()), Outbox(())
    access.add(key, loaded.grant.grant_id, here, gone=lambda: not connected["here"])
    access.add(key, loaded.grant.grant_id, there, gone=lambda: not connected["there"])
    connected["there"] = False
    assert await access.check() == 0  # nothing was revoked
    assert there.closed and there.reason == "disconnected" and not here.closed
    access.discard(key, there)  # what the stream's handler does once its outbox is closed
    assert access.streams_of(loaded.grant.grant_id) == 1
