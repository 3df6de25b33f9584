"""A fake Twitch (id.twitch.tv plus a slice of Helix) to test the proxy over real HTTP.

Point the proxy's ``id_url`` at the mock's root and its ``helix_url`` at
``<root>/helix``. The mock keeps every user, code and token in one
:class:`MockTwitch` object, stored on the app under :data:`mock_twitch_key`,
so a test can look inside, mint tokens without a browser, expire or revoke
them, and inject faults and latency. What it answers, and with which bodies,
follows Twitch's documentation and observed behaviour; where Twitch is loose
the mock is strict (refresh tokens are single use and always contain ``/`` and
``%``), so that a proxy that passes here also copes with the real thing.

Endpoints:

- ``GET|POST /oauth2/authorize``: the code flow; auto-approves by default,
  otherwise a consent page whose form posts back here.
- ``POST /oauth2/token``: ``authorization_code``, ``refresh_token``,
  ``client_credentials`` and the device-code grant; form-encoded bodies only.
- ``GET /oauth2/validate``, ``POST /oauth2/revoke``, ``POST /oauth2/device``.
- ``/helix/users``, ``/helix/streams``, ``/helix/subscriptions``,
  ``/helix/chat/messages``, ``PATCH /helix/channels`` and any ``DELETE``;
  every other Helix path is a 404.
- ``/_mock/...``: the same knobs over HTTP, for a proxy (and its tests) running
  in another process; see :func:`create_mock_app`.

Run it alone with ``python -m proxy.mock_twitch --port 8081``; it prints its URL.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import html
import json
import math
import secrets
import string
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy, MultiDictProxy, MultiMapping
from yarl import URL

__all__ = [
    "HelixRequest",
    "MockTwitch",
    "create_mock_app",
    "main",
    "mock_twitch_key",
]

DEFAULT_USER_ID = "141981764"
DEFAULT_USER_LOGIN = "twitchdev"
DEFAULT_USER_DISPLAY_NAME = "TwitchDev"

USER_ACCESS_TTL = 14124  # what Twitch answers for user tokens, in seconds
APP_ACCESS_TTL = 5011271  # what Twitch answers for client_credentials
CODE_TTL = 600  # authorization codes live ten minutes
DEVICE_CODE_TTL = 1800
RATELIMIT_WINDOW = 60
HELIX_MAX_IDS = 100

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
# grant_type -> the suffix of its "token:<suffix>" entry in MockTwitch.calls
COUNTED_GRANTS = {
    "authorization_code": "authorization_code",
    "refresh_token": "refresh_token",
    "client_credentials": "client_credentials",
    DEVICE_GRANT: "device_code",
}
# fail_next keys: one per endpoint that can be told to misbehave.
FAILABLE_ENDPOINTS = frozenset({"authorize", "token", "validate", "revoke", "device", "helix"})

# A few scopes get a human sentence on the consent page; the rest show their name.
SCOPE_DESCRIPTIONS = {
    "channel:read:subscriptions": "View a list of all subscribers to your channel",
    "user:write:chat": "Send chat messages as you",
    "user:read:chat": "Receive chat messages in channels you are in",
    "channel:manage:broadcast": "Manage your broadcast configuration",
    "moderator:read:followers": "Read the followers of a channel you moderate",
    "bits:read": "View Bits information for your channel",
}

_TOKEN_ALPHABET = string.ascii_lowercase + string.digits
# Percent escapes put inside refresh tokens: a proxy that forgets to URL-encode
# the token in a form body sends a string that the server decodes differently.
_PERCENT_ESCAPES = ("%2F", "%3D", "%2B", "%25")


def _random_token(length: int = 30) -> str:
    """Return a Twitch-looking access token: lowercase letters and digits."""
    return "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(length))


def _random_refresh_token() -> str:
    """Return a refresh token that always holds a ``/`` and a ``%`` escape."""
    head, middle, tail = _random_token(24), _random_token(12), _random_token(10)
    return f"{head}/{middle}{secrets.choice(_PERCENT_ESCAPES)}{tail}"


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class User:
    """A Twitch user as Helix describes it."""

    id: str
    login: str
    display_name: str
    description: str = ""
    profile_image_url: str = ""
    offline_image_url: str = ""
    created_at: str = "2016-12-14T20:32:28Z"

    def helix(self) -> dict[str, Any]:
        """Return the user in the shape of ``GET /helix/users``."""
        return {
            "id": self.id,
            "login": self.login,
            "display_name": self.display_name,
            "type": "",
            "broadcaster_type": "",
            "description": self.description,
            "profile_image_url": self.profile_image_url,
            "offline_image_url": self.offline_image_url,
            "view_count": 0,
            "created_at": self.created_at,
        }


@dataclass
class AccessToken:
    """A live access token; ``user_id`` is None for an app token."""

    value: str
    client_id: str
    user_id: str | None
    scopes: list[str]
    expires_at: float
    # The refresh token minted alongside, so revoking it can kill this one too.
    refresh_token: str | None = None


@dataclass
class RefreshToken:
    """A refresh token that has not been used, revoked or rotated yet."""

    value: str
    client_id: str
    user_id: str
    scopes: list[str]


@dataclass
class AuthorizationCode:
    """A code handed out by /oauth2/authorize and not yet exchanged."""

    value: str
    client_id: str
    redirect_uri: str
    scopes: list[str]
    user_id: str
    expires_at: float


@dataclass
class DeviceCode:
    """A pending device-code login; ``user_id`` is set once it is approved."""

    device_code: str
    user_code: str
    client_id: str
    scopes: list[str]
    expires_at: float
    user_id: str | None = None


@dataclass
class Stream:
    """A live stream as ``GET /helix/streams`` shows it."""

    id: str
    user: User
    title: str
    game_name: str
    viewer_count: int
    started_at: float

    def helix(self) -> dict[str, Any]:
        """Return the stream in the shape of ``GET /helix/streams``."""
        return {
            "id": self.id,
            "user_id": self.user.id,
            "user_login": self.user.login,
            "user_name": self.user.display_name,
            "game_id": "509658",
            "game_name": self.game_name,
            "type": "live",
            "title": self.title,
            "tags": [],
            "viewer_count": self.viewer_count,
            "started_at": _iso(self.started_at),
            "language": "en",
            "thumbnail_url": "https://static-cdn.jtvnw.net/previews-ttv/"
            f"live_user_{self.user.login}-{{width}}x{{height}}.jpg",
            "tag_ids": [],
            "is_mature": False,
        }


@dataclass(frozen=True)
class HelixRequest:
    """One request that reached ``/helix``, as the mock received it.

    ``path`` is the part after ``/helix`` (``"/users"``), ``query_string`` is
    raw (still percent-encoded), ``headers`` is case-insensitive.
    """

    method: str
    path: str
    query_string: str
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def query(self) -> MultiDictProxy[str]:
        """The decoded query parameters."""
        return URL.build(query_string=self.query_string, encoded=True).query


@dataclass
class _RateLimitBucket:
    reset_at: float
    used: int = 0


class MockTwitch:
    """Everything the mock knows, plus the knobs a test turns.

    Plain state: creating one does no I/O. Expiry is judged by :meth:`now`, so
    a test moves time with :meth:`advance` instead of sleeping.
    """

    def __init__(
        self,
        *,
        client_id: str = "mock-client-id",
        client_secret: str = "mock-client-secret",
        access_ttl: int = USER_ACCESS_TTL,
        auto_approve: bool = True,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.access_ttl = access_ttl
        self.app_access_ttl = APP_ACCESS_TTL
        self.auto_approve = auto_approve
        self.app_name = "Mock Widget App"
        # The user "logged in" at the mock: the one who approves every consent.
        self.signed_in_user_id = DEFAULT_USER_ID
        # None accepts any redirect_uri; a set demands an exact match, like Twitch.
        self.registered_redirect_uris: set[str] | None = None

        self.calls: collections.Counter[str] = collections.Counter()
        self.helix_requests: list[HelixRequest] = []
        self.sent_chat_messages: list[dict[str, Any]] = []
        # Requests that presented a refresh token which had already been rotated.
        self.refresh_reuses = 0

        self.token_delay = 0.0
        self.helix_delay = 0.0
        self.hold_refresh: asyncio.Event | None = None
        self.fail_next: dict[str, list[tuple[int, Any]]] = {}
        self.ratelimit_limit = 800
        self.clock_offset = 0.0

        self.users: dict[str, User] = {}
        self.codes: dict[str, AuthorizationCode] = {}
        self.device_codes: dict[str, DeviceCode] = {}
        self.access_tokens: dict[str, AccessToken] = {}
        self.refresh_tokens: dict[str, RefreshToken] = {}
        self.spent_refresh_tokens: set[str] = set()
        self.streams: dict[str, Stream] = {}
        self._ratelimit_buckets: dict[str, _RateLimitBucket] = {}

        self.add_user(
            DEFAULT_USER_ID,
            DEFAULT_USER_LOGIN,
            DEFAULT_USER_DISPLAY_NAME,
            description="Supporting third-party developers building Twitch integrations "
            "from chatbots to game integrations.",
        )

    # -- time --------------------------------------------------------------

    def now(self) -> float:
        """The mock's clock: wall time plus whatever :meth:`advance` added."""
        return time.time() + self.clock_offset

    def advance(self, seconds: float) -> None:
        """Move the mock's clock forward (codes, tokens and rate limits age)."""
        self.clock_offset += seconds

    # -- users and streams -------------------------------------------------

    def add_user(
        self,
        user_id: str,
        login: str,
        display_name: str | None = None,
        *,
        description: str = "",
    ) -> None:
        """Create (or replace) a user that Helix and the token grants know."""
        self.users[user_id] = User(
            id=user_id,
            login=login,
            display_name=display_name or login,
            description=description,
            profile_image_url="https://static-cdn.jtvnw.net/jtv_user_pictures/"
            f"{login}-profile_image-300x300.png",
            offline_image_url="https://static-cdn.jtvnw.net/jtv_user_pictures/"
            f"{login}-channel_offline_image-1920x1080.png",
        )

    def user_by_login(self, login: str) -> User | None:
        """Return the user with that login (case-insensitive), if any."""
        login = login.lower()
        return next((user for user in self.users.values() if user.login == login), None)

    def set_live(
        self,
        user_id: str,
        title: str = "Mock stream",
        game_name: str = "Just Chatting",
        *,
        viewer_count: int = 42,
    ) -> None:
        """Make the user's stream show up in ``GET /helix/streams``."""
        self.streams[user_id] = Stream(
            id=str(secrets.randbelow(10**11)),
            user=self.users[user_id],
            title=title,
            game_name=game_name,
            viewer_count=viewer_count,
            started_at=self.now(),
        )

    def set_offline(self, user_id: str) -> None:
        """End the user's stream, if it is live."""
        self.streams.pop(user_id, None)

    # -- tokens --------------------------------------------------------------

    def issue_tokens(self, user_id: str, scopes: list[str]) -> dict[str, Any]:
        """Grant the user's consent without a browser; return Twitch's token JSON."""
        if user_id not in self.users:
            raise KeyError(f"unknown user {user_id!r}")
        return self.mint_user_tokens(self.client_id, user_id, scopes)

    def mint_user_tokens(self, client_id: str, user_id: str, scopes: list[str], *,
                         with_refresh_token: bool = True) -> dict[str, Any]:
        """Create a user access token and its refresh token; return Twitch's token JSON.

        Without ``with_refresh_token`` the access token stands alone, as one
        from Twitch's implicit flow or a token generator site would.
        """
        scopes = list(scopes)
        refresh = RefreshToken(_random_refresh_token(), client_id, user_id, scopes) \
            if with_refresh_token else None
        access = AccessToken(
            value=_random_token(),
            client_id=client_id,
            user_id=user_id,
            scopes=scopes,
            expires_at=self.now() + self.access_ttl,
            refresh_token=refresh.value if refresh else None,
        )
        if refresh is not None:
            self.refresh_tokens[refresh.value] = refresh
        self.access_tokens[access.value] = access
        answer: dict[str, Any] = {
            "access_token": access.value,
            "expires_in": self.access_ttl,
            "scope": scopes,
            "token_type": "bearer",
        }
        if refresh is not None:
            answer["refresh_token"] = refresh.value
        return answer

    def mint_app_token(self, client_id: str) -> dict[str, Any]:
        """Create an app access token (client_credentials); return Twitch's token JSON."""
        access = AccessToken(
            value=_random_token(),
            client_id=client_id,
            user_id=None,
            scopes=[],
            expires_at=self.now() + self.app_access_ttl,
        )
        self.access_tokens[access.value] = access
        return {
            "access_token": access.value,
            "expires_in": self.app_access_ttl,
            "token_type": "bearer",
        }

    def live_access_token(self, value: str) -> AccessToken | None:
        """Return the access token if it exists and has not expired."""
        token = self.access_tokens.get(value)
        if token is None or token.expires_at <= self.now():
            return None
        return token

    def expire_access_tokens(self, user_id: str | None = None) -> int:
        """Expire every live user access token (or only that user's); return how many."""
        return self._expire(
            lambda token: token.user_id is not None and user_id in (None, token.user_id)
        )

    def expire_app_tokens(self) -> int:
        """Expire every live app access token; return how many."""
        return self._expire(lambda token: token.user_id is None)

    def _expire(self, selected: Callable[[AccessToken], bool]) -> int:
        now = self.now()
        count = 0
        for token in self.access_tokens.values():
            if token.expires_at > now and selected(token):
                token.expires_at = now - 1
                count += 1
        return count

    def revoke_refresh_tokens(self, user_id: str | None = None) -> int:
        """Kill every refresh token (or that user's) and their users' access tokens.

        What a password change or "Disconnect" on twitch.tv does. Returns the
        number of refresh tokens revoked.
        """
        doomed = [
            value
            for value, token in self.refresh_tokens.items()
            if user_id in (None, token.user_id)
        ]
        for value in doomed:
            del self.refresh_tokens[value]
        self.access_tokens = {
            value: token
            for value, token in self.access_tokens.items()
            if token.user_id is None or user_id not in (None, token.user_id)
        }
        return len(doomed)

    def revoke(self, value: str) -> bool:
        """Revoke one access or refresh token (a refresh token takes its access tokens)."""
        if self.access_tokens.pop(value, None) is not None:
            return True
        if self.refresh_tokens.pop(value, None) is None:
            return False
        self.access_tokens = {
            key: token for key, token in self.access_tokens.items() if token.refresh_token != value
        }
        return True

    def approve_device(self, user_code: str, user_id: str | None = None) -> None:
        """Approve a pending device-code login as that user (default: the signed-in one)."""
        for pending in self.device_codes.values():
            if pending.user_code == user_code:
                pending.user_id = user_id or self.signed_in_user_id
                return
        raise KeyError(f"unknown user code {user_code!r}")

    # -- counters and knobs ------------------------------------------------

    def reset_calls(self) -> None:
        """Forget every counted call and recorded Helix request."""
        self.calls.clear()
        self.helix_requests.clear()
        self.refresh_reuses = 0

    def queue_failure(
        self, endpoint: str, status: int, body: Any = None, *, times: int = 1
    ) -> None:
        """Answer the endpoint's next ``times`` calls with ``status`` and ``body``.

        ``body`` may be a dict or list (sent as JSON), a str (sent as text/html,
        like a load balancer's error page) or None (empty).
        """
        if endpoint not in FAILABLE_ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}")
        self.fail_next.setdefault(endpoint, []).extend([(status, body)] * times)

    def take_failure(self, endpoint: str) -> web.Response | None:
        """Pop the endpoint's next queued failure, rendered as a response."""
        queue = self.fail_next.get(endpoint)
        if not queue:
            return None
        status, body = queue.pop(0)
        if body is None:
            return web.Response(status=status)
        if isinstance(body, str):
            return web.Response(status=status, text=body, content_type="text/html")
        return web.json_response(body, status=status)

    def reset_ratelimits(self) -> None:
        """Start every rate-limit bucket afresh."""
        self._ratelimit_buckets.clear()

    def ratelimit(self, bucket_key: str, *, consume: bool) -> tuple[bool, dict[str, str]]:
        """Count a request against a bucket; return (allowed, Ratelimit-* headers)."""
        now = self.now()
        bucket = self._ratelimit_buckets.get(bucket_key)
        if bucket is None or now >= bucket.reset_at:
            bucket = self._ratelimit_buckets[bucket_key] = _RateLimitBucket(now + RATELIMIT_WINDOW)
        allowed = bucket.used < self.ratelimit_limit
        if consume and allowed:
            bucket.used += 1
        headers = {
            "Ratelimit-Limit": str(self.ratelimit_limit),
            "Ratelimit-Remaining": str(max(self.ratelimit_limit - bucket.used, 0)),
            "Ratelimit-Reset": str(math.ceil(bucket.reset_at)),
        }
        return allowed, headers


