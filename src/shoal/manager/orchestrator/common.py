"""What the orchestrators share: making tasks, moving a task's desired state, slots, one change per task."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from shoal.aio import Pacer
from shoal.model import states
from shoal.model.ids import new_id, now
from shoal.model.service import SEALED_AUTH
from shoal.model.views import ServiceView, TaskView
from shoal.store.objects import Change, Objects


def new_task(service: dict, slot: int, node_id: str = "", desired: str = states.RUNNING) -> dict:
    """A new task for ``service`` in ``slot`` (0 for global tasks, which carry their node)."""
    svc = ServiceView(service)
    ts = now()
    task = {
        "ID": new_id(),
        "CreatedAt": ts,
        "UpdatedAt": ts,
        "Labels": {},
        "Spec": _copy(svc.task_template),
        "ServiceID": svc.id,
        "Slot": slot,
        "Status": {"Timestamp": ts, "State": states.NEW, "Message": states.MESSAGES[states.NEW],
                   "PortStatus": {}},
        "DesiredState": desired,
        "ServiceAnnotations": {"Name": svc.name, "Labels": svc.labels},
        "SpecVersion": svc.version,
    }
    if node_id:
        task["NodeID"] = node_id
    if service.get(SEALED_AUTH):  # the pull credentials of the spec the task is made from
        task[SEALED_AUTH] = service[SEALED_AUTH]
    if svc.mode.endswith("-job"):
        task["JobIteration"] = {"Index": svc.job_iteration}
    if svc.endpoint:
        task["Endpoint"] = _copy(svc.endpoint)
    elif svc.spec.get("EndpointSpec"):
        task["Endpoint"] = {"Spec": svc.spec["EndpointSpec"]}
    return task


def _copy(obj: Any) -> Any:
    """A deep copy of a JSON value (orjson: a new task copies its service's template)."""
    return orjson.loads(orjson.dumps(obj))


def tasks_of(objs: Objects, service_id: str) -> list[TaskView]:
    return [TaskView(t) for t in objs.tasks_of_service(service_id)]


async def read_tasks(objs: Objects, service_id: str, pace: Pacer) -> list[TaskView]:
    """The service's tasks, read in slices."""
    cache = objs.cache["tasks"]
    out: list[TaskView] = []
    for tid in list(objs.tasks_by_service.get(service_id, ())):
        t = cache.get(tid)
        if t is not None:  # deleted while this pass let the loop in
            out.append(TaskView(t))
        await pace.tick()
    return out


def created(task: TaskView) -> str:
    """Sort key: the order tasks were made in."""
    return task.created_at


def slot_key(task: TaskView, svc: ServiceView) -> tuple[str, object]:
    """The slot a task fills: (service, slot) for replicated tasks (a replicated job's count from 0),
    (service, node) for global ones."""
    return task.service_id, task.node_id if svc.mode in ("global", "global-job") else task.slot


def set_desired(task: TaskView, desired: str) -> dict:
    """A copy of ``task`` with a new desired state (managers only move it forward)."""
    t = _copy(task.raw)
    if states.before(t["DesiredState"], desired):
        t["DesiredState"] = desired
        t["UpdatedAt"] = now()
    return t


def removed(tasks: Iterable[TaskView]) -> list[Change]:
    """Desired state ``remove`` for those of ``tasks`` not marked yet (the reaper deletes them once stopped)."""
    return [Change("tasks", set_desired(t, states.REMOVE)) for t in tasks if states.before(t.desired, states.REMOVE)]


async def removed_paced(tasks: Iterable[TaskView], pace: Pacer) -> list[Change]:
    """:func:`removed`, in slices."""
    out: list[Change] = []
    for t in tasks:
        if states.before(t.desired, states.REMOVE):
            out.append(Change("tasks", set_desired(t, states.REMOVE)))
        await pace.tick()
    return out


async def node_changed(changes: set[tuple[str, str]], pace: Pacer) -> bool:
    """Whether a node is among ``changes``."""
    for kind, _ in changes:
        if kind == "nodes":
            return True
        await pace.tick()
    return False


async def touched(objs: Objects, changes: set[tuple[str, str]] | None, services: Iterable[str],
                  pace: Pacer) -> set[str]:
    """The IDs of the services a pass must look at: all of them at a full pass or when a node changed,
    else those changed and those of changed tasks (attachments, which have no service, excluded)."""
    if changes is None:
        return set(services)
    todo: set[str] = set()
    tasks = objs.cache["tasks"]
    for kind, oid in changes:
        if kind == "nodes":
            return set(services)
        if kind == "services":
            todo.add(oid)
        elif kind == "tasks" and oid in tasks:
            todo.add(tasks[oid]["ServiceID"])
        await pace.tick()
    todo.discard("")
    return todo


async def merge(changes: list[Change], pace: Pacer) -> list[Change]:
    """One change per object (a transaction may not touch a key twice): the first change of an
    object is kept, carrying the furthest desired state any later change asked for."""
    seen: dict[tuple[str, str], Change] = {}
    for ch in changes:
        prev = seen.setdefault((ch.kind, ch.obj["ID"]), ch)
        if prev is not ch and ch.kind == "tasks" and states.before(prev.obj["DesiredState"],
                                                                    ch.obj["DesiredState"]):
            prev.obj["DesiredState"] = ch.obj["DesiredState"]
        await pace.tick()
    return list(seen.values())
