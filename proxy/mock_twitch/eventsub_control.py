"""The mock's ``/_mock/eventsub/*`` control endpoints: EventSub on demand, over HTTP.

Beside the mock's other ``/_mock/*`` endpoints (:mod:`.control`), in their
style: JSON bodies, a malformed one is a 400 ``{"error": ...}``. Where a body
selects sessions, ``session_id`` picks one and ``user_id`` those of one user
(the token's user that subscribed); with neither, every session.

- ``GET /_mock/eventsub/state``: open sockets (in all, per user, not yet
  subscribed), every session with its subscriptions and their costs, the
  disabled subscriptions, the timing knobs.
- ``GET /_mock/eventsub/messages?session_id=&message_type=``: every frame sent
  to a session (live or recently ended), in order, each with a ``sequence``
  that increases across the mock, its metadata, ``duplicate`` and, for a
  notification or revocation, ``subscription_id``. Without ``session_id``,
  those of every live session, by sequence.
- ``POST /_mock/eventsub/trigger`` ``{"type", "version"?, "session_id"?,
  "user_id"?, "subscription_id"?, "event"?: {...}, "count"?: 1,
  "duplicate"?: false}``: a notification to every matching enabled
  subscription (``user_id`` here also matches a user the condition names), with
  a realistic ``event`` (:mod:`.eventsub_catalog`) updated by ``event``;
  ``count`` events, each sent twice with one ``message_id`` if ``duplicate``.
  Answers ``{"matched", "sent": [{"session_id", "subscription_id",
  "message_id", "sequence"}], "undelivered"}``.
- ``POST /_mock/eventsub/resend`` ``{"session_id", "message_id"?}``: that
  notification or revocation (the last one by default) again, unchanged.
- ``POST /_mock/eventsub/reconnect`` ``{"session_id"?, "user_id"?}``: a
  ``session_reconnect``; answers ``{"reconnect_urls": {session id: url}}``.
- ``POST /_mock/eventsub/revoke`` ``{"subscription_id"?, "type"?,
  "session_id"?, "user_id"?, "status"?: "authorization_revoked"}``: a
  ``revocation`` (status also ``user_removed``, ``version_removed`` or
  ``moderator_removed``); answers ``{"revoked": [ids]}``.
- ``POST /_mock/eventsub/silence`` ``{"session_id"?, "user_id"?}``: the
  sessions' sockets go quiet (no keepalive, ping or message; what arrives is
  ignored), as a link that died without a close.
- ``POST /_mock/eventsub/drop`` ``{"session_id"?, "user_id"?, "code"?: 4000..4007,
  "cut"?: false}``: close with ``code`` (any of 1000..4999), or with ``"cut":
  true`` drop the TCP connection without a close frame; the sessions end.
- ``POST /_mock/eventsub/timing`` ``{"keepalive_floor"?, "reconnect_grace"?,
  "ping_interval"?}``: lower Twitch's 10 s keepalive floor and 30 s reconnect
  grace, or change how often sockets are pinged (default 10 s), for tests.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from .control import bad_control, json_body
from .eventsub_catalog import SUBSCRIPTION_TYPES, sample_event
from .eventsub_records import Session, Subscription
from .eventsub_state import EventSubState

__all__ = ["EventSubControlEndpoints"]

REVOCATION_STATUSES = frozenset(
    {"authorization_revoked", "user_removed", "version_removed", "moderator_removed"})
MAX_TRIGGER_COUNT = 1000


def _optional_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise bad_control(f"{name} must be a string")
    return value


def _sessions(events: EventSubState, body: dict[str, Any]) -> list[Session]:
    """The live sessions a body's ``session_id`` / ``user_id`` select (all without either)."""
    session_id, user_id = _optional_str(body, "session_id"), _optional_str(body, "user_id")
    return [session for session in events.sessions.values()
            if session_id in (None, session.id)
            and (user_id is None or (session.owner is not None and session.owner[1] == user_id))]


