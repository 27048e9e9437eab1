"""Tests only: keep every JSON answer shoald gives, to check it against shoal's OpenAPI document."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web


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
