"""``GET /shoal/openapi.json``: shoal's own OpenAPI document of the endpoints it answers itself
(``openapi.yaml`` beside this module, written from the facts of the Engine API v1.50)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from shoal.api.server import Ctx, route

SOURCE = Path(__file__).with_name("openapi.yaml")


@functools.cache
def document() -> dict[str, Any]:
    """The document as a dict (parsed once)."""
    return yaml.safe_load(SOURCE.read_text())


@functools.cache
def _body() -> bytes:
    return json.dumps(document()).encode()


@route("GET", "/shoal/openapi.json", manager=False)
async def openapi(ctx: Ctx, request: web.Request) -> web.Response:
    return web.Response(body=_body(), headers={"Content-Type": "application/json"})
