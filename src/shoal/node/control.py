"""This node as the Engine API sees it: the :class:`shoal.control.Control` the API handlers get."""

from __future__ import annotations

from collections.abc import Iterable

from shoal.control import Attachment, LocalNode
from shoal.manager.control import ControlAPI
from shoal.model.errors import Unavailable
from shoal.node.node import NOT_IN_SWARM, Node


class NodeControl:
    """Implements :class:`shoal.control.Control` over a :class:`Node`."""

    def __init__(self, node: Node) -> None:
        self.node = node

    @property
    def engine_socket(self) -> str:
        return self.node.cfg.engine

    def local(self) -> LocalNode:
        n = self.node
        return LocalNode(state=n.status, role=n.role, node_id=n.node_id, addr=n.state.addr)

    def swarm_info(self) -> dict:
        return self.node.swarm_info()

    def manager(self) -> ControlAPI:
        n = self.node
        if n.status != "active" or n.role != "manager" or n.manager is None or n.manager.objs is None:
            raise n.not_manager()
        return n.manager.control

    async def init_swarm(self, request: dict) -> str:
        return await self.node.init(request)

    async def join_swarm(self, request: dict) -> None:
        await self.node.join(request)

    async def leave_swarm(self, force: bool) -> None:
        await self.node.leave(force)

    async def unlock_swarm(self, key: str) -> None:
        await self.node.unlock(key)

    # -- standalone containers ---------------------------------------------------------------------
    def networks_here(self) -> list[dict] | None:
        agent = self.node.agent
        return agent.networks_here() if agent is not None and self.node.status == "active" else None

    async def attach(self, network: str, container: str) -> Attachment:
        agent = self.node.agent
        if agent is None:
            raise Unavailable(NOT_IN_SWARM)
        att = await agent.attach(network, container)
        return Attachment(task_id=att.task["ID"], network=att.network, ipam=att.ipam, dns=att.dns)

    async def detach(self, task_ids: Iterable[str]) -> None:
        agent = self.node.agent
        if agent is not None:
            for tid in task_ids:
                await agent.detach(tid)

    async def collect_attachments(self) -> None:
        agent = self.node.agent
        if agent is not None:
            await agent.collect_attachments()
