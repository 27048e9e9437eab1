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
        # in slices of at most BATCH tasks of one service (the scheduler's groups are per service, and
        # each group looks at every node once per call), written once BATCH changes are ready: placement
        # is greedy, one task at a time, so slices place as one call would (preferences count what
        # earlier slices placed)
        by_service: dict[str, list[str]] = {}
        for tid in self.pending:
            t = tasks.get(tid)
            if t is not None:
                by_service.setdefault(t.get("ServiceID") or "", []).append(tid)
            await pace.tick()
        out: list[Change] = []
        placed: list[str] = []
        for ids in by_service.values():
            for i in range(0, len(ids), BATCH):
                self._place(ids[i:i + BATCH], out, placed)
                await pace.tick()
                if len(out) >= BATCH:
                    await self._write(out, placed)
                    out, placed = [], []
        await self._write(out, placed)

    def _place(self, ids: list[str], out: list[Change], placed: list[str]) -> None:
        """Place the tasks ``ids``; their writes go to ``out``, the IDs of those placed to ``placed``."""
        tasks = self.objs.cache["tasks"]
        batch = []
        for tid in ids:
            t = tasks.get(tid)
            if t is not None and _schedulable(t):  # it may have changed while the loop was let in
                batch.append({**t, "ServiceLabels": TaskView(t).service_labels})
        assigned, failed = self.sched.schedule(batch)
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
        placed.extend(assigned)

    async def _write(self, out: list[Change], placed: list[str]) -> None:
        """Write placements; if that fails, the tasks placed give their nodes back their room."""
        try:
            await commit_all(self.objs, out, pace=self.pace)
        except Exception:
            for tid in placed:
                self.sched.remove_task(tid)
            raise
