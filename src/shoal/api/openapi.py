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


def recorder(path: str) -> Any:
    """An aiohttp middleware that appends every JSON response shoald gives (method, path, status,
    body) to the file ``path`` as JSON lines; the integration tests check them against the document.
    Enabled by ``SHOAL_API_RECORD=<file>``."""

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        resp = await handler(request)
        body = resp.body if isinstance(resp, web.Response) else None
        if isinstance(body, bytes) and resp.content_type == "application/json":
            line = json.dumps({"method": request.method, "path": request.path, "status": resp.status,
                               "body": body.decode(errors="replace")})
            with open(path, "a") as f:  # noqa: ASYNC230 (tests only; a short append)
                f.write(line + "\n")
        return resp

    return record
