"""Capturing the root logger's output through the production handlers (proxy.telemetry.logs)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from proxy.telemetry.logs import make_handler


class Captured:
    """The root logger's output through the production handlers, text and JSON."""

    def __init__(self, secrets: list[str]) -> None:
        self.text, self.json = io.StringIO(), io.StringIO()
        self.handlers = [make_handler("text", self.text, secrets=secrets),
                         make_handler("json", self.json, secrets=secrets)]

    def json_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.json.getvalue().splitlines()]

    @classmethod
    @contextmanager
    def installed(cls, secrets: list[str]) -> Iterator[Captured]:
        """Capture everything the root logger sees (DEBUG and up) while the block runs."""
        capture = cls(secrets)
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.DEBUG)
        for handler in capture.handlers:
            root.addHandler(handler)
        try:
            yield capture
        finally:
            for handler in capture.handlers:
                root.removeHandler(handler)
            root.setLevel(level)
