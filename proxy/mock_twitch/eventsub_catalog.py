"""The EventSub subscription types the mock knows: conditions, scopes, cost and sample events.

One :class:`SubscriptionType` per (type, version) the widget kit uses, as
Twitch's "EventSub subscription types" reference describes them:

- ``channel.follow`` v2: ``broadcaster_user_id`` and ``moderator_user_id``;
  scope ``moderator:read:followers``.
- ``channel.subscribe`` v1: ``broadcaster_user_id``; ``channel:read:subscriptions``.
- ``channel.cheer`` v1: ``broadcaster_user_id``; ``bits:read``.
- ``channel.raid`` v1: ``from_broadcaster_user_id`` or ``to_broadcaster_user_id``
  (exactly one); no scope.
- ``channel.channel_points_custom_reward_redemption.add`` v1: ``broadcaster_user_id``
  (``reward_id`` optional); ``channel:read:redemptions`` or ``channel:manage:redemptions``.
- ``channel.chat.message`` v1: ``broadcaster_user_id`` and ``user_id``; ``user:read:chat``.
- ``stream.online`` and ``stream.offline`` v1: ``broadcaster_user_id``; no scope.

Where a type needs a scope, the condition's authorising user (the broadcaster,
the moderator for follows, the reading user for chat) must be the token's user.
A subscription costs 0 when the token's user is the condition's channel or
user, else 1 (Twitch's rule: subscriptions the user authorised are free).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "SUBSCRIPTION_TYPES",
    "SubscriptionType",
    "condition_problem",
    "sample_event",
    "subscription_cost",
]

# A user as an event names one: id, login and display name.
UserNames = Callable[[str], tuple[str, str]]


@dataclass(frozen=True)
class SubscriptionType:
    """What Twitch demands of one (type, version)."""

    type: str
    version: str
    # Condition keys that must be present, and those that may be.
    required: frozenset[str]
    optional: frozenset[str] = frozenset()
    # Exactly one of these must be present (channel.raid's from/to).
    one_of: frozenset[str] = frozenset()
    # Any one of these scopes authorises it; empty: no scope needed.
    scopes: frozenset[str] = frozenset()
    # The condition key naming the user who must have authorised it.
    authorising_key: str | None = None

    @property
    def keys(self) -> frozenset[str]:
        """Every condition key Twitch accepts for this type."""
        return self.required | self.optional | self.one_of


def _types(*specs: SubscriptionType) -> dict[tuple[str, str], SubscriptionType]:
    return {(spec.type, spec.version): spec for spec in specs}


_BROADCASTER = frozenset({"broadcaster_user_id"})

SUBSCRIPTION_TYPES: Mapping[tuple[str, str], SubscriptionType] = _types(
    SubscriptionType("channel.follow", "2", _BROADCASTER | {"moderator_user_id"},
                     scopes=frozenset({"moderator:read:followers"}),
                     authorising_key="moderator_user_id"),
    SubscriptionType("channel.subscribe", "1", _BROADCASTER,
                     scopes=frozenset({"channel:read:subscriptions"}),
                     authorising_key="broadcaster_user_id"),
    SubscriptionType("channel.cheer", "1", _BROADCASTER, scopes=frozenset({"bits:read"}),
                     authorising_key="broadcaster_user_id"),
    SubscriptionType("channel.raid", "1", frozenset(),
                     one_of=frozenset({"from_broadcaster_user_id", "to_broadcaster_user_id"})),
    SubscriptionType("channel.channel_points_custom_reward_redemption.add", "1", _BROADCASTER,
                     optional=frozenset({"reward_id"}),
                     scopes=frozenset({"channel:read:redemptions", "channel:manage:redemptions"}),
                     authorising_key="broadcaster_user_id"),
    SubscriptionType("channel.chat.message", "1", _BROADCASTER | {"user_id"},
                     scopes=frozenset({"user:read:chat"}), authorising_key="user_id"),
    SubscriptionType("stream.online", "1", _BROADCASTER),
    SubscriptionType("stream.offline", "1", _BROADCASTER),
)

# Condition keys that name whom a subscription is about, for its cost.
_COST_FREE_KEYS = ("broadcaster_user_id", "to_broadcaster_user_id",
                   "from_broadcaster_user_id", "user_id")


def condition_problem(spec: SubscriptionType, condition: Any) -> str | None:
    """Why Twitch would refuse this condition with a 400, or None when it is well formed."""
    if not isinstance(condition, dict):
        return "The parameter \"condition\" is required and must be an object"
    for key, value in condition.items():
        if key not in spec.keys:
            return f"The parameter \"condition.{key}\" is not allowed for {spec.type}"
        if not isinstance(value, str) or not value:
            return f"The parameter \"condition.{key}\" must be a non-empty string"
    missing = sorted(spec.required - condition.keys())
    if missing:
        return f"The parameter \"condition.{missing[0]}\" is required"
    if spec.one_of and len(spec.one_of & condition.keys()) != 1:
        names = " or ".join(sorted(spec.one_of))
        return f"Exactly one of condition.{names} is required"
    return None


def subscription_cost(condition: Mapping[str, str], token_user_id: str) -> int:
    """0 when the token's user is whom the condition is about, else 1."""
    return 0 if any(condition.get(key) == token_user_id for key in _COST_FREE_KEYS) else 1