mock_twitch_key = web.AppKey("mock_twitch_key", MockTwitch)


def _state(request: web.Request) -> MockTwitch:
    return request.app[mock_twitch_key]


def _id_error(status: int, message: str) -> web.Response:
    """An id.twitch.tv error: ``{"status": ..., "message": ...}``."""
    return web.json_response({"status": status, "message": message}, status=status)


def _helix_error(status: int, message: str) -> web.Response:
    """A Helix error: ``{"error": <reason>, "status": ..., "message": ...}``."""
    body = {"error": HTTPStatus(status).phrase, "status": status, "message": message}
    return web.json_response(body, status=status)


async def _form(request: web.Request) -> dict[str, str]:
    """The form-encoded body as a dict (first value wins); empty for any other body."""
    if request.content_type != "application/x-www-form-urlencoded":
        return {}
    fields: dict[str, str] = {}
    for name, value in (await request.post()).items():
        if isinstance(value, str):
            fields.setdefault(name, value)
    return fields


# -- /oauth2/authorize -------------------------------------------------------


def _check_authorize(state: MockTwitch, params: dict[str, str]) -> web.Response | None:
    """Refuse an authorize request that no browser should be redirected from."""
    if params.get("client_id") != state.client_id:
        return _id_error(400, "invalid client")
    if params.get("response_type") != "code":
        return _id_error(400, "unsupported response_type")
    redirect_uri = params.get("redirect_uri", "")
    if not redirect_uri or not URL(redirect_uri).absolute:
        return _id_error(400, "missing or invalid redirect_uri")
    if (
        state.registered_redirect_uris is not None
        and redirect_uri not in state.registered_redirect_uris
    ):
        return _id_error(400, "Parameter redirect_uri does not match registered URI")
    return None


