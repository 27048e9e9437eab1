"""The job orchestrator (swarmkit's ``orchestrator/jobs``): services in ``replicated-job`` and ``global-job``
mode run their tasks to completion instead of keeping them running.

A job's tasks have DesiredState ``complete`` and carry the job's iteration (``JobIteration``, the service's
``JobStatus.JobIteration``, which the control API moves on at every update of the service, so that
``docker service update --force`` runs the job again). A task that exits 0 is ``complete`` and done; one
that fails is restarted per its restart policy (``restart.py``: a replacement in the same slot, started
after the restart delay), and a slot whose policy gives up keeps its failed task. Tasks of an earlier
iteration that have not finished are removed.

- *Replicated job*: ``TotalCompletions`` tasks must complete, slots 0..TotalCompletions-1, at most
  ``MaxConcurrent`` at a time.
- *Global job*: one task on every node that is ready, active and satisfies the constraints, nodes that
  join later included; an unfinished task on a node that went down, was drained or removed, or no
  longer satisfies the constraints is shut down.
"""

from __future__ import annotations

from collections import defaultdict

from shoal.manager.orchestrator.base import ServiceOrchestrator
from shoal.manager.orchestrator.common import merge, new_task, removed, set_desired
from shoal.model import states
from shoal.model.constraint import node_matches, parse
from shoal.model.views import NodeView, ServiceView, TaskView
from shoal.store.objects import Change


class JobOrchestrator(ServiceOrchestrator):
    modes = ("replicated-job", "global-job")
    name = "job-orchestrator"

    async def service(self, svc: ServiceView, tasks: list[TaskView]) -> list[Change]:
        it = svc.job_iteration
        current = [t for t in tasks if t.job_iteration == it]
        # earlier iterations: what has not finished stops (what has stays as history)
        out = removed(t for t in tasks if t.job_iteration != it and not states.before(states.RUNNING, t.state))
        if svc.mode == "replicated-job":
            await self._replicated(svc, current, out)
        else:
            await self._global(svc, current, out)
        return await merge(out, self.pace)

    async def _replicated(self, svc: ServiceView, tasks: list[TaskView], out: list[Change]) -> None:
        job = svc.spec["Mode"]["ReplicatedJob"]
        total = int(job.get("TotalCompletions") or 0)
        concurrent = int(job.get("MaxConcurrent") or 0)
        by_slot: dict[int, list[TaskView]] = defaultdict(list)
        tasks_by_id: dict[str, TaskView] = {}
        for t in tasks:
            by_slot[t.slot].append(t)
            tasks_by_id[t.id] = t
            await self.pace.tick()
        used: set[int] = set()
        running = complete = 0
        for slot, group in by_slot.items():
            await self.pace.tick()
            live = self.restarts.replace_dead(svc, group, out)
            for t in live:
                tasks_by_id.setdefault(t.id, t)
            if any(t.done for t in live):
                complete += 1
            elif live:
                running += 1
                self.restarts.promote(live, tasks_by_id, out)
            elif not self.restarts.kept_dead(svc, group):
                continue
            used.add(slot)
        free = (s for s in range(total) if s not in used)
        for _ in range(max(0, min(concurrent - running, total - complete - running))):
            slot = next(free, None)
            if slot is None:
                break
            out.append(Change("tasks", new_task(svc.raw, slot, desired=states.COMPLETE), create=True))
            await self.pace.tick()

    async def _global(self, svc: ServiceView, tasks: list[TaskView], out: list[Change]) -> None:
        by_node: dict[str, list[TaskView]] = defaultdict(list)
        for t in tasks:
            by_node[t.node_id].append(t)
        tasks_by_id = {t.id: t for t in tasks}
        constraints = parse(svc.constraints)
        for node in map(NodeView, self.objs.list("nodes")):
            await self.pace.tick()
            group = by_node.pop(node.id, [])
            if node.down or node.availability == "drain" or not node_matches(constraints, node.raw):
                out.extend(_shut_down(group))
                continue
            live = self.restarts.replace_dead(svc, group, out, node.id)
            for t in live:
                tasks_by_id.setdefault(t.id, t)
            self.restarts.promote(live, tasks_by_id, out)
            if live or (group and self.restarts.kept_dead(svc, group)):
                continue
            if node.ready and node.availability == "active":
                out.append(Change("tasks", new_task(svc.raw, 0, node.id, desired=states.COMPLETE), create=True))
        for group in by_node.values():  # nodes removed from the swarm
            out.extend(_shut_down(group))


def _shut_down(tasks: list[TaskView]) -> list[Change]:
    """Its unfinished tasks stop (those that completed stay as they are)."""
    return [Change("tasks", set_desired(t, states.SHUTDOWN)) for t in tasks if t.runnable and not t.done]
