"""The mock Twitch as an aiohttp app: :func:`create_mock_app`, its AppKey, and :func:`main`.

The app factory only wires things up (no I/O); :func:`main` serves the app on
its own, for a proxy running in another process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Sequence

from aiohttp import web
from yarl import URL

from .control import ControlEndpoints
from .eventsub_control import EventSubControlEndpoints
from .eventsub_helix import EVENTSUB_ROUTES
from .eventsub_socket import EventSubSocketEndpoint
from .helix import HELIX_ROUTES, HelixEndpoints
from .oauth import OAuthEndpoints
from .state import USER_ACCESS_TTL, MockTwitch

__all__ = ["create_mock_app", "main", "mock_twitch_key"]

mock_twitch_key = web.AppKey("mock_twitch_key", MockTwitch)


async def _release_held_refreshes(app: web.Application) -> None:
    # Shutdown waits for running handlers; a parked refresh would stall it.
    held = app[mock_twitch_key].hold_refresh
    if held is not None:
        held.set()


async def _close_eventsub_sockets(app: web.Application) -> None:
    # Shutdown waits for running handlers, and a WebSocket's runs until it closes.
    await app[mock_twitch_key].eventsub.close_all()


def create_mock_app(
    *,
    client_id: str = "mock-client-id",
    client_secret: str = "mock-client-secret",
    access_ttl: int = USER_ACCESS_TTL,
    auto_approve: bool = True,
    state: MockTwitch | None = None,
) -> web.Application:
    """Build the mock Twitch app; pass ``state`` to share one :class:`MockTwitch`.

    The other arguments only apply when ``state`` is None. The state is on the
    app under :data:`mock_twitch_key`; the handlers of every endpoint (see
    :mod:`~proxy.mock_twitch.control` for the ``/_mock/*`` ones) answer from it.
    """
    mock = state or MockTwitch(
        client_id=client_id,
        client_secret=client_secret,
        access_ttl=access_ttl,
        auto_approve=auto_approve,
    )
    app = web.Application()
    app[mock_twitch_key] = mock
    app.on_shutdown.append(_release_held_refreshes)
    app.on_shutdown.append(_close_eventsub_sockets)
    app.add_routes(OAuthEndpoints(mock).routes())
    app.add_routes(HelixEndpoints(mock, {**HELIX_ROUTES, **EVENTSUB_ROUTES}).routes())
    app.add_routes(EventSubSocketEndpoint(mock.eventsub).routes())
    app.add_routes(EventSubControlEndpoints(mock.eventsub).routes())
    app.add_routes(ControlEndpoints(mock).routes())
    return app


async def _serve(app: web.Application, host: str, port: int) -> None:
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        bound_port = runner.addresses[0][1]  # the real one when port is 0
        print(URL.build(scheme="http", host=host, port=bound_port), flush=True)
        await asyncio.Event().wait()  # until interrupted
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    """Run the mock alone: ``python -m proxy.mock_twitch --port 8081``; prints its URL."""
    parser = argparse.ArgumentParser(
        prog="python -m proxy.mock_twitch", description="A fake Twitch for testing the proxy."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081, help="0 picks a free port")
    parser.add_argument("--client-id", default="mock-client-id")
    parser.add_argument("--client-secret", default="mock-client-secret")
    parser.add_argument("--access-ttl", type=int, default=USER_ACCESS_TTL)
    parser.add_argument(
        "--consent-page",
        action="store_true",
        help="show the consent page instead of auto-approving",
    )
    args = parser.parse_args(argv)
    app = create_mock_app(
        client_id=args.client_id,
        client_secret=args.client_secret,
        access_ttl=args.access_ttl,
        auto_approve=not args.consent_page,
    )
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how one stops it
        asyncio.run(_serve(app, args.host, args.port))