def _redirect(params: dict[str, str], answer: dict[str, str]) -> web.HTTPFound:
    if "state" in params:
        answer["state"] = params["state"]
    return web.HTTPFound(str(URL(params["redirect_uri"]).update_query(answer)))


def _approve(state: MockTwitch, params: dict[str, str]) -> web.HTTPFound:
    scopes = params.get("scope", "").split()
    code = AuthorizationCode(
        value=_random_token(),
        client_id=state.client_id,
        redirect_uri=params["redirect_uri"],
        scopes=scopes,
        user_id=state.signed_in_user_id,
        expires_at=state.now() + CODE_TTL,
    )
    state.codes[code.value] = code
    return _redirect(params, {"code": code.value, "scope": " ".join(scopes)})


def _deny(params: dict[str, str]) -> web.HTTPFound:
    return _redirect(
        params,
        {"error": "access_denied", "error_description": "The user denied you access"},
    )


async def authorize(request: web.Request) -> web.Response:
    """``GET /oauth2/authorize``: approve, deny, or show the consent page."""
    state = _state(request)
    state.calls["authorize"] += 1
    if (failure := state.take_failure("authorize")) is not None:
        return failure
    params = dict(request.query)
    if (refusal := _check_authorize(state, params)) is not None:
        return refusal
    if "deny" in params:
        raise _deny(params)
    if state.auto_approve:
        raise _approve(state, params)
    return _consent_page(state, params)


