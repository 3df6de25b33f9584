"""``GET /eventsub`` and ``POST /eventsub/tickets``: Twitch's live events for widgets.

``GET /eventsub?type=channel.follow:2&type=channel.subscribe:1`` answers a
``text/event-stream`` (Server-Sent Events, through aiohttp-sse) fed by the
grant's EventSub session (:mod:`proxy.core.relay`: in this process, or led by
one process of several on Redis):

- ``event:`` the subscription type, ``id:`` a resumable event id, ``data:``
  Twitch's ``event`` object plus ``subscription_type`` and
  ``subscription_version``;
- typed control events: ``revoked`` (Twitch's status), ``gap`` (events were
  missed, with the ``reason``: a lost Twitch session, a ``Last-Event-ID``
  older than the buffer, Redis unreachable, the leading process gone),
  ``reauthorization_required`` (with ``login_url``), ``access_revoked`` (the
  key or grant was revoked) and ``error`` (a subscription refused, by Twitch
  with its status and message, or by the proxy's own limits);
- ``retry:`` at the start, and a comment line every ``heartbeat`` seconds
  (Heroku's router closes a response that sent nothing for 55 s);
- ``Last-Event-ID`` (the header a reconnecting ``EventSource`` sends, or the
  ``last_event_id`` query parameter for a new one) resumes from the buffer.

Conditions default to the grant's user; condition fields in the query
(``broadcaster_user_id=...``) are checked (:mod:`proxy.core.relay.catalog`).
Authentication: ``Authorization: Bearer tpk_...`` for fetch-based readers,
or ``?ticket=`` from ``POST /eventsub/tickets`` (made with the key in the
header) because ``EventSource`` cannot send headers; a request spends its
ticket only once everything else about it was accepted. A proxy key is never
accepted in a URL, nor a ticket anywhere but ``?ticket=``, and neither is ever
echoed in an error. An open stream lasts only as long as its key and grant:
revoking either ends it (:mod:`proxy.core.relay.access`). A grant holds at most
``limits.eventsub_streams_per_grant`` streams per process. Everything wrong with
a request is a JSON error before the stream starts; once it has started,
problems arrive as events.

:func:`setup_eventsub` registers the routes, the relay's start and stop, and
takes every service it needs as an argument. With a Redis store the relay is
:class:`~proxy.core.relay.redis_hub.RedisRelay`, one Twitch socket per grant
across every process; several workers on another store cannot share one, so
both routes answer 501 ``eventsub_needs_redis`` (:func:`~proxy.core.relay.backend.relay_mode`).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

from aiohttp import web
from aiohttp_sse import EventSourceResponse

from ...config import Config
from ...core.credential import proxy_key_in
from ...core.grant_records import ACTIVE, Grant
from ...core.relay.backend import NEEDS_REDIS, RelayBackend, relay_mode
from ...core.relay.catalog import CONDITION_FIELDS, check_request, resolve_subscriptions
from ...core.relay.local import Relay, RelaySettings
from ...core.relay.redis_hub import RedisRelay
from ...core.relay.subscriptions import HelixSubscriptions
from ...core.sealed_index import PROXY_KEY_PREFIX
from ...core.tickets import TICKET_PREFIX, TicketBook
from ...errors import (
    EventSubNeedsRedis,
    InvalidProxyKey,
    InvalidRequest,
    InvalidTicket,
    ReauthorizationRequired,
    TooManyStreams,
)
from ...services import Services
from ...store.redis import RedisStore
from ...telemetry.context import note_grant
from ...upstream.eventsub import EventSubSocket
from ..middleware.requestlog import put_request_id

__all__ = ["EventSubOptions", "setup_eventsub"]

log = logging.getLogger(__name__)

#: Query parameters besides the condition fields.
_PARAMETERS = frozenset(("type", "ticket", "last_event_id"))
#: At most this many types per stream (each is a subscription the grant shares).
_MAX_TYPES = 20
#: An unknown parameter's name is shown back only when it looks like one (never a secret).
_SHOWABLE_NAME = re.compile(r"[a-z_]{1,40}")


def _closed(request: web.Request) -> bool:
    """Whether the widget's connection is gone (aiohttp drops the transport when it is)."""
    transport = request.transport
    return transport is None or transport.is_closing()


