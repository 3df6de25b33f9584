"""Checks of a built configuration: one function per area, each returning every problem.

:func:`validate` runs them all; :func:`proxy.config.load.load_config` adds the
problems to those it found while reading and fails once with the whole list.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from yarl import URL

from .encryption_keys import parse_keys
from .schema import (
    Config,
    EventSubConfig,
    HelixConfig,
    LimitsConfig,
    ServerConfig,
    StoreConfig,
    TwitchConfig,
)
from .store_url import STORE_SCHEMES, sqlite_path

__all__ = [
    "validate",
    "validate_eventsub",
    "validate_helix_sharing",
    "validate_limits",
    "validate_other",
    "validate_server",
    "validate_store",
    "validate_twitch",
]


def _check_http_url(name: str, value: str) -> list[str]:
    url = URL(value)
    if url.scheme not in ("http", "https") or not url.host:
        return [f"{name} must be an http(s) URL, got {value!r}"]
    if url.query_string or url.fragment:
        return [f"{name} must not have a query or fragment"]
    return []


def validate_twitch(twitch: TwitchConfig) -> list[str]:
    """Credentials present, URLs usable, scopes well-formed."""
    problems = []
    if not twitch.client_id:
        problems.append("twitch.client_id is missing (set TWITCH_CLIENT_ID)")
    if not twitch.client_secret:
        problems.append("twitch.client_secret is missing (set TWITCH_CLIENT_SECRET)")
    problems += _check_http_url("twitch.id_url", twitch.id_url)
    problems += _check_http_url("twitch.helix_url", twitch.helix_url)
    for scope in twitch.scopes + twitch.allowed_scopes:
        if not scope or any(c.isspace() for c in scope):
            problems.append(f"twitch scope {scope!r} must be one word")
    unknown = set(twitch.scopes) - set(twitch.allowed_scopes)
    if unknown:
        problems.append(f"twitch.scopes not in twitch.allowed_scopes: {sorted(unknown)}")
    if twitch.timeout <= 0:
        problems.append("twitch.timeout must be positive")
    return problems


def validate_server(server: ServerConfig) -> list[str]:
    """Port range, public URL shape, TLS files in pairs, worker count."""
    problems = []
    if not 0 <= server.port <= 65535:
        problems.append(f"server.port must be 0-65535, got {server.port}")
    problems += _check_http_url("server.public_url", server.public_url)
    if bool(server.tls_cert) != bool(server.tls_key):
        problems.append("server.tls_cert and server.tls_key go together")
    for name in ("tls_cert", "tls_key"):
        value = getattr(server, name)
        if value and not Path(value).is_file():
            problems.append(f"server.{name}: no such file {value!r}")
    if server.workers < 1:
        problems.append("server.workers (WEB_CONCURRENCY) must be at least 1")
    if server.shutdown_grace < 0:
        problems.append("server.shutdown_grace must not be negative")
    return problems


def validate_store(store: StoreConfig, server: ServerConfig) -> list[str]:
    """A known backend; shared when several workers run."""
    problems = []
    scheme = URL(store.url).scheme if "://" in store.url else ""
    if scheme not in STORE_SCHEMES:
        problems.append(
            f"store.url must start with memory://, sqlite:///, redis:// or rediss:// "
            f"(got scheme {scheme!r})"
        )
    elif not STORE_SCHEMES[scheme] and server.workers > 1:
        problems.append(
            "the memory:// store is private to one process: use sqlite:/// or redis:// "
            "with more than one worker"
        )
    if scheme == "sqlite":
        try:
            sqlite_path(store.url)
        except ValueError as exc:
            problems.append(f"store.url: {exc}")
    if scheme in ("redis", "rediss") and not store.encryption_key:
        problems.append("TOKEN_ENCRYPTION_KEY is required with a Redis store")
    if store.encryption_key:
        try:
            parse_keys(store.encryption_key)
        except ValueError as exc:
            problems.append(str(exc))
    return problems


def validate_other(config: Config) -> list[str]:
    """Logging, CORS, limits and timings."""
    problems = []
    if config.log.level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        problems.append(
            f"log.level must be DEBUG, INFO, WARNING or ERROR, got {config.log.level!r}"
        )
    if config.log.format not in ("text", "json"):
        problems.append(f"log.format must be text or json, got {config.log.format!r}")
    for origin in config.cors.allow_origins:
        if origin not in ("*", "null") and not origin.startswith(("http://", "https://")):
            problems.append(f"cors.allow_origins: {origin!r} is not *, null or an http(s) origin")
    if config.helix.max_body < 0:
        problems.append("helix.max_body must not be negative")
    problems += validate_helix_sharing(config)
    problems += validate_limits(config.limits, config.helix)
    if config.auth.state_ttl <= 0 or config.auth.replay_window < 0:
        problems.append("auth.state_ttl must be positive and auth.replay_window not negative")
    if config.auth.validate_interval <= 0:
        problems.append("auth.validate_interval must be positive")
    if config.auth.purge_needs_reauth_after < 0:
        problems.append("auth.purge_needs_reauth_after must not be negative (0 turns it off)")
    if config.metrics.grants_interval < 0:
        problems.append("metrics.grants_interval must not be negative")
    if config.store.lock_lease <= config.twitch.timeout:
        problems.append("store.lock_lease must be longer than twitch.timeout, or a live "
                        "refresh could lose its lock")
    return problems


def validate_limits(limits: LimitsConfig, helix: HelixConfig) -> list[str]:
    """Abuse limits non-negative and sized; helix.allow patterns well-formed."""
    problems = []
    for f in dataclasses.fields(limits):
        if getattr(limits, f.name) < 0:
            problems.append(f"limits.{f.name} must not be negative")
    for name in ("concurrent_per_grant", "concurrent_total", "max_header_line", "max_headers",
                 "eventsub_streams_per_grant"):
        if getattr(limits, name) == 0:
            problems.append(f"limits.{name} must be at least 1")
    for pattern in helix.allow:
        method, _, path = pattern.partition(" ")
        if not (method == "*" or method.isalpha()) or not path.startswith("/"):
            problems.append(f"helix.allow: {pattern!r} is not 'METHOD /path' (e.g. 'GET /users')")
    return problems


def validate_helix_sharing(config: Config) -> list[str]:
    """Connection pool, response cache, rate-limit wait and grant cache settings."""
    problems = []
    if config.helix.pool_size < 1:
        problems.append("helix.pool_size must be at least 1")
    for path, ttl in config.helix.cache.items():
        if not path.startswith("/") or ttl < 0:
            problems.append(f"helix.cache: {path!r}: give a path like /streams and seconds >= 0")
    if config.helix.ratelimit_wait < 0:
        problems.append("helix.ratelimit_wait must not be negative")
    if config.store.cache_poll < 0:
        problems.append("store.cache_poll must not be negative")
    return problems


def validate_eventsub(eventsub: EventSubConfig, twitch: TwitchConfig) -> list[str]:
    """Twitch's keepalive range, a ws(s) URL, and positive sizes and times."""
    problems = []
    url = URL(twitch.eventsub_ws_url)
    if url.scheme not in ("ws", "wss") or not url.host:
        problems.append(
            f"twitch.eventsub_ws_url must be a ws(s) URL, got {twitch.eventsub_ws_url!r}"
        )
    if not 10 <= eventsub.keepalive <= 600:
        problems.append("eventsub.keepalive must be 10 to 600 seconds (Twitch's range)")
    for name in ("buffer_events", "buffer_age", "ticket_ttl", "heartbeat", "lease",
                 "lease_renew"):
        if getattr(eventsub, name) <= 0:
            problems.append(f"eventsub.{name} must be positive")
    if eventsub.grace < 0:
        problems.append("eventsub.grace must not be negative")
    if 0 < eventsub.lease <= eventsub.lease_renew:
        problems.append("eventsub.lease_renew must be shorter than eventsub.lease")
    return problems


def validate(config: Config) -> list[str]:
    """Every problem with a fully built configuration."""
    return (
        validate_twitch(config.twitch)
        + validate_server(config.server)
        + validate_store(config.store, config.server)
        + validate_other(config)
        + validate_eventsub(config.eventsub, config.twitch)
    )
