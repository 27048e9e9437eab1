"""The shape both service orchestrators share: which services a pass looks at, a restart supervisor and
an updater of their own, and a timer while restarts or updates wait."""

from __future__ import annotations

from shoal.manager.controller import Controller, commit_all
from shoal.manager.orchestrator.common import tasks_of, touched
from shoal.manager.orchestrator.restart import RestartSupervisor
from shoal.manager.orchestrator.update import Updater
from shoal.model.views import ServiceView, TaskView
from shoal.store.objects import Change, Objects


class ServiceOrchestrator(Controller):
    """Reconciles the services of one ``mode``; a subclass says what one service needs (:meth:`service`)
    and what else it owns (:meth:`deleted`, :meth:`sweep`)."""

    kinds = ("services", "tasks", "nodes")
    mode = ""

    def __init__(self, objs: Objects) -> None:
        super().__init__(objs)
        self.restarts = RestartSupervisor(objs)
        self.updater = Updater(self.restarts)

    def next_timer(self) -> float | None:
        due = self.restarts.next_due()
        if self.updater.busy():
            due = min(due, 1.0) if due is not None else 1.0
        return due

    async def reconcile(self, changes: set[tuple[str, str]] | None) -> None:
        services = {s["ID"]: ServiceView(s) for s in self.objs.list("services")}
        out: list[Change] = []
        for sid in touched(self.objs, changes, services):
            svc = services.get(sid)
            if svc is None:
                out += self.deleted(sid)
            elif svc.mode == self.mode:
                out += self.service(svc, tasks_of(self.objs, sid))
        out += self.sweep(changes, services)
        await commit_all(self.objs, out)

    def service(self, svc: ServiceView, tasks: list[TaskView]) -> list[Change]:
        """The writes that bring one service's tasks in line with its spec."""
        raise NotImplementedError

    def deleted(self, service_id: str) -> list[Change]:
        """The service is gone: forget what was kept about it."""
        self.updater.forget(service_id)
        self.restarts.forget_service(service_id)
        return []

    def sweep(self, changes: set[tuple[str, str]] | None, services: dict[str, ServiceView]) -> list[Change]:
        """Writes for tasks that belong to no service of this mode (none by default)."""
        return []
