"""proxy.core.relay.catalog: subscription types, conditions and Twitch's cost rule."""

from __future__ import annotations

import pytest

from proxy.core.relay.catalog import (
    SubscriptionKey,
    SubscriptionTypeError,
    parse_type,
    resolve_subscriptions,
    subscription_cost,
)

ME = "141981764"


def test_type_and_version():
    assert parse_type("channel.follow:2") == ("channel.follow", "2")
    assert parse_type("channel.subscribe") == ("channel.subscribe", "1")
    assert parse_type("channel.hype_train.begin") == ("channel.hype_train.begin", "2")
    for bad in ("channel.follow:1", "channel.nope:1", "", ":2"):
        with pytest.raises(SubscriptionTypeError) as refused:
            parse_type(bad)
        assert refused.value.status == 400 and refused.value.code == "invalid_subscription"


def test_conditions_default_to_the_grants_user():
    follow, sub, raid, chat = resolve_subscriptions(
        ["channel.follow:2", "channel.subscribe:1", "channel.raid:1", "channel.chat.message:1"],
        {}, user_id=ME)
    assert follow.condition_dict() == {"broadcaster_user_id": ME, "moderator_user_id": ME}
    assert sub.condition_dict() == {"broadcaster_user_id": ME}
    assert raid.condition_dict() == {"to_broadcaster_user_id": ME}
    assert chat.condition_dict() == {"broadcaster_user_id": ME, "user_id": ME}
    assert follow.name == "channel.follow:2"


def test_the_same_subscription_twice_is_one():
    keys = resolve_subscriptions(["channel.follow:2", "channel.follow"], {}, user_id=ME)
    assert len(keys) == 1


def test_explicit_conditions_apply_to_every_type_that_has_the_field():
    follow, sub = resolve_subscriptions(["channel.follow:2", "channel.subscribe:1"],
                                        {"broadcaster_user_id": "42"}, user_id=ME)
    assert follow.condition_dict() == {"broadcaster_user_id": "42", "moderator_user_id": ME}
    assert sub.condition_dict() == {"broadcaster_user_id": "42"}
    (raid,) = resolve_subscriptions(["channel.raid:1"], {"from_broadcaster_user_id": "42"},
                                    user_id=ME)
    assert raid.condition_dict() == {"from_broadcaster_user_id": "42"}


@pytest.mark.parametrize(("types", "conditions", "says"), [
    (["channel.follow:2"], {"moderator_user_id": "42"}, "moderator_user_id must be the user"),
    (["channel.chat.message:1"], {"user_id": "42"}, "user_id must be the user"),
    (["channel.subscribe:1"], {"reward_id": "abc"}, "No requested type has"),
    (["channel.follow:2"], {"broadcaster_user_id": "12a"}, "Twitch user id"),
    (["channel.raid:1"], {"from_broadcaster_user_id": "1", "to_broadcaster_user_id": ME},
     "either"),
    ([], {}, "at least one"),
])
def test_conditions_are_checked(types, conditions, says):
    with pytest.raises(SubscriptionTypeError) as refused:
        resolve_subscriptions(types, conditions, user_id=ME)
    assert says in refused.value.message


def test_cost_is_zero_for_the_users_own_channel_only():
    own, other = (SubscriptionKey("channel.follow", "2", (("broadcaster_user_id", channel),
                                                          ("moderator_user_id", ME)))
                  for channel in (ME, "42"))
    assert subscription_cost(own, ME) == 0
    assert subscription_cost(other, ME) == 1
    (raid,) = resolve_subscriptions(["channel.raid:1"], {"from_broadcaster_user_id": "42"},
                                    user_id=ME)
    assert subscription_cost(raid, ME) == 1
