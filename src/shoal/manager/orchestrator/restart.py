"""Restart supervision: when a replacement task may start.

A replacement is created with DesiredState ``ready``; the orchestrator moves it to ``running`` once its
restart delay has passed and (stop-first updates) the task it replaces has stopped. The bookkeeping is
in memory: after a leader change, waiting replacements simply start at once.

It also remembers each slot's restarts, so that MaxAttempts holds after the task history retention
limit has trimmed the earlier tasks from the store (swarmkit keeps this history in memory as well).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from shoal.model import states
from shoal.model.ids import parse_time


@dataclass(slots=True)
class _Wait:
    start_at: float
    after: str = ""  # task ID that must have stopped first


HISTORY = 1000  # restarts remembered per slot


class RestartSupervisor:
    def __init__(self) -> None:
        self._waits: dict[str, _Wait] = {}
        self._history: dict[tuple[str, object], deque[float]] = {}  # slot -> when its restarts were made

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
        self._waits[task_id] = _Wait(time.monotonic() + max(0.0, seconds), after)

    def may_start(self, task: dict, tasks_by_id: dict[str, dict]) -> bool:
        w = self._waits.get(task["ID"])
        if w is None:
            return True
        if time.monotonic() < w.start_at:
            return False
        if w.after:
            old = tasks_by_id.get(w.after)
            if old is not None and not states.terminal(old["Status"]["State"]) and old.get("NodeID"):
                return False
        del self._waits[task["ID"]]
        return True

    def waiting(self, task_id: str) -> bool:
        """The task's restart delay has not yet passed."""
        w = self._waits.get(task_id)
        return w is not None and time.monotonic() < w.start_at

    def forget(self, task_id: str) -> None:
        self._waits.pop(task_id, None)

    def next_due(self) -> float | None:
        """Seconds until the earliest delay ends (None if nothing waits)."""
        now = time.monotonic()
        future = [w.start_at - now for w in self._waits.values() if w.start_at > now]
        return min(future) + 0.01 if future else None