def _secret_in_url(query: Mapping[str, str]) -> bool:
    """A proxy key anywhere in the query, or a ticket anywhere but ``?ticket=``."""
    for name, value in query.items():
        if PROXY_KEY_PREFIX in name or PROXY_KEY_PREFIX in value or TICKET_PREFIX in name:
            return True
        if name != "ticket" and TICKET_PREFIX in value:
            return True
    return False


@dataclass(frozen=True, slots=True)
class EventSubOptions:
    """How the live-events routes behave (``twitch.eventsub_ws_url`` and ``eventsub.*``)."""

    ws_url: str = "wss://eventsub.wss.twitch.tv/ws"
    #: What the EventSub socket asks Twitch for (10..600 seconds).
    keepalive_timeout: int = 30
    relay: RelaySettings = RelaySettings()
    ticket_ttl: float = 60.0
    #: Seconds between comment lines on an idle stream.
    heartbeat: float = 20.0
    #: What ``retry:`` tells an EventSource to wait before reconnecting, in ms.
    retry_ms: int = 3000
    #: With Redis: how long a grant's lease lasts unrenewed, and how often it is renewed.
    lease: float = 30.0
    lease_renew: float = 10.0

    @classmethod
    def from_config(cls, config: Config) -> EventSubOptions:
        """The options ``twitch.eventsub_ws_url`` and the ``eventsub`` section ask for."""
        eventsub = config.eventsub
        return cls(ws_url=config.twitch.eventsub_ws_url, keepalive_timeout=eventsub.keepalive,
                   relay=RelaySettings(grace=eventsub.grace,
                                       buffer_events=eventsub.buffer_events,
                                       buffer_age=eventsub.buffer_age),
                   ticket_ttl=eventsub.ticket_ttl, heartbeat=eventsub.heartbeat,
                   lease=eventsub.lease, lease_renew=eventsub.lease_renew)


