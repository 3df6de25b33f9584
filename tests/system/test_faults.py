"""Fault injection: a misbehaving Twitch, and a failing token store.

Upstream faults come from :class:`FaultyUpstream`, a raw asyncio server that
stands in front of the mock Twitch. By default it relays each request to the
mock (one request per connection, ``Connection: close``); for the requests a
scenario targets (the token endpoint or Helix) it misbehaves instead: refuses
connections, resets them before or in the middle of a body, never finishes,
sends one byte per second, answers 5xx, HTML, invalid JSON, a token answer
without its fields, or a huge body.

Every scenario checks that the answer is a clear JSON error (or, for Helix,
Twitch's own status passed through as documented), that the proxy served other
requests while the fault was in progress, that no secret appeared in a body or
a log line, and that the grant survived: after the fault clears, the grant's
refresh token is still live at the mock and a request that needs a refresh
succeeds.

Store faults use a throwaway ``redis-server`` on a free port (killed and
restarted mid-traffic) and a SQLite file locked by another process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import struct
import sys
import time
from collections import Counter

import aiohttp
import pytest
import redis
from cryptography.fernet import Fernet

from proxy.config import load_config
from proxy.core.grants import ACTIVE
from proxy.web.app import create_app
from proxy.web.keys import grants_key
from tests.conftest import _free_port, _redis_answers, _start_redis_server, _stop_redis_server
from tests.helpers import login, proxy_config_flags

pytestmark = pytest.mark.timeout(120)

TIMEOUT = 1.0  # twitch.timeout for these tests: hanging faults end in a 504 quickly

SECOND_USER = ("90001", "seconduser")


class FaultyUpstream:
    """A raw TCP server in front of the mock Twitch that misbehaves on demand."""

    def __init__(self, mock_port: int) -> None:
        self.mock_port = mock_port
        self.fault = "pass"
        self.target = ""  # path prefix the fault applies to
        self.hits: Counter[str] = Counter()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def close(self) -> None:
        await self.stop_listening()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b"\r\n", 1)[0].split(b" ")[1].decode()
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = await reader.readexactly(length)
            fault = self.fault if self.target and path.startswith(self.target) else "pass"
            self.hits[fault] += 1
            await getattr(self, "_" + fault)(reader, writer, head, body)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self._tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    # -- behaviours -------------------------------------------------------------------

    async def _pass(self, reader, writer, head: bytes, body: bytes) -> None:
        first, _, rest = head.partition(b"\r\n")
        upstream_reader, upstream_writer = await asyncio.open_connection(
            "127.0.0.1", self.mock_port)
        upstream_writer.write(first + b"\r\nConnection: close\r\n" + rest + body)
        await upstream_writer.drain()
        while chunk := await upstream_reader.read(65536):
            writer.write(chunk)
            await writer.drain()
        upstream_writer.close()

    @staticmethod
    def _rst(writer) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def _reset_before_headers(self, reader, writer, head, body) -> None:
        self._rst(writer)

    async def _reset_mid_body(self, reader, writer, head, body) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"access_token\": \"abc")
        await writer.drain()
        await asyncio.sleep(0.05)
        self._rst(writer)

    async def _never_ends(self, reader, writer, head, body) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"data\": [")
        await writer.drain()
        await reader.read()  # until the proxy gives up and closes

    async def _one_byte_per_second(self, reader, writer, head, body) -> None:
        answer = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 20\r\n\r\n{\"data\": []}        ")
        for index in range(len(answer)):
            writer.write(answer[index:index + 1])
            await writer.drain()
            await asyncio.sleep(1)

    async def _status(self, writer, status: int, body: bytes, content_type: str) -> None:
        writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        await writer.drain()

    async def _status_500(self, reader, writer, head, body) -> None:
        await self._status(writer, 500, b'{"status":500,"message":"Internal Server Error"}',
                           "application/json")

    async def _status_502(self, reader, writer, head, body) -> None:
        await self._status(writer, 502, b"<html><body>502 Bad Gateway</body></html>",
                           "text/html")

    async def _status_503(self, reader, writer, head, body) -> None:
        await self._status(writer, 503, b'{"status":503,"message":"Service Unavailable"}',
                           "application/json")

    async def _status_504(self, reader, writer, head, body) -> None:
        await self._status(writer, 504, b"<html>Gateway Time-out</html>", "text/html")

    async def _html(self, reader, writer, head, body) -> None:
        await self._status(writer, 200, b"<!doctype html><title>Login to Wi-Fi</title>",
                           "text/html")

    async def _invalid_json(self, reader, writer, head, body) -> None:
        await self._status(writer, 200, b'{"access_token": "x", "expires_in": ', "application/json")

    async def _missing_fields(self, reader, writer, head, body) -> None:
        await self._status(writer, 200, b'{"token_type": "bearer", "scope": []}',
                           "application/json")

    async def _reset_mid_huge_body(self, reader, writer, head, body) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 8388608\r\n\r\n{\"data\": [\"" + b"x" * 1048576)
        await writer.drain()
        await asyncio.sleep(0.05)
        self._rst(writer)

    async def _huge(self, reader, writer, head, body) -> None:
        size = 8 * 1024 * 1024
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {size + 11}\r\n\r\n".encode() + b'{"data": ["')
        chunk = b"x" * 65536
        for _ in range(size // len(chunk)):
            writer.write(chunk)
            await writer.drain()
        writer.write(b'"]}')
        await writer.drain()


# -- fixtures -------------------------------------------------------------------------


@pytest.fixture
async def faulty(twitch_server):
    upstream = FaultyUpstream(twitch_server.port)
    await upstream.start()
    yield upstream
    await upstream.close()


@pytest.fixture
async def faulted_proxy(aiohttp_client, faulty, tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    flags = {**proxy_config_flags(faulty.url), "store.url": "memory://",
             "twitch.timeout": str(TIMEOUT)}
    return await aiohttp_client(create_app(load_config(path=empty, environ={}, flags=flags)))


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _second_login(proxy, mock) -> dict:
    mock.add_user(*SECOND_USER)
    mock.signed_in_user_id = SECOND_USER[0]
    try:
        return await login(proxy)
    finally:
        mock.signed_in_user_id = "141981764"


async def _grant_of(proxy, key: str):
    grants = proxy.app[grants_key]
    record = await grants.key_record(key)
    assert record is not None, "the proxy key was lost"
    return await grants.get(record.grant_id)


async def _grant_survived(proxy, mock, key: str, first: dict, caplog, reliability) -> None:
    """After a store fault: the grant holds a token Twitch still accepts, nothing leaked."""
    grant = await _grant_of(proxy, key)
    lost = grant is None or grant.refresh_token not in mock.refresh_tokens
    reliability.tokens_lost += int(lost)
    assert not lost
    assert reliability.leaks(_secrets(mock, first), caplog.text) == []
    reliability.fault_scenarios += 1


def _secrets(mock, *results) -> list[str]:
    values = {"mock-client-secret"}
    values.update(mock.access_tokens)
    values.update(mock.refresh_tokens)
    values.update(mock.spent_refresh_tokens)
    for result in results:
        values.update({result["proxy_key"], result["access_token"], result["refresh_token"]})
    return sorted(values)


# -- upstream faults ------------------------------------------------------------------

TOKEN_FAULTS = {
    # fault: the status the proxy answers when the token endpoint does this
    "refused": 502,
    "reset_before_headers": 502,
    "reset_mid_body": 502,
    "never_ends": 504,
    "one_byte_per_second": 504,
    "status_500": 503,
    "status_502": 503,
    "status_503": 503,
    "status_504": 503,
    "html": 502,
    "invalid_json": 502,
    "missing_fields": 502,
    "huge": 502,
}

HELIX_FAULTS = {
    # Transport faults and 5xx pages that are not Twitch's JSON (a load balancer's
    # HTML) become the proxy's own JSON gateway errors; answers Twitch itself sent
    # in JSON, and any 2xx-4xx, are passed through as the contract says.
    "refused": 502,
    "reset_before_headers": 502,
    "reset_mid_body": 502,
    "never_ends": 504,
    "one_byte_per_second": 504,
    "status_500": 500,  # JSON: Twitch's own answer
    "status_502": 503,  # HTML page
    "status_503": 503,  # JSON, retried once
    "status_504": 504,  # HTML page
    "html": 200,
    "invalid_json": 200,
    "huge": 200,
}

HANGING = {"never_ends", "one_byte_per_second"}

SCENARIOS = (
    [("refresh", fault, status) for fault, status in TOKEN_FAULTS.items()]
    + [("refresh_during_helix", fault, status) for fault, status in TOKEN_FAULTS.items()]
    + [("helix", fault, status) for fault, status in HELIX_FAULTS.items()]
)


async def _faulted_call(proxy, mock, where: str, first: dict) -> tuple[int, bytes, dict]:
    if where == "refresh":
        response = await proxy.post("/refresh", json={"refresh_token": first["refresh_token"]})
    else:
        if where == "refresh_during_helix":
            mock.expire_access_tokens(user_id="141981764")
        response = await proxy.get("/helix/users", headers=_bearer(first["proxy_key"]))
    body = await response.read()
    return response.status, body, dict(response.headers)


async def _other_requests(proxy, where: str, fault: str, second: dict) -> None:
    """While the fault is in progress, the proxy answers everybody else."""
    health = await proxy.get("/healthz")
    assert health.status == 200
    status = await proxy.get("/status", headers=_bearer(second["proxy_key"]))
    assert status.status == 200
    if fault == "refused":
        return  # nothing listens upstream: only store-backed answers are possible
    if where == "helix":  # the token endpoint still works
        other = await proxy.post("/refresh", json={"refresh_token": second["refresh_token"]})
        assert other.status == 200, await other.text()
        second.update(await other.json())
    else:  # Helix still works for a grant with a fresh token
        other = await proxy.get("/helix/users", headers=_bearer(second["proxy_key"]))
        assert other.status == 200, await other.text()


@pytest.mark.parametrize("where,fault,expected", SCENARIOS,
                         ids=[f"{w}-{f}" for w, f, _ in SCENARIOS])
async def test_upstream_fault(faulted_proxy, mock, faulty, caplog, reliability,
                              where, fault, expected):
    proxy = faulted_proxy
    first = await login(proxy)
    second = await _second_login(proxy, mock)
    before = await _grant_of(proxy, first["proxy_key"])

    faulty.target = "/helix/" if where == "helix" else "/oauth2/token"
    if fault == "refused":
        await faulty.stop_listening()
    else:
        faulty.fault = fault
    call = asyncio.ensure_future(_faulted_call(proxy, mock, where, first))
    if fault in HANGING:
        await asyncio.sleep(0.2)
        assert not call.done()
    await _other_requests(proxy, where, fault, second)
    status, body, headers = await asyncio.wait_for(call, TIMEOUT * 20)

    assert status == expected, body[:300]
    assert fault == "refused" or faulty.hits[fault] >= 1, faulty.hits
    if status >= 500 and not (where == "helix" and fault in ("status_500", "status_503")):
        error = json.loads(body)
        assert set(error) >= {"error", "message"}, error
        assert error["error"].startswith("upstream_"), error
        if status == 503:
            assert int(headers["Retry-After"]) >= 1
    if fault == "huge" and where == "helix":
        assert len(body) > 8 * 1024 * 1024  # passed through whole, streamed

    # The fault clears: the same grant works, refreshing if it must.
    faulty.fault, faulty.target = "pass", ""
    if fault == "refused":
        await faulty.start()
    after = await _grant_of(proxy, first["proxy_key"])
    lost = after is None or after.state != ACTIVE or (
        after.refresh_token not in mock.refresh_tokens)
    if not lost:
        assert after.refresh_token == before.refresh_token or \
            before.refresh_token in mock.spent_refresh_tokens  # unchanged, or rotated
        mock.expire_access_tokens(user_id="141981764")
        refreshes = mock.calls["token:refresh_token"]
        healed = await proxy.get("/helix/users", headers=_bearer(first["proxy_key"]))
        lost = healed.status != 200
        assert mock.calls["token:refresh_token"] == refreshes + 1
    reliability.tokens_lost += int(lost)
    assert not lost, "the grant did not survive the fault"
    leaked = reliability.leaks(
        _secrets(mock, first, second),
        body.decode(errors="replace") if status >= 400 else "", caplog.text)
    assert leaked == []
    reliability.fault_scenarios += 1


# -- store faults: Redis --------------------------------------------------------------


@pytest.fixture
def throwaway_redis(tmp_path):
    """A redis-server of our own on a free port, to kill and restart."""
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not on PATH (CI is set, so this must run)")
        pytest.skip("redis-server is not on PATH")
    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    state = {"process": None}

    def start():
        state["process"] = _start_redis_server(tmp_path, url, ["--port", str(port),
                                                               "--save", "60 1",
                                                               "--dbfilename", "dump.rdb"])
        assert state["process"] is not None, "redis-server did not start"

    def stop(*, save: bool = True):
        process = state["process"]
        if process is not None:
            if save:  # a restart keeps the data, as a managed Redis does
                client = redis.Redis.from_url(url)
                try:
                    client.save()
                finally:
                    client.close()
            _stop_redis_server(process)
            state["process"] = None

    start()
    yield url, start, stop
    stop(save=False)


async def test_redis_restart_mid_traffic(aiohttp_client, mock, twitch_server, tmp_path,
                                         throwaway_redis, caplog, reliability):
    url, start, stop = throwaway_redis
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    flags = {**proxy_config_flags(str(twitch_server.make_url("")).rstrip("/")),
             "store.url": url + "?socket_timeout=1&socket_connect_timeout=1",
             "store.encryption_key": Fernet.generate_key().decode(),
             "twitch.timeout": "2"}
    proxy = await aiohttp_client(create_app(load_config(path=empty, environ={}, flags=flags)))
    first = await login(proxy)
    key = first["proxy_key"]
    assert (await proxy.get("/helix/users", headers=_bearer(key))).status == 200

    stop()
    down = []
    for method, path, kwargs in [
        ("GET", "/helix/users", {"headers": _bearer(key)}),
        ("POST", "/refresh", {"json": {"refresh_token": first["refresh_token"]}}),
        ("GET", "/status", {"headers": _bearer(key)}),
        ("POST", "/revoke", {"headers": _bearer(key)}),
        ("GET", "/login", {"allow_redirects": False}),
        ("GET", "/callback", {"params": {"state": "s", "code": "c"},
                              "headers": {"Accept": "application/json"}}),
        ("GET", "/readyz", {}),
    ]:
        response = await proxy.request(method, path, **kwargs)
        body = await response.json()
        down.append((path, response.status))
        if response.status == 200:  # answered from the in-process cache, no store needed
            assert path in ("/helix/users", "/status"), (path, body)
            continue
        assert response.status == 503, (path, body)
        assert body["error"] in ("store_unavailable", "store_busy", "not_ready"), body
        assert int(response.headers["Retry-After"]) >= 1, path
    assert {path for path, status in down if status == 503} >= {
        "/refresh", "/revoke", "/login", "/callback", "/readyz"}, down
    # A refresh while the store is away: Twitch must not be asked (the rotation
    # could not be stored), so the token is not spent.
    mock.expire_access_tokens()
    refreshes = mock.calls["token:refresh_token"]
    response = await proxy.get("/helix/users", headers=_bearer(key))
    assert response.status == 503
    assert mock.calls["token:refresh_token"] == refreshes

    start()  # the same proxy, no restart
    for _ in range(50):
        response = await proxy.get("/helix/users", headers=_bearer(key))
        if response.status != 503:
            break
        await asyncio.sleep(0.1)
    assert response.status == 200, await response.text()
    await _grant_survived(proxy, mock, key, first, caplog, reliability)


async def test_redis_killed_during_refresh_keeps_the_rotation_or_the_token(
        aiohttp_client, mock, twitch_server, tmp_path, throwaway_redis, reliability):
    """Redis goes away while a refresh is at Twitch: afterwards the grant works."""
    url, start, stop = throwaway_redis
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    flags = {**proxy_config_flags(str(twitch_server.make_url("")).rstrip("/")),
             "store.url": url + "?socket_timeout=1&socket_connect_timeout=1",
             "store.encryption_key": Fernet.generate_key().decode(),
             # The dead flight's lock outlives the restart (saved with the data).
             "twitch.timeout": "2", "store.lock_lease": "3"}
    proxy = await aiohttp_client(create_app(load_config(path=empty, environ={}, flags=flags)))
    first = await login(proxy)
    key = first["proxy_key"]
    mock.expire_access_tokens()
    mock.hold_refresh = asyncio.Event()
    call = asyncio.ensure_future(proxy.get("/helix/users", headers=_bearer(key)))
    for _ in range(100):
        if mock.calls["token:refresh_token"]:
            break
        await asyncio.sleep(0.02)
    stop()
    mock.hold_refresh.set()
    response = await call
    assert response.status in (200, 503), await response.text()
    mock.hold_refresh = None
    start()
    for _ in range(50):
        healed = await proxy.get("/helix/users", headers=_bearer(key))
        if healed.status != 503:
            break
        await asyncio.sleep(0.1)
    # Twitch rotated while the store was away: if the new pair could not be
    # written, the grant still holds the spent token and needs a new login.
    lost = healed.status != 200
    reliability.tokens_lost += int(lost)
    assert not lost, await healed.text()
    reliability.fault_scenarios += 1


# -- store faults: SQLite locked by another process ----------------------------------

_LOCKER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=0)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
db.execute("ROLLBACK")
"""