def _subscriptions(events: EventSubState, body: dict[str, Any]) -> list[Subscription]:
    """The enabled subscriptions a body selects by session, user, id, type and version."""
    user_id = _optional_str(body, "user_id")
    wanted = {name: _optional_str(body, name) for name in ("subscription_id", "type", "version")}
    session_id = _optional_str(body, "session_id")
    return [sub for session in events.sessions.values() if session_id in (None, session.id)
            for sub in session.subscriptions.values()
            if wanted["subscription_id"] in (None, sub.id)
            and wanted["type"] in (None, sub.type)
            and wanted["version"] in (None, sub.version)
            and (user_id is None or user_id == sub.user_id or user_id in sub.condition.values())]


def _selected(sessions: list[Session]) -> list[Session]:
    if not sessions:
        raise web.HTTPNotFound(text=json.dumps({"error": "no such session"}),
                               content_type="application/json")
    return sessions


class EventSubControlEndpoints:
    """The ``/_mock/eventsub/*`` handlers, over one :class:`EventSubState`."""

    def __init__(self, events: EventSubState) -> None:
        self._events = events

    def routes(self) -> list[web.RouteDef]:
        """The routes to add to the mock's app."""
        return [
            web.get("/_mock/eventsub/state", self.snapshot),
            web.get("/_mock/eventsub/messages", self.messages),
            web.post("/_mock/eventsub/trigger", self.trigger),
            web.post("/_mock/eventsub/resend", self.resend),
            web.post("/_mock/eventsub/reconnect", self.reconnect),
            web.post("/_mock/eventsub/revoke", self.revoke),
            web.post("/_mock/eventsub/silence", self.silence),
            web.post("/_mock/eventsub/drop", self.drop),
            web.post("/_mock/eventsub/timing", self.timing),
        ]

    async def snapshot(self, request: web.Request) -> web.Response:
        """``GET /_mock/eventsub/state``."""
        return web.json_response(self._events.snapshot())

    async def messages(self, request: web.Request) -> web.Response:
        """``GET /_mock/eventsub/messages?session_id=&message_type=``."""
        events = self._events
        session_id = request.query.get("session_id")
        if session_id is None:
            sessions = list(events.sessions.values())
        else:
            found = events.find_session(session_id)
            sessions = _selected([found] if found is not None else [])
        entries = sorted((entry for session in sessions for entry in session.log),
                         key=lambda entry: entry["sequence"])
        message_type = request.query.get("message_type")
        if message_type is not None:
            entries = [entry for entry in entries if entry["message_type"] == message_type]
        return web.json_response({"messages": entries})

    async def trigger(self, request: web.Request) -> web.Response:
        """``POST /_mock/eventsub/trigger``: notifications with realistic events."""
        events = self._events
        body = await json_body(request)
        if not isinstance(body.get("type"), str):
            raise bad_control("type is required")
        overrides, count = body.get("event", {}), body.get("count", 1)
        if not isinstance(overrides, dict):
            raise bad_control("event must be an object")
        if not isinstance(count, int) or not 1 <= count <= MAX_TRIGGER_COUNT:
            raise bad_control(f"count must be an integer from 1 to {MAX_TRIGGER_COUNT}")
        subs = _subscriptions(events, body)
        sent: list[dict[str, Any]] = []
        undelivered = 0
        for _ in range(count):
            events.serial += 1
            # One event per condition: sessions subscribed alike get the same event.
            bodies: dict[str, dict[str, Any]] = {}
            for sub in subs:
                key = json.dumps([sub.type, sub.version, sub.condition], sort_keys=True)
                if key not in bodies:
                    spec = SUBSCRIPTION_TYPES[(sub.type, sub.version)]
                    bodies[key] = {**sample_event(spec, sub.condition, serial=events.serial,
                                                  timestamp=events.now(), names=events.names),
                                   **overrides}
                entry = await events.notify(sub, bodies[key])
                if entry is None:
                    undelivered += 1
                    continue
                sent.append({"session_id": sub.session_id, "subscription_id": sub.id,
                             "message_id": entry["message_id"], "sequence": entry["sequence"]})
                if body.get("duplicate"):
                    await events.resend(events.sessions[sub.session_id], entry["message_id"])
        return web.json_response({"matched": len(subs), "sent": sent, "undelivered": undelivered})

    async def resend(self, request: web.Request) -> web.Response:
        """``POST /_mock/eventsub/resend`` ``{"session_id", "message_id"?}``."""
        body = await json_body(request)
        if not isinstance(body.get("session_id"), str):
            raise bad_control("session_id is required")
        session = _selected(_sessions(self._events, body))[0]
        message_id = await self._events.resend(session, _optional_str(body, "message_id"))
        if message_id is None:
            raise web.HTTPNotFound(text=json.dumps({"error": "no such message to resend"}),
                                   content_type="application/json")
        return web.json_response({"message_id": message_id})

    async def reconnect(self, request: web.Request) -> web.Response:
        """``POST /_mock/eventsub/reconnect`` ``{"session_id"?, "user_id"?}``."""
        urls: dict[str, str] = {}
        for session in _selected(_sessions(self._events, await json_body(request))):
            url = await self._events.reconnect(session)
            if url is not None:
                urls[session.id] = url
        return web.json_response({"reconnect_urls": urls})

    async def revoke(self, request: web.Request) -> web.Response:
        """``POST /_mock/eventsub/revoke`` with a selection and a ``status``."""
        body = await json_body(request)
        status = body.get("status", "authorization_revoked")
        if status not in REVOCATION_STATUSES:
            raise bad_control(f"status must be one of {sorted(REVOCATION_STATUSES)}")
        revoked = []
        for sub in _subscriptions(self._events, body):
            await self._events.revoke(sub, status)
            revoked.append(sub.id)
        return web.json_response({"revoked": revoked})

    async def silence(self, request: web.Request) -> web.Response:
        """``POST /_mock/eventsub/silence`` ``{"session_id"?, "user_id"?}``."""
        silenced = []
        for session in _selected(_sessions(self._events, await json_body(request))):
            for conn in session.connections():
                conn.silent = True
            silenced.append(session.id)
        return web.json_response({"silenced": silenced})

    async def drop(self, request: web.Request) -> web.Response:
        """``POST /_mock/eventsub/drop`` ``{"session_id"?, "user_id"?, "code"? | "cut"?}``."""
        body = await json_body(request)
        code, cut = body.get("code"), body.get("cut", False)
        if cut is not True and not (isinstance(code, int) and 1000 <= code <= 4999):
            raise bad_control('give a close "code" (1000..4999) or "cut": true')
        dropped = []
        for session in _selected(_sessions(self._events, body)):
            await self._events.drop(session, None if cut is True else code)
            dropped.append(session.id)
        return web.json_response({"dropped": dropped})

    async def timing(self, request: web.Request) -> web.Response:
        """``POST /_mock/eventsub/timing`` ``{"keepalive_floor"?, "reconnect_grace"?,
        "ping_interval"?}``."""
        events = self._events
        body = await json_body(request)
        floor = body.get("keepalive_floor", events.keepalive_floor)
        grace = body.get("reconnect_grace", events.reconnect_grace)
        ping = body.get("ping_interval", events.ping_interval)
        if not isinstance(floor, int) or not 1 <= floor <= 10:
            raise bad_control("keepalive_floor must be an integer from 1 to 10")
        numbers = (grace, ping)
        if not all(isinstance(value, (int, float)) and value > 0 for value in numbers):
            raise bad_control("reconnect_grace and ping_interval must be positive numbers")
        events.keepalive_floor, events.reconnect_grace = floor, float(grace)
        events.ping_interval = float(ping)
        return web.json_response(events.snapshot()["timing"])
