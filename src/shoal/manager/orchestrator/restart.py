"""Restarts: whether a stopped task's slot gets a new task, making that replacement, and when it may start.

A task that stopped (or must leave its node, see ``constraint_enforcer.py``) is shut down and, if its
restart policy allows, replaced in its slot by a task with DesiredState ``ready``; the orchestrator moves
it to ``running`` once its restart delay has passed and (stop-first updates) the task it replaces has
stopped. The bookkeeping is in memory: after a leader change, waiting replacements simply start at once.

The supervisor also remembers each slot's restarts, so that MaxAttempts holds after the task history
retention limit has trimmed the earlier tasks from the store (swarmkit keeps this history in memory as
well). Each orchestrator has its own supervisor.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from shoal.aio import MONOTONIC, Clock
from shoal.manager.orchestrator.common import created, new_task, set_desired, slot_key
from shoal.manager.orchestrator.constraint_enforcer import must_leave
from shoal.model import states
from shoal.model.ids import parse_time
from shoal.model.task import is_dirty
from shoal.model.views import ServiceView, TaskView
from shoal.store.objects import Change, Objects

HISTORY = 1000  # restarts remembered per slot


def should_restart(task: TaskView, history: list[TaskView], restarted: list[float] | None = None) -> bool:
    """Whether a stopped task's slot gets a new task, per its restart policy.

    ``history`` are the slot's tasks still in the store; ``restarted`` are the restarts of the slot the
    orchestrator remembers (when each was made), which outlive the task history retention limit
    (and are lost with a leader change, when the stored history is all there is)."""
    policy = task.restart_policy
    cond = policy.get("Condition") or "any"
    if cond == "none":
        return False
    if task.state == states.COMPLETE and (cond == "on-failure" or task.job_iteration is not None):
        return False  # a job's task that completed is done
    max_attempts = policy.get("MaxAttempts") or 0
    if max_attempts:
        window = (policy.get("Window") or 0) / 1e9
        cutoff = time.time() - window if window else 0.0
        # the slot's other stored tasks number its restarts so far, until retention trims them;
        # the remembered restarts (the dying task among them, if it was one) then still count
        stored = sum(1 for t in history if t.id != task.id and parse_time(t.created_at) >= cutoff)
        remembered = sum(1 for at in restarted or () if at >= cutoff)
        if max(stored, remembered) >= max_attempts:
            return False
    return True


@dataclass(slots=True)
class _Wait:
    start_at: float
    after: str = ""  # task ID that must have stopped first


class RestartSupervisor:
    def __init__(self, objs: Objects, clock: Clock = MONOTONIC) -> None:
        self.objs = objs
        self.clock = clock
        self._waits: dict[str, _Wait] = {}
        self._history: dict[tuple[str, object], deque[float]] = {}  # slot -> when its restarts were made

    # -- decisions ------------------------------------------------------------------------------
    def replace_dead(self, svc: ServiceView, group: list[TaskView], out: list[Change],
                     node_id: str = "") -> list[TaskView]:
        """The slot's runnable tasks after dead ones were shut down and, per policy, replaced."""
        live: list[TaskView] = []
        for t in sorted(group, key=created):
            if not t.runnable:
                continue
            if t.done:
                live.append(t)  # a job's task that completed keeps its place
                continue
            dead = t.terminal or must_leave(self.objs, t)
            if dead and t.desired == states.READY and self.waiting(t.id):
                # a replacement that failed while being prepared (e.g. a missing bind source) keeps
                # its slot, and shows its error, until its own restart delay is over
                live.append(t)
                continue
            if dead:
                self.forget(t.id)
                nt = self._restart(svc, t, group, out, node_id)
                if nt is not None:
                    live.append(nt)
            else:
                live.append(t)
        return live

    def _restart(self, svc: ServiceView, t: TaskView, group: list[TaskView], out: list[Change],
                 node_id: str) -> TaskView | None:
        """Shut down a dead task and, if its policy allows, create its delayed replacement."""
        out.append(Change("tasks", set_desired(t, states.SHUTDOWN)))
        if not should_restart(t, group, self.restarted(slot_key(t, svc))):
            return None
        nt = new_task(svc.raw, t.slot, node_id, desired=states.READY)
        self.record(slot_key(t, svc), nt)
        # the restart delay guards against crash loops; a task lost with its node did not crash
        self.delay(nt["ID"], 0.0 if must_leave(self.objs, t) else svc.restart_policy["Delay"] / 1e9)
        out.append(Change("tasks", nt, create=True))
        return TaskView(nt)

    def kept_dead(self, svc: ServiceView, group: list[TaskView]) -> bool:
        """The slot's newest task stopped and its policy says not to restart: it keeps its place."""
        last = max(group, key=created)
        return (last.desired != states.REMOVE and last.terminal and not is_dirty(svc.raw, last.raw)
                and not should_restart(last, group, self.restarted(slot_key(last, svc))))

    def promote(self, live: list[TaskView], tasks_by_id: dict[str, TaskView], out: list[Change]) -> None:
        """Move replacements whose wait is over from ``ready`` to ``running`` (``complete`` for a job's)."""
        for t in live:
            if not t.terminal and t.desired == states.READY and self.may_start(t, tasks_by_id):
                goal = states.RUNNING if t.job_iteration is None else states.COMPLETE
                out.append(Change("tasks", set_desired(t, goal)))

    # -- bookkeeping ----------------------------------------------------------------------------
    def record(self, slot: tuple[str, object], task: dict) -> None:
        """``task`` was created to restart ``slot``."""
        self._history.setdefault(slot, deque(maxlen=HISTORY)).append(parse_time(task["CreatedAt"]))

    def restarted(self, slot: tuple[str, object]) -> list[float]:
        """When the slot's remembered restarts were made (epoch seconds)."""
        return list(self._history.get(slot, ()))

    def forget_service(self, service_id: str) -> None:
        for key in [k for k in self._history if k[0] == service_id]:
            del self._history[key]

    def delay(self, task_id: str, seconds: float, after: str = "") -> None:
        self._waits[task_id] = _Wait(self.clock.now() + max(0.0, seconds), after)

    def wait_for(self, task_id: str, old_id: str) -> None:
        """``task_id`` starts only once ``old_id`` has stopped (and after the delay it already waits)."""
        w = self._waits.get(task_id)
        self._waits[task_id] = _Wait(w.start_at if w is not None else self.clock.now(), old_id)

    def may_start(self, task: TaskView, tasks_by_id: dict[str, TaskView]) -> bool:
        w = self._waits.get(task.id)
        if w is None:
            return True
        if self.clock.now() < w.start_at:
            return False
        if w.after:
            old = tasks_by_id.get(w.after)
            if old is not None and not old.terminal and old.node_id:
                return False
        del self._waits[task.id]
        return True

    def waiting(self, task_id: str) -> bool:
        """The task's restart delay has not yet passed."""
        w = self._waits.get(task_id)
        return w is not None and self.clock.now() < w.start_at

    def forget(self, task_id: str) -> None:
        self._waits.pop(task_id, None)

    def next_due(self) -> float | None:
        """Seconds until the earliest delay ends (None if nothing waits)."""
        now = self.clock.now()
        future = [w.start_at - now for w in self._waits.values() if w.start_at > now]
        return min(future) + 0.01 if future else None
