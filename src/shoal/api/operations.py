"""Operator endpoints beside the Engine API: ``GET /shoal/backup`` streams a snapshot of this manager's
etcd member (``shoal backup`` writes it to a file; ``shoal restore`` turns it back into a store)."""

from __future__ import annotations

import contextlib

from aiohttp import web

from shoal.api.server import Ctx, route


@route("GET", "/shoal/backup")
async def get_backup(ctx: Ctx, request: web.Request) -> web.StreamResponse:
    async with ctx.manager.snapshot() as (path, size):
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream",
                                           "Content-Length": str(size)})
        await resp.prepare(request)
        with open(path, "rb") as f:  # noqa: ASYNC230 (a local file read in 1 MiB chunks)
            while chunk := f.read(1 << 20):
                await resp.write(chunk)
        with contextlib.suppress(ConnectionError):
            await resp.write_eof()
        return resp
