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
        limit = max(self.history_limit(), 1)
        out: list[Change] = []
        if changes is None or await self._other_than_tasks(changes):
            for sid in list(self.objs.tasks_by_service):
                for group in (await self._groups(sid, self.objs.tasks_of_service(sid))).values():
                    self._reap(group, limit, nodes, out)
                    await self.pace.tick()
        else:
            # only the groups of the changed tasks: nothing else in their services changed
            seen: set[tuple[str, object]] = set()
            for _, oid in changes:
                raw = tasks.get(oid)
                if raw is not None:
                    t = TaskView(raw)
                    key = (t.service_id, t.node_id if self._per_node(t.service_id) else t.slot)
                    if key not in seen:
                        seen.add(key)
                        for group in (await self._groups(t.service_id, self._group_of(t))).values():
                            self._reap(group, limit, nodes, out)
                await self.pace.tick()
        await commit_all(self.objs, out, pace=self.pace)

    async def _other_than_tasks(self, changes: set[tuple[str, str]]) -> bool:
        """A node or the cluster changed: every group must be looked at."""
        for kind, _ in changes:
            if kind != "tasks":
                return True
            await self.pace.tick()
        return False

    def _per_node(self, sid: str) -> bool:
        svc = self.objs.get("services", sid)
        return svc is None or ServiceView(svc).mode in ("global", "global-job")

    def _group_of(self, t: TaskView) -> list[dict]:
        """The tasks of ``t``'s slot (of its node, for a global service's or one without a service)."""
        sid = t.service_id
        if not self._per_node(sid):
            return self.objs.tasks_of_slot(sid, t.slot)  # a replicated job's slots count from 0
        if t.node_id:
            return [o for o in self.objs.tasks_of_node(t.node_id) if (o.get("ServiceID") or "") == sid]
        return [o for o in self.objs.tasks_of_service(sid) if not o.get("NodeID")]

    async def _groups(self, sid: str, raws: list[dict]) -> dict[object, list[TaskView]]:
        """The service's tasks per slot (per node: global services', and those without a service)."""
        per_node = self._per_node(sid)
        groups: dict[object, list[TaskView]] = defaultdict(list)
        for t in map(TaskView, raws):
            groups[t.node_id if per_node else t.slot].append(t)
            await self.pace.tick()
        return groups

    @staticmethod
    def _reap(group: list[TaskView], limit: int, nodes: dict[str, dict], out: list[Change]) -> None:
        """Delete the stopped removed tasks of one slot's ``group``, and its history beyond ``limit``."""
        kept: list[TaskView] = []
        for t in group:
            if t.desired == states.REMOVE:
                if _stopped(t, nodes):
                    out.append(Change("tasks", t.raw, delete=True))
                continue
            kept.append(t)
        if len(kept) <= limit:
            return
        kept.sort(key=created)
        extra = len(kept) - limit
        for t in kept:
            if extra <= 0:
                break
            if not states.before(states.RUNNING, t.desired) or not _stopped(t, nodes):
                continue
            out.append(Change("tasks", t.raw, delete=True))
            extra -= 1
