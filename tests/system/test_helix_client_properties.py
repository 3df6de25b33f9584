"""Property test for proxy.upstream.helix_client: hostile byte streams never cross callers.

The pool hands one connection to callers of different grants in turn, so a
connection out of step with its server (bytes after an answer, an answer
nobody asked for) would give one caller another's answer. Here a scripted
server answers a sequence of requests, each tagged with its own id, with
generated streams: the right answer cut into random pieces, sometimes after
an interim 100, then extra answers (tagged for other requests or for nobody),
garbage, a truncation, a close, or an answer sent while the connection is idle.

Whatever the stream, a caller gets exactly its own answer or an error, and an
error only when its own answer was cut short.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.errors import HelixTransportError
from proxy.upstream.helix_client import HelixClient
from tests.unit.upstream.helix_client.scripted_server import ScriptedServer, target


def tagged(tag: str, *, chunked: bool = False, closes: bool = False) -> bytes:
    """An answer that carries ``tag`` in a header and in its body."""
    body = f'{{"tag":"{tag}"}}'.encode()
    head = f"HTTP/1.1 200 OK\r\nX-Tag: {tag}\r\n" + ("Connection: close\r\n" if closes else "")
    if chunked:
        half = len(body) // 2
        framed = b"".join(b"%x\r\n%s\r\n" % (len(part), part)
                          for part in (body[:half], body[half:])) + b"0\r\n\r\n"
        return f"{head}Transfer-Encoding: chunked\r\n\r\n".encode() + framed
    return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


@dataclass(frozen=True)
class Plan:
    """How the server answers one request."""

    interim: bool  # a 100 Continue first
    chunked: bool
    connection_close: bool  # the answer says Connection: close
    truncate_at: float | None  # the answer is cut at this fraction, then the connection closed
    extra: tuple[str, ...]  # after the answer, in the same stream: "answer:TAG" or "garbage:TEXT"
    splits: tuple[float, ...]  # where the stream is cut into separate writes
    closes_after: bool  # the server closes once the stream is written
    idle_answer: str | None  # a tag answered later, while the connection sits idle
    settle: bool  # the event loop runs before the next request (else stray bytes wait unread)


#: True one time in four: most connections should stay reusable, or the pool
#: would rarely hand a connection on and there would be little to test.
rarely = st.sampled_from([False, False, False, True])


def plan_sequences(count: int) -> st.SearchStrategy[tuple[Plan, ...]]:
    """``count`` plans; the tags in them name the requests and two that nobody sends."""
    tags = st.sampled_from([f"req-{n}" for n in range(count)] + ["ghost-1", "ghost-2"])
    extras = st.one_of(
        tags.map(lambda tag: f"answer:{tag}"),
        st.sampled_from(["X", "HTTP/1.1 100 Continue\r\n\r\n", "HTTP/1.1 2", "\x00\xff",
                         "garbage\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n{"])
        .map(lambda text: f"garbage:{text}"),
    )
    plan = st.builds(
        Plan,
        interim=st.booleans(),
        chunked=st.booleans(),
        connection_close=rarely,
        truncate_at=rarely.flatmap(lambda cut: st.floats(0.0, 0.99) if cut else st.none()),
        extra=st.booleans().flatmap(
            lambda some: st.lists(extras, min_size=1, max_size=2) if some else st.just([])
        ).map(tuple),
        splits=st.lists(st.floats(0.0, 1.0), max_size=3).map(lambda cuts: tuple(sorted(cuts))),
        closes_after=rarely,
        idle_answer=st.one_of(st.none(), tags),
        settle=st.booleans(),
    )
    return st.lists(plan, min_size=count, max_size=count).map(tuple)


def stream_for(tag: str, plan: Plan) -> tuple[bytes, bool]:
    """The bytes the server writes for one request, and whether it keeps the connection."""
    answer = tagged(tag, chunked=plan.chunked, closes=plan.connection_close)
    if plan.interim:
        answer = b"HTTP/1.1 100 Continue\r\n\r\n" + answer
    if plan.truncate_at is not None:
        return answer[:int(len(answer) * plan.truncate_at)], False
    for extra in plan.extra:
        kind, _, value = extra.partition(":")
        answer += tagged(value) if kind == "answer" else value.encode("latin-1")
    return answer, not (plan.closes_after or plan.connection_close)


async def run_requests(plans: tuple[Plan, ...]) -> None:
    """Send one request per plan, in turn, and check what each caller got."""
    written: dict[str, asyncio.Event] = {}
    writers: dict[str, asyncio.StreamWriter] = {}

    async def hostile(request: bytes, writer: asyncio.StreamWriter) -> bool:
        tag = target(request).decode().rpartition("=")[2]
        writers[tag] = writer
        planned = plans[int(tag.removeprefix("req-"))]
        stream, keep = stream_for(tag, planned)
        cuts = [0, *(int(len(stream) * at) for at in planned.splits), len(stream)]
        try:
            for start, end in itertools.pairwise(cuts):
                if end > start:
                    writer.write(stream[start:end])
                    await writer.drain()
                    await asyncio.sleep(0)  # let the client read this piece on its own
            if not keep:
                writer.close()
                await writer.wait_closed()
        finally:
            written[tag].set()
        return keep

    server = ScriptedServer(hostile)
    await server.start()
    client = HelixClient(pool_size=2, timeout=2)
    try:
        for number, plan in enumerate(plans):
            tag = f"req-{number}"
            written[tag] = asyncio.Event()
            try:
                response = await client.request("GET", server.url(f"/helix/users?id={tag}"), ())
                try:
                    status, tags = response.status, response.headers.getall("X-Tag", [])
                    body = await response.read()
                finally:
                    response.release()
            except (HelixTransportError, TimeoutError):
                # An error is fine, but only for an answer that was cut short.
                assert plan.truncate_at is not None, \
                    f"{tag} failed, yet its answer was whole: {plans}"
            else:
                assert (status, tags, body) == (200, [tag], f'{{"tag":"{tag}"}}'.encode()), \
                    f"{tag} was handed bytes that are not its answer: {plans}"
                assert plan.truncate_at is None, f"{tag} got a truncated answer as whole: {plans}"
            # The next request is sent only once this one's stream is written:
            # bytes a server sends after a request can be nothing but its answer.
            await written[tag].wait()
            writer = writers.get(tag)
            if plan.idle_answer is not None and writer is not None and not writer.is_closing():
                writer.write(tagged(plan.idle_answer))
            if plan.settle:
                await asyncio.sleep(0.002)
    finally:
        await client.close()
        await server.close()


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_factory(request) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """asyncio's loop, and uvloop's, which production runs on (its transports differ)."""
    if request.param == "uvloop":
        return pytest.importorskip("uvloop").new_event_loop
    return None


# Each example runs on a loop of its own: the fixture only picks which kind.
@settings(max_examples=100, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plans=st.integers(1, 5).flatmap(plan_sequences))
def test_no_caller_ever_gets_bytes_of_another_request(loop_factory, plans):
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(run_requests(plans))