async def test_sqlite_locked_by_another_process(aiohttp_client, mock, twitch_server, tmp_path,
                                                caplog, reliability):
    database = tmp_path / "tokens.sqlite3"
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    flags = {**proxy_config_flags(str(twitch_server.make_url("")).rstrip("/")),
             "store.url": f"sqlite:///{database}"}
    proxy = await aiohttp_client(create_app(load_config(path=empty, environ={}, flags=flags)))
    first = await login(proxy)
    key = first["proxy_key"]

    locker = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _LOCKER, str(database),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    try:
        assert (await locker.stdout.readline()).strip() == b"locked"
        # Reads still work (WAL); anything that writes waits busy_timeout, then 503.
        started = time.monotonic()
        response = await proxy.get("/login", allow_redirects=False)
        waited = time.monotonic() - started
        body = await response.json()
        assert response.status == 503, body
        assert body["error"].startswith("store_"), body
        assert int(response.headers["Retry-After"]) >= 1
        refresh = await proxy.post("/refresh", json={"refresh_token": first["refresh_token"]})
        assert refresh.status == 503, await refresh.text()
        print(f"SQLite locked: answered 503 after waiting {waited:.1f} s")
    finally:
        locker.stdin.write(b"\n")
        await locker.stdin.drain()
        await locker.wait()
    healed = await proxy.get("/helix/users", headers=_bearer(key))
    assert healed.status == 200, await healed.text()
    await _grant_survived(proxy, mock, key, first, caplog, reliability)


