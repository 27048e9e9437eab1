"""The replicated orchestrator: a replicated service's tasks fill slots 1..N.

A slot is occupied by its runnable tasks, or by a stopped task its restart policy does not restart. Dead
tasks are replaced (``restart.py``), missing slots get new tasks (lowest free numbers first), extra slots
are removed from the nodes with the most tasks of the service (non-running first), outdated tasks are
replaced by the updater (``update.py``).

It also owns the tasks whose service is gone, whatever the service's mode was: when a service is
deleted, and at a full pass (start, timers, after an error) for orphans a previous leader left behind,
their tasks get DesiredState ``remove``. The other orchestrators only drop their bookkeeping of a
deleted service, so no two controllers write the same task.
"""

from __future__ import annotations

from collections import defaultdict
from heapq import heapify, heappop, heappush

from shoal.manager.orchestrator.base import ServiceOrchestrator
from shoal.manager.orchestrator.common import merge, new_task, read_tasks, removed_paced, set_desired
from shoal.model import states
from shoal.model.views import ServiceView, TaskView
from shoal.store.objects import Change


class ReplicatedOrchestrator(ServiceOrchestrator):
    modes = ("replicated",)
    name = "replicated-orchestrator"

    async def deleted(self, service_id: str) -> list[Change]:
        """Its tasks are removed, whatever mode the service had."""
        return (await removed_paced(await read_tasks(self.objs, service_id, self.pace), self.pace)
                + await super().deleted(service_id))

    async def sweep(self, changes: set[tuple[str, str]] | None, services: dict[str, ServiceView]) -> list[Change]:
        """At a full pass, orphans: tasks whose service is gone."""
        if changes is not None:
            return []
        out: list[Change] = []
        for sid in set(self.objs.tasks_by_service) - set(services) - {""}:
            out += await removed_paced(await read_tasks(self.objs, sid, self.pace), self.pace)
        return out

    async def service(self, svc: ServiceView, tasks: list[TaskView]) -> list[Change]:
        pace = self.pace
        out: list[Change] = []
        by_slot: dict[int, list[TaskView]] = defaultdict(list)
        tasks_by_id: dict[str, TaskView] = {}
        for t in tasks:
            by_slot[t.slot].append(t)
            tasks_by_id[t.id] = t
            await pace.tick()
        occupied: dict[int, list[TaskView]] = {}
        for slot, group in by_slot.items():
            live = self.restarts.replace_dead(svc, group, out)
            if live:
                occupied[slot] = live
                for t in live:
                    tasks_by_id.setdefault(t.id, t)
            elif self.restarts.kept_dead(svc, group):
                occupied[slot] = []
            await pace.tick()
        want = svc.replicas
        if len(occupied) < want:
            free = (s for s in range(1, 1 << 30) if s not in occupied)
            for _ in range(want - len(occupied)):
                slot = next(free)
                nt = new_task(svc.raw, slot)
                out.append(Change("tasks", nt, create=True))
                occupied[slot] = [TaskView(nt)]
                await pace.tick()
        elif len(occupied) > want:
            await self._scale_down(svc, want, occupied, by_slot, out)
        groups: dict[object, list[TaskView]] = {}
        for slot, live in occupied.items():
            self.restarts.promote(live, tasks_by_id, out)
            if live:
                groups[slot] = live
            await pace.tick()
        await self.updater.update(svc, groups, out, {}, pace)
        return await merge(out, pace)

    async def _scale_down(self, svc: ServiceView, want: int, occupied: dict[int, list[TaskView]],
                          by_slot: dict[int, list[TaskView]], out: list[Change]) -> None:
        """Remove the extra slots: non-running ones first, then those on the nodes with the most tasks of
        the service, then the highest numbers (a heap of slots: a slot's rank only grows as slots are
        removed, so one whose rank is stale when it comes up goes back with its rank of now)."""
        per_node: dict[str, int] = defaultdict(int)
        for live in occupied.values():
            for t in live:
                per_node[t.node_id] += 1

        def order(slot: int) -> tuple:
            live = occupied[slot]
            running = any(t.state == states.RUNNING for t in live)
            node = live[-1].node_id if live else ""
            return (running, -per_node.get(node, 0), -slot)

        heap = []
        for slot in occupied:
            heap.append((order(slot), slot))
            await self.pace.tick()
        heapify(heap)
        for _ in range(len(occupied) - want):
            while True:
                rank, slot = heappop(heap)
                if rank == (now := order(slot)):
                    break
                heappush(heap, (now, slot))
            for t in occupied.pop(slot) or by_slot.get(slot, []):
                if states.before(t.desired, states.REMOVE):
                    out.append(Change("tasks", set_desired(t, states.REMOVE)))
                    per_node[t.node_id] -= 1
                    self.restarts.forget(t.id)
            self.updater.drop(svc.id, slot)
            await self.pace.tick()
