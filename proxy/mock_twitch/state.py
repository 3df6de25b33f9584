"""The mock's state: every user, code and token it knows, and the knobs a test turns.

:class:`MockTwitch` is plain state (creating one does no I/O) shared by the
handlers of :mod:`~proxy.mock_twitch.oauth`, :mod:`~proxy.mock_twitch.helix`
and :mod:`~proxy.mock_twitch.control`; its ``eventsub`` attribute holds the
EventSub sessions (:mod:`~proxy.mock_twitch.eventsub_state`).
"""

from __future__ import annotations

import asyncio
import collections
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .eventsub_state import EventSubState
from .records import (
    AccessToken,
    AuthorizationCode,
    HelixRequest,
    RefreshToken,
    Stream,
    User,
    random_refresh_token,
    random_token,
)

__all__ = [
    "APP_ACCESS_TTL",
    "DEFAULT_USER_DISPLAY_NAME",
    "DEFAULT_USER_ID",
    "DEFAULT_USER_LOGIN",
    "FAILABLE_ENDPOINTS",
    "RATELIMIT_WINDOW",
    "USER_ACCESS_TTL",
    "MockTwitch",
]

DEFAULT_USER_ID = "141981764"
DEFAULT_USER_LOGIN = "twitchdev"
DEFAULT_USER_DISPLAY_NAME = "TwitchDev"

USER_ACCESS_TTL = 14124  # what Twitch answers for user tokens, in seconds
APP_ACCESS_TTL = 5011271  # what Twitch answers for client_credentials
RATELIMIT_WINDOW = 60

# fail_next keys: one per endpoint that can be told to misbehave.
FAILABLE_ENDPOINTS = frozenset({"authorize", "token", "validate", "revoke", "helix"})


@dataclass
class _RateLimitBucket:
    """One rate-limit window: when it ends and how many requests it has counted."""

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
        self.access_tokens: dict[str, AccessToken] = {}
        self.refresh_tokens: dict[str, RefreshToken] = {}
        self.spent_refresh_tokens: set[str] = set()
        self.streams: dict[str, Stream] = {}
        self._ratelimit_buckets: dict[str, _RateLimitBucket] = {}
        # EventSub over WebSocket: sessions, subscriptions, sent frames and their knobs.
        self.eventsub = EventSubState(self.now, self.names_of)

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

    def names_of(self, user_id: str) -> tuple[str, str]:
        """(login, display name) of a user; made up from the id for one the mock lacks."""
        user = self.users.get(user_id)
        if user is None:
            return f"user{user_id}", f"User{user_id}"
        return user.login, user.display_name

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
        refresh = RefreshToken(random_refresh_token(), client_id, user_id, scopes) \
            if with_refresh_token else None
        access = AccessToken(
            value=random_token(),
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
            value=random_token(),
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