class _EventSubRoutes:
    """The two handlers, over the services and the relay built at start-up."""

    def __init__(self, services: Services, options: EventSubOptions) -> None:
        self.services = services
        self.options = options
        self.tickets: TicketBook | None = None  # built with the relay, at start-up
        self._streams_per_grant = services.config.limits.eventsub_streams_per_grant
        self.relay: RelayBackend | None = None
        config = services.config
        #: Several workers on a store that cannot coordinate them: both routes refuse.
        self.refused = relay_mode(config.store.url, config.server.workers) == "refused"

    def build_relay(self) -> RelayBackend | None:
        """The relay, on the services opened at start-up (None when refused)."""
        if self.refused:
            log.warning("live events are off: %s", NEEDS_REDIS)
            return None
        services, options = self.services, self.options
        config = services.config
        api = HelixSubscriptions(services.helix_caller, helix_url=config.twitch.helix_url,
                                 refresher=services.refresher, grants=services.grants,
                                 login_url=config.server.login_url)

        def open_socket() -> EventSubSocket:
            return EventSubSocket(services.http_session, options.ws_url,
                                  keepalive_timeout=options.keepalive_timeout,
                                  observer=services.metrics.eventsub)

        store = services.store
        if isinstance(store, RedisStore):
            relay = RedisRelay(client=store.client, prefix=config.store.prefix, api=api,
                               open_socket=open_socket, login_url=config.server.login_url,
                               settings=options.relay, lease=options.lease,
                               renew=options.lease_renew, observer=services.metrics.eventsub)
            relay.start()
            return relay
        return Relay(api=api, open_socket=open_socket, login_url=config.server.login_url,
                     settings=options.relay, observer=services.metrics.eventsub)

    def check_available(self) -> None:
        """Refuse live events when they cannot work (see the module docstring)."""
        if self.refused:
            raise EventSubNeedsRedis(NEEDS_REDIS)

    async def issue_ticket(self, request: web.Request) -> web.Response:
        """``POST /eventsub/tickets`` with ``Authorization: Bearer tpk_...``."""
        self.check_available()
        key = proxy_key_in(request.headers.get("Authorization", ""))
        if key is None:
            raise InvalidProxyKey("Send Authorization: Bearer <proxy key>.")
        await self._grant_of(key)
        tickets = self._started(self.tickets)
        ticket = await tickets.issue(key)
        return web.json_response(
            {"ticket": ticket, "expires_in": int(tickets.ttl)}, status=201,
            headers={"Cache-Control": "no-store"})

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """``GET /eventsub``: see the module docstring."""
        self.check_available()
        query = request.query
        if _secret_in_url(query):
            raise InvalidRequest("A proxy key never goes in a URL, and a ticket only as "
                                 "?ticket=: send the key in the Authorization header, or get "
                                 "a ticket from POST /eventsub/tickets.")
        unknown = sorted(set(query) - _PARAMETERS - CONDITION_FIELDS)
        if unknown:
            shown = [name for name in unknown if _SHOWABLE_NAME.fullmatch(name)]
            raise InvalidRequest("Unknown query parameter(s): "
                                 + (", ".join(shown)[:200] or "(unreadable names)") + ".")
        for name in query:
            if name != "type" and len(query.getall(name)) > 1:
                raise InvalidRequest(f"{name} is given more than once.")
        types = query.getall("type", [])
        if len(types) > _MAX_TYPES:
            raise InvalidRequest(f"At most {_MAX_TYPES} types per stream.")
        conditions = {name: query[name] for name in query if name in CONDITION_FIELDS}
        check_request(types, conditions)  # before a ticket is spent on a typo
        key, grant = await self._authenticated(request)
        if not grant.user_id:
            raise InvalidRequest("This grant's Twitch user is not known yet; log in again.")
        keys = resolve_subscriptions(types, conditions, user_id=grant.user_id)
        relay, access = self.relay, self.services.stream_access
        if relay is None:
            raise web.HTTPServiceUnavailable(reason="starting")  # pragma: no cover
        if access.streams_of(grant.grant_id) >= self._streams_per_grant:
            raise TooManyStreams(f"This grant already has {self._streams_per_grant} open "
                                 "streams in this process; close some first.", retry_after=60)
        await self._spend_ticket(request, key)  # last: a refused request keeps its ticket
        note_grant(grant.grant_id)  # the request log names the grant, never the key
        last_event_id = request.headers.get("Last-Event-ID") or query.get("last_event_id")

        response = EventSourceResponse(ping_interval=self.options.heartbeat)
        response.headers["Cache-Control"] = "no-store"
        put_request_id(request, response)
        await response.prepare(request)
        await response.write(f"retry: {self.options.retry_ms}\n: connected\n\n".encode())
        outbox = relay.attach(grant.grant_id, grant.user_id, keys, last_event_id)
        # Revoking the key ends the stream; a widget that left is noticed within a second.
        access.add(key, grant.grant_id, outbox, gone=lambda: _closed(request))
        # The heartbeat task ends when a write fails: the widget went away.
        gone = asyncio.ensure_future(response.wait())
        gone.add_done_callback(lambda _: outbox.close("disconnected"))
        try:
            while (chunk := await outbox.take()) is not None:
                await response.write(chunk)
        except ConnectionResetError:
            pass  # the widget went away mid-write
        except asyncio.CancelledError:
            # With handler_cancellation, aiohttp cancels the handler when the
            # widget goes away: for the stream that is its normal end (it was a
            # 200, and the request log and metrics must say so). Any other
            # cancellation goes on.
            task = asyncio.current_task()
            if request.transport is not None or task is None or task.uncancel():
                raise
        finally:
            access.discard(key, outbox)
            relay.detach(outbox)
            response.stop_streaming()
            gone.cancel()
        return response

    async def _authenticated(self, request: web.Request) -> tuple[str, Grant]:
        """The key in the header, or the key a ticket was issued for, and its grant."""
        authorization = request.headers.get("Authorization", "")
        if authorization:
            key = proxy_key_in(authorization)
            if key is None:
                raise InvalidProxyKey("The Authorization header must be 'Bearer <proxy key>'.")
        else:
            ticket = request.query.get("ticket", "")
            if not ticket:
                raise InvalidProxyKey("Send Authorization: Bearer <proxy key>, or a ticket "
                                      "from POST /eventsub/tickets as ?ticket=.")
            key = await self._started(self.tickets).peek(ticket)
            if key is None:
                raise InvalidTicket("This ticket is unknown, used or expired: get a new one "
                                    "from POST /eventsub/tickets.")
        grant = await self._grant_of(key)
        grants = self.services.grants
        fresh = await self.services.refresher.ensure_fresh(grant)
        if fresh is not grant:
            grants.remember(fresh)
        return key, fresh

    async def _spend_ticket(self, request: web.Request, key: str) -> None:
        """Spend the request's ticket, if it came with one; of racing requests one wins."""
        if request.headers.get("Authorization"):
            return
        if await self._started(self.tickets).redeem(request.query["ticket"]) != key:
            raise InvalidTicket("This ticket is unknown, used or expired: get a new one "
                                "from POST /eventsub/tickets.")

    @staticmethod
    def _started(tickets: TicketBook | None) -> TicketBook:
        if tickets is None:
            raise web.HTTPServiceUnavailable(reason="starting")  # pragma: no cover
        return tickets

    async def _grant_of(self, key: str) -> Grant:
        grant = await self.services.grants.grant_for_key(key)
        if grant is None:
            raise InvalidProxyKey("This proxy key is unknown or was revoked.")
        if grant.state != ACTIVE:
            raise ReauthorizationRequired("Twitch no longer accepts this grant: log in again.",
                                          login_url=self.services.config.server.login_url)
        return grant


