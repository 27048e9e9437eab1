"""This node's network attachments (standalone containers on attachable swarm networks): asking the leader
for one and giving it back, and a collector that gives back those whose container is gone.

An attachment is in use while some container on the engine, running or stopped, keeps its address in
its endpoint configuration; `docker rm`, `docker network disconnect` or a failed create end that, and the
collector then returns the address (after a grace period that covers a create still under way).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp

from shoal.cluster.messages import AttachAnswer, AttachRequest, DetachAnswer, DetachRequest, Message
from shoal.engine import Engine
from shoal.model.errors import APIError, Unavailable
from shoal.model.ids import parse_time

log = logging.getLogger(__name__)

PERIOD = 5.0  # seconds between checks
GRACE = 10.0  # an attachment younger than this is never collected (its create may be under way)

M = TypeVar("M", bound=Message)
AskLeader = Callable[[Message, type[M]], Awaitable[M]]


async def attach(ask: AskLeader, network: str, container: str) -> dict:
    """An attachment of this node to swarm network ``network`` (made by the leader)."""
    answer = await ask(AttachRequest(network=network, container=container), AttachAnswer)
    return answer.task


async def detach(ask: AskLeader, task_id: str) -> None:
    """Give attachment ``task_id`` back; a failure is logged (the collector tries again)."""
    try:
        await ask(DetachRequest(id=task_id), DetachAnswer)
    except (APIError, aiohttp.ClientError, OSError) as e:
        log.warning("could not give back network attachment %s: %s", task_id, e)


async def _addresses_in_use(engine: Engine) -> set[str]:
    """The addresses the engine's containers (all of them, stopped ones too) are configured with."""
    async with engine.session.get("http://docker/containers/json?all=1") as resp:
        resp.raise_for_status()
        containers = await resp.json()
    used: set[str] = set()
    for c in containers:
        for ep in ((c.get("NetworkSettings") or {}).get("Networks") or {}).values():
            addr = ((ep or {}).get("IPAMConfig") or {}).get("IPv4Address")
            if addr:
                used.add(addr)
    return used


async def collect_once(netmap: dict, engine: Engine, ask: AskLeader, now: float) -> list[str]:
    """Give back this node's unused attachments (``netmap``: the node's network map); returns their IDs."""
    mine = [a for a in netmap.get("attachments") or [] if now - parse_time(a["created"]) >= GRACE]
    if not mine:
        return []
    used = await _addresses_in_use(engine)
    gone = [a["id"] for a in mine if a["ip"] not in used]
    for tid in gone:
        await detach(ask, tid)
    return gone


async def collect(netmap: Callable[[], dict], engine: Engine, ask: AskLeader) -> None:
    """Run :func:`collect_once` every ``PERIOD`` s."""
    while True:
        await asyncio.sleep(PERIOD)
        try:
            await collect_once(netmap(), engine, ask, time.time())
        except (aiohttp.ClientError, OSError, Unavailable) as e:
            log.debug("attachment collector: %s", e)