async def test_helix_body_broken_after_the_headers_is_not_a_silent_truncation(
        faulted_proxy, mock, faulty, reliability):
    """Twitch breaking off an 8 MiB body: a JSON 502, or (when the proxy was already
    streaming) a response that visibly breaks; never a complete-looking truncated 200."""
    proxy = faulted_proxy
    first = await login(proxy)
    faulty.fault, faulty.target = "reset_mid_huge_body", "/helix/"
    response = await proxy.get("/helix/users", headers=_bearer(first["proxy_key"]))
    if response.status == 502:
        assert (await response.json())["error"].startswith("upstream_")
    else:
        assert response.status == 200  # the status line went out before the break
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
    faulty.fault, faulty.target = "pass", ""
    healed = await proxy.get("/helix/users", headers=_bearer(first["proxy_key"]))
    assert healed.status == 200
    reliability.fault_scenarios += 1


async def test_redis_unreachable_from_the_start(aiohttp_client, twitch_server, tmp_path):
    """A proxy whose Redis never answers starts, reports not ready, and answers 503."""
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    url = f"redis://127.0.0.1:{_free_port()}/0?socket_connect_timeout=0.5"
    assert not _redis_answers(url.split("?")[0])
    flags = {**proxy_config_flags(str(twitch_server.make_url("")).rstrip("/")),
             "store.url": url, "store.encryption_key": Fernet.generate_key().decode()}
    proxy = await aiohttp_client(create_app(load_config(path=empty, environ={}, flags=flags)))
    ready = await proxy.get("/readyz")
    assert ready.status == 503
    refresh = await proxy.post("/refresh", json={"refresh_token": "x" * 30})
    assert refresh.status == 503 and "Retry-After" in refresh.headers
