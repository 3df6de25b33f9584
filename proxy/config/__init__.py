"""Configuration: plain frozen dataclasses, one loader, one validation pass.

Values come from four layers, later ones winning: built-in defaults, the YAML
file (``config.yaml``, or ``--config PATH`` / ``PROXY_CONFIG``), environment
variables, and command-line flags. Each dataclass field names its environment
variable in its metadata, so the table of variables is the code itself (and
``python -m proxy --help`` prints it).

Every problem (unknown keys, wrong types, missing credentials, bad URLs) is
collected first and raised once as :class:`ConfigError`, whose message lists
them all. Secrets are wrapped in :class:`~proxy.secret.Secret` so no repr,
log line or error message can show them.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yarl import URL

from ..store import sqlite_path
from ..store.crypto import parse_keys
from .secret import Secret

__all__ = [
    "AuthConfig",
    "Config",
    "ConfigError",
    "CorsConfig",
    "HelixConfig",
    "LogConfig",
    "LimitsConfig",
    "MetricsConfig",
    "ServerConfig",
    "StoreConfig",
    "TwitchConfig",
    "default_public_url",
    "env_table",
    "load_config",
]

DEFAULT_CONFIG_FILE = "config.yaml"


class ConfigError(Exception):
    """The configuration has problems; ``problems`` lists every one of them."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(
            "invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems)
        )


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
    """Abuse limits (see proxy.abuse); a rate of 0 turns that limit off."""

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


_SECTIONS: dict[str, type[Any]] = {
    f.name: typing.get_type_hints(Config)[f.name] for f in dataclasses.fields(Config)
}


def env_table() -> list[tuple[str, str, str]]:
    """``(variable, config key, description)`` for every environment variable."""
    rows = []
    for section, cls in _SECTIONS.items():
        for f in dataclasses.fields(cls):
            if "env" in f.metadata:
                rows.append((f.metadata["env"], f"{section}.{f.name}", f.metadata["doc"]))
    return rows


# --- loading ---------------------------------------------------------------

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _coerce(value: Any, kind: Any, *, from_text: bool) -> Any:
    """Convert ``value`` to ``kind``; raise ValueError with a short reason."""
    if kind is Secret:
        if isinstance(value, Secret):
            return value
        if not isinstance(value, str):
            raise ValueError("expected a string")
        return Secret(value)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if from_text and isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError("expected true or false")
    if kind is int or kind is float:
        if isinstance(value, bool):
            raise ValueError(f"expected {'an integer' if kind is int else 'a number'}")
        if isinstance(value, int) or (kind is float and isinstance(value, float)):
            return kind(value)
        if from_text and isinstance(value, str):
            try:
                return kind(value.strip())
            except ValueError:
                pass
        raise ValueError(f"expected {'an integer' if kind is int else 'a number'}")
    if kind is str:
        if isinstance(value, str):
            return value
        raise ValueError("expected a string")
    if typing.get_origin(kind) is dict:  # dict[str, float]: "a=1,b=2" from text
        if from_text and isinstance(value, str):
            value = dict(part.strip().partition("=")[::2] for part in value.split(",")
                         if part.strip())
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return {k: _coerce(v, float, from_text=from_text) for k, v in value.items()}
        raise ValueError("expected a mapping of strings to numbers")
    if typing.get_origin(kind) is tuple:
        if from_text and isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ValueError("expected a list of strings")
    raise ValueError(f"unsupported type {kind!r}")  # pragma: no cover - schema bug


