"""The scheduling core: assign pending tasks to nodes (pure, no I/O, no store).

Modelled on swarmkit's ``manager/scheduler`` (filter pipeline, per-node :class:`NodeInfo`, groups of
identical tasks placed in one pass over a node heap) with Nomad's split between feasibility
(:mod:`.filters`) and ranking (:mod:`.strategy`).

How a controller drives it::

    sched = Scheduler()
    for node in nodes: sched.add_node(node)          # and update_node/remove_node on node events
    for task in tasks: sched.update_task(task)       # on every task event (tracks what runs where)
    assigned, failed = sched.schedule(pending_tasks)
    # persist task["NodeID"] = assigned[id] (State "assigned") and Status.Err = failed[id];
    # if persisting an assignment fails, call sched.remove_task(id) to give the node back its room.

``schedule`` records each assignment in the node's bookkeeping at once, so successive calls see it;
feeding the persisted task back through :meth:`Scheduler.update_task` is idempotent.

Input tasks are Docker Engine API Task dicts. Tasks with a preset ``NodeID`` (global services) are only
checked against that node's filters; on failure their error is the bare explanation (e.g.
``insufficient resources on 1 node``), as in swarmkit. Other tasks are grouped by service and by the
scheduling-relevant parts of their spec (placement, reservations, host ports, strategy) and each group
is placed in one pass; tasks that do not fit get ``no suitable node (<explanations>)``. Tasks whose
``DesiredState`` is past ``complete`` are ignored (neither assigned nor failed).

The ranking strategy is chosen per service with the service label ``shoal.strategy`` (``spread``, the
default, or ``binpack``); the caller copies the service's labels into ``task["ServiceLabels"]``.
Placement preferences (``Spec.Placement.Preferences[].Spread.SpreadDescriptor`` =
``node.labels.X`` / ``engine.labels.X``) first split a group evenly over the distinct label values
(nodes without the label form their own group), counting the service's tasks already there.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from heapq import heapify, heappop, heapreplace
from types import MappingProxyType
from typing import Any

from shoal.model import states
from shoal.model.constraint import ENGINE_LABEL_PREFIX, NODE_LABEL_PREFIX

from .filters import Filter, enabled_filters, explain_failures, no_suitable_node
from .nodeinfo import (
    NodeInfo,
    TaskRecord,
    desired_active,
    generic_api,
    task_generic,
    task_host_ports,
    task_reservations,
)
from .strategy import get_strategy, strategy_name

Node = dict[str, Any]
Task = dict[str, Any]

_PENDING = states.rank(states.PENDING)
_RUNNING = states.rank(states.RUNNING)


class Scheduler:
    """Incrementally maintained cluster view plus the :meth:`schedule` algorithm."""

    def __init__(
        self,
        nodes: Iterable[Node] = (),
        tasks: Iterable[Task] = (),
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._nodes: dict[str, NodeInfo] = {}
        self._task_node: dict[str, str] = {}  # task id -> node id, for every tracked task
        self._orphans: dict[str, dict[str, TaskRecord]] = {}  # tasks of nodes not (or no longer) known
        self._clock = clock
        for node in nodes:
            self.add_node(node)
        for task in tasks:
            self.update_task(task)

    # -- cluster view ---------------------------------------------------------------------------

    @property
    def nodes(self) -> Mapping[str, NodeInfo]:
        """Read-only view of the known nodes by ID."""
        return MappingProxyType(self._nodes)

    def node_info(self, node_id: str) -> NodeInfo | None:
        return self._nodes.get(node_id)

    def add_node(self, node: Node) -> NodeInfo:
        """Add a node, or update it (its tracked tasks are kept)."""
        ni = self._nodes.get(node["ID"])
        if ni is not None:
            ni.set_node(node)
        else:
            ni = self._nodes[node["ID"]] = NodeInfo(node, self._orphans.pop(node["ID"], None))
        return ni

    update_node = add_node

    def remove_node(self, node_id: str) -> bool:
        """Forget a node (its tasks stay tracked and come back if the node does)."""
        ni = self._nodes.pop(node_id, None)
        if ni is None:
            return False
        if ni.tasks:
            self._orphans[node_id] = ni.tasks
        return True

    def add_task(self, task: Task) -> bool:
        """Track a task placed on ``task["NodeID"]`` as consuming that node. Returns True if changed."""
        node_id = task.get("NodeID")
        if not node_id:
            return False
        return self._track(task["ID"], node_id, TaskRecord.from_task(task))

    def remove_task(self, task: Task | str) -> bool:
        """Stop tracking a task (by dict or ID). Returns False if it was not tracked."""
        task_id = task if isinstance(task, str) else task["ID"]
        node_id = self._task_node.pop(task_id, None)
        if node_id is None:
            return False
        ni = self._nodes.get(node_id)
        if ni is not None:
            return ni.remove_task(task_id)
        orphans = self._orphans.get(node_id, {})
        found = orphans.pop(task_id, None) is not None
        if not orphans:
            self._orphans.pop(node_id, None)
        return found

    def update_task(self, task: Task) -> bool:
        """Apply a task event (swarmkit's ``updateTask`` rules). Returns True if the view changed.

        Tasks assigned..running on a node are tracked; tasks past ``running`` are dropped, and a
        ``failed``/``rejected`` one counts as a recent failure of its service on its node; tasks
        still ``pending`` with a NodeID are left for :meth:`schedule` to confirm.
        """
        task_id = task["ID"]
        observed = (task.get("Status") or {}).get("State") or states.NEW
        state = states.rank(observed)
        if state < _PENDING:
            return False
        if state > _RUNNING:
            node_id = self._task_node.get(task_id)
            if node_id is None:
                return False
            if states.failed(observed) and (ni := self._nodes.get(node_id)) is not None:
                ni.task_failed(task.get("ServiceID") or "", self._clock())
            return self.remove_task(task_id)
        node_id = task.get("NodeID")
        if not node_id:
            return False
        if state == _PENDING:
            return self.remove_task(task_id)
        return self._track(task_id, node_id, TaskRecord.from_task(task))

    def task_failed(self, task: Task) -> None:
        """Record a failure of ``task``'s service on its node (done by :meth:`update_task` too)."""
        ni = self._nodes.get(task.get("NodeID") or self._task_node.get(task["ID"], ""))
        if ni is not None:
            ni.task_failed(task.get("ServiceID") or "", self._clock())

    def _track(self, task_id: str, node_id: str, rec: TaskRecord) -> bool:
        old = self._task_node.get(task_id)
        if old is not None and old != node_id:
            self.remove_task(task_id)
        self._task_node[task_id] = node_id
        ni = self._nodes.get(node_id)
        if ni is not None:
            return ni.add_record(task_id, rec)
        orphans = self._orphans.setdefault(node_id, {})
        changed = orphans.get(task_id) != rec
        orphans[task_id] = rec
        return changed

    def generic_resources(self, task_id: str) -> list[dict]:
        """The generic resources a tracked task holds on its node, as the API's ``GenericResources``."""
        ni = self._nodes.get(self._task_node.get(task_id, ""))
        claim = ni.generic_claims.get(task_id) if ni is not None else None
        return generic_api(claim) if claim else []

    # -- scheduling -----------------------------------------------------------------------------

    def schedule(self, tasks: Iterable[Task]) -> tuple[dict[str, str], dict[str, str]]:
        """Place ``tasks``: returns ``(task id -> node id, task id -> error)`` (see module doc)."""
        assignments: dict[str, str] = {}
        errors: dict[str, str] = {}
        groups: dict[tuple[Any, ...], list[Task]] = {}
        preassigned: dict[tuple[Any, ...], list[Task]] = {}
        spec_keys: dict[int, tuple[Any, tuple[Any, ...]]] = {}
        tracked = self._task_node
        for task in tasks:
            if not desired_active(task):
                continue
            if task["ID"] in tracked:
                self.remove_task(task["ID"])
            spec = task.get("Spec") or {}
            hit = spec_keys.get(id(spec))
            if hit is None or hit[0] is not spec:
                hit = spec_keys[id(spec)] = (spec, (repr(spec.get("Placement")), task_reservations(task),
                                                    task_generic(task)))
            key = (
                task.get("ServiceID") or "",
                strategy_name(task),
                hit[1],
                task_host_ports(task) if task.get("Endpoint") else (),
            )
            by_key = preassigned if task.get("NodeID") else groups
            group = by_key.get(key)
            if group is None:
                by_key[key] = [task]
            else:
                group.append(task)

        for group in preassigned.values():
            self._schedule_preassigned(group, assignments, errors)
        nodes = list(self._nodes.values())
        now = self._clock()
        for group in groups.values():
            self._schedule_group(group, nodes, now, assignments, errors)
        return assignments, errors

    def _schedule_preassigned(
        self, group: list[Task], assignments: dict[str, str], errors: dict[str, str]
    ) -> None:
        filters = enabled_filters(group[0])
        rec = TaskRecord.from_task(group[0])
        for task in group:
            task_id, node_id = task["ID"], task["NodeID"]
            ni = self._nodes.get(node_id)
            if ni is None:
                errors[task_id] = f"node {node_id} not found"
                continue
            failed = next((f for f in filters if not f.check(ni)), None)
            if failed is None:
                self._track(task_id, node_id, rec)
                assignments[task_id] = node_id
            else:
                errors[task_id] = failed.explain(1)

    def _schedule_group(
        self,
        group: list[Task],
        nodes: list[NodeInfo],
        now: float,
        assignments: dict[str, str],
        errors: dict[str, str],
    ) -> None:
        first = group[0]
        try:
            strategy = get_strategy(strategy_name(first))
        except ValueError as e:
            for task in group:
                errors[task["ID"]] = str(e)
            return
        service_id = first.get("ServiceID") or ""
        filters = enabled_filters(first)
        counts = [0] * len(filters)
        candidates: list[NodeInfo] = []
        for ni in nodes:
            for i, f in enumerate(filters):
                if not f.check(ni):
                    counts[i] += 1
                    break
            else:
                candidates.append(ni)

        fails: dict[str, int] = {}
        for ni in candidates:
            if service_id in ni.failures and (c := ni.recent_failures(service_id, now)):
                fails[ni.id] = c
        run = _GroupRun(
            [t["ID"] for t in group],
            service_id,
            TaskRecord.from_task(first),
            strategy.rank,
            filters,
            counts,
            fails,
            assignments,
            self._task_node,
        )
        descriptors = _spread_descriptors(first)
        if descriptors and candidates:
            run.place_tree(_build_tree(nodes, candidates, descriptors, service_id), len(group))
        elif candidates:
            run.place(candidates, len(group))
        if run.pos < len(group):
            msg = no_suitable_node(explain_failures(filters, counts))
            for task_id in run.ids[run.pos :]:
                errors[task_id] = msg


class _Branch:
    """A decision-tree node: one value of a spread descriptor (leaves hold candidate nodes)."""

    __slots__ = ("tasks", "children", "nodes")

    def __init__(self) -> None:
        self.tasks = 0  # tasks of the service on all nodes of this branch
        self.children: dict[str, _Branch] | None = None
        self.nodes: list[NodeInfo] = []


def _spread_descriptors(task: Task) -> list[tuple[bool, str]]:
    """``(is_node_label, label)`` for each usable spread preference of the task."""
    prefs = ((task.get("Spec") or {}).get("Placement") or {}).get("Preferences") or ()
    out = []
    for pref in prefs:
        desc = ((pref or {}).get("Spread") or {}).get("SpreadDescriptor") or ""
        low = desc.lower()
        if len(desc) > len(NODE_LABEL_PREFIX) and low.startswith(NODE_LABEL_PREFIX):
            out.append((True, desc[len(NODE_LABEL_PREFIX) :]))
        elif len(desc) > len(ENGINE_LABEL_PREFIX) and low.startswith(ENGINE_LABEL_PREFIX):
            out.append((False, desc[len(ENGINE_LABEL_PREFIX) :]))
    return out


def _label_value(ni: NodeInfo, node_label: bool, label: str) -> str:
    if node_label:
        labels = (ni.node.get("Spec") or {}).get("Labels")
    else:
        labels = ((ni.node.get("Description") or {}).get("Engine") or {}).get("Labels")
    return str((labels or {}).get(label, ""))


def _build_tree(
    nodes: list[NodeInfo], candidates: list[NodeInfo], descriptors: list[tuple[bool, str]], service_id: str
) -> _Branch:
    root = _Branch()
    feasible = {id(ni) for ni in candidates}
    for ni in nodes:
        count = ni.active_by_service.get(service_id, 0)
        branch = root
        for node_label, label in descriptors:
            branch.tasks += count
            if branch.children is None:
                branch.children = {}
            value = _label_value(ni, node_label, label)
            nxt = branch.children.get(value)
            if nxt is None:
                nxt = branch.children[value] = _Branch()
            branch = nxt
        branch.tasks += count
        if id(ni) in feasible:
            branch.nodes.append(ni)
    return root


def _waterfill(counts: list[int], m: int) -> list[int]:
    """Split ``m`` tasks so ``counts[i] + adds[i]`` is as even as possible (extras go in order)."""
    lo, hi = min(counts), max(counts) + m
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(mid - c for c in counts if c < mid) <= m:
            lo = mid
        else:
            hi = mid - 1
    adds = [max(0, lo - c) for c in counts]
    left = m - sum(adds)
    for i, c in enumerate(counts):
        if not left:
            break
        if c <= lo:
            adds[i] += 1
            left -= 1
    return adds


class _GroupRun:
    """State of placing one group of identical tasks."""

    __slots__ = ("ids", "pos", "service_id", "rec", "rank", "dyn", "counts", "fails", "assignments", "where")

    def __init__(
        self,
        ids: list[str],
        service_id: str,
        rec: TaskRecord,
        rank: Callable[[NodeInfo, str, int], tuple[Any, ...]],
        filters: list[Filter],
        counts: list[int],
        fails: dict[str, int],
        assignments: dict[str, str],
        where: dict[str, str],
    ) -> None:
        self.ids = ids
        self.pos = 0  # ids[:pos] are placed
        self.service_id = service_id
        self.rec = rec
        self.rank = rank
        self.dyn = [(i, f) for i, f in enumerate(filters) if f.dynamic]
        self.counts = counts
        self.fails = fails
        self.assignments = assignments
        self.where = where

    def place(self, nodes: list[NodeInfo], n: int) -> int:
        """Place up to ``n`` tasks on ``nodes`` (best-ranked first); drop nodes that fill up."""
        rank, sid, fails = self.rank, self.service_id, self.fails
        heap = [(rank(ni, sid, fails.get(ni.id, 0)), i, ni) for i, ni in enumerate(nodes)]
        heapify(heap)
        ids, rec, dyn, counts = self.ids, self.rec, self.dyn, self.counts
        assignments, where = self.assignments, self.where
        start = pos = self.pos
        end = min(pos + n, len(ids))
        dropped: set[int] = set()
        while pos < end and heap:
            _, i, ni = heap[0]
            task_id = ids[pos]
            pos += 1
            ni.add_record(task_id, rec)
            assignments[task_id] = where[task_id] = ni.id
            for fi, f in dyn:
                if not f.check(ni):
                    counts[fi] += 1
                    heappop(heap)
                    dropped.add(id(ni))
                    break
            else:
                heapreplace(heap, (rank(ni, sid, fails.get(ni.id, 0) if fails else 0), i, ni))
        self.pos = pos
        if dropped:
            nodes[:] = [ni for ni in nodes if id(ni) not in dropped]
        return pos - start

    def place_tree(self, branch: _Branch, n: int) -> int:
        """Split ``n`` tasks evenly over the branch's label values, recursively; returns tasks placed."""
        if branch.children is None:
            return self.place(branch.nodes, n) if branch.nodes else 0
        usable = [branch.children[k] for k in sorted(branch.children)]
        placed = 0
        while placed < n and usable:
            adds = _waterfill([b.tasks for b in usable], n - placed)
            full: set[int] = set()
            for sub, add in zip(usable, adds, strict=True):
                if not add:
                    continue
                got = self.place_tree(sub, add)
                sub.tasks += got
                placed += got
                if got < add:
                    full.add(id(sub))
            usable = [b for b in usable if id(b) not in full]
        return placed
