"""The configuration's shape: one frozen dataclass per section of the YAML file.

Each field names its environment variable (if it has one) and its description
in its metadata, so the table of variables is the code itself
(:func:`env_table`, printed by ``python -m proxy --help``). Secrets are wrapped
in :class:`~proxy.config.secret.Secret` so no repr, log line or error message
can show them. Plain data only: loading is :mod:`proxy.config.load`, checking
is :mod:`proxy.config.checks`.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from .secret import Secret

__all__ = [
    "SECTIONS",
    "AuthConfig",
    "Config",
    "CorsConfig",
    "HelixConfig",
    "LimitsConfig",
    "LogConfig",
    "MetricsConfig",
    "ServerConfig",
    "StoreConfig",
    "TwitchConfig",
    "default_public_url",
    "env_table",
]


def _env(name: str, doc: str, **kwargs: Any) -> Any:
    """A dataclass field read from the environment variable ``name``."""
    return field(metadata={"env": name, "doc": doc}, **kwargs)


def _doc(doc: str, **kwargs: Any) -> Any:
    """A dataclass field set only from the file or a default."""
    return field(metadata={"doc": doc}, **kwargs)


@dataclass(frozen=True)
class TwitchConfig:
    """The Twitch application and the endpoints it talks to."""

    client_id: str = _env("TWITCH_CLIENT_ID", "Client ID of your Twitch application.", default="")
    client_secret: Secret = _env(
        "TWITCH_CLIENT_SECRET", "Client secret of your Twitch application.",
        default=Secret(""),
    )
    id_url: str = _env("TWITCH_ID_URL", "Base URL of Twitch's OAuth server.",
                       default="https://id.twitch.tv")
    helix_url: str = _env("TWITCH_HELIX_URL", "Base URL of the Helix API.",
                          default="https://api.twitch.tv/helix")
    scopes: tuple[str, ...] = _doc(
        "Scopes /login asks for unless the user picks others on the landing page.",
        default=("user:read:email",),
    )
    allowed_scopes: tuple[str, ...] = _doc(
        "Scopes the landing page offers (defaults to `scopes`).", default=()
    )
    timeout: float = _doc("Seconds to wait for any Twitch answer.", default=10.0)


@dataclass(frozen=True)
class ServerConfig:
    """Where the proxy listens and how it is reached from outside."""

    host: str = _env("HOST", "Address to bind (0.0.0.0 on a platform).", default="127.0.0.1")
    port: int = _env("PORT", "Port to bind.", default=3000)
    public_url: str = _env(
        "PUBLIC_URL",
        "Public base URL; the OAuth redirect_uri is PUBLIC_URL/callback. "
        "Default http://localhost:PORT.",
        default="",
    )
    trust_forwarded: bool = _env(
        "FORWARDED_ALLOW", "Trust X-Forwarded-* headers from the platform's router.",
        default=False,
    )
    workers: int = _env("WEB_CONCURRENCY", "Number of worker processes.", default=1)
    shutdown_grace: float = _doc("Seconds in-flight requests get after SIGTERM.", default=25.0)
    tls_cert: str = _doc("PEM certificate to serve https directly.", default="")
    tls_key: str = _doc("PEM private key for tls_cert.", default="")

    @property
    def login_url(self) -> str:
        """Where a user starts a login (told to widgets whose grant needs one)."""
        return f"{self.public_url}/login"


@dataclass(frozen=True)
class StoreConfig:
    """Where grants, keys and OAuth states are kept."""

    url: str = _env(
        "TOKEN_STORE_URL",
        "memory://, sqlite:///path or redis(s)://... (REDIS_URL is used when unset).",
        default="sqlite:///tokens.sqlite3",
    )
    prefix: str = _doc("Prefix of every key in the store.", default="twitch-proxy:")
    encryption_key: Secret = _env(
        "TOKEN_ENCRYPTION_KEY",
        "Fernet key(s), comma-separated (first encrypts, all decrypt).",
        default=Secret(""),
    )
    redis_tls_verify: bool = _env(
        "REDIS_TLS_VERIFY",
        "false: accept a rediss:// server's self-signed certificate (Heroku Redis), as "
        "if the URL had ?ssl_cert_reqs=none.",
        default=True,
    )
    lock_lease: float = _doc(
        "Seconds a refresh lock outlives a process that died holding it "
        "(longer than twitch.timeout).",
        default=30.0,
    )
    cache_poll: float = _doc(
        "Seconds between checks for other processes' changes to grants and keys "
        "(the most a revocation elsewhere takes to apply here); 0: no in-process cache.",
        default=0.5,
    )


@dataclass(frozen=True)
class AuthConfig:
    """The login flow and the replay of rotated refresh tokens."""

    state_ttl: float = _doc("Seconds a /login state stays usable.", default=600.0)
    replay_window: float = _doc(
        "Seconds a refresh token the proxy rotated still gets the grant's current pair.",
        default=600.0,
    )
    allowed_logins: tuple[str, ...] = _doc(
        "Twitch logins allowed to connect (empty: anyone).", default=()
    )
    validate_interval: float = _doc(
        "Seconds between checks of each grant's access token at Twitch's /oauth2/validate "
        "(Twitch requires hourly), shared by every process.",
        default=3600.0,
    )
    purge_needs_reauth_after: float = _doc(
        "Seconds a grant stays needs_reauth before the validator deletes it with its keys "
        "(default 30 days); 0: never.",
        default=2592000.0,
    )


@dataclass(frozen=True)
class CorsConfig:
    """Which browser origins may call the proxy."""

    allow_origins: tuple[str, ...] = _env(
        "CORS_ALLOW_ORIGINS", "Comma-separated origins; * allows all, including null.",
        default=("*",),
    )


@dataclass(frozen=True)
class HelixConfig:
    """The /helix/* pass-through."""

    app_token: bool = _doc(
        "Use an app access token for requests without Authorization.", default=False
    )
    max_body: int = _doc("Largest request body buffered for a retry (bytes).", default=1048576)
    pool_size: int = _doc("Connections to Helix in use at once (the keep-alive pool).",
                          default=100)
    cache: dict[str, float] = _doc(
        "GET paths answered from a per-grant cache for that many seconds, e.g. "
        "{/streams: 10}; Twitch's Cache-Control can only shorten it.",
        default_factory=dict,
    )
    ratelimit_wait: float = _doc(
        "Most seconds a request waits for Twitch's rate-limit bucket to refill (beyond: 429).",
        default=5.0,
    )
    allow: tuple[str, ...] = _doc(
        "Method and path patterns let through, e.g. 'GET /users' or '* /channels/*' "
        "(empty: everything).",
        default=(),
    )


@dataclass(frozen=True)
class LimitsConfig:
    """Abuse limits (see proxy.core.limits); a rate of 0 turns that limit off."""

    login_per_minute: int = _doc(
        "Requests to /login and to /callback per client address and minute (each).", default=30
    )
    refresh_per_minute: int = _doc(
        "POST /refresh per client address and minute (also the burst).", default=120
    )
    invalid_keys_per_minute: int = _doc(
        "Unknown proxy keys a client address may present per minute before 429.", default=10
    )
    concurrent_per_grant: int = _doc(
        "Upstream requests one grant may have in flight at once (beyond: 429).", default=32
    )
    concurrent_total: int = _doc(
        "Upstream requests the whole proxy may have in flight at once (beyond: 503).",
        default=256,
    )
    concurrency_wait: float = _doc(
        "Seconds a request waits for a free concurrency slot before being refused.",
        default=5.0,
    )
    max_form_body: int = _doc(
        "Largest body of POST /refresh, /status and /revoke (bytes).", default=16384
    )
    max_header_line: int = _doc(
        "Longest request line or header field (bytes); longer ones are refused.", default=8190
    )
    max_headers: int = _doc("Most request header fields accepted.", default=128)


@dataclass(frozen=True)
class LogConfig:
    """Logging."""

    level: str = _env("LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR.", default="INFO")
    format: str = _env("LOG_FORMAT", "text or json.", default="text")


@dataclass(frozen=True)
class MetricsConfig:
    """The /metrics endpoint."""

    token: Secret = _env("METRICS_TOKEN", "Bearer token /metrics requires (optional).",
                         default=Secret(""))
    grants_interval: float = _doc(
        "Seconds one count of grants by state serves /metrics scrapes (counting decrypts "
        "every grant); 0: count at every scrape.",
        default=60.0,
    )


@dataclass(frozen=True)
class Config:
    """The whole configuration; sections mirror the YAML file."""

    twitch: TwitchConfig = field(default_factory=TwitchConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    cors: CorsConfig = field(default_factory=CorsConfig)
    helix: HelixConfig = field(default_factory=HelixConfig)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)

    @property
    def redirect_uri(self) -> str:
        """The OAuth redirect_uri registered with Twitch."""
        return f"{self.server.public_url}/callback"



#: Section name -> its dataclass, in the order of :class:`Config`'s fields.
SECTIONS: dict[str, type[Any]] = {
    f.name: typing.get_type_hints(Config)[f.name] for f in dataclasses.fields(Config)
}


def env_table() -> list[tuple[str, str, str]]:
    """``(variable, config key, description)`` for every environment variable."""
    rows = []
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            if "env" in f.metadata:
                rows.append((f.metadata["env"], f"{section}.{f.name}", f.metadata["doc"]))
    return rows


def default_public_url(server: ServerConfig) -> str:
    """The public URL when PUBLIC_URL is not set: ``http(s)://localhost:PORT``."""
    scheme = "https" if server.tls_cert else "http"
    return f"{scheme}://localhost:{server.port}"

