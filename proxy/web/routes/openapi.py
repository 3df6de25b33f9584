"""``GET /openapi.json``: the proxy's contract, ``proxy/openapi.yaml`` as JSON.

The YAML file is the source (comments, anchors, readable diffs); it is parsed
once, when the first request asks for it, and served as JSON.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

import yaml
from aiohttp import web

from ... import __version__

__all__ = ["openapi_document", "setup_openapi"]


@cache
def _document_text() -> str:
    return json.dumps(openapi_document())


def openapi_document() -> dict[str, Any]:
    """The parsed contract, with ``info.version`` set to the package's version."""
    text = resources.files("proxy").joinpath("openapi.yaml").read_text("utf-8")
    document: dict[str, Any] = yaml.safe_load(text)
    document["info"]["version"] = __version__
    return document


async def openapi_json(request: web.Request) -> web.Response:
    """The contract as JSON."""
    return web.Response(text=_document_text(), content_type="application/json")


def setup_openapi(app: web.Application) -> None:
    """Register ``GET /openapi.json``."""
    app.router.add_get("/openapi.json", openapi_json, name="openapi")
