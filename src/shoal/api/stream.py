"""Streamed answers (``docker events``, ``docker service logs``) to clients that may read slowly.

Each client has its own bounded queues; what it does not read stays in its socket's buffers, then in
those queues. A client whose socket takes nothing for ``STALL`` seconds, or that falls too far behind
the swarm's events, is cut off: its connection is aborted, and nobody else waits for it.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

log = logging.getLogger(__name__)

STALL = 30.0  # seconds a client may leave a write pending before it is cut off


class CutOff(ConnectionError):
    """The client read too slowly and was disconnected."""


def cut_off(request: web.Request, why: str) -> None:
    """Abort the client's connection (a write waiting on it fails with a ConnectionError)."""
    log.warning("%s %s: client cut off: %s", request.method, request.path, why)
    if request.transport is not None:
        request.transport.abort()


async def write(request: web.Request, resp: web.StreamResponse, data: bytes, stall: float = STALL) -> None:
    """``resp.write(data)``, cutting the client off if the write waits more than ``stall`` seconds."""
    try:
        async with asyncio.timeout(stall):
            await resp.write(data)
    except TimeoutError:
        cut_off(request, f"nothing read for {stall:g} s")
        raise CutOff("the client reads too slowly") from None
