"""docs/configuration.md's tables are the schema's, word for word."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from proxy.config import Config, ConfigError, load_config
from proxy.config.reference import BEGIN, END, reference_tables
from proxy.config.schema import SECTIONS

PAGE = Path(__file__).resolve().parents[3] / "docs" / "configuration.md"


def test_the_page_holds_the_generated_tables() -> None:
    page = PAGE.read_text("utf-8")
    generated = page[page.index(BEGIN): page.index(END) + len(END)] + "\n"
    assert generated == reference_tables(), (
        "docs/configuration.md is stale: paste `python -m proxy.config.reference` between "
        "its markers"
    )


def test_every_field_has_one_row_with_its_default() -> None:
    tables = reference_tables()
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            rows = [line for line in tables.splitlines()
                    if line.startswith(f"| `{section}.{f.name}` |")]
            assert len(rows) == 1, f"{section}.{f.name}"
    assert "| `auth.replay_window` |  | `600` |" in tables
    assert "| `cors.allow_origins` | `CORS_ALLOW_ORIGINS` | `[*]` |" in tables
    assert "| `helix.cache` |  | `{}` |" in tables
    assert "| `store.redis_tls_verify` | `REDIS_TLS_VERIFY` | `true` |" in tables


def test_eventsub_settings_are_checked(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    base = {"twitch.client_id": "id", "twitch.client_secret": "secret",
            "store.url": "memory://"}
    assert isinstance(load_config(path=empty, environ={}, flags=base), Config)
    bad = {**base, "twitch.eventsub_ws_url": "https://eventsub.example/ws",
           "eventsub.keepalive": 5, "eventsub.ticket_ttl": 0}
    try:
        load_config(path=empty, environ={}, flags=bad)
    except ConfigError as error:
        message = str(error)
    else:
        raise AssertionError("bad eventsub settings were accepted")
    assert "eventsub_ws_url must be a ws(s) URL" in message
    assert "eventsub.keepalive must be 10 to 600" in message
    assert "eventsub.ticket_ttl must be positive" in message
