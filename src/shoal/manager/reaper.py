"""The task reaper: deletes tasks that are done with — removed ones once stopped, and history beyond
the cluster's ``TaskHistoryRetentionLimit`` per slot (per node for global services)."""

from __future__ import annotations

from collections import defaultdict

from shoal.manager.controller import Controller, commit_all
from shoal.model import states
from shoal.store.objects import Change

DEFAULT_HISTORY = 5


def _stopped(t: dict, nodes: dict[str, dict]) -> bool:
    """The task no longer has (or never had) a container running anywhere."""
    st = t["Status"]["State"]
    nid = t.get("NodeID")
    return states.terminal(st) or states.before(st, states.ASSIGNED) or not nid or nid not in nodes


class Reaper(Controller):
    kinds = ("tasks", "clusters", "nodes")
    name = "reaper"

    def history_limit(self) -> int:
        for c in self.objs.list("clusters"):
            limit = ((c.get("Spec") or {}).get("Orchestration") or {}).get("TaskHistoryRetentionLimit")
            if limit is not None:
                return int(limit)
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
            groups: dict[object, list[dict]] = defaultdict(list)
            for t in self.objs.tasks_of_service(sid):
                if t["DesiredState"] == states.REMOVE:
                    if _stopped(t, nodes):
                        out.append(Change("tasks", t, delete=True))
                    continue
                groups[t["Slot"] or t.get("NodeID", "")].append(t)
            for group in groups.values():
                if len(group) <= limit:
                    continue
                group.sort(key=lambda t: t.get("CreatedAt", ""))
                extra = len(group) - limit
                for t in group:
                    if extra <= 0:
                        break
                    if not states.before(states.RUNNING, t["DesiredState"]) or not _stopped(t, nodes):
                        continue
                    out.append(Change("tasks", t, delete=True))
                    extra -= 1
        await commit_all(self.objs, out)
