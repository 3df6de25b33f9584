"""proxy.config: layering, validation that reports everything, masked secrets."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from proxy.config import ConfigError, load_config
from proxy.config.secret import Secret

CREDENTIALS = {"TWITCH_CLIENT_ID": "cid", "TWITCH_CLIENT_SECRET": "s3cr3t-value"}


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("")
    return path


def test_defaults(config_file):
    config = load_config(path=config_file, environ=CREDENTIALS)
    assert config.server.port == 3000
    assert config.server.public_url == "http://localhost:3000"
    assert config.redirect_uri == "http://localhost:3000/callback"
    assert config.twitch.id_url == "https://id.twitch.tv"
    assert config.twitch.helix_url == "https://api.twitch.tv/helix"
    assert config.store.url == "sqlite:///tokens.sqlite3"
    assert config.cors.allow_origins == ("*",)


def test_precedence_flag_over_env_over_file(config_file):
    config_file.write_text("server:\n  port: 4000\n  host: 0.0.0.0\ntwitch:\n  scopes: [a, b]\n")
    from_file = load_config(path=config_file, environ=CREDENTIALS)
    assert from_file.server.port == 4000 and from_file.server.host == "0.0.0.0"
    assert from_file.twitch.scopes == ("a", "b")
    from_env = load_config(path=config_file, environ={**CREDENTIALS, "PORT": "5000"})
    assert from_env.server.port == 5000
    assert from_env.server.public_url == "http://localhost:5000"
    from_flag = load_config(path=config_file, environ={**CREDENTIALS, "PORT": "5000"},
                            flags={"server.port": "6000"})
    assert from_flag.server.port == 6000


def test_proxy_config_env_names_the_file(tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text("server:\n  port: 4321\n")
    config = load_config(environ={**CREDENTIALS, "PROXY_CONFIG": str(other)})
    assert config.server.port == 4321


def test_every_environment_variable(config_file):
    env = {
        **CREDENTIALS, "HOST": "0.0.0.0", "PORT": "8080", "PUBLIC_URL": "https://p.example/",
        "TWITCH_ID_URL": "http://127.0.0.1:1", "TWITCH_HELIX_URL": "http://127.0.0.1:1/helix",
        "TOKEN_STORE_URL": "memory://", "LOG_LEVEL": "debug",
        "CORS_ALLOW_ORIGINS": "https://a.example, null",
    }
    config = load_config(path=config_file, environ=env)
    assert config.server.host == "0.0.0.0"
    assert config.server.public_url == "https://p.example"  # trailing slash dropped
    assert config.redirect_uri == "https://p.example/callback"
    assert config.twitch.id_url == "http://127.0.0.1:1"
    assert config.twitch.helix_url == "http://127.0.0.1:1/helix"
    assert config.store.url == "memory://"
    assert config.log.level == "debug"
    assert config.cors.allow_origins == ("https://a.example", "null")


def test_redis_url_used_when_token_store_url_unset(config_file):
    key = Fernet.generate_key().decode()
    env = {**CREDENTIALS, "REDIS_URL": "redis://h:6379/0", "TOKEN_ENCRYPTION_KEY": key}
    assert load_config(path=config_file, environ=env).store.url == "redis://h:6379/0"
    with pytest.raises(ConfigError) as info:
        load_config(path=config_file, environ={**env, "TOKEN_ENCRYPTION_KEY": ""})
    assert "TOKEN_ENCRYPTION_KEY is required with a Redis store" in str(info.value)
    both = load_config(path=config_file, environ={**env, "TOKEN_STORE_URL": "memory://"})
    assert both.store.url == "memory://"


def test_bad_encryption_key_and_store_url(config_file):
    env = {**CREDENTIALS, "TOKEN_ENCRYPTION_KEY": f"{Fernet.generate_key().decode()},not-a-key",
           "TOKEN_STORE_URL": "sqlite://host/x"}
    with pytest.raises(ConfigError) as info:
        load_config(path=config_file, environ=env)
    assert "key 2 of TOKEN_ENCRYPTION_KEY is not a Fernet key" in str(info.value)
    assert "store.url: a SQLite store URL is sqlite:///relative/path" in str(info.value)
    assert "not-a-key" not in str(info.value)


def test_all_problems_reported_at_once(config_file):
    config_file.write_text(
        "server:\n  port: eighty\n  bogus: 1\nnosuch:\n  a: 1\n"
        "twitch:\n  scopes: [ok, 'two words']\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path=config_file, environ={"PORT": "x"})
    message = str(info.value)
    for expected in ("server.port: expected an integer", "unknown key 'server.bogus'",
                     "unknown section 'nosuch'", "client_id is missing",
                     "client_secret is missing", "'two words' must be one word"):
        assert expected in message
    assert len(info.value.problems) >= 6


def test_bad_yaml_and_wrong_shapes(config_file):
    config_file.write_text("- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(path=config_file, environ=CREDENTIALS)
    config_file.write_text("server: [1, 2]\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(path=config_file, environ=CREDENTIALS)
    config_file.write_text("server: {port: 1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path=config_file, environ=CREDENTIALS)


def test_memory_store_refuses_several_workers(config_file):
    env = {**CREDENTIALS, "TOKEN_STORE_URL": "memory://", "WEB_CONCURRENCY": "2"}
    with pytest.raises(ConfigError, match="private to one process"):
        load_config(path=config_file, environ=env)


def test_secret_never_printed(config_file):
    config = load_config(path=config_file, environ=CREDENTIALS)
    assert isinstance(config.twitch.client_secret, Secret)
    assert config.twitch.client_secret.reveal() == "s3cr3t-value"
    for text in (repr(config), str(config), f"{config.twitch}"):
        assert "s3cr3t-value" not in text
    with pytest.raises(ConfigError) as info:
        load_config(path=config_file, environ={**CREDENTIALS, "PORT": "no"})
    assert "s3cr3t-value" not in str(info.value)


def test_lock_lease_outlasts_the_twitch_timeout_and_validation_needs_an_interval(config_file):
    config_file.write_text("store:\n  lock_lease: 10\ntwitch:\n  timeout: 10\n"
                           "auth:\n  validate_interval: 0\n")
    with pytest.raises(ConfigError) as info:
        load_config(path=config_file, environ=CREDENTIALS)
    assert "store.lock_lease must be longer than twitch.timeout" in str(info.value)
    assert "auth.validate_interval must be positive" in str(info.value)
    config_file.write_text("store:\n  lock_lease: 5\ntwitch:\n  timeout: 4\n"
                           "auth:\n  validate_interval: 60\n")
    config = load_config(path=config_file, environ=CREDENTIALS)
    assert (config.store.lock_lease, config.auth.validate_interval) == (5.0, 60.0)
    config_file.write_text("")
    defaults = load_config(path=config_file, environ=CREDENTIALS)
    assert (defaults.store.lock_lease, defaults.auth.validate_interval) == (30.0, 3600.0)


def test_redis_tls_verify_false_adds_ssl_cert_reqs_to_a_rediss_url(config_file):
    key = Fernet.generate_key().decode()
    env = {**CREDENTIALS, "TOKEN_ENCRYPTION_KEY": key,
           "REDIS_URL": "rediss://:pw@h.example:6380/0"}
    assert load_config(path=config_file, environ=env).store.url == \
        "rediss://:pw@h.example:6380/0"  # verified by default
    relaxed = load_config(path=config_file, environ={**env, "REDIS_TLS_VERIFY": "false"})
    assert relaxed.store.url == "rediss://:pw@h.example:6380/0?ssl_cert_reqs=none"
    explicit = load_config(path=config_file, environ={
        **env, "REDIS_TLS_VERIFY": "false",
        "REDIS_URL": "rediss://h.example:6380/0?ssl_cert_reqs=required"})
    assert explicit.store.url.endswith("ssl_cert_reqs=required")  # the URL's own choice wins
    plain = load_config(path=config_file, environ={
        **env, "REDIS_TLS_VERIFY": "false", "REDIS_URL": "redis://h.example:6379/0"})
    assert plain.store.url == "redis://h.example:6379/0"
