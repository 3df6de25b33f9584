"""Every ``web.AppKey`` of the proxy, in one place, each named like its variable.

A leaf typed with lower-layer types only. Handlers and middlewares do not read
these: they are given their services when :mod:`proxy.web.app` builds them.
The keys publish the same services for whoever holds only the app (tests,
``--mock-twitch``, a process embedding the proxy).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

if TYPE_CHECKING:
    from ..config import Config
    from ..core.app_token import AppTokenProvider
    from ..core.grant_cache import CachedGrantStore
    from ..core.grants import GrantStore
    from ..core.limits import AbuseGuard
    from ..core.refresh import Refresher
    from ..core.validator import Validator
    from ..store.base import TokenStore
    from ..telemetry.context import RequestIds
    from ..telemetry.metrics import Metrics
    from ..upstream.helix_client import HelixClient
    from ..upstream.ratelimit import RateLimitGate
    from ..upstream.shared_gets import SharedGets
    from ..upstream.twitch import TwitchClient

__all__ = [
    "request_ids_key",
    "abuse_guard_key",
    "app_token_key",
    "config_key",
    "grant_cache_key",
    "grants_key",
    "helix_client_key",
    "http_session_key",
    "metrics_key",
    "ratelimit_gate_key",
    "refresher_key",
    "shared_gets_key",
    "store_key",
    "twitch_key",
    "validator_key",
]

config_key: web.AppKey[Config] = web.AppKey("config_key")
http_session_key = web.AppKey("http_session_key", aiohttp.ClientSession)
helix_client_key: web.AppKey[HelixClient] = web.AppKey("helix_client_key")
store_key: web.AppKey[TokenStore] = web.AppKey("store_key")
grants_key: web.AppKey[GrantStore] = web.AppKey("grants_key")
twitch_key: web.AppKey[TwitchClient] = web.AppKey("twitch_key")
refresher_key: web.AppKey[Refresher] = web.AppKey("refresher_key")
app_token_key: web.AppKey[AppTokenProvider] = web.AppKey("app_token_key")
metrics_key: web.AppKey[Metrics] = web.AppKey("metrics_key")
grant_cache_key: web.AppKey[CachedGrantStore] = web.AppKey("grant_cache_key")
shared_gets_key: web.AppKey[SharedGets] = web.AppKey("shared_gets_key")
ratelimit_gate_key: web.AppKey[RateLimitGate] = web.AppKey("ratelimit_gate_key")
validator_key: web.AppKey[Validator] = web.AppKey("validator_key")
abuse_guard_key: web.AppKey[AbuseGuard] = web.AppKey("abuse_guard_key")
request_ids_key: web.AppKey[RequestIds] = web.AppKey("request_ids_key")
