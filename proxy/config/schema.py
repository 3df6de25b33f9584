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
]


def _env(name: str, doc: str, *, shown: str = "", **kwargs: Any) -> Any:
    """A dataclass field read from the environment variable ``name``.

    ``doc`` is its line in the configuration reference (Markdown); ``shown`` replaces the
    default there when the default is worked out at start-up.
    """
    return field(metadata={"env": name, "doc": doc, "shown": shown}, **kwargs)


def _doc(doc: str, *, shown: str = "", **kwargs: Any) -> Any:
    """A dataclass field set only from the file or a default."""
    return field(metadata={"doc": doc, "shown": shown}, **kwargs)


@dataclass(frozen=True)
class TwitchConfig:
    """The Twitch application and the endpoints it talks to."""

    client_id: str = _env("TWITCH_CLIENT_ID", "Client ID of your Twitch application",
                          shown="(required)", default="")
    client_secret: Secret = _env("TWITCH_CLIENT_SECRET", "Its client secret",
                                 shown="(required)", default=Secret(""))
    id_url: str = _env("TWITCH_ID_URL", "Base URL of Twitch's OAuth server",
                       default="https://id.twitch.tv")
    helix_url: str = _env("TWITCH_HELIX_URL", "Base URL of the Helix API",
                          default="https://api.twitch.tv/helix")
    eventsub_ws_url: str = _env(
        "TWITCH_EVENTSUB_WS_URL",
        "Twitch's EventSub WebSocket, which `/eventsub` relays to widgets",
        default="wss://eventsub.wss.twitch.tv/ws",
    )
    scopes: tuple[str, ...] = _doc(
        "Scopes `/login` asks for unless the user picks others on the landing page; each must "
        "be in `allowed_scopes`",
        default=("user:read:email",),
    )
    allowed_scopes: tuple[str, ...] = _doc(
        "Scopes the landing page offers", shown="`twitch.scopes`", default=()
    )
    timeout: float = _doc("Seconds to wait for any Twitch answer", default=10.0)


@dataclass(frozen=True)
class ServerConfig:
    """Where the proxy listens and how it is reached from outside."""

    host: str = _env(
        "HOST", "Address to bind (`--host`; `0.0.0.0` on a platform, as the Procfile does)",
        default="127.0.0.1",
    )
    port: int = _env("PORT", "Port to bind (`--port`)", default=3000)
    public_url: str = _env(
        "PUBLIC_URL",
        "Public base URL; the OAuth redirect_uri is `PUBLIC_URL/callback` (`--public-url`); "
        "a trailing slash is dropped",
        shown="`http://localhost:PORT` (`https://` with `tls_cert`)",
        default="",
    )
    trust_forwarded: bool = _env(
        "FORWARDED_ALLOW", "Trust the platform router's `X-Forwarded-*` headers", default=False,
    )
    workers: int = _env(
        "WEB_CONCURRENCY",
        "Worker processes (`--workers`); more than one needs SQLite or Redis",
        default=1,
    )
    shutdown_grace: float = _doc("Seconds in-flight requests get after SIGTERM", default=25.0)
    tls_cert: str = _doc("PEM certificate to serve https directly", shown="(none)", default="")
    tls_key: str = _doc("PEM private key for `tls_cert`; the two go together", shown="(none)",
                        default="")

    @property
    def login_url(self) -> str:
        """Where a user starts a login (told to widgets whose grant needs one)."""
        return f"{self.public_url}/login"