def _field_types(cls: type[Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if isinstance(kind, types.UnionType):  # pragma: no cover - not used yet
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        out[f.name] = kind
    return out


def _read_file(path: Path, problems: list[str]) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        problems.append(f"{path}: cannot read ({exc.strerror})")
        return {}
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problems.append(f"{path}: not valid YAML ({exc.__class__.__name__})")
        return {}
    if data is None:
        return {}
    if not isinstance(data, dict):
        problems.append(f"{path}: the top level must be a mapping of sections")
        return {}
    return data


def load_config(
    *,
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> Config:
    """Build the configuration from defaults, file, environment and flags.

    ``path`` is the YAML file; when None, ``PROXY_CONFIG`` or ``config.yaml``
    in the working directory (if present) is used. ``flags`` and ``defaults``
    map dotted keys (``"server.port"``) to values; ``defaults`` replaces the
    built-in defaults (``--mock-twitch`` uses it). Raises :class:`ConfigError`
    listing every problem.
    """
    environ = os.environ if environ is None else environ
    problems: list[str] = []
    values: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    types_by_section = {name: _field_types(cls) for name, cls in _SECTIONS.items()}

    def assign(dotted: str, value: Any, origin: str, *, from_text: bool) -> None:
        section, _, key = dotted.partition(".")
        kinds = types_by_section.get(section)
        if kinds is None or key not in kinds:
            problems.append(f"{origin}: unknown key {dotted!r}")
            return
        try:
            values[section][key] = _coerce(value, kinds[key], from_text=from_text)
        except ValueError as exc:
            problems.append(f"{origin}: {dotted}: {exc}")

    for dotted, value in (defaults or {}).items():
        assign(dotted, value, "defaults", from_text=False)

    file_path = path or environ.get("PROXY_CONFIG")
    if file_path is not None or Path(DEFAULT_CONFIG_FILE).exists():
        source = Path(file_path or DEFAULT_CONFIG_FILE)
        for section, body in _read_file(source, problems).items():
            if section not in _SECTIONS:
                problems.append(f"{source}: unknown section {section!r}")
            elif body is None:
                continue
            elif not isinstance(body, dict):
                problems.append(f"{source}: section {section!r} must be a mapping")
            else:
                for key, value in body.items():
                    assign(f"{section}.{key}", value, str(source), from_text=False)

    for section, cls in _SECTIONS.items():
        for f in dataclasses.fields(cls):
            name = f.metadata.get("env")
            if name and name in environ:
                assign(f"{section}.{f.name}", environ[name], f"${name}", from_text=True)
    # Heroku-style platforms set REDIS_URL; TOKEN_STORE_URL, when set, wins.
    if "TOKEN_STORE_URL" not in environ and environ.get("REDIS_URL"):
        assign("store.url", environ["REDIS_URL"], "$REDIS_URL", from_text=True)

    for dotted, value in (flags or {}).items():
        if value is not None:
            assign(dotted, value, "flag", from_text=True)

    sections = {}
    for name, cls in _SECTIONS.items():
        sections[name] = cls(**values[name])
    config = Config(**sections)
    config = _fill_derived(config)
    problems.extend(validate(config))
    if problems:
        raise ConfigError(problems)
    return config


def _fill_derived(config: Config) -> Config:
    """Values that depend on other values (public_url, allowed_scopes, store URL)."""
    server = config.server
    if not server.public_url:
        server = dataclasses.replace(server, public_url=default_public_url(server))
    else:
        server = dataclasses.replace(server, public_url=server.public_url.rstrip("/"))
    twitch = config.twitch
    if not twitch.allowed_scopes:
        twitch = dataclasses.replace(twitch, allowed_scopes=twitch.scopes)
    store = config.store
    if not store.redis_tls_verify and store.url.startswith("rediss://") \
            and "ssl_cert_reqs" not in URL(store.url).query:
        # Heroku's add-on sets REDIS_URL without it, and rotates the URL: an
        # operator cannot keep a hand-edited copy current.
        store = dataclasses.replace(
            store, url=str(URL(store.url).update_query(ssl_cert_reqs="none")))
    return dataclasses.replace(config, server=server, twitch=twitch, store=store)


def default_public_url(server: ServerConfig) -> str:
    """The public URL when PUBLIC_URL is not set: ``http(s)://localhost:PORT``."""
    scheme = "https" if server.tls_cert else "http"
    return f"{scheme}://localhost:{server.port}"


# --- validation: one function per area, each returning its problems --------

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
    if scheme not in ("memory", "sqlite", "redis", "rediss"):
        problems.append(
            f"store.url must start with memory://, sqlite:///, redis:// or rediss:// "
            f"(got scheme {scheme!r})"
        )
    if scheme == "memory" and server.workers > 1:
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
    for name in ("concurrent_per_grant", "concurrent_total", "max_header_line", "max_headers"):
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


def validate(config: Config) -> list[str]:
    """Every problem with a fully built configuration."""
    return (
        validate_twitch(config.twitch)
        + validate_server(config.server)
        + validate_store(config.store, config.server)
        + validate_other(config)
    )
