"""``docker service logs`` on a manager: the lines of a service's (or a task's) containers from every node
that runs or ran one, merged as they come.

This node's lines come from its own engine; other nodes' from their shoald over the cluster port (mutual
TLS, :meth:`ClusterClient.logs`). ``follow`` keeps reading, including nodes that get a task later.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable

from shoal.aio import cancel_all, drain
from shoal.cluster.client import ClusterClient
from shoal.cluster.messages import LogsRequest
from shoal.model.logs import LogLine, LogQuery
from shoal.model.views import NodeView
from shoal.store.objects import Objects

log = logging.getLogger(__name__)

LocalLogs = Callable[[LogQuery], AsyncIterator[LogLine]]


def node_endpoint(node: dict, cluster_port: int) -> str:
    """Where a node's shoald answers log requests: a manager's cluster address; a worker listens on its
    advertised address with the swarm's cluster port."""
    view = NodeView(node)
    return view.manager_addr or f"{view.addr}:{cluster_port}"


async def gather(objs: Objects, node_id: str, local: LocalLogs, client: ClusterClient, cluster_port: int,
                 service: dict, task: dict | None, q: LogQuery) -> AsyncGenerator[LogLine, None]:
    """Every line of the service's (the task's) containers on every node; ``node_id`` is this node."""
    out: asyncio.Queue[LogLine] = asyncio.Queue(maxsize=1000)
    producers: set[asyncio.Task] = set()
    started: set[str] = set()

    def nodes() -> set[str]:
        if task is not None:
            return {task["NodeID"]} if task.get("NodeID") else set()
        return {t["NodeID"] for t in objs.tasks_of_service(service["ID"]) if t.get("NodeID")}

    async def from_node(nid: str) -> None:
        if nid == node_id:
            async for line in local(q):
                line.node_id = nid
                await out.put(line)
            return
        node = objs.get("nodes", nid)
        if node is None:
            return
        try:
            async for line in client.logs(node_endpoint(node, cluster_port), LogsRequest(node=nid, query=q)):
                line.node_id = nid
                await out.put(line)
        except Exception as e:  # an unreachable node: the others' logs still come
            log.warning("logs from node %s: %s", nid, e or type(e).__name__)

    def start_new() -> None:
        for nid in sorted(nodes() - started):
            started.add(nid)
            producers.add(asyncio.create_task(from_node(nid), name=f"logs-{nid}"))

    async def watch_nodes() -> None:
        watcher = objs.watcher(["tasks"])
        try:
            while True:
                await watcher.wait(1.0)
                start_new()
        finally:
            objs.unwatch(watcher)

    start_new()
    if q.follow and task is None:
        producers.add(asyncio.create_task(watch_nodes(), name="logs-watch"))
    try:
        async for line in drain(out, producers):
            yield line
    finally:
        await cancel_all(producers)
