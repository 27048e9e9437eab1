"""Operator endpoints beside the Engine API: ``GET /shoal/backup`` streams a snapshot of this manager's
etcd member (``shoal backup`` writes it to a file; ``shoal restore`` turns it back into a store)."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from shoal.api.server import route
from shoal.store.backup import backup

if TYPE_CHECKING:
    from shoal.daemon import Daemon


@route("GET", "/shoal/backup")
async def get_backup(daemon: Daemon, request: web.Request) -> web.StreamResponse:
    with tempfile.TemporaryDirectory(dir=daemon.opts.data_dir, prefix="backup-") as tmp:
        path = Path(tmp) / "snapshot.db"
        size = await backup(daemon.objs.store, path)  # type: ignore[arg-type]
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream",
                                           "Content-Length": str(size)})
        await resp.prepare(request)
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                await resp.write(chunk)
        with contextlib.suppress(ConnectionError):
            await resp.write_eof()
        return resp
