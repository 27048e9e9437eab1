"""The worker: runs the tasks assigned to this node (one runner each) and reports their states.

It talks to the managers only through a :class:`Session` (assignments in, status reports out) and to
the engine only through the executor. On start it re-adopts its containers by their
``com.docker.swarm.task.id`` label, so a restart never duplicates a task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Protocol

from shoal.agent.executor.docker import ENGINE_ERRORS, DockerExecutor
from shoal.agent.files import TaskFiles
from shoal.agent.runner import TaskRunner
from shoal.model import states

if TYPE_CHECKING:
    from shoal.network.agent import NetworkAgent

log = logging.getLogger(__name__)
ENGINE_RETRY = 1.0  # seconds between tries while the engine does not answer


class Session(Protocol):
    """The agent's line to the dispatcher."""

    def assigned(self) -> list[dict]:
        """The tasks currently assigned to this node."""
        ...

    async def changed(self, timeout: float | None) -> None:
        """Return when the assignments may have changed (or after ``timeout``)."""
        ...

    async def report(self, task_id: str, status: dict) -> None: ...


class Worker:
    def __init__(self, node_id: str, session: Session, executor: DockerExecutor,
                 network: NetworkAgent | None = None, files: TaskFiles | None = None) -> None:
        self.node_id = node_id
        self.session = session
        self.ex = executor
        self.network = network  # None: no swarm networking (containers stay on the default bridge)
        self.files = files  # secret and config files (None: not delivered)
        self.runners: dict[str, TaskRunner] = {}
        self._resync = asyncio.Event()

    def _on_event(self, task_id: str, action: str, event: dict) -> None:
        if action == "reconnect":
            self._resync.set()
            for r in self.runners.values():
                r.poke()
            return
        r = self.runners.get(task_id)
        if r is not None and (action in ("die", "start", "stop", "destroy", "oom")
                              or action.startswith("health_status")):
            r.poke()

    def _description(self) -> dict:
        """This node's description as the session last sent it (templates read its hostname and platform)."""
        return getattr(self.session, "description", None) or {}

    async def run(self) -> None:
        self.ex.watch_events(self.node_id, self._on_event)
        synced = getattr(self.session, "synced", None)
        if synced is not None:  # never judge containers before the first full assignment list
            await synced.wait()
        try:
            self._resync.set()  # the first pass reads the containers
            while True:
                full = self._resync.is_set()
                self._resync.clear()
                try:
                    await self._sync(await self.ex.containers(self.node_id) if full else None)
                except ENGINE_ERRORS as e:  # dockerd is down or restarting: read everything again once it answers
                    log.warning("the engine does not answer (%s); trying again", e)
                    self._resync.set()
                    await asyncio.sleep(ENGINE_RETRY)
                    continue
                waiter = asyncio.ensure_future(self.session.changed(5.0))
                resync = asyncio.ensure_future(self._resync.wait())
                await asyncio.wait({waiter, resync}, return_when=asyncio.FIRST_COMPLETED)
                for f in (waiter, resync):
                    f.cancel()
        finally:
            for r in list(self.runners.values()):
                await r.cancel()

    async def _sync(self, containers: dict[str, dict] | None) -> None:
        assigned = {t["ID"]: t for t in self.session.assigned()}
        for tid, task in assigned.items():
            r = self.runners.get(tid)
            if r is not None:
                r.update(task)
                continue
            container = containers.get(tid) if containers is not None else None
            if containers is None and states.terminal(task["Status"]["State"]):
                continue  # finished before we knew it; nothing to run
            r = TaskRunner(task, self.node_id, self.ex, self.session.report, container, self.network, self.files,
                           node=self._description)
            self.runners[tid] = r
            r.start()
        for tid in [t for t in self.runners if t not in assigned]:
            r = self.runners.pop(tid)
            await r.remove()
        if containers is not None:  # containers whose task no longer exists
            for tid, c in containers.items():
                if tid not in assigned:
                    log.info("removing container %s of unknown task %s", c["Id"][:12], tid)
                    with contextlib.suppress(Exception):
                        await self.ex.remove(c["Id"])
            if self.files is not None:
                self.files.prune(set(assigned) | set(self.runners))
