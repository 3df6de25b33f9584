"""Which EventSub subscriptions a widget may ask the relay for, and their conditions.

A widget names a subscription as ``<type>:<version>`` (``channel.follow:2``).
Each supported type lists its condition fields (Twitch's EventSub subscription
types reference) and which of them name *the token's user*: Twitch only
accepts a ``moderator_user_id`` or ``user_id`` that is the user of the token the
subscription is created with, and the relay creates every subscription with
the widget's own grant, so those must be the grant's user. Conditions default
to the grant's user; a widget may name another channel explicitly (a
moderator's follow alert for a channel they moderate, a raid *from* a channel).

:func:`subscription_cost` is Twitch's rule for WebSocket subscriptions: 0 when
the token's user is the channel in the condition, else 1, against a
``max_total_cost`` of 10.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ...errors import InvalidRequest

__all__ = ["CONDITION_FIELDS", "TYPES", "SubscriptionKey", "SubscriptionTypeError",
           "check_request", "parse_type", "resolve_subscriptions", "subscription_cost"]

#: ``type -> (versions, required condition fields, optional condition fields)``.
TYPES: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "channel.follow": (("2",), ("broadcaster_user_id", "moderator_user_id"), ()),
    "channel.subscribe": (("1",), ("broadcaster_user_id",), ()),
    "channel.subscription.gift": (("1",), ("broadcaster_user_id",), ()),
    "channel.subscription.message": (("1",), ("broadcaster_user_id",), ()),
    "channel.subscription.end": (("1",), ("broadcaster_user_id",), ()),
    "channel.cheer": (("1",), ("broadcaster_user_id",), ()),
    "channel.raid": (("1",), (), ("to_broadcaster_user_id", "from_broadcaster_user_id")),
    "channel.update": (("2",), ("broadcaster_user_id",), ()),
    "channel.ad_break.begin": (("1",), ("broadcaster_user_id",), ()),
    "channel.channel_points_custom_reward_redemption.add":
        (("1",), ("broadcaster_user_id",), ("reward_id",)),
    "channel.channel_points_custom_reward_redemption.update":
        (("1",), ("broadcaster_user_id",), ("reward_id",)),
    "channel.chat.message": (("1",), ("broadcaster_user_id", "user_id"), ()),
    "channel.chat.notification": (("1",), ("broadcaster_user_id", "user_id"), ()),
    "channel.chat.clear": (("1",), ("broadcaster_user_id", "user_id"), ()),
    "channel.chat.message_delete": (("1",), ("broadcaster_user_id", "user_id"), ()),
    "channel.poll.begin": (("1",), ("broadcaster_user_id",), ()),
    "channel.poll.progress": (("1",), ("broadcaster_user_id",), ()),
    "channel.poll.end": (("1",), ("broadcaster_user_id",), ()),
    "channel.prediction.begin": (("1",), ("broadcaster_user_id",), ()),
    "channel.prediction.progress": (("1",), ("broadcaster_user_id",), ()),
    "channel.prediction.lock": (("1",), ("broadcaster_user_id",), ()),
    "channel.prediction.end": (("1",), ("broadcaster_user_id",), ()),
    "channel.hype_train.begin": (("1", "2"), ("broadcaster_user_id",), ()),
    "channel.hype_train.progress": (("1", "2"), ("broadcaster_user_id",), ()),
    "channel.hype_train.end": (("1", "2"), ("broadcaster_user_id",), ()),
    "channel.goal.begin": (("1",), ("broadcaster_user_id",), ()),
    "channel.goal.progress": (("1",), ("broadcaster_user_id",), ()),
    "channel.goal.end": (("1",), ("broadcaster_user_id",), ()),
    "channel.shoutout.create": (("1",), ("broadcaster_user_id", "moderator_user_id"), ()),
    "channel.shoutout.receive": (("1",), ("broadcaster_user_id", "moderator_user_id"), ()),
    "channel.ban": (("1",), ("broadcaster_user_id",), ()),
    "channel.unban": (("1",), ("broadcaster_user_id",), ()),
    "stream.online": (("1",), ("broadcaster_user_id",), ()),
    "stream.offline": (("1",), ("broadcaster_user_id",), ()),
    "user.update": (("1",), ("user_id",), ()),
}

#: A name shown back in an error: lower-case words and dots, as Twitch's types are.
_SHOWABLE_TYPE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z0-9_]+){1,5}")

#: Every condition field a widget may set in the query string.
CONDITION_FIELDS = frozenset(
    name for _, required, optional in TYPES.values() for name in (*required, *optional))

#: Fields Twitch requires to be the token's own user.
_TOKEN_USER_FIELDS = frozenset(("moderator_user_id", "user_id"))
#: Fields naming the channel whose events these are (for the cost rule).
_CHANNEL_FIELDS = ("broadcaster_user_id", "to_broadcaster_user_id", "from_broadcaster_user_id",
                   "user_id")
#: Twitch user ids and reward ids: digits, or a reward's UUID.
_ID_VALUE = re.compile(r"[0-9]{1,20}")
_REWARD_VALUE = re.compile(r"[0-9A-Za-z\-]{1,64}")


class SubscriptionTypeError(InvalidRequest):
    """A subscription type, version or condition the relay does not accept."""

    code = "invalid_subscription"


@dataclass(frozen=True, slots=True)
class SubscriptionKey:
    """One Twitch subscription as the relay shares it: type, version and condition.

    Widgets asking for equal keys share one Twitch subscription.
    """

    type: str
    version: str
    condition: tuple[tuple[str, str], ...]  # sorted (name, value) pairs

    @property
    def name(self) -> str:
        """``type:version``, as widgets write it."""
        return f"{self.type}:{self.version}"

    def condition_dict(self) -> dict[str, str]:
        """The condition as Twitch's JSON object."""
        return dict(self.condition)