def _user(prefix: str, user_id: str, names: UserNames) -> dict[str, str]:
    login, display_name = names(user_id)
    return {f"{prefix}user_id": user_id, f"{prefix}user_login": login,
            f"{prefix}user_name": display_name}


def _viewer(serial: int, prefix: str = "") -> dict[str, str]:
    """A made-up viewer numbered by ``serial``, so successive events differ."""
    return {f"{prefix}user_id": str(900_000_000 + serial),
            f"{prefix}user_login": f"mockviewer{serial}",
            f"{prefix}user_name": f"MockViewer{serial}"}


def sample_event(
    spec: SubscriptionType, condition: Mapping[str, str], *, serial: int, timestamp: str,
    names: UserNames,
) -> dict[str, Any]:
    """A realistic ``event`` for a notification of ``spec`` under ``condition``.

    ``serial`` numbers the mock's notifications; it shows up in the made-up
    viewer (``user_id`` 900000000 + serial, login ``mockviewer<serial>``) and in
    amounts, so a test can tell events apart without leaving Twitch's shapes.
    """
    broadcaster = _user("broadcaster_", condition.get("broadcaster_user_id", ""), names)
    if spec.type == "channel.follow":
        return {**_viewer(serial), **broadcaster, "followed_at": timestamp}
    if spec.type == "channel.subscribe":
        return {**_viewer(serial), **broadcaster, "tier": "1000", "is_gift": False}
    if spec.type == "channel.cheer":
        return {"is_anonymous": False, **_viewer(serial), **broadcaster,
                "message": f"Cheer{serial} great stream", "bits": serial}
    if spec.type == "channel.raid":
        ours = condition.get("to_broadcaster_user_id")
        if ours is not None:
            return {**_viewer(serial, "from_broadcaster_"),
                    **_user("to_broadcaster_", ours, names), "viewers": serial}
        return {**_user("from_broadcaster_", condition["from_broadcaster_user_id"], names),
                **_viewer(serial, "to_broadcaster_"), "viewers": serial}
    if spec.type == "channel.channel_points_custom_reward_redemption.add":
        reward_id = condition.get("reward_id", "92af127c-7326-4483-a52b-b0da0be61c01")
        return {"id": str(uuid.uuid4()), **broadcaster, **_viewer(serial),
                "user_input": f"mock redemption {serial}", "status": "unfulfilled",
                "reward": {"id": reward_id, "title": "Hydrate", "cost": 100,
                           "prompt": "Make the streamer drink water"},
                "redeemed_at": timestamp}
    if spec.type == "channel.chat.message":
        text = f"mock chat message {serial}"
        return {**broadcaster, **_viewer(serial, "chatter_"),
                "message_id": str(uuid.uuid4()),
                "message": {"text": text, "fragments": [
                    {"type": "text", "text": text, "cheermote": None, "emote": None,
                     "mention": None}]},
                "color": "#9146FF", "badges": [], "message_type": "text", "cheer": None,
                "reply": None, "channel_points_custom_reward_id": None,
                "source_broadcaster_user_id": None, "source_broadcaster_user_login": None,
                "source_broadcaster_user_name": None, "source_message_id": None,
                "source_badges": None}
    if spec.type == "stream.online":
        return {"id": str(9_000_000_000 + serial), **broadcaster, "type": "live",
                "started_at": timestamp}
    return dict(broadcaster)  # stream.offline: the broadcaster alone
