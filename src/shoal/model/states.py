"""Task states: one enum, in lifecycle order; a task only moves forward."""

from __future__ import annotations

from enum import StrEnum


class TaskState(StrEnum):
    """swarmkit's ``api.TaskState`` as the Engine API spells it (members compare equal to their strings)."""

    NEW = "new"
    PENDING = "pending"
    ASSIGNED = "assigned"
    ACCEPTED = "accepted"
    PREPARING = "preparing"
    READY = "ready"
    STARTING = "starting"
    RUNNING = "running"
    COMPLETE = "complete"
    SHUTDOWN = "shutdown"
    FAILED = "failed"
    REJECTED = "rejected"
    REMOVE = "remove"
    ORPHANED = "orphaned"


ORDER: tuple[TaskState, ...] = tuple(TaskState)
_RANK: dict[str, int] = {s.value: i for i, s in enumerate(ORDER)}

NEW, PENDING, ASSIGNED, ACCEPTED, PREPARING, READY, STARTING, RUNNING = ORDER[:8]
COMPLETE, SHUTDOWN, FAILED, REJECTED, REMOVE, ORPHANED = ORDER[8:]

# Default status messages Docker shows in `docker service ps` (swarmkit's task state messages).
MESSAGES: dict[str, str] = {
    NEW: "created", PENDING: "pending task scheduling", ASSIGNED: "scheduler assigned task to node",
    ACCEPTED: "accepted", PREPARING: "preparing", READY: "prepared", STARTING: "starting",
    RUNNING: "started", COMPLETE: "finished", SHUTDOWN: "shutdown", FAILED: "failed",
    REJECTED: "rejected", REMOVE: "removed", ORPHANED: "orphaned",
}


def rank(state: str) -> int:
    """The state's place in the lifecycle (0 for ``new``)."""
    return _RANK[state]


def before(a: str, b: str) -> bool:
    """``a`` comes strictly before ``b``."""
    return _RANK[a] < _RANK[b]


def terminal(state: str) -> bool:
    """The task's container has stopped for good (complete or beyond)."""
    return _RANK[state] > _RANK[RUNNING]


def failed(state: str) -> bool:
    """The task ended in error (failed or rejected)."""
    return state in (FAILED, REJECTED)
