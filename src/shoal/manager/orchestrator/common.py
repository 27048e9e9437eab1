"""What the orchestrators share: making tasks, moving a task's desired state, slots, one change per task."""

from __future__ import annotations

import json
from collections.abc import Iterable

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
        "Spec": json.loads(json.dumps(svc.task_template)),
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
    if svc.endpoint:
        task["Endpoint"] = json.loads(json.dumps(svc.endpoint))
    elif svc.spec.get("EndpointSpec"):
        task["Endpoint"] = {"Spec": svc.spec["EndpointSpec"]}
    return task


def tasks_of(objs: Objects, service_id: str) -> list[TaskView]:
    return [TaskView(t) for t in objs.tasks_of_service(service_id)]


def created(task: TaskView) -> str:
    """Sort key: the order tasks were made in."""
    return task.created_at


def slot_key(task: TaskView) -> tuple[str, object]:
    """The slot a task fills: (service, slot) for replicated tasks, (service, node) for global ones."""
    return task.service_id, task.slot or task.node_id


def set_desired(task: TaskView, desired: str) -> dict:
    """A copy of ``task`` with a new desired state (managers only move it forward)."""
    t = json.loads(json.dumps(task.raw))
    if states.before(t["DesiredState"], desired):
        t["DesiredState"] = desired
        t["UpdatedAt"] = now()
    return t


def removed(tasks: Iterable[TaskView]) -> list[Change]:
    """Desired state ``remove`` for those of ``tasks`` not marked yet (the reaper deletes them once stopped)."""
    return [Change("tasks", set_desired(t, states.REMOVE)) for t in tasks if states.before(t.desired, states.REMOVE)]


def touched(objs: Objects, changes: set[tuple[str, str]] | None, services: Iterable[str]) -> set[str]:
    """The IDs of the services a pass must look at: all of them at a full pass or when a node changed,
    else those changed and those of changed tasks (attachments, which have no service, excluded)."""
    if changes is None or any(kind == "nodes" for kind, _ in changes):
        return set(services)
    todo: set[str] = set()
    tasks = objs.cache["tasks"]
    for kind, oid in changes:
        if kind == "services":
            todo.add(oid)
        elif kind == "tasks" and oid in tasks:
            todo.add(tasks[oid]["ServiceID"])
    todo.discard("")
    return todo


def merge(changes: list[Change]) -> list[Change]:
    """One change per object (a transaction may not touch a key twice): the first change of an
    object is kept, carrying the furthest desired state any later change asked for."""
    seen: dict[tuple[str, str], Change] = {}
    for ch in changes:
        prev = seen.setdefault((ch.kind, ch.obj["ID"]), ch)
        if prev is not ch and ch.kind == "tasks" and states.before(prev.obj["DesiredState"],
                                                                    ch.obj["DesiredState"]):
            prev.obj["DesiredState"] = ch.obj["DesiredState"]
    return list(seen.values())
