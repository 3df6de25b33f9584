"""Building the configuration: defaults, then the file, then the environment, then flags.

Values come from four layers, later ones winning: built-in defaults, the YAML
file (``config.yaml``, or ``--config PATH`` / ``PROXY_CONFIG``), environment
variables, and command-line flags. Unknown sections and keys are refused. Every
problem (unknown keys, wrong types, and whatever :mod:`proxy.config.checks`
finds) is collected first and raised once as :class:`ConfigError`, whose
message lists them all.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from yarl import URL

from .checks import validate
from .schema import SECTIONS, Config, default_public_url
from .secret import Secret

__all__ = ["DEFAULT_CONFIG_FILE", "ConfigError", "load_config"]

DEFAULT_CONFIG_FILE = "config.yaml"


class ConfigError(Exception):
    """The configuration has problems; ``problems`` lists every one of them."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(
            "invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems)
        )


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
    values: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    types_by_section = {name: _field_types(cls) for name, cls in SECTIONS.items()}

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
            if section not in SECTIONS:
                problems.append(f"{source}: unknown section {section!r}")
            elif body is None:
                continue
            elif not isinstance(body, dict):
                problems.append(f"{source}: section {section!r} must be a mapping")
            else:
                for key, value in body.items():
                    assign(f"{section}.{key}", value, str(source), from_text=False)

    for section, cls in SECTIONS.items():
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
    for name, cls in SECTIONS.items():
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

