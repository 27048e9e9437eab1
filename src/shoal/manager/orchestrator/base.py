"""The shape the orchestrators share: which services a pass looks at, a restart supervisor and an updater
of their own, and a timer while restarts or updates wait."""

from __future__ import annotations

from shoal.aio import MONOTONIC, Clock
from shoal.manager.controller import Controller, commit_all
from shoal.manager.orchestrator.common import read_tasks, touched
from shoal.manager.orchestrator.restart import RestartSupervisor
from shoal.manager.orchestrator.update import ServiceWriter, Updater
from shoal.model.views import ServiceView, TaskView
from shoal.store.objects import Change, Objects


class ServiceOrchestrator(Controller):
    """Reconciles the services of its ``modes``; a subclass says what one service needs (:meth:`service`)
    and what else it owns (:meth:`deleted`, :meth:`sweep`). ``write_service`` stores a service whose spec
    the updater rolls back (the allocator's, so that the endpoint follows)."""

    kinds = ("services", "tasks", "nodes")
    modes: tuple[str, ...] = ()

    def __init__(self, objs: Objects, write_service: ServiceWriter | None = None, clock: Clock = MONOTONIC) -> None:
        super().__init__(objs)
        self.clock = clock
        self.restarts = RestartSupervisor(objs, clock)
        self.updater = Updater(self.restarts, clock, write_service)

    def next_timer(self) -> float | None:
        due = [d for d in (self.restarts.next_due(), self.updater.next_due()) if d is not None]
        if self.updater.busy():
            due.append(1.0)
        return min(due) if due else None

    async def reconcile(self, changes: set[tuple[str, str]] | None) -> None:
        services = {s["ID"]: ServiceView(s) for s in self.objs.list("services")}
        out: list[Change] = []
        for sid in await touched(self.objs, changes, services, self.pace):
            svc = services.get(sid)
            if svc is None:
                out += await self.deleted(sid)
            elif svc.mode in self.modes:
                out += await self.service(svc, await read_tasks(self.objs, sid, self.pace))
            await self.pace.tick()
        out += await self.sweep(changes, services)
        rewrites = self.updater.take_rewrites()  # made again at the next pass if this one fails
        await commit_all(self.objs, out, pace=self.pace)
        if self.updater.write_service is not None:
            for svc_raw in rewrites:
                await self.updater.write_service(svc_raw)

    async def service(self, svc: ServiceView, tasks: list[TaskView]) -> list[Change]:
        """The writes that bring one service's tasks in line with its spec (paced: ``self.pace``)."""
        raise NotImplementedError

    async def deleted(self, service_id: str) -> list[Change]:
        """The service is gone: forget what was kept about it."""
        self.updater.forget(service_id)
        self.restarts.forget_service(service_id)
        return []

    async def sweep(self, changes: set[tuple[str, str]] | None, services: dict[str, ServiceView]) -> list[Change]:
        """Writes for tasks that belong to no service of this mode (none by default)."""
        return []
