"""The dispatcher: the managers' side of agent sessions.

It hands each node the tasks assigned to it and writes the agents' status reports into the store
(a task's observed state only moves forward). This module holds the logic; transports (in-process
for the local agent, the cluster port for remote ones) call it.
"""

from __future__ import annotations

import asyncio
import contextlib

from shoal.model import states
from shoal.model.ids import now
from shoal.store.objects import Objects


def assigned_to(objs: Objects, node_id: str) -> list[dict]:
    """Tasks a node must know about: scheduled to it and not yet forgotten."""
    return [t for t in objs.tasks_of_node(node_id)
            if not states.before(t["Status"]["State"], states.ASSIGNED)]


async def update_status(objs: Objects, task_id: str, status: dict) -> bool:
    """Apply an agent's report; False if the task is gone or the report is stale."""

    def apply(task: dict) -> bool:
        cur = task["Status"]["State"]
        new = status["State"]
        if states.before(new, cur):
            return False
        if new == cur and status.get("Err", "") == task["Status"].get("Err", "") and \
                status.get("ContainerStatus") == task["Status"].get("ContainerStatus"):
            return False
        merged = {**task["Status"], **status}
        if "Err" not in status:
            merged.pop("Err", None)
        task["Status"] = merged
        task["UpdatedAt"] = now()
        return True

    return await objs.modify("tasks", task_id, apply) is not None


class LocalSession:
    """The in-process session of the agent that runs beside the leader."""

    def __init__(self, objs: Objects, node_id: str) -> None:
        self.objs = objs
        self.node_id = node_id
        self._watcher = objs.watcher(("tasks",))
        self._mine: set[str] = set()

    def assigned(self) -> list[dict]:
        tasks = assigned_to(self.objs, self.node_id)
        self._mine = {t["ID"] for t in tasks}
        return tasks

    async def changed(self, timeout: float | None) -> None:
        deadline = asyncio.get_running_loop().time() + (timeout or 3600)
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return
            changes = await self._watcher.wait(left)
            tasks = self.objs.cache["tasks"]
            for _, tid in changes:
                t = tasks.get(tid)
                if tid in self._mine or (t is not None and t.get("NodeID") == self.node_id):
                    return

    async def report(self, task_id: str, status: dict) -> None:
        with contextlib.suppress(Exception):
            await update_status(self.objs, task_id, status)

    def close(self) -> None:
        self.objs.unwatch(self._watcher)
