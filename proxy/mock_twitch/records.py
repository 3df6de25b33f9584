"""What the mock remembers: users, streams, codes, tokens and recorded Helix requests.

Plain dataclasses, plus the random values Twitch-looking tokens are made of.
:class:`~proxy.mock_twitch.state.MockTwitch` holds them; the handlers read them.
"""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from multidict import CIMultiDictProxy, MultiDictProxy
from yarl import URL

__all__ = [
    "AccessToken",
    "AuthorizationCode",
    "HelixRequest",
    "RefreshToken",
    "Stream",
    "User",
    "random_refresh_token",
    "random_token",
]

_TOKEN_ALPHABET = string.ascii_lowercase + string.digits
# Percent escapes put inside refresh tokens: a proxy that forgets to URL-encode
# the token in a form body sends a string that the server decodes differently.
_PERCENT_ESCAPES = ("%2F", "%3D", "%2B", "%25")


def random_token(length: int = 30) -> str:
    """Return a Twitch-looking access token: lowercase letters and digits."""
    return "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(length))


def random_refresh_token() -> str:
    """Return a refresh token that always holds a ``/`` and a ``%`` escape."""
    head, middle, tail = random_token(24), random_token(12), random_token(10)
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
