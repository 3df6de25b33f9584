"""Configuration: plain frozen dataclasses, one loader, one validation pass.

- :mod:`~proxy.config.schema`: the sections and their fields (plain data), and
  the table of environment variables;
- :mod:`~proxy.config.load`: defaults, then the file, then the environment,
  then flags; unknown keys refused; every problem raised at once as
  :class:`ConfigError`;
- :mod:`~proxy.config.checks`: one function per area, each listing its problems;
- :mod:`~proxy.config.secret`, :mod:`~proxy.config.store_url`,
  :mod:`~proxy.config.encryption_keys`: the values that need more than a type
  (masked secrets, store URLs, the Fernet key list), shared with the store.

This package imports nothing from the rest of the proxy. Its public face is
what the rest of the proxy imports from ``proxy.config``, listed below.
"""

from __future__ import annotations

from .load import ConfigError, load_config
from .schema import (
    AuthConfig,
    Config,
    CorsConfig,
    EventSubConfig,
    HelixConfig,
    LimitsConfig,
    LogConfig,
    MetricsConfig,
    ServerConfig,
    StoreConfig,
    TwitchConfig,
    default_public_url,
    env_table,
)

__all__ = [
    "AuthConfig",
    "Config",
    "ConfigError",
    "CorsConfig",
    "EventSubConfig",
    "HelixConfig",
    "LimitsConfig",
    "LogConfig",
    "MetricsConfig",
    "ServerConfig",
    "StoreConfig",
    "TwitchConfig",
    "default_public_url",
    "env_table",
    "load_config",
]
