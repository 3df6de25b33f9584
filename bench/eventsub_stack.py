"""What the live-events benchmark runs against: the mock Twitch and a proxy, as processes.

:func:`start_stack` starts ``python -m proxy.mock_twitch`` (pinned beside the
load generator) and one ``python -m proxy`` (on the server's CPU) pointed at
the mock's OAuth, Helix and EventSub WebSocket, then logs in through the
browser flow, as a streamer would, for a proxy key and the user's token.
:class:`MockControl` drives the mock's ``/_mock/eventsub/*`` endpoints;
:func:`naive_widgets` is the design the proxy replaces: every widget opening
its own EventSub socket at Twitch with the streamer's token.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from bench.processes import CLIENT_ID, LOAD_CPUS, ProxySetup, Service, free_port

__all__ = ["FOLLOW", "SCOPES", "MockControl", "NaiveOutcome", "Stack", "naive_widgets",
           "start_proxy", "start_stack"]

#: What channel.follow v2 needs (moderator:read:followers), and the login's default.
SCOPES = ["user:read:email", "moderator:read:followers"]
#: The type every widget of the benchmark listens to (cost 0: the user's own channel).
FOLLOW = {"type": "channel.follow", "version": "2"}


@dataclass
class Stack:
    """The mock, the proxy, and the login's answer (proxy key, user's tokens)."""

    mock: Service
    proxy: Service
    login: dict[str, Any]

    def stop(self) -> None:
        self.proxy.stop()
        self.mock.stop()


def start_stack(directory: Path, *, store: str = "memory://",
                extra: dict[str, Any] | None = None) -> Stack:
    """Start the mock and a proxy on it, and log in once."""
    port = free_port()
    mock = Service("mock twitch", [sys.executable, "-m", "proxy.mock_twitch", "--port", str(port),
                                   "--client-id", CLIENT_ID, "--client-secret", "bench-secret"],
                   port, cpus=LOAD_CPUS)
    try:
        proxy, _, login = start_proxy(directory, mock, store=store, extra=extra)
    except BaseException:
        mock.stop()
        raise
    return Stack(mock, proxy, login)


def start_proxy(directory: Path, mock: Service, *, store: str = "memory://", workers: int = 1,
                extra: dict[str, Any] | None = None,
                ) -> tuple[Service, ProxySetup, dict[str, Any]]:
    """A proxy (``workers`` gunicorn workers when more than one) on the running ``mock``,
    logged in once: the service, its set-up (store prefix) and the login's answer."""
    from cryptography.fernet import Fernet

    setup = ProxySetup(directory, id_url=mock.url, helix_url=f"{mock.url}/helix",
                       store_url=store, encryption_key=Fernet.generate_key().decode(),
                       extra={"twitch.scopes": SCOPES,
                              "twitch.eventsub_ws_url": f"ws://127.0.0.1:{mock.port}/ws",
                              # A thousand widgets on one address: no per-address limit;
                              # streams just closed count until the proxy's once-a-second
                              # check, while the next thousand open.
                              "limits.eventsub_per_minute": 0,
                              "limits.eventsub_streams_per_grant": 5000,
                              **(extra or {})})
    proxy = setup.start("proxy eventsub", workers=workers)
    try:
        login = asyncio.run(_login(URL(proxy.url)))
    except BaseException:
        proxy.stop()
        raise
    return proxy, setup, login


async def _login(base: URL) -> dict[str, Any]:
    """/login -> the mock's auto-approving consent -> /callback's JSON answer."""
    async with aiohttp.ClientSession() as session:
        for _ in range(150):
            try:
                async with session.get(base / "healthz") as health:
                    if health.status == 200:
                        break
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.2)
        async with session.get(base / "login", allow_redirects=False) as login:
            authorize = URL(login.headers["Location"])
            cookies = "; ".join(f"{name}={m.value}" for name, m in login.cookies.items())
        async with session.get(authorize, allow_redirects=False) as consent:
            back = URL(consent.headers["Location"])
        async with session.get((base / "callback").with_query(back.query),
                               headers={"Accept": "application/json",
                                        "Cookie": cookies}) as callback:
            body: dict[str, Any] = await callback.json()
            if callback.status != 200:
                raise RuntimeError(f"login failed: {callback.status} {body.get('error')}")
            return body


