"""The orchestrator: keeps each service's tasks as its spec says.

Replicated services own slots 1..N, global services one task per eligible node. Dead tasks are
replaced per the restart policy (after its delay), extra slots are removed from the nodes with the
most tasks of the service (non-running first), and tasks made from an older spec are replaced a few
at a time (UpdateConfig: parallelism, delay, order). Removed services' tasks are marked ``remove``.
"""

from __future__ import annotations

import time
from collections import defaultdict

from shoal.manager.controller import Controller, commit_all
from shoal.manager.orchestrator.common import (
    is_dirty,
    is_global,
    is_replicated,
    new_task,
    observed,
    runnable,
    set_desired,
    should_restart,
    slot_key,
)
from shoal.manager.orchestrator.restart import RestartSupervisor
from shoal.model import states
from shoal.model.constraint import node_matches, parse
from shoal.model.ids import now
from shoal.model.service import DEFAULT_UPDATE, restart_policy
from shoal.store.objects import Change, Objects

ACTIVE_UPDATE = ("updating", "rollback_started")  # UpdateStatus states of an update under way


def _created(t: dict) -> str:
    return t.get("CreatedAt", "")


class Orchestrator(Controller):
    kinds = ("services", "tasks", "nodes")
    name = "orchestrator"

    def __init__(self, objs: Objects) -> None:
        super().__init__(objs)
        self.restarts = RestartSupervisor()
        # service id -> {group key (slot or node id): (new task id, old task id, order)}
        self._updates: dict[str, dict[object, tuple[str, str, str]]] = defaultdict(dict)
        self._last_batch: dict[str, float] = {}

    def next_timer(self) -> float | None:
        due = self.restarts.next_due()
        if any(self._updates.values()) or self._last_batch:
            due = min(due, 1.0) if due is not None else 1.0
        return due

    async def reconcile(self, changes: set[tuple[str, str]] | None) -> None:
        services = {s["ID"]: s for s in self.objs.list("services")}
        if changes is None or any(k == "nodes" for k, _ in changes):
            todo = set(services)
        else:
            todo = set()
            tasks = self.objs.cache["tasks"]
            for kind, oid in changes:
                if kind == "services":
                    todo.add(oid)
                elif kind == "tasks" and oid in tasks:
                    todo.add(tasks[oid]["ServiceID"])
        todo.discard("")  # attachments (standalone containers) belong to no service
        out: list[Change] = []
        for sid in todo:
            svc = services.get(sid)
            tasks = self.objs.tasks_of_service(sid)
            if svc is None:
                out += [Change("tasks", set_desired(t, states.REMOVE)) for t in tasks
                        if states.before(t["DesiredState"], states.REMOVE)]
                self._updates.pop(sid, None)
                self._last_batch.pop(sid, None)
                self.restarts.forget_service(sid)
            elif is_replicated(svc):
                out += self._replicated(svc, tasks)
            elif is_global(svc):
                out += self._global(svc, tasks)
        if changes is None or any(kind == "nodes" for kind, _ in changes):
            # attachments of nodes that were removed from the swarm
            out += [Change("tasks", set_desired(t, states.REMOVE)) for t in self.objs.tasks_of_service("")
                    if self.objs.get("nodes", t.get("NodeID", "")) is None
                    and states.before(t["DesiredState"], states.REMOVE)]
        if changes is None:  # orphans: tasks whose service is gone
            for sid in set(self.objs.tasks_by_service) - set(services) - {""}:
                out += [Change("tasks", set_desired(t, states.REMOVE))
                        for t in self.objs.tasks_of_service(sid)
                        if states.before(t["DesiredState"], states.REMOVE)]
        await commit_all(self.objs, out)

    # -- shared pieces ----------------------------------------------------------------------
    def _node_gone(self, svc: dict, t: dict) -> bool:
        """The task must move: its node is drained, down or removed, or no longer satisfies the
        service's constraints (swarmkit's constraint enforcer)."""
        nid = t.get("NodeID")
        if not nid:
            return False
        node = self.objs.get("nodes", nid)
        if node is None:
            return True
        if node["Spec"].get("Availability") == "drain" or node["Status"].get("State") == "down":
            return True
        exprs = ((t.get("Spec") or {}).get("Placement") or {}).get("Constraints") or []
        return bool(exprs) and not node_matches(parse(exprs), node)

    def _restart(self, svc: dict, t: dict, group: list[dict], out: list[Change], node_id: str = "") -> dict | None:
        """Shut down a dead task and, if its policy allows, create its delayed replacement."""
        out.append(Change("tasks", set_desired(t, states.SHUTDOWN)))
        if not should_restart(t, group, self.restarts.restarted(slot_key(t))):
            return None
        nt = new_task(svc, t.get("Slot", 0), node_id, desired=states.READY)
        self.restarts.record(slot_key(t), nt)
        # the restart delay guards against crash loops; a task lost with its node did not crash
        delay = 0.0 if self._node_gone(svc, t) else restart_policy(svc["Spec"].get("TaskTemplate") or {})["Delay"] / 1e9
        self.restarts.delay(nt["ID"], delay)
        out.append(Change("tasks", nt, create=True))
        return nt

    def _live(self, svc: dict, group: list[dict], out: list[Change], node_id: str = "") -> list[dict]:
        """The group's runnable tasks after dead ones were restarted."""
        live: list[dict] = []
        for t in sorted(group, key=_created):
            if not runnable(t):
                continue
            dead = states.terminal(observed(t)) or self._node_gone(svc, t)
            if dead and t["DesiredState"] == states.READY and self.restarts.waiting(t["ID"]):
                # a replacement that failed while being prepared (e.g. a missing bind source) keeps
                # its slot, and shows its error, until its own restart delay is over
                live.append(t)
                continue
            if dead:
                self.restarts.forget(t["ID"])
                nt = self._restart(svc, t, group, out, node_id)
                if nt is not None:
                    live.append(nt)
            else:
                live.append(t)
        return live

    def _kept_dead(self, svc: dict, group: list[dict]) -> bool:
        """The group's newest task stopped and its policy says not to restart: it keeps its place."""
        last = max(group, key=_created)
        return (last["DesiredState"] != states.REMOVE and states.terminal(observed(last))
                and not is_dirty(svc, last)
                and not should_restart(last, group, self.restarts.restarted(slot_key(last))))

    def _promote(self, live: list[dict], tasks_by_id: dict[str, dict], out: list[Change]) -> None:
        for t in live:
            if states.terminal(observed(t)):
                continue
            if t["DesiredState"] == states.READY and self.restarts.may_start(t, tasks_by_id):
                out.append(Change("tasks", set_desired(t, states.RUNNING)))

    def _update(self, svc: dict, groups: dict[object, list[dict]], out: list[Change],
                node_of: dict[object, str]) -> None:
        """Replace outdated tasks a batch at a time and keep UpdateStatus."""
        sid = svc["ID"]
        cfg = {**DEFAULT_UPDATE, **(svc["Spec"].get("UpdateConfig") or {})}
        tasks_by_id = {t["ID"]: t for g in groups.values() for t in g}
        inflight = self._updates[sid]
        for key, (new_id, old_id, order) in list(inflight.items()):
            new = tasks_by_id.get(new_id)
            if new is None or states.terminal(observed(new)) or observed(new) == states.RUNNING:
                if order == "start-first" and old_id in tasks_by_id and runnable(tasks_by_id[old_id]):
                    out.append(Change("tasks", set_desired(tasks_by_id[old_id], states.SHUTDOWN)))
                del inflight[key]
                self._last_batch[sid] = time.monotonic()
        dirty = [k for k, g in groups.items() if g and is_dirty(svc, g[-1]) and k not in inflight]
        status = svc.get("UpdateStatus") or {}
        if not dirty and not inflight:
            # like swarmkit, the update completes once the last new task has run for Monitor
            last = self._last_batch.get(sid)
            monitor = (cfg.get("Monitor") or 0) / 1e9
            if last is not None and status.get("State") in ACTIVE_UPDATE and time.monotonic() - last < monitor:
                return
            self._last_batch.pop(sid, None)
            if status.get("State") == "updating":
                self._set_update_status(svc, "completed", "update completed", out)
            elif status.get("State") == "rollback_started":  # `docker service rollback`
                self._set_update_status(svc, "rollback_completed", "rollback completed", out)
            return
        if status.get("State") not in ACTIVE_UPDATE and svc.get("PreviousSpec") is not None:
            self._set_update_status(svc, "updating", "update in progress", out)
        parallelism = cfg.get("Parallelism") or len(dirty)
        delay = (cfg.get("Delay") or 0) / 1e9
        if inflight and len(inflight) >= parallelism:
            return
        last = self._last_batch.get(sid)
        if not inflight and last is not None and time.monotonic() - last < delay:
            return
        order = cfg.get("Order") or "stop-first"
        for key in sorted(dirty, key=str)[: parallelism - len(inflight)]:
            old = groups[key][-1]
            nt = new_task(svc, old.get("Slot", 0), node_of.get(key, ""),
                          desired=states.READY if order == "stop-first" else states.RUNNING)
            out.append(Change("tasks", nt, create=True))
            if order == "stop-first":
                for t in groups[key]:
                    out.append(Change("tasks", set_desired(t, states.SHUTDOWN)))
                self.restarts.delay(nt["ID"], 0, after=old["ID"])
            inflight[key] = (nt["ID"], old["ID"], order)
            self._last_batch[sid] = time.monotonic()

    def _set_update_status(self, svc: dict, state: str, message: str, out: list[Change]) -> None:
        s = dict(svc)
        st = {"State": state, "Message": message}
        st["StartedAt"] = now() if state == "updating" else (svc.get("UpdateStatus") or {}).get("StartedAt", now())
        if state in ("completed", "rollback_completed"):
            st["CompletedAt"] = now()
        s["UpdateStatus"] = st
        out.append(Change("services", s))

    # -- replicated ---------------------------------------------------------------------------
    def _replicated(self, svc: dict, tasks: list[dict]) -> list[Change]:
        out: list[Change] = []
        want = int(svc["Spec"]["Mode"]["Replicated"].get("Replicas", 1))
        by_slot: dict[int, list[dict]] = defaultdict(list)
        for t in tasks:
            by_slot[t["Slot"]].append(t)
        tasks_by_id = {t["ID"]: t for t in tasks}
        occupied: dict[int, list[dict]] = {}
        for slot, group in by_slot.items():
            live = self._live(svc, group, out)
            if live:
                occupied[slot] = live
                for t in live:
                    tasks_by_id.setdefault(t["ID"], t)
            elif self._kept_dead(svc, group):
                occupied[slot] = []
        if len(occupied) < want:
            free = (s for s in range(1, 1 << 30) if s not in occupied)
            for _ in range(want - len(occupied)):
                slot = next(free)
                nt = new_task(svc, slot)
                out.append(Change("tasks", nt, create=True))
                occupied[slot] = [nt]
        elif len(occupied) > want:
            per_node: dict[str, int] = defaultdict(int)
            for live in occupied.values():
                for t in live:
                    per_node[t.get("NodeID", "")] += 1

            def order(slot: int) -> tuple:
                live = occupied[slot]
                running = any(observed(t) == states.RUNNING for t in live)
                node = live[-1].get("NodeID", "") if live else ""
                return (running, -per_node.get(node, 0), -slot)

            for _ in range(len(occupied) - want):
                slot = min(occupied, key=order)
                for t in occupied.pop(slot) or by_slot.get(slot, []):
                    if states.before(t["DesiredState"], states.REMOVE):
                        out.append(Change("tasks", set_desired(t, states.REMOVE)))
                        per_node[t.get("NodeID", "")] -= 1
                        self.restarts.forget(t["ID"])
                self._updates[svc["ID"]].pop(slot, None)
        for live in occupied.values():
            self._promote(live, tasks_by_id, out)
        self._update(svc, {k: v for k, v in occupied.items() if v}, out, {})
        return _merge(out)

    # -- global -------------------------------------------------------------------------------
    def _global(self, svc: dict, tasks: list[dict]) -> list[Change]:
        out: list[Change] = []
        by_node: dict[str, list[dict]] = defaultdict(list)
        for t in tasks:
            by_node[t.get("NodeID", "")].append(t)
        constraints = parse(((svc["Spec"].get("TaskTemplate") or {}).get("Placement") or {}).get("Constraints") or [])
        tasks_by_id = {t["ID"]: t for t in tasks}
        groups: dict[object, list[dict]] = {}
        node_of: dict[object, str] = {}
        for node in self.objs.list("nodes"):
            nid = node["ID"]
            group = by_node.pop(nid, [])
            avail = node["Spec"].get("Availability", "active")
            eligible = node_matches(constraints, node) and avail != "drain"
            if node["Status"].get("State") == "down":
                continue  # leave its tasks be until it returns
            if not eligible:
                for t in group:
                    if runnable(t):
                        out.append(Change("tasks", set_desired(t, states.SHUTDOWN)))
                continue
            live = self._live(svc, group, out, nid)
            for t in live:
                tasks_by_id.setdefault(t["ID"], t)
            if not live and avail == "active" and not (group and self._kept_dead(svc, group)):
                nt = new_task(svc, 0, nid)
                out.append(Change("tasks", nt, create=True))
                live = [nt]
            self._promote(live, tasks_by_id, out)
            if live:
                groups[nid] = live
                node_of[nid] = nid
        for group in by_node.values():  # nodes that no longer exist
            for t in group:
                if runnable(t):
                    out.append(Change("tasks", set_desired(t, states.SHUTDOWN)))
        self._update(svc, groups, out, node_of)
        return _merge(out)


def _merge(changes: list[Change]) -> list[Change]:
    """One change per object (a transaction may not touch a key twice): the first change of an
    object is kept, carrying the furthest desired state any later change asked for."""
    seen: dict[tuple[str, str], Change] = {}
    for ch in changes:
        prev = seen.setdefault((ch.kind, ch.obj["ID"]), ch)
        if prev is not ch and ch.kind == "tasks" and states.before(prev.obj["DesiredState"],
                                                                    ch.obj["DesiredState"]):
            prev.obj["DesiredState"] = ch.obj["DesiredState"]
    return list(seen.values())
