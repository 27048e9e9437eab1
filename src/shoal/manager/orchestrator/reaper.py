"""The task reaper: deletes tasks that are done with — removed ones once stopped, and history beyond
the cluster's ``TaskHistoryRetentionLimit`` per slot (per node for global services)."""

from __future__ import annotations

from collections import defaultdict

from shoal.manager.controller import Controller, commit_all
from shoal.manager.orchestrator.common import created
from shoal.model import states
from shoal.model.views import ClusterView, ServiceView, TaskView
from shoal.store.objects import Change

DEFAULT_HISTORY = 5


def _stopped(t: TaskView, nodes: dict[str, dict]) -> bool:
    """The task no longer has (or never had) a container running anywhere."""
    return t.terminal or states.before(t.state, states.ASSIGNED) or t.node_id not in nodes


class TaskReaper(Controller):
    kinds = ("tasks", "clusters", "nodes")
    name = "task-reaper"

    def history_limit(self) -> int:
        for c in self.objs.list("clusters"):
            limit = ClusterView(c).history_limit
            if limit is not None:
                return limit
        return DEFAULT_HISTORY

    async def reconcile(self, changes: set[tuple[str, str]] | None) -> None:
        tasks = self.objs.cache["tasks"]
        nodes = self.objs.cache["nodes"]
        if changes is None or any(k != "tasks" for k, _ in changes):
            services = set(self.objs.tasks_by_service)
        else:
            services = {tasks[oid]["ServiceID"] for _, oid in changes if oid in tasks}
        limit = max(self.history_limit(), 1)
        out: list[Change] = []
        for sid in services:
            svc = self.objs.get("services", sid)
            per_node = svc is None or ServiceView(svc).mode in ("global", "global-job")
            groups: dict[object, list[TaskView]] = defaultdict(list)
            for t in map(TaskView, self.objs.tasks_of_service(sid)):
                if t.desired == states.REMOVE:
                    if _stopped(t, nodes):
                        out.append(Change("tasks", t.raw, delete=True))
                    continue
                groups[t.node_id if per_node else t.slot].append(t)  # a replicated job's slots count from 0
            for group in groups.values():
                if len(group) <= limit:
                    continue
                group.sort(key=created)
                extra = len(group) - limit
                for t in group:
                    if extra <= 0:
                        break
                    if not states.before(states.RUNNING, t.desired) or not _stopped(t, nodes):
                        continue
                    out.append(Change("tasks", t.raw, delete=True))
                    extra -= 1
        await commit_all(self.objs, out)
