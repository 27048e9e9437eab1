"""The scheduler controller: feeds the pure :class:`Scheduler` from the store and writes its
decisions back (``pending`` → ``assigned`` with a NodeID, or the reason in ``Status.Err``)."""

from __future__ import annotations

from shoal.manager.controller import Controller, commit_all
from shoal.manager.scheduler.scheduler import Scheduler
from shoal.model import states
from shoal.model.ids import now
from shoal.model.views import TaskView
from shoal.store.objects import Change, Objects


def _schedulable(t: dict) -> bool:
    view = TaskView(t)
    return view.state == states.PENDING and not states.before(states.COMPLETE, view.desired)  # jobs: complete


BATCH = 256  # tasks placed at once: a slice of the event loop's time


class SchedulerController(Controller):
    kinds = ("nodes", "tasks")
    name = "scheduler"

    def __init__(self, objs: Objects) -> None:
        super().__init__(objs)
        self.sched = Scheduler()
        self.pending: set[str] = set()

    async def reconcile(self, changes: set[tuple[str, str]] | None) -> None:
        tasks = self.objs.cache["tasks"]
        pace = self.pace
        if changes is None:
            self.sched = Scheduler()
            for node in self.objs.list("nodes"):
                self.sched.add_node(node)
            self.pending = set()
            for t in list(tasks.values()):
                self.sched.update_task(t)
                if _schedulable(t):
                    self.pending.add(t["ID"])
                await pace.tick()
        else:
            for kind, oid in changes:
                await pace.tick()
                if kind == "nodes":
                    node = self.objs.get("nodes", oid)
                    if node is None:
                        self.sched.remove_node(oid)
                    else:
                        self.sched.add_node(node)
                    continue
                t = tasks.get(oid)
                if t is None:
                    self.sched.remove_task(oid)
                    self.pending.discard(oid)
                    continue
                self.sched.update_task(t)
                if _schedulable(t):
                    self.pending.add(oid)
                else:
                    self.pending.discard(oid)
        # in slices of BATCH tasks, each written before the next is placed: placement is greedy, one
        # task at a time, so slices place as one call would (preferences count what earlier slices placed)
        todo = list(self.pending)
        for i in range(0, len(todo), BATCH):
            await self._schedule(todo[i:i + BATCH])
            await pace.tick()

    async def _schedule(self, ids: list[str]) -> None:
        tasks = self.objs.cache["tasks"]
        batch = []
        for tid in ids:
            t = tasks.get(tid)
            if t is not None and _schedulable(t):  # it may have changed while the loop was let in
                batch.append({**t, "ServiceLabels": TaskView(t).service_labels})
        assigned, failed = self.sched.schedule(batch)
        out: list[Change] = []
        ts = now()
        for tid, nid in assigned.items():
            t = dict(tasks[tid])
            t["NodeID"] = nid
            if generic := self.sched.generic_resources(tid):  # DOCKER_RESOURCE_<KIND> in its environment
                t["GenericResources"] = generic
            t["Status"] = {**t["Status"], "State": states.ASSIGNED, "Timestamp": ts,
                           "Message": states.MESSAGES[states.ASSIGNED]}
            t["Status"].pop("Err", None)
            t["UpdatedAt"] = ts
            out.append(Change("tasks", t))
        for tid, err in failed.items():
            t = tasks[tid]
            if TaskView(t).status.get("Err") != err:
                out.append(Change("tasks", {**t, "Status": {**t["Status"], "Err": err, "Timestamp": ts}}))
        self.pending.difference_update(assigned)
        try:
            await self.pace.tick()
            await commit_all(self.objs, out, pace=self.pace)
        except Exception:
            for tid in assigned:
                self.sched.remove_task(tid)
            raise