class MockControl:
    """The mock's EventSub controls, over one client session."""

    def __init__(self, session: aiohttp.ClientSession, mock_url: str) -> None:
        self._session = session
        self._base = mock_url + "/_mock/eventsub"

    async def _post(self, name: str, body: dict[str, Any]) -> Any:
        async with self._session.post(f"{self._base}/{name}", json=body) as answer:
            if answer.status != 200:
                raise RuntimeError(f"mock {name}: {answer.status} {await answer.text()}")
            return await answer.json()

    async def trigger(self, count: int = 1) -> dict[str, Any]:
        """``count`` follows to every subscription to them."""
        return dict(await self._post("trigger", {**FOLLOW, "count": count}))

    async def reconnect(self, user_id: str) -> dict[str, str]:
        """A ``session_reconnect`` to the user's sessions; their reconnect URLs."""
        return dict((await self._post("reconnect", {"user_id": user_id}))["reconnect_urls"])

    async def state(self) -> dict[str, Any]:
        async with self._session.get(f"{self._base}/state") as answer:
            return dict(await answer.json())

    async def sockets_closed(self, within: float = 5.0) -> None:
        """Until the mock has ended every closed socket's session (at most ``within`` s)."""
        for _ in range(round(within / 0.1)):
            if not (await self.state())["open_sockets"]:
                return
            await asyncio.sleep(0.1)

    async def notifications(self, after: int = 0) -> list[dict[str, Any]]:
        """The notifications the mock sent with a sequence above ``after``."""
        async with self._session.get(f"{self._base}/messages",
                                     params={"message_type": "notification"}) as answer:
            entries = (await answer.json())["messages"]
        return [entry for entry in entries if entry["sequence"] > after]

    async def last_sequence(self) -> int:
        async with self._session.get(f"{self._base}/messages") as answer:
            entries = (await answer.json())["messages"]
        return max((entry["sequence"] for entry in entries), default=0)


@dataclass(frozen=True)
class NaiveOutcome:
    """What ``count`` widgets opening their own Twitch sockets got."""

    sockets_opened: int
    subscribed: int
    refused: dict[int, int]
    open_sockets_at_twitch: int
    subscriptions_at_twitch: int
    total_cost: int


async def naive_widgets(mock_url: str, access_token: str, user_id: str,
                        count: int) -> NaiveOutcome:
    """``count`` widgets that each open an EventSub socket and subscribe to follows."""
    ws = URL(mock_url).with_scheme("ws").with_path("/ws")
    helix = f"{mock_url}/helix/eventsub/subscriptions"
    headers = {"Authorization": f"Bearer {access_token}", "Client-Id": CLIENT_ID}
    refused: dict[int, int] = {}
    async with aiohttp.ClientSession() as session:
        sockets = []

        async def widget() -> bool:
            socket = await session.ws_connect(ws)
            sockets.append(socket)
            welcome = await socket.receive_json(timeout=10)
            body = {**FOLLOW, "condition": {"broadcaster_user_id": user_id,
                                            "moderator_user_id": user_id},
                    "transport": {"method": "websocket",
                                  "session_id": welcome["payload"]["session"]["id"]}}
            async with session.post(helix, json=body, headers=headers) as answer:
                if answer.status == 202:
                    return True
                refused[answer.status] = refused.get(answer.status, 0) + 1
                return False

        try:
            subscribed = sum(await asyncio.gather(*(widget() for _ in range(count))))
            control = MockControl(session, mock_url)
            state = await control.state()
        finally:
            await asyncio.gather(*(socket.close() for socket in sockets))
    subs = [sub for s in state["sessions"] for sub in s["subscriptions"]]
    return NaiveOutcome(len(sockets), subscribed, refused, state["open_sockets"], len(subs),
                        sum(sub["cost"] for sub in subs))
