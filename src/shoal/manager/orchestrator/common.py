"""What the orchestrators share: making tasks, telling outdated ones, restart decisions."""

from __future__ import annotations

import json
import time

from shoal.model import states
from shoal.model.ids import new_id, now, parse_time
from shoal.model.service import mode_of, restart_policy
from shoal.model.task import is_dirty as is_dirty


def new_task(service: dict, slot: int, node_id: str = "", desired: str = states.RUNNING) -> dict:
    """A new task for ``service`` in ``slot`` (0 for global tasks, which carry their node)."""
    spec = service["Spec"]
    ts = now()
    task = {
        "ID": new_id(),
        "CreatedAt": ts,
        "UpdatedAt": ts,
        "Labels": {},
        "Spec": json.loads(json.dumps(spec.get("TaskTemplate") or {})),
        "ServiceID": service["ID"],
        "Slot": slot,
        "Status": {"Timestamp": ts, "State": states.NEW, "Message": states.MESSAGES[states.NEW],
                   "PortStatus": {}},
        "DesiredState": desired,
        "ServiceAnnotations": {"Name": spec.get("Name", ""), "Labels": spec.get("Labels") or {}},
        "SpecVersion": service.get("Version", {}).get("Index", 0),
    }
    if node_id:
        task["NodeID"] = node_id
    if service.get("Endpoint"):
        task["Endpoint"] = json.loads(json.dumps(service["Endpoint"]))
    elif spec.get("EndpointSpec"):
        task["Endpoint"] = {"Spec": spec["EndpointSpec"]}
    return task


def observed(task: dict) -> str:
    return task.get("Status", {}).get("State", states.NEW)


def runnable(task: dict) -> bool:
    """Desired to run (or to become ready to run)."""
    return states.rank(task["DesiredState"]) <= states.rank(states.RUNNING)


def slot_key(task: dict) -> tuple[str, object]:
    """The slot a task fills: (service, slot) for replicated tasks, (service, node) for global ones."""
    return task["ServiceID"], task.get("Slot") or task.get("NodeID") or ""


def should_restart(task: dict, history: list[dict], restarted: list[float] | None = None) -> bool:
    """Whether a stopped task's slot gets a new task, per its restart policy.

    ``history`` are the slot's tasks still in the store; ``restarted`` are the restarts of the slot the
    orchestrator remembers (when each was made), which outlive the task history retention limit
    (and are lost with a leader change, when the stored history is all there is)."""
    policy = restart_policy(task.get("Spec") or {})
    cond = policy.get("Condition") or "any"
    if cond == "none":
        return False
    state = observed(task)
    if cond == "on-failure" and state == states.COMPLETE:
        return False
    max_attempts = policy.get("MaxAttempts") or 0
    if max_attempts:
        window = (policy.get("Window") or 0) / 1e9
        cutoff = time.time() - window if window else 0.0
        # the slot's other stored tasks number its restarts so far, until retention trims them;
        # the remembered restarts (the dying task among them, if it was one) then still count
        stored = sum(1 for t in history if t["ID"] != task["ID"] and parse_time(t["CreatedAt"]) >= cutoff)
        remembered = sum(1 for at in restarted or () if at >= cutoff)
        if max(stored, remembered) >= max_attempts:
            return False
    return True


def is_replicated(service: dict) -> bool:
    return mode_of(service["Spec"]) == "replicated"


def is_global(service: dict) -> bool:
    return mode_of(service["Spec"]) == "global"


def set_desired(task: dict, desired: str) -> dict:
    """A copy of ``task`` with a new desired state (managers only move it forward)."""
    t = json.loads(json.dumps(task))
    if states.before(t["DesiredState"], desired):
        t["DesiredState"] = desired
        t["UpdatedAt"] = now()
    return t
