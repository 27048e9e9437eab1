"""The global orchestrator: a global service runs one task on every node that is not drained and satisfies
its placement constraints.

Paused nodes keep their task but get no new one; a down node's tasks are left be until it returns; tasks
on nodes that stop qualifying, or were removed, are shut down. Dead tasks are replaced on their node
(``restart.py``), outdated ones by the updater (``update.py``).

Following the nodes, it also removes the network attachments of nodes removed from the swarm
(``constraint_enforcer.removed_node_attachments``). Tasks of deleted services are the replicated
orchestrator's to remove; this one only drops its bookkeeping of them.
"""

from __future__ import annotations

from collections import defaultdict

from shoal.manager.orchestrator.base import ServiceOrchestrator
from shoal.manager.orchestrator.common import merge, new_task, node_changed, set_desired
from shoal.manager.orchestrator.constraint_enforcer import removed_node_attachments
from shoal.model import states
from shoal.model.constraint import node_matches, parse
from shoal.model.views import NodeView, ServiceView, TaskView
from shoal.store.objects import Change


class GlobalOrchestrator(ServiceOrchestrator):
    modes = ("global",)
    name = "global-orchestrator"

    async def sweep(self, changes: set[tuple[str, str]] | None, services: dict[str, ServiceView]) -> list[Change]:
        if changes is None or await node_changed(changes, self.pace):
            return removed_node_attachments(self.objs)
        return []

    async def service(self, svc: ServiceView, tasks: list[TaskView]) -> list[Change]:
        pace = self.pace
        out: list[Change] = []
        by_node: dict[str, list[TaskView]] = defaultdict(list)
        for t in tasks:
            by_node[t.node_id].append(t)
            await pace.tick()
        constraints = parse(svc.constraints)
        tasks_by_id = {t.id: t for t in tasks}
        groups: dict[object, list[TaskView]] = {}
        node_of: dict[object, str] = {}
        for node in map(NodeView, self.objs.list("nodes")):
            await pace.tick()
            nid = node.id
            group = by_node.pop(nid, [])
            eligible = node_matches(constraints, node.raw) and node.availability != "drain"
            if node.down:
                continue  # leave its tasks be until it returns
            if not eligible:
                out += _shut_down(group)
                continue
            live = self.restarts.replace_dead(svc, group, out, nid)
            for t in live:
                tasks_by_id.setdefault(t.id, t)
            if not live and node.availability == "active" and not (group and self.restarts.kept_dead(svc, group)):
                nt = new_task(svc.raw, 0, nid)
                out.append(Change("tasks", nt, create=True))
                live = [TaskView(nt)]
            self.restarts.promote(live, tasks_by_id, out)
            if live:
                groups[nid] = live
                node_of[nid] = nid
        for group in by_node.values():  # nodes that no longer exist
            out += _shut_down(group)
        await self.updater.update(svc, groups, out, node_of, pace)
        return await merge(out, pace)


def _shut_down(tasks: list[TaskView]) -> list[Change]:
    return [Change("tasks", set_desired(t, states.SHUTDOWN)) for t in tasks if t.runnable]
