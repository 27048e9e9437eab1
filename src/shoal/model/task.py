"""Tasks as Docker names and shows them, and whether one is up to date with its service."""

from __future__ import annotations

from shoal.model.service import SEALED_AUTH

# Task fields that are shoal's own bookkeeping, never shown by the API.
INTERNAL_FIELDS = ("ServiceAnnotations", "SpecVersion", SEALED_AUTH)
# A task's registry credentials, opened, as the dispatcher hands them to the task's node only.
REGISTRY_AUTH = "RegistryAuth"


def public(task: dict) -> dict:
    """The task as the API shows it."""
    return {k: v for k, v in task.items() if k not in INTERNAL_FIELDS}


def task_name(task: dict) -> str:
    """swarmkit's name of a task, ``<service>.<slot or node id>.<task id>``: its container's name and what
    the API's ``name`` filter matches."""
    svc = (task.get("ServiceAnnotations") or {}).get("Name", task.get("ServiceID", ""))
    middle = task["Slot"] if task.get("Slot") else task.get("NodeID", "")
    return f"{svc}.{middle}.{task['ID']}"


def is_dirty(service: dict, task: dict) -> bool:
    """The task was made from another version of the service's task template (or endpoint spec)."""
    if task.get("Spec") != (service["Spec"].get("TaskTemplate") or {}):
        return True
    ep = task.get("Endpoint")
    return ep is not None and (ep.get("Spec") or {}) != (service["Spec"].get("EndpointSpec") or {"Mode": "vip"})