@dataclass(frozen=True)
class StoreConfig:
    """Where grants, keys and OAuth states are kept."""

    url: str = _env(
        "TOKEN_STORE_URL",
        "`memory://`, `sqlite:///path`, `redis://...` or `rediss://...` (`--store`); "
        "`REDIS_URL` is used when `TOKEN_STORE_URL` is unset",
        default="sqlite:///tokens.sqlite3",
    )
    prefix: str = _doc("Prefix of every key in the store", default="twitch-proxy:")
    encryption_key: Secret = _env(
        "TOKEN_ENCRYPTION_KEY",
        "Fernet key(s), comma-separated: the first encrypts, all decrypt; required with Redis",
        shown="key file beside the SQLite database",
        default=Secret(""),
    )
    redis_tls_verify: bool = _env(
        "REDIS_TLS_VERIFY",
        "`false`: accept a `rediss://` server's self-signed certificate (Heroku Redis), as if "
        "the URL had `?ssl_cert_reqs=none` (which is then added to it)",
        default=True,
    )
    lock_lease: float = _doc(
        "Seconds a refresh lock outlives a process that died holding it; must be longer than "
        "`twitch.timeout`",
        default=30.0,
    )
    cache_poll: float = _doc(
        "Seconds between checks for other processes' changes to grants and keys: the most a "
        "revocation or rotation in another worker takes to apply here. `0` turns the "
        "in-process grant cache off",
        default=0.5,
    )


@dataclass(frozen=True)
class AuthConfig:
    """The login flow and the replay of rotated refresh tokens."""

    state_ttl: float = _doc("Seconds a `/login` state stays usable", default=600.0)
    replay_window: float = _doc(
        "Seconds a refresh token the proxy rotated still gets the grant's current pair",
        default=600.0,
    )
    allowed_logins: tuple[str, ...] = _doc(
        "Twitch logins allowed to connect (empty: anyone)", default=()
    )
    validate_interval: float = _doc(
        "Seconds between checks of each grant's access token at Twitch's `/oauth2/validate` "
        "(Twitch requires hourly), shared by every process",
        default=3600.0,
    )
    purge_needs_reauth_after: float = _doc(
        "Seconds a grant stays `needs_reauth`, counted from its last change, before the "
        "validator deletes it with its keys; `0`: never",
        shown="`2592000` (30 days)",
        default=2592000.0,
    )


@dataclass(frozen=True)
class CorsConfig:
    """Which browser origins may call the proxy."""

    allow_origins: tuple[str, ...] = _env(
        "CORS_ALLOW_ORIGINS",
        "Comma-separated origins (each `*`, `null` or an http(s) origin); `*` allows all, "
        "including the `null` origin of sandboxed widgets",
        default=("*",),
    )


@dataclass(frozen=True)
class HelixConfig:
    """The `/helix/*` pass-through. `helix.cache`, `helix.ratelimit_wait`, `helix.pool_size` and
    `store.cache_poll` are the keys for speed and for sparing Twitch's rate limit
    ([performance.md](performance.md))."""

    app_token: bool = _doc(
        "Use an app access token for requests without `Authorization`", default=False
    )
    max_body: int = _doc(
        "Largest request body buffered for a retry, in bytes; larger bodies get 413",
        shown="`1048576` (1 MiB)", default=1048576,
    )
    allow: tuple[str, ...] = _doc(
        "Method and path patterns let through, e.g. "
        "`[\"GET /users\", \"GET /streams\", \"* /channels/*\"]` (empty: everything)",
        default=(),
    )
    cache: dict[str, float] = _doc(
        "GET paths answered from a short per-grant cache, in seconds, e.g. `{/streams: 10}`; "
        "Twitch's `Cache-Control` can only shorten it (`no-store`, `no-cache`: not kept)",
        default_factory=dict,
    )
    ratelimit_wait: float = _doc(
        "When Twitch said a grant's rate-limit bucket is empty, requests wait up to this many "
        "seconds for `Ratelimit-Reset`; beyond it they get 429 with `Retry-After` at once, "
        "without calling Twitch",
        default=5.0,
    )
    pool_size: int = _doc(
        "Connections to Helix in use at once (a keep-alive pool; more calls queue for a free "
        "one within `twitch.timeout`); idle ones are closed after 30 s",
        default=100,
    )


