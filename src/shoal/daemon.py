"""shoald: this host's :class:`~shoal.node.node.Node`, and the Engine API on its unix socket.

The API answers at once (a manager's store may take a while to catch up after a restart); the node then
comes back into the swarm it was in, if any.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from shoal.aio import FrozenSurvivors, cancel_all
from shoal.api.server import DISPATCH, make_app
from shoal.node.control import NodeControl
from shoal.node.node import Node, NodeConfig

log = logging.getLogger(__name__)


@dataclass
class Options(NodeConfig):
    socket: str = "/run/shoal/shoal.sock"


class Daemon:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.node = Node(opts)
        self.app = make_app(NodeControl(self.node))
        self.node.serve_forwarded(self.app[DISPATCH])  # writes other managers forward to this one
        self._runner: web.AppRunner | None = None
        self._gc = FrozenSurvivors()  # a leader's full garbage collections would hold its loop for seconds
        self._thaw: asyncio.Task | None = None

    async def start(self) -> None:
        self._gc.install()
        self._thaw = asyncio.create_task(self._gc.thaw(), name="gc-thaw")
        sock = Path(self.opts.socket)
        sock.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        self._runner = web.AppRunner(self.app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        await web.UnixSite(self._runner, str(sock)).start()
        os.chmod(sock, 0o660)
        log.info("shoald listening on unix://%s", sock)
        await self.node.start()

    async def stop(self) -> None:
        await self.node.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._thaw is not None:
            await cancel_all([self._thaw])
        self._gc.remove()
