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
from typing import TYPE_CHECKING

import aiohttp

from shoal.manager import attachments
from shoal.model.errors import APIError, Unavailable
from shoal.model.ids import parse_time

if TYPE_CHECKING:
    from shoal.daemon import Daemon

log = logging.getLogger(__name__)

PERIOD = 5.0  # seconds between checks
GRACE = 10.0  # an attachment younger than this is never collected (its create may be under way)


async def attach_network(daemon: Daemon, target: str, container: str) -> dict:
    """An attachment of this node to swarm network ``target`` (made by the leader)."""
    if daemon.is_leader:
        return await attachments.attach(daemon, daemon.node_id, target, container)
    answer = await daemon.ask_leader("/attachments/attach", {"network": target, "container": container})
    return answer["task"]


async def detach_network(daemon: Daemon, task_id: str) -> None:
    """Give attachment ``task_id`` back; a failure is logged (the collector tries again)."""
    try:
        if daemon.is_leader:
            await attachments.detach(daemon, daemon.node_id, task_id)
        else:
            await daemon.ask_leader("/attachments/detach", {"id": task_id})
    except (APIError, aiohttp.ClientError, OSError) as e:
        log.warning("could not give back network attachment %s: %s", task_id, e)


async def _addresses_in_use(daemon: Daemon) -> set[str]:
    """The addresses the engine's containers (all of them, stopped ones too) are configured with."""
    async with daemon.proxy.session.get("http://docker/containers/json?all=1") as resp:
        resp.raise_for_status()
        containers = await resp.json()
    used: set[str] = set()
    for c in containers:
        for ep in ((c.get("NetworkSettings") or {}).get("Networks") or {}).values():
            addr = ((ep or {}).get("IPAMConfig") or {}).get("IPv4Address")
            if addr:
                used.add(addr)
    return used


async def collect_once(daemon: Daemon, now: float) -> list[str]:
    """Give back this node's unused attachments; returns their IDs."""
    netmap = daemon.netagent.netmap if daemon.netagent else {}
    mine = [a for a in netmap.get("attachments") or [] if now - parse_time(a["created"]) >= GRACE]
    if not mine:
        return []
    used = await _addresses_in_use(daemon)
    gone = [a["id"] for a in mine if a["ip"] not in used]
    for tid in gone:
        await detach_network(daemon, tid)
    return gone


async def collect(daemon: Daemon) -> None:
    """Run :func:`collect_once` every ``PERIOD`` s."""
    while True:
        await asyncio.sleep(PERIOD)
        try:
            await collect_once(daemon, time.time())
        except (aiohttp.ClientError, OSError, Unavailable) as e:
            log.debug("attachment collector: %s", e)