@dataclass(frozen=True)
class EventSubConfig:
    """Live events: `/eventsub` relays one Twitch EventSub WebSocket per grant to widgets."""

    keepalive: int = _doc(
        "`keepalive_timeout_seconds` asked of Twitch (10 to 600): silence longer than this "
        "(plus 5 s) is a dead connection, reconnected and resubscribed",
        default=30,
    )
    grace: float = _doc(
        "Seconds a grant's Twitch socket stays open after its last widget left", default=60.0
    )
    buffer_events: int = _doc(
        "Events per grant kept for `Last-Event-ID` resumes (older ones: a `gap` event)",
        default=200,
    )
    buffer_age: float = _doc(
        "Seconds an event stays resumable (older ones: a `gap` event)", default=600.0
    )
    ticket_ttl: float = _doc(
        "Seconds a ticket from `POST /eventsub/tickets` stays usable (once)", default=60.0
    )
    heartbeat: float = _doc(
        "Seconds between comment lines on an idle stream (Heroku closes a response silent "
        "for 55 s)",
        default=20.0,
    )
    lease: float = _doc(
        "With a Redis store: seconds a process's lease on a grant's Twitch socket lasts "
        "unrenewed (a dead leader's widgets are taken over after this)",
        default=30.0,
    )
    lease_renew: float = _doc(
        "With a Redis store: seconds between renewals of the lease and of each process's "
        "heartbeat (less than `lease`)",
        default=10.0,
    )


@dataclass(frozen=True)
class LimitsConfig:
    """Abuse limits ([security.md](security.md) says how client addresses are counted). A rate
    of 0 turns that limit off; the concurrency caps and header sizes must be at least 1."""

    login_per_minute: int = _doc(
        "`/login`, and separately `/callback`, per client address and minute; beyond it: 429 "
        "`rate_limited` with `Retry-After`",
        default=30,
    )
    refresh_per_minute: int = _doc(
        "`POST /refresh` per client address and minute (also the burst); beyond it: 429, "
        "before Twitch is asked",
        default=120,
    )
    invalid_keys_per_minute: int = _doc(
        "Unknown proxy keys per client address and minute; then any request with a key from "
        "there: 429",
        default=10,
    )
    eventsub_per_minute: int = _doc(
        "`GET /eventsub` and `POST /eventsub/tickets` per client address and minute (also the "
        "burst); beyond it: 429",
        default=120,
    )
    eventsub_streams_per_grant: int = _doc(
        "Open `/eventsub` streams of one grant in one process; beyond it: 429 "
        "`too_many_streams` (each idle stream costs about 20 KB)",
        default=1000,
    )
    concurrent_per_grant: int = _doc(
        "Upstream requests of one grant in flight at once; beyond it: 429", default=32
    )
    concurrent_total: int = _doc(
        "Upstream requests of the process in flight at once; beyond it: 503 `overloaded` "
        "with `Retry-After`",
        default=256,
    )
    concurrency_wait: float = _doc(
        "Seconds a request waits for a free concurrency slot before those answers",
        default=5.0,
    )
    max_form_body: int = _doc(
        "Bytes of a `/refresh`, `/status` or `/revoke` body; beyond it: 413", default=16384
    )
    max_header_line: int = _doc(
        "Bytes of the request line or one header; beyond it: refused by the HTTP parser",
        default=8190,
    )
    max_headers: int = _doc(
        "Header fields in a request; beyond it: refused by the HTTP parser", default=128
    )


@dataclass(frozen=True)
class LogConfig:
    """Logging."""

    level: str = _env("LOG_LEVEL", "`DEBUG`, `INFO`, `WARNING` or `ERROR` (`--log-level`)",
                      default="INFO")
    format: str = _env("LOG_FORMAT", "`text` or `json` ([operations.md](operations.md#logs))",
                       default="text")


@dataclass(frozen=True)
class MetricsConfig:
    """The `/metrics` endpoint."""

    token: Secret = _env(
        "METRICS_TOKEN",
        "Bearer token `/metrics` requires; without it only this host may scrape "
        "([operations.md](operations.md#metrics))",
        shown="(none)", default=Secret(""),
    )
    grants_interval: float = _doc(
        "Seconds one count of grants by state serves `/metrics` scrapes (counting decrypts "
        "every grant); `0`: count at every scrape",
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
    eventsub: EventSubConfig = field(default_factory=EventSubConfig)

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

