"""Every ``web.AppKey`` of the proxy, in one place, each named like its variable.

A leaf typed with lower-layer types only. Handlers and middlewares do not read
these: they are given their services when :mod:`proxy.web.app` builds them.
The keys publish the same services for whoever holds only the app (tests,
``--mock-twitch``, a process embedding the proxy).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from ..config import Config
    from ..core.grant_cache import CachedGrantStore
    from ..core.grants import GrantStore
    from ..core.limits import AbuseGuard
    from ..core.refresh import Refresher
    from ..core.validator import Validator
    from ..store.base import TokenStore
    from ..telemetry.metrics import Metrics
    from ..upstream.twitch import TwitchClient

__all__ = [
    "abuse_guard_key",
    "config_key",
    "grant_cache_key",
    "grants_key",
    "metrics_key",
    "refresher_key",
    "store_key",
    "twitch_key",
    "validator_key",
]

config_key: web.AppKey[Config] = web.AppKey("config_key")
store_key: web.AppKey[TokenStore] = web.AppKey("store_key")
grants_key: web.AppKey[GrantStore] = web.AppKey("grants_key")
twitch_key: web.AppKey[TwitchClient] = web.AppKey("twitch_key")
refresher_key: web.AppKey[Refresher] = web.AppKey("refresher_key")
metrics_key: web.AppKey[Metrics] = web.AppKey("metrics_key")
grant_cache_key: web.AppKey[CachedGrantStore] = web.AppKey("grant_cache_key")
validator_key: web.AppKey[Validator] = web.AppKey("validator_key")
abuse_guard_key: web.AppKey[AbuseGuard] = web.AppKey("abuse_guard_key")
