"""Task states in their order; a task only moves forward."""

from __future__ import annotations

ORDER = (
    "new", "pending", "assigned", "accepted", "preparing", "ready", "starting", "running",
    "complete", "shutdown", "failed", "rejected", "remove", "orphaned",
)
_RANK = {s: i for i, s in enumerate(ORDER)}

NEW, PENDING, ASSIGNED, ACCEPTED, PREPARING, READY, STARTING, RUNNING = ORDER[:8]
COMPLETE, SHUTDOWN, FAILED, REJECTED, REMOVE, ORPHANED = ORDER[8:]

# Default status messages Docker shows in `docker service ps` (swarmkit's task state messages).
MESSAGES = {
    NEW: "created", PENDING: "pending task scheduling", ASSIGNED: "scheduler assigned task to node",
    ACCEPTED: "accepted", PREPARING: "preparing", READY: "prepared", STARTING: "starting",
    RUNNING: "started", COMPLETE: "finished", SHUTDOWN: "shutdown", FAILED: "failed",
    REJECTED: "rejected", REMOVE: "removed", ORPHANED: "orphaned",
}


def rank(state: str) -> int:
    return _RANK[state]


def before(a: str, b: str) -> bool:
    """``a`` comes strictly before ``b``."""
    return _RANK[a] < _RANK[b]


def terminal(state: str) -> bool:
    """The task's container has stopped for good (complete or beyond)."""
    return _RANK[state] > _RANK[RUNNING]