def parse_type(text: str) -> tuple[str, str]:
    """``("channel.follow", "2")`` for ``channel.follow:2``; a bare type: its newest version."""
    name, _, version = text.strip().partition(":")
    spec = TYPES.get(name)
    if spec is None:
        # Named back only when it looks like a type: a pasted key or ticket is never echoed.
        shown = repr(name) if _SHOWABLE_TYPE.fullmatch(name) else "(not a type name)"
        raise SubscriptionTypeError(f"Unsupported subscription type {shown}; supported: "
                                    + ", ".join(sorted(TYPES)) + ".")
    versions = spec[0]
    if not version:
        version = versions[-1]
    if version not in versions:
        shown = repr(version) if version.isdigit() and len(version) <= 3 else "another"
        raise SubscriptionTypeError(f"{name} has version(s) {', '.join(versions)}, not {shown}.")
    return name, version


def check_request(types: Sequence[str], conditions: Mapping[str, str]) -> None:
    """Every check :func:`resolve_subscriptions` makes that does not need the grant's user.

    Run before a single-use ticket is spent, so that a typo in a type or a condition
    costs the widget an error, not its ticket.
    """
    user = next((conditions[f] for f in sorted(_TOKEN_USER_FIELDS) if f in conditions), "1")
    resolve_subscriptions(types, conditions, user_id=user)


def _checked_value(field: str, value: str) -> str:
    pattern = _REWARD_VALUE if field == "reward_id" else _ID_VALUE
    if not pattern.fullmatch(value):
        raise SubscriptionTypeError(f"The condition field {field} must be "
                                    + ("a reward id." if field == "reward_id"
                                       else "a Twitch user id (digits)."))
    return value


def resolve_subscriptions(types: Sequence[str], conditions: Mapping[str, str], *,
                          user_id: str) -> list[SubscriptionKey]:
    """The subscriptions a widget asks for, with conditions filled in and checked.

    ``conditions`` (from the query string) apply to every requested type that
    has the field; a field no requested type has is refused. Fields that
    Twitch requires to be the token's user must be ``user_id``, the grant's.
    """
    if not types:
        raise SubscriptionTypeError("Name at least one subscription: ?type=channel.follow:2.")
    for field, value in conditions.items():
        if field in _TOKEN_USER_FIELDS and value != user_id:
            raise SubscriptionTypeError(
                f"{field} must be the user of this proxy key ({user_id}): Twitch creates the "
                "subscription with that user's token.")
        _checked_value(field, value)
    keys: list[SubscriptionKey] = []
    used: set[str] = set()
    for text in types:
        name, version = parse_type(text)
        _, required, optional = TYPES[name]
        condition: dict[str, str] = {}
        for field in required:
            condition[field] = conditions.get(field, user_id)
        for field in optional:
            if field in conditions:
                condition[field] = conditions[field]
        if name == "channel.raid" and not condition:
            condition["to_broadcaster_user_id"] = user_id  # raids into the grant's channel
        if name == "channel.raid" and len(condition) != 1:
            raise SubscriptionTypeError("channel.raid takes either to_broadcaster_user_id or "
                                        "from_broadcaster_user_id, not both.")
        used.update(condition)
        key = SubscriptionKey(name, version, tuple(sorted(condition.items())))
        if key not in keys:
            keys.append(key)
    unused = sorted(set(conditions) - used)
    if unused:
        raise SubscriptionTypeError(f"No requested type has the condition field(s) "
                                    f"{', '.join(unused)}.")
    return keys


def subscription_cost(key: SubscriptionKey, user_id: str) -> int:
    """Twitch's cost of a WebSocket subscription: 0 for the token user's own channel, else 1."""
    condition = dict(key.condition)
    channel = next((condition[field] for field in _CHANNEL_FIELDS if field in condition), None)
    return 0 if channel == user_id else 1