def _relay_ctx(routes: _EventSubRoutes) -> Callable[[web.Application], AsyncIterator[None]]:
    async def eventsub_relay_ctx(app: web.Application) -> AsyncIterator[None]:
        routes.relay = routes.build_relay()
        # On the opened grant store: every worker sees every ticket.
        routes.tickets = TicketBook(routes.services.grants, ttl=routes.options.ticket_ttl)
        access = routes.services.stream_access
        access.start()
        yield
        await access.aclose()
        if routes.relay is not None:
            await routes.relay.aclose()
    return eventsub_relay_ctx


def setup_eventsub(app: web.Application, services: Services, *,
                   options: EventSubOptions | None = None) -> None:
    """Register ``GET /eventsub`` and ``POST /eventsub/tickets``.

    ``options`` default to the configuration's (:meth:`EventSubOptions.from_config`).
    Call it after the services' cleanup context is appended (the relay is
    built on the opened services) and before CORS is set up (the routes get
    the same CORS as ``/helix``). At shutdown the widgets' streams end first,
    so that the server does not wait for them.
    """
    routes = _EventSubRoutes(services, options or EventSubOptions.from_config(services.config))
    app.cleanup_ctx.append(_relay_ctx(routes))

    async def end_streams(app: web.Application) -> None:
        if routes.relay is not None:
            await routes.relay.aclose()

    app.on_shutdown.append(end_streams)
    app.router.add_get("/eventsub", routes.stream, name="eventsub")
    app.router.add_post("/eventsub/tickets", routes.issue_ticket, name="eventsub_tickets")