async def authorize_decision(request: web.Request) -> web.Response:
    """``POST /oauth2/authorize``: the consent page's Authorize or Cancel button."""
    state = _state(request)
    params = await _form(request)
    decision = params.pop("decision", "")
    if (refusal := _check_authorize(state, params)) is not None:
        return refusal
    if decision == "authorize":
        raise _approve(state, params)
    raise _deny(params)


_CONSENT_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Authorize {app} - Mock Twitch</title>
<style>
body {{ margin: 0; font-family: system-ui, sans-serif; background: #0e0e10; color: #efeff1; }}
main {{ max-width: 26rem; margin: 3rem auto; padding: 2rem; background: #18181b;
        border-radius: 0.5rem; }}
h1 {{ font-size: 1.25rem; }}
.brand {{ color: #bf94ff; font-weight: 700; }}
li {{ margin: 0.5rem 0; }}
code {{ color: #adadb8; }}
.buttons {{ display: flex; gap: 0.75rem; margin-top: 1.5rem; }}
button {{ flex: 1; padding: 0.6rem; font: inherit; font-weight: 600; border: 0;
          border-radius: 0.25rem; cursor: pointer; }}
button:focus-visible {{ outline: 3px solid #bf94ff; outline-offset: 2px; }}
.authorize {{ background: #9146ff; color: #fff; }}
.cancel {{ background: #2f2f35; color: #efeff1; }}
</style>
</head>
<body>
<main>
<p class="brand">Mock Twitch</p>
<h1>{app} wants to access your account</h1>
<p>Signed in as <strong>{user}</strong>.</p>
<h2 id="scopes-heading">This will allow {app} to:</h2>
<ul aria-labelledby="scopes-heading">
{scopes}
</ul>
<form method="post" action="/oauth2/authorize">
{hidden}
<div class="buttons">
<button type="submit" class="cancel" name="decision" value="cancel">Cancel</button>
<button type="submit" class="authorize" name="decision" value="authorize">Authorize</button>
</div>
</form>
</main>
</body>
</html>
"""


def _consent_page(state: MockTwitch, params: dict[str, str]) -> web.Response:
    scopes = params.get("scope", "").split()
    scope_items = (
        "\n".join(
            f"<li>{html.escape(SCOPE_DESCRIPTIONS.get(scope, scope))} "
            f"<code>{html.escape(scope)}</code></li>"
            for scope in scopes
        )
        or "<li>Access your public account information</li>"
    )
    carried = ("client_id", "redirect_uri", "response_type", "scope", "state", "force_verify")
    hidden = "\n".join(
        f'<input type="hidden" name="{name}" value="{html.escape(params[name])}">'
        for name in carried
        if name in params
    )
    user = state.users[state.signed_in_user_id]
    page = _CONSENT_PAGE.format(
        app=html.escape(state.app_name),
        user=html.escape(user.display_name),
        scopes=scope_items,
        hidden=hidden,
    )
    response = web.Response(text=page, content_type="text/html")
    # Proves the page needs nothing from elsewhere: no scripts, no remote files.
    response.headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'"
    return response


# -- /oauth2/token -----------------------------------------------------------


def _check_client(
    state: MockTwitch, form: dict[str, str], *, secret_required: bool
) -> web.Response | None:
    client_id = form.get("client_id")
    if not client_id:
        return _id_error(400, "missing client id")
    if client_id != state.client_id:
        return _id_error(400, "invalid client")
    secret = form.get("client_secret")
    if secret is None and not secret_required:
        return None
    if not secret:
        return _id_error(400, "missing client secret")
    if not secrets.compare_digest(secret, state.client_secret):
        return _id_error(403, "invalid client secret")
    return None


def _authorization_code_grant(state: MockTwitch, form: dict[str, str]) -> web.Response:
    code = state.codes.get(form.get("code", ""))
    if code is None or code.expires_at <= state.now() or code.client_id != form["client_id"]:
        return _id_error(400, "Invalid authorization code")
    if form.get("redirect_uri") != code.redirect_uri:
        return _id_error(400, "Parameter redirect_uri does not match registered URI")
    del state.codes[code.value]  # single use
    return web.json_response(state.mint_user_tokens(code.client_id, code.user_id, code.scopes))


async def _refresh_token_grant(
    state: MockTwitch, form: dict[str, str], request: web.Request
) -> web.Response:
    if state.hold_refresh is not None:
        await state.hold_refresh.wait()
        # The proxy may have been killed while we held it. Twitch would not have
        # processed a request whose sender vanished, so leave the token unspent.
        if request.transport is None or request.transport.is_closing():
            return web.Response(status=503)
    value = form.get("refresh_token", "")
    refresh = state.refresh_tokens.get(value)
    if refresh is None or refresh.client_id != form["client_id"]:
        if value in state.spent_refresh_tokens:
            state.refresh_reuses += 1
        return _id_error(400, "Invalid refresh token")
    # Rotation: the old refresh token dies now; its access token lives on to expiry.
    del state.refresh_tokens[value]
    state.spent_refresh_tokens.add(value)
    return web.json_response(
        state.mint_user_tokens(refresh.client_id, refresh.user_id, refresh.scopes)
    )


def _device_code_grant(state: MockTwitch, form: dict[str, str]) -> web.Response:
    pending = state.device_codes.get(form.get("device_code", ""))
    if pending is None or pending.expires_at <= state.now():
        return _id_error(400, "invalid device code")
    if pending.user_id is None:
        return _id_error(400, "authorization_pending")
    del state.device_codes[pending.device_code]
    return web.json_response(
        state.mint_user_tokens(pending.client_id, pending.user_id, pending.scopes)
    )


async def token(request: web.Request) -> web.Response:
    """``POST /oauth2/token``: every grant, from a form-encoded body only."""
    state = _state(request)
    form = await _form(request)
    grant_type = form.get("grant_type", "")
    state.calls["token"] += 1
    if grant_type in COUNTED_GRANTS:
        state.calls[f"token:{COUNTED_GRANTS[grant_type]}"] += 1
    failure = state.take_failure("token")
    if state.token_delay:
        await asyncio.sleep(state.token_delay)
    if failure is not None:
        return failure
    # Device-code logins come from public clients, which have no secret.
    refusal = _check_client(state, form, secret_required=grant_type != DEVICE_GRANT)
    if refusal is not None:
        return refusal
    if grant_type == "authorization_code":
        return _authorization_code_grant(state, form)
    if grant_type == "refresh_token":
        return await _refresh_token_grant(state, form, request)
    if grant_type == "client_credentials":
        return web.json_response(state.mint_app_token(form["client_id"]))
    if grant_type == DEVICE_GRANT:
        return _device_code_grant(state, form)
    return _id_error(400, "invalid grant type")


async def device(request: web.Request) -> web.Response:
    """``POST /oauth2/device``: start a device-code login (approved at once if auto_approve)."""
    state = _state(request)
    state.calls["device"] += 1
    if (failure := state.take_failure("device")) is not None:
        return failure
    form = await _form(request)
    if (refusal := _check_client(state, form, secret_required=False)) is not None:
        return refusal
    pending = DeviceCode(
        device_code=_random_token(40),
        user_code="".join(secrets.choice(string.ascii_uppercase) for _ in range(8)),
        client_id=state.client_id,
        scopes=form.get("scopes", "").split(),
        expires_at=state.now() + DEVICE_CODE_TTL,
        user_id=state.signed_in_user_id if state.auto_approve else None,
    )
    state.device_codes[pending.device_code] = pending
    activate = request.url.with_path("/activate").with_query({"device-code": pending.user_code})
    return web.json_response(
        {
            "device_code": pending.device_code,
            "expires_in": DEVICE_CODE_TTL,
            "interval": 5,
            "user_code": pending.user_code,
            "verification_uri": str(activate),
        }
    )


# -- /oauth2/validate and /oauth2/revoke ---------------------------------------


async def validate(request: web.Request) -> web.Response:
    """``GET /oauth2/validate`` with ``Authorization: OAuth <token>`` (or Bearer)."""
    state = _state(request)
    state.calls["validate"] += 1
    if (failure := state.take_failure("validate")) is not None:
        return failure
    scheme, _, value = request.headers.get("Authorization", "").strip().partition(" ")
    value = value.strip()
    if not value:
        return _id_error(401, "missing authorization token")
    access = state.live_access_token(value) if scheme.lower() in ("oauth", "bearer") else None
    if access is None:
        return _id_error(401, "invalid access token")
    answer: dict[str, Any] = {
        "client_id": access.client_id,
        # Twitch sends null rather than [] when a token has no scopes.
        "scopes": access.scopes or None,
        # Rounded up: a token that is still valid never reports 0.
        "expires_in": math.ceil(access.expires_at - state.now()),
    }
    if access.user_id is not None:
        answer["login"] = state.users[access.user_id].login
        answer["user_id"] = access.user_id
    return web.json_response(answer)


async def revoke(request: web.Request) -> web.Response:
    """``POST /oauth2/revoke``: form client_id and token; 200 with no body."""
    state = _state(request)
    state.calls["revoke"] += 1
    if (failure := state.take_failure("revoke")) is not None:
        return failure
    form = await _form(request)
    client_id = form.get("client_id")
    if not client_id:
        return _id_error(400, "missing client id")
    if client_id != state.client_id:
        return _id_error(404, "client does not exist")
    if not state.revoke(form.get("token", "")):
        return _id_error(400, "Invalid token")
    return web.Response(status=200)


# -- /helix --------------------------------------------------------------------

HelixHandler = Callable[[MockTwitch, AccessToken, MultiMapping[str], bytes], web.Response]


def _missing_scope(access: AccessToken, scope: str) -> web.Response | None:
    if access.user_id is None or scope not in access.scopes:
        return _helix_error(401, f"Missing scope: {scope}")
    return None


def _helix_users(
    state: MockTwitch, access: AccessToken, query: MultiMapping[str], body: bytes
) -> web.Response:
    wanted = [(name, value) for name, value in query.items() if name in ("id", "login")]
    if len(wanted) > HELIX_MAX_IDS:
        return _helix_error(
            400, "The sum of the number of id and login parameters must not exceed 100"
        )
    if not wanted:
        if access.user_id is None:
            return _helix_error(400, "Must provide an ID, Login or OAuth Token.")
        wanted = [("id", access.user_id)]
    found: list[User] = []
    for name, value in wanted:
        user = state.users.get(value) if name == "id" else state.user_by_login(value)
        if user is not None and user not in found:
            found.append(user)
    return web.json_response({"data": [user.helix() for user in found]})


def _encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    """Return the offset in a cursor made by :func:`_encode_cursor` (ValueError if not)."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        offset = json.loads(raw)["offset"]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(cursor) from error
    if not isinstance(offset, int) or offset < 0:
        raise ValueError(cursor)
    return offset


def _helix_streams(
    state: MockTwitch, access: AccessToken, query: MultiMapping[str], body: bytes
) -> web.Response:
    user_ids = set(query.getall("user_id", []))
    logins = {login.lower() for login in query.getall("user_login", [])}
    if len(user_ids) + len(logins) > HELIX_MAX_IDS:
        return _helix_error(400, "too many user_id and user_login parameters")
    try:
        first = int(query.get("first", "20"))
        offset = _decode_cursor(query["after"]) if "after" in query else 0
    except ValueError:
        return _helix_error(400, "Invalid first or after parameter")
    if not 1 <= first <= HELIX_MAX_IDS:
        return _helix_error(400, "first must be between 1 and 100")
    streams = [
        stream
        for stream in state.streams.values()
        if not (user_ids or logins) or stream.user.id in user_ids or stream.user.login in logins
    ]
    streams.sort(key=lambda stream: stream.viewer_count, reverse=True)
    page = streams[offset : offset + first]
    pagination = {"cursor": _encode_cursor(offset + first)} if offset + first < len(streams) else {}
    return web.json_response(
        {"data": [stream.helix() for stream in page], "pagination": pagination}
    )


def _helix_subscriptions(
    state: MockTwitch, access: AccessToken, query: MultiMapping[str], body: bytes
) -> web.Response:
    if (refusal := _missing_scope(access, "channel:read:subscriptions")) is not None:
        return refusal
    broadcaster_id = query.get("broadcaster_id")
    if not broadcaster_id:
        return _helix_error(400, 'Missing required parameter "broadcaster_id"')
    if broadcaster_id != access.user_id:
        return _helix_error(403, "broadcaster_id must match the user in the OAuth token")
    return web.json_response({"data": [], "pagination": {}, "total": 0, "points": 0})


def _helix_chat_message(
    state: MockTwitch, access: AccessToken, query: MultiMapping[str], body: bytes
) -> web.Response:
    if (refusal := _missing_scope(access, "user:write:chat")) is not None:
        return refusal
    try:
        message = json.loads(body)
    except ValueError:
        return _helix_error(400, "Invalid JSON body")
    if not isinstance(message, dict):
        return _helix_error(400, "Invalid JSON body")
    for name in ("broadcaster_id", "sender_id", "message"):
        if not isinstance(message.get(name), str) or not message[name]:
            return _helix_error(400, f'Missing required parameter "{name}"')
    if message["sender_id"] != access.user_id:
        return _helix_error(403, "The sender must be the user in the OAuth token")
    state.sent_chat_messages.append(message)
    return web.json_response({"data": [{"message_id": str(uuid.uuid4()), "is_sent": True}]})


def _helix_no_content(
    state: MockTwitch, access: AccessToken, query: MultiMapping[str], body: bytes
) -> web.Response:
    if access.user_id is None:
        return _helix_error(401, "Missing User OAUTH Token")
    return web.Response(status=204)


HELIX_ROUTES: dict[tuple[str, str], HelixHandler] = {
    ("GET", "/users"): _helix_users,
    ("GET", "/streams"): _helix_streams,
    ("GET", "/subscriptions"): _helix_subscriptions,
    ("POST", "/chat/messages"): _helix_chat_message,
    ("PATCH", "/channels"): _helix_no_content,
}


def _helix_authenticate(state: MockTwitch, request: web.Request) -> AccessToken | web.Response:
    """Return the request's live token, or the 401 Twitch would answer."""
    scheme, _, value = request.headers.get("Authorization", "").strip().partition(" ")
    value = value.strip()
    if not value:
        return _helix_error(401, "OAuth token is missing")
    access = state.live_access_token(value) if scheme.lower() == "bearer" else None
    if access is None:
        return _helix_error(401, "Invalid OAuth token")
    client_id = request.headers.get("Client-Id", "")
    if not client_id:
        return _helix_error(401, "Client-Id header required")
    if client_id != access.client_id:
        return _helix_error(401, "Client ID and OAuth token do not match")
    return access


async def helix(request: web.Request) -> web.Response:
    """Every ``/helix/...`` request: record, authenticate, rate-limit, dispatch."""
    state = _state(request)
    path = request.path[len("/helix") :] or "/"
    body = await request.read()
    state.calls[f"helix:{request.method} {path}"] += 1
    state.helix_requests.append(
        HelixRequest(
            method=request.method,
            path=path,
            query_string=request.rel_url.raw_query_string,
            headers=CIMultiDictProxy(CIMultiDict(request.headers)),
            body=body,
        )
    )
    failure = state.take_failure("helix")
    if state.helix_delay:
        await asyncio.sleep(state.helix_delay)
    if failure is not None:
        return failure  # stands for something in front of Helix: no Helix headers
    response = _helix_answer(state, request, path, body)
    # Twitch sets cookies on API responses; a proxy must not pass them to widgets.
    response.headers.add("Set-Cookie", "twitch_mock=1; Path=/; Secure; HttpOnly")
    # Like Twitch, compress when the caller's Accept-Encoding allows (gzip or deflate).
    if response.body:
        response.enable_compression()
    return response


def _helix_answer(state: MockTwitch, request: web.Request, path: str, body: bytes) -> web.Response:
    access = _helix_authenticate(state, request)
    if isinstance(access, web.Response):
        _, headers = state.ratelimit(f"app:{request.headers.get('Client-Id', '')}", consume=False)
        access.headers.update(headers)
        return access
    if access.user_id is None:
        bucket = f"app:{access.client_id}"
    else:
        bucket = f"user:{access.client_id}:{access.user_id}"
    allowed, headers = state.ratelimit(bucket, consume=True)
    if not allowed:
        response = _helix_error(429, "Too Many Requests")
    elif request.method == "DELETE":
        response = _helix_no_content(state, access, request.query, body)
    elif (handler := HELIX_ROUTES.get((request.method, path))) is not None:
        response = handler(state, access, request.query, body)
    else:
        response = _helix_error(404, "")
    response.headers.update(headers)
    return response


# -- /_mock control endpoints ----------------------------------------------------


async def _json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object, ``{}`` when there is no body."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(
            text='{"error": "body must be a JSON object"}', content_type="application/json"
        )
    return body


def _bad_control(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")


async def control_calls(request: web.Request) -> web.Response:
    """``GET /_mock/calls``: the calls counter."""
    return web.json_response(dict(_state(request).calls))


async def control_state(request: web.Request) -> web.Response:
    """``GET /_mock/state``: calls plus counts a cross-process test may assert on."""
    state = _state(request)
    now = state.now()
    return web.json_response(
        {
            "calls": dict(state.calls),
            "refresh_reuses": state.refresh_reuses,
            "live_access_tokens": sum(t.expires_at > now for t in state.access_tokens.values()),
            "refresh_tokens": len(state.refresh_tokens),
            "sent_chat_messages": state.sent_chat_messages,
        }
    )


async def control_helix_requests(request: web.Request) -> web.Response:
    """``GET /_mock/helix_requests``: every recorded Helix request (body as text)."""
    return web.json_response(
        [
            {
                "method": recorded.method,
                "path": recorded.path,
                "query_string": recorded.query_string,
                "headers": dict(recorded.headers),
                "body": recorded.body.decode("utf-8", "replace"),
            }
            for recorded in _state(request).helix_requests
        ]
    )


async def control_reset_calls(request: web.Request) -> web.Response:
    """``POST /_mock/reset_calls``."""
    _state(request).reset_calls()
    return web.json_response({"calls": {}})


async def control_expire(request: web.Request) -> web.Response:
    """``POST /_mock/expire`` with optional ``{"user_id"}``."""
    body = await _json_body(request)
    return web.json_response({"expired": _state(request).expire_access_tokens(body.get("user_id"))})


async def control_expire_app(request: web.Request) -> web.Response:
    """``POST /_mock/expire_app``."""
    return web.json_response({"expired": _state(request).expire_app_tokens()})


async def control_revoke_refresh(request: web.Request) -> web.Response:
    """``POST /_mock/revoke_refresh`` with optional ``{"user_id"}``."""
    body = await _json_body(request)
    return web.json_response(
        {"revoked": _state(request).revoke_refresh_tokens(body.get("user_id"))}
    )


async def control_issue(request: web.Request) -> web.Response:
    """``POST /_mock/issue`` ``{"user_id", "scopes", "client_id", "refresh_token"}``.

    Twitch's token JSON for a user, as if they had consented: by default to
    this mock's own client, with a refresh token. ``client_id`` mints it for
    another application; ``"refresh_token": false`` mints a bare access token.
    """
    state = _state(request)
    body = await _json_body(request)
    scopes = body.get("scopes", [])
    if not isinstance(scopes, list) or not all(isinstance(scope, str) for scope in scopes):
        raise _bad_control("scopes must be a list of strings")
    user_id = str(body.get("user_id", state.signed_in_user_id))
    if user_id not in state.users:
        raise _bad_control("unknown user_id")
    return web.json_response(state.mint_user_tokens(
        str(body.get("client_id", state.client_id)), user_id, scopes,
        with_refresh_token=bool(body.get("refresh_token", True))))


async def control_hold_refresh(request: web.Request) -> web.Response:
    """``POST /_mock/hold_refresh`` ``{"hold": bool}``: park refresh grants, or let them go."""
    state = _state(request)
    hold = bool((await _json_body(request)).get("hold", True))
    if hold and state.hold_refresh is None:
        state.hold_refresh = asyncio.Event()
    elif not hold and state.hold_refresh is not None:
        state.hold_refresh.set()  # whatever was parked goes on now
        state.hold_refresh = None
    return web.json_response({"hold": hold})


async def control_fail(request: web.Request) -> web.Response:
    """``POST /_mock/fail`` ``{"endpoint", "status", "body", "times"?}``."""
    state = _state(request)
    body = await _json_body(request)
    endpoint, status, times = body.get("endpoint"), body.get("status"), body.get("times", 1)
    if not isinstance(status, int) or not isinstance(times, int) or not 100 <= status <= 599:
        raise _bad_control("status and times must be integers")
    try:
        state.queue_failure(str(endpoint), status, body.get("body"), times=times)
    except ValueError:
        raise _bad_control(f"endpoint must be one of {sorted(FAILABLE_ENDPOINTS)}") from None
    return web.json_response({"queued": len(state.fail_next[str(endpoint)])})


async def control_delay(request: web.Request) -> web.Response:
    """``POST /_mock/delay`` ``{"token": s, "helix": s}`` (either may be left out)."""
    state = _state(request)
    body = await _json_body(request)
    try:
        state.token_delay = float(body.get("token", state.token_delay))
        state.helix_delay = float(body.get("helix", state.helix_delay))
    except (TypeError, ValueError):
        raise _bad_control("delays must be numbers") from None
    return web.json_response({"token": state.token_delay, "helix": state.helix_delay})


async def control_ratelimit(request: web.Request) -> web.Response:
    """``POST /_mock/ratelimit`` ``{"limit": n}``: new bucket size; buckets start afresh."""
    state = _state(request)
    limit = (await _json_body(request)).get("limit")
    if not isinstance(limit, int) or limit < 0:
        raise _bad_control("limit must be a non-negative integer")
    state.ratelimit_limit = limit
    state.reset_ratelimits()
    return web.json_response({"limit": limit})


async def control_add_user(request: web.Request) -> web.Response:
    """``POST /_mock/add_user`` ``{"user_id", "login", "display_name"?}``."""
    body = await _json_body(request)
    if not isinstance(body.get("user_id"), str) or not isinstance(body.get("login"), str):
        raise _bad_control("user_id and login are required strings")
    _state(request).add_user(body["user_id"], body["login"], body.get("display_name"))
    return web.json_response({"user_id": body["user_id"]})


async def control_set_live(request: web.Request) -> web.Response:
    """``POST /_mock/set_live`` ``{"user_id", "live"?: bool, "title"?, "game_name"?}``."""
    state = _state(request)
    body = await _json_body(request)
    user_id = body.get("user_id")
    if user_id not in state.users:
        raise _bad_control("unknown user_id")
    if body.get("live", True):
        state.set_live(
            user_id, body.get("title", "Mock stream"), body.get("game_name", "Just Chatting")
        )
    else:
        state.set_offline(user_id)
    return web.json_response({"live": user_id in state.streams})


async def control_advance(request: web.Request) -> web.Response:
    """``POST /_mock/advance`` ``{"seconds": s}``: move the mock's clock forward."""
    state = _state(request)
    seconds = (await _json_body(request)).get("seconds")
    if not isinstance(seconds, (int, float)):
        raise _bad_control("seconds must be a number")
    state.advance(seconds)
    return web.json_response({"clock_offset": state.clock_offset})


async def _release_held_refreshes(app: web.Application) -> None:
    # Shutdown waits for running handlers; a parked refresh would stall it.
    held = app[mock_twitch_key].hold_refresh
    if held is not None:
        held.set()


def create_mock_app(
    *,
    client_id: str = "mock-client-id",
    client_secret: str = "mock-client-secret",
    access_ttl: int = USER_ACCESS_TTL,
    auto_approve: bool = True,
    state: MockTwitch | None = None,
) -> web.Application:
    """Build the mock Twitch app; pass ``state`` to share one :class:`MockTwitch`.

    The other arguments only apply when ``state`` is None. Control endpoints,
    all JSON: ``GET /_mock/calls``, ``GET /_mock/state``,
    ``GET /_mock/helix_requests`` and ``POST /_mock/`` + ``reset_calls``,
    ``expire``, ``expire_app``, ``revoke_refresh``, ``issue``, ``hold_refresh``,
    ``fail``, ``delay``, ``ratelimit``, ``add_user``, ``set_live``, ``advance``.
    """
    app = web.Application()
    app[mock_twitch_key] = state or MockTwitch(
        client_id=client_id,
        client_secret=client_secret,
        access_ttl=access_ttl,
        auto_approve=auto_approve,
    )
    app.on_shutdown.append(_release_held_refreshes)
    app.router.add_get("/oauth2/authorize", authorize)
    app.router.add_post("/oauth2/authorize", authorize_decision)
    app.router.add_post("/oauth2/token", token)
    app.router.add_get("/oauth2/validate", validate)
    app.router.add_post("/oauth2/revoke", revoke)
    app.router.add_post("/oauth2/device", device)
    app.router.add_route("*", "/helix/{path:.*}", helix)
    app.router.add_get("/_mock/calls", control_calls)
    app.router.add_get("/_mock/state", control_state)
    app.router.add_get("/_mock/helix_requests", control_helix_requests)
    for name, handler in {
        "reset_calls": control_reset_calls,
        "expire": control_expire,
        "expire_app": control_expire_app,
        "revoke_refresh": control_revoke_refresh,
        "issue": control_issue,
        "hold_refresh": control_hold_refresh,
        "fail": control_fail,
        "delay": control_delay,
        "ratelimit": control_ratelimit,
        "add_user": control_add_user,
        "set_live": control_set_live,
        "advance": control_advance,
    }.items():
        app.router.add_post(f"/_mock/{name}", handler)
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


if __name__ == "__main__":
    main()
