"""The agent (swarmkit's agent/): a node's worker side, on every node of a swarm.

It keeps the session with the leader (:class:`RemoteSession`: assignments, network maps, secrets and
configs in; status reports, heartbeats and the node's description out), runs the assigned tasks as
containers (:class:`Worker`), wires the node into its swarm networks (shoal.network.agent) from the map
the managers push, and gives back the network attachments of standalone containers that are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from shoal.agent import attachments
from shoal.agent.attachments import GRACE, AskLeader
from shoal.agent.executor.docker import DockerExecutor
from shoal.agent.files import TaskFiles
from shoal.agent.files import unmount as unmount_task_files
from shoal.agent.logs import local_logs
from shoal.agent.session import RemoteSession
from shoal.agent.worker import Worker
from shoal.aio import cancel_all
from shoal.cluster.client import ClusterClient
from shoal.cluster.messages import CAUpdate
from shoal.engine import Engine
from shoal.model.logs import LogLine, LogQuery
from shoal.network import gwbridge
from shoal.network.agent import NetworkAgent

log = logging.getLogger(__name__)


@dataclass
class AgentConfig:
    node_id: str
    addr: str  # the node's advertised address (its VXLAN endpoint)
    engine: str  # the engine's unix socket
    task_files: Path  # the tmpfs for the tasks' secret and config files
    networking: bool = True  # overlay networks, VIPs, routing mesh, DNS on this host
    plugin_dir: Path = Path("/run/docker/plugins")
    tunnel_key: Path | None = None  # this node's WireGuard private key (encrypted overlays); None: in memory


@dataclass(frozen=True)
class Attached:
    """An attachment made ready for the engine: the task, the twin network, its endpoint, the DNS."""

    task: dict
    network: str
    ipam: dict
    dns: list[str]


class Agent:
    def __init__(self, cfg: AgentConfig, managers: list[str], client: ClusterClient, engine: Engine,
                 describe: Callable[[], Awaitable[dict]], on_role: Callable[[str, str], None],
                 ask_leader: AskLeader, on_ca: Callable[[CAUpdate], None] | None = None) -> None:
        self.cfg = cfg
        self.engine = engine
        self.ask_leader = ask_leader
        self.network = NetworkAgent(cfg.node_id, f"unix://{cfg.engine}", cfg.plugin_dir,
                                    tunnel_key=cfg.tunnel_key) if cfg.networking else None
        self.session = RemoteSession(managers, client, describe, cfg.addr, on_role=on_role, on_ca=on_ca,
                                     wg_key=self.network.public_key if self.network is not None else "")
        self.executor = DockerExecutor(f"unix://{cfg.engine}")
        self.files = TaskFiles(cfg.task_files, self.session)
        self._tasks: list[asyncio.Task] = []

    @property
    def managers(self) -> list[str]:
        """The managers' cluster addresses, as the leader last told."""
        return self.session.managers

    async def start(self) -> None:
        self.session.start()
        if self.network is not None:
            await self.network.start()
            await gwbridge.ensure(self.engine)
            self._tasks.append(asyncio.create_task(
                attachments.collect(lambda: self.network.netmap if self.network else {}, self.engine,
                                    self.ask_leader), name="attachments"))
            self._tasks.append(asyncio.create_task(self._follow_netmap(self.network), name="netmap"))
        worker = Worker(self.cfg.node_id, self.session, self.executor, network=self.network, files=self.files)
        self._tasks.append(asyncio.create_task(worker.run(), name="worker"))

    async def stop(self) -> None:
        """Stop working; task containers and networking stay as they are (a restart re-adopts them)."""
        await self.session.close()
        await cancel_all(self._tasks)
        self._tasks.clear()
        if self.network is not None:
            await self.network.stop()
        await self.executor.close()

    async def clean_up(self) -> None:
        """Leaving the swarm (after :meth:`stop`): remove the task containers, their files, and every link,
        rule and engine network shoal made."""
        if self.network is not None:  # the engine calls the network plugin while it removes task containers
            await self.network.plugin.start()
        try:
            ex = DockerExecutor(f"unix://{self.cfg.engine}")
            try:
                for c in (await ex.containers(self.cfg.node_id)).values():
                    with contextlib.suppress(Exception):
                        await ex.remove(c["Id"])
            finally:
                await ex.close()
            unmount_task_files(self.cfg.task_files)
            if self.network is not None:
                await self.network.cleanup()
        finally:
            if self.network is not None:
                await self.network.plugin.stop()

    async def _follow_netmap(self, network: NetworkAgent) -> None:
        """Apply every network map the managers push."""
        while True:
            await self.session.netmap_changed.wait()
            self.session.netmap_changed.clear()
            if self.session.netmap is not None:
                await network.apply(self.session.netmap)

    # -- standalone containers on swarm networks ---------------------------------------------------
    def networks_here(self) -> list[dict] | None:
        """The swarm networks this node takes part in, as its network map has them (None: no networking)."""
        if self.network is None:
            return None
        return [n["resource"] for n in (self.network.netmap.get("networks") or {}).values() if "resource" in n]

    async def attach(self, network: str, container: str) -> Attached:
        """An attachment of ``container`` to swarm network ``network``, its twin network ready."""
        if self.network is None:
            raise RuntimeError("this node has no swarm networking")
        task = await attachments.attach(self.ask_leader, network, container)
        try:
            extra = await self.network.prepare_task(task)
        except BaseException:
            await attachments.detach(self.ask_leader, task["ID"])
            raise
        twin = extra["HostConfig"]["NetworkMode"]
        ipam = extra["NetworkingConfig"]["EndpointsConfig"][twin]["IPAMConfig"]
        return Attached(task, twin, ipam, extra["HostConfig"].get("Dns") or [])

    async def detach(self, task_id: str) -> None:
        await attachments.detach(self.ask_leader, task_id)

    async def collect_attachments(self) -> None:
        """Give back at once the attachments whose container is gone (``docker network disconnect``)."""
        if self.network is not None:
            await attachments.collect_once(self.network.netmap, self.engine, self.ask_leader, time.time() + GRACE)

    def local_logs(self, query: LogQuery) -> AsyncGenerator[LogLine, None]:
        return local_logs(self.engine, query, self.cfg.node_id)
