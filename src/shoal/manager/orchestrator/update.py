"""Rolling updates and rollbacks (swarmkit's updater): tasks made from another spec are replaced a slot at a
time, failures of the new tasks are counted, and ``UpdateStatus`` says how it went.

A *run* rolls out one spec of a service. It uses ``UpdateConfig``, or ``RollbackConfig`` when the service
is rolling back (``UpdateStatus.State`` ``rollback_started``: ``docker service rollback``, or the automatic
rollback below):

- ``Parallelism`` slots are replaced at once (0: all of them); a slot is done once its new task ran (a task
  with a health check runs once healthy) or ended; the worker that replaced it takes the next slot
  ``Delay`` later. ``Order`` stop-first: the old task is shut down and the new one starts once it has
  stopped; start-first: the new task starts beside it and the old one is shut down once the new one runs
  (a new task that fails never takes its old task down).
- A new task that fails, is rejected or exits before it has run for ``Monitor`` is a failure. Once the
  failures exceed ``MaxFailureRatio`` of the slots the run had to update, ``FailureAction`` applies:
  ``pause`` (the run makes no more tasks: ``paused``, or ``rollback_paused`` during a rollback),
  ``rollback`` (the service goes back to ``PreviousSpec``, ``rollback_started``; during a rollback it
  pauses instead), ``continue`` (failures are not counted).
- After the last slot the run monitors for ``Monitor`` more (``Delay`` + 1 s if that is longer), then
  the status is ``completed`` / ``rollback_completed``.

A paused run makes nothing until the spec changes (a new ``docker service update``; the control API then
clears ``UpdateStatus``). The runs are in leader memory; a new leader starts a run for the outdated slots
it finds and goes on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Container
from dataclasses import dataclass, field

from shoal.aio import MONOTONIC, Clock, Pacer
from shoal.manager.orchestrator.common import new_task, set_desired
from shoal.manager.orchestrator.restart import RestartSupervisor
from shoal.model import states
from shoal.model.ids import now
from shoal.model.service import DEFAULT_UPDATE
from shoal.model.task import is_dirty
from shoal.model.views import ServiceView, TaskView
from shoal.store.objects import Change

log = logging.getLogger(__name__)

ACTIVE_UPDATE = ("updating", "rollback_started")  # UpdateStatus states of an update under way
PAUSED = ("paused", "rollback_paused")
EARLY_END = (states.COMPLETE, states.FAILED, states.REJECTED)  # a new task that ended by itself

ServiceWriter = Callable[[dict], Awaitable[None]]


@dataclass(slots=True)
class _Run:
    """The rollout of one spec of one service."""

    spec: str  # the spec rolled out (canonical JSON)
    rollback: bool  # RollbackConfig applies
    cfg: dict  # the config with defaults
    total: int  # slots to update when it began (MaxFailureRatio's denominator)
    inflight: dict[object, str] = field(default_factory=dict)  # slot key -> the new task replacing it
    cooling: list[float] = field(default_factory=list)  # when each worker done with a slot takes the next
    started: dict[str, float | None] = field(default_factory=dict)  # its new tasks -> when seen running
    failures: set[str] = field(default_factory=set)
    done_at: float | None = None  # every slot updated: completed at this time, unless a failure comes
    stopped: bool = False  # paused, or rolled back: makes nothing more
    rollback_message: str = ""  # a rollback to write (again, if the write failed)

    @property
    def delay(self) -> float:
        return (self.cfg.get("Delay") or 0) / 1e9

    @property
    def monitor(self) -> float:
        return (self.cfg.get("Monitor") or 0) / 1e9


def _spec_key(svc: ServiceView) -> str:
    return json.dumps(svc.spec, sort_keys=True)


def _slot_dirty(svc: ServiceView, group: list[TaskView]) -> bool:
    """The slot must be updated: a task of another spec, or more than one task (swarmkit's isSlotDirty)."""
    return len(group) > 1 or any(is_dirty(svc.raw, t.raw) for t in group)


async def _dirty(svc: ServiceView, groups: dict[object, list[TaskView]], skip: Container[object],
                 pace: Pacer) -> list[object]:
    """The slots of ``groups`` (but those in ``skip``) that must be updated, looked at in slices."""
    out = []
    for k, g in groups.items():
        if g and k not in skip and _slot_dirty(svc, g):
            out.append(k)
        await pace.tick()
    return out


class Updater:
    def __init__(self, restarts: RestartSupervisor, clock: Clock = MONOTONIC,
                 write_service: ServiceWriter | None = None) -> None:
        self.restarts = restarts
        self.objs = restarts.objs
        self.clock = clock
        self.write_service = write_service
        self._runs: dict[str, _Run] = {}
        self._rewrites: list[dict] = []  # services to write through ``write_service`` after the pass

    # -- bookkeeping ------------------------------------------------------------------------------
    def busy(self) -> bool:
        """A run goes on: the orchestrator should look again soon."""
        return any(not r.stopped or r.rollback_message for r in self._runs.values())

    def next_due(self) -> float | None:
        """Seconds until a run has something to do that no task change announces (Delay, Monitor)."""
        t = self.clock.now()
        due = [c for r in self._runs.values() if not r.stopped for c in r.cooling]
        due += [r.done_at for r in self._runs.values() if r.done_at is not None and not r.stopped]
        future = [d - t for d in due if d > t]
        return min(future) + 0.01 if future else None

    def forget(self, service_id: str) -> None:
        self._runs.pop(service_id, None)

    def drop(self, service_id: str, key: object) -> None:
        """The slot ``key`` is gone (scaled down): its replacement no longer counts as in flight."""
        run = self._runs.get(service_id)
        if run is not None:
            run.inflight.pop(key, None)

    def take_rewrites(self) -> list[dict]:
        """Services to write through the allocator (rollbacks), taken once."""
        out, self._rewrites = self._rewrites, []
        return out

    # -- a pass ---------------------------------------------------------------------------------
    async def update(self, svc: ServiceView, groups: dict[object, list[TaskView]], out: list[Change],
                     node_of: dict[object, str], pace: Pacer) -> None:
        """Replace outdated slots, count failures and keep UpdateStatus.

        ``groups`` are the service's live tasks per slot (per node for global services, whose new tasks
        go to ``node_of[key]``); the slots are looked at in slices (``pace``)."""
        sid = svc.id
        state = svc.update_status.get("State")
        run = self._runs.get(sid)
        started: list[object] | None = None  # the outdated slots, when the run starts at this pass
        if run is None or run.spec != _spec_key(svc):
            started = [] if state in PAUSED else await _dirty(svc, groups, (), pace)
            run = self._start(svc, started, out)
            if run is None:
                return
        if run.rollback_message:
            self._roll_back(svc, run, out)
            return
        if run.stopped:
            return
        t = self.clock.now()
        self._settle_inflight(svc, run, groups, out, t)
        failed = self._failure(run, t)
        if failed:
            self._act(svc, run, failed, out)
            return
        if started is None or run.inflight:
            started = await _dirty(svc, groups, run.inflight, pace)
        dirty = sorted(started, key=str)
        if not dirty and not run.inflight:
            if run.done_at is None:
                period = run.monitor if run.delay < run.monitor else run.delay + 1
                run.done_at = max([t, *run.cooling]) + period
            if t >= run.done_at:
                del self._runs[sid]
                if state in ACTIVE_UPDATE:
                    self._complete(svc, out)
            return
        run.done_at = None
        run.cooling = [c for c in run.cooling if c > t]
        parallelism = run.cfg.get("Parallelism") or max(run.total, len(dirty) + len(run.inflight))
        free = parallelism - len(run.inflight) - len(run.cooling)
        for key in dirty[:max(0, free)]:
            self._update_slot(svc, run, key, groups[key], node_of.get(key, ""), out, t)
            await pace.tick()

    def _start(self, svc: ServiceView, dirty: list[object], out: list[Change]) -> _Run | None:
        """A run for the service's current spec (None: nothing to do); ``dirty``: its outdated slots."""
        sid = svc.id
        self._runs.pop(sid, None)
        state = svc.update_status.get("State")
        if state in PAUSED:
            return None  # until the spec changes
        if not dirty:
            if state in ACTIVE_UPDATE:
                self._complete(svc, out)
            return None
        rollback = state == "rollback_started"
        raw = svc.spec.get("RollbackConfig" if rollback else "UpdateConfig") or {}
        run = _Run(_spec_key(svc), rollback, {**DEFAULT_UPDATE, **raw}, len(dirty))
        self._runs[sid] = run
        if state not in ACTIVE_UPDATE:
            self._set_status(svc, "updating", "update in progress", out)
        return run

    def _settle_inflight(self, svc: ServiceView, run: _Run, groups: dict[object, list[TaskView]],
                         out: list[Change], t: float) -> None:
        """Slots whose new task ran (or ended) are done; with start-first their old task now stops."""
        order = run.cfg.get("Order") or "stop-first"
        for key, new_id in list(run.inflight.items()):
            raw = self.objs.get("tasks", new_id)
            new = TaskView(raw) if raw is not None else None
            if new is not None and states.before(new.state, states.RUNNING):
                continue
            if new is not None and run.started.get(new_id) is None:
                run.started[new_id] = t
            if order == "start-first" and new is not None and new.state == states.RUNNING:
                for old in groups.get(key, []):
                    if old.id != new_id and old.runnable:
                        out.append(Change("tasks", set_desired(old, states.SHUTDOWN)))
            del run.inflight[key]
            run.cooling.append(t + run.delay)

    def _failure(self, run: _Run, t: float) -> str:
        """The new task whose failure calls for the failure action ("" if none does)."""
        if (run.cfg.get("FailureAction") or "pause") == "continue":
            return ""
        for tid, started in run.started.items():
            if tid in run.failures:
                continue
            raw = self.objs.get("tasks", tid)
            if raw is None or TaskView(raw).state not in EARLY_END:
                continue
            if started is not None and t - started > run.monitor:
                continue
            run.failures.add(tid)
            if len(run.failures) / max(1, run.total) > (run.cfg.get("MaxFailureRatio") or 0):
                return tid
        return ""

    def _act(self, svc: ServiceView, run: _Run, task_id: str, out: list[Change]) -> None:
        action = run.cfg.get("FailureAction") or "pause"
        rolling_back = svc.update_status.get("State") == "rollback_started"
        if action == "rollback" and not rolling_back:
            run.rollback_message = f"update rolled back due to failure or early termination of task {task_id}"
            self._roll_back(svc, run, out)
            return
        run.stopped = True
        what = "rollback" if action == "rollback" else "update"
        self._set_status(svc, "rollback_paused" if rolling_back else "paused",
                         f"{what} paused due to failure or early termination of task {task_id}", out)

    def _roll_back(self, svc: ServiceView, run: _Run, out: list[Change]) -> None:
        """Back to ``PreviousSpec``; the next run (with RollbackConfig) replaces the new tasks."""
        run.stopped = True
        prev = svc.previous_spec
        if prev is None:
            log.error("cannot roll back service %s because no previous spec is available", svc.id)
            run.rollback_message = ""
            return
        new = {k: v for k, v in svc.raw.items() if k != "PreviousSpec"}
        new["Spec"] = prev
        new["UpdatedAt"] = now()
        new["Endpoint"] = {**svc.endpoint, "Spec": prev.get("EndpointSpec") or {"Mode": "vip"}}
        new["UpdateStatus"] = {**svc.update_status, "State": "rollback_started", "Message": run.rollback_message}
        if self.write_service is None:
            out.append(Change("services", new))
        else:
            self._rewrites.append(new)

    def _update_slot(self, svc: ServiceView, run: _Run, key: object, group: list[TaskView], node_id: str,
                     out: list[Change], t: float) -> None:
        clean = [g for g in group if not is_dirty(svc.raw, g.raw)]
        keep = next((g for g in clean if g.desired == states.RUNNING), None) or \
            next((g for g in clean if states.before(g.desired, states.RUNNING)), None)
        if keep is not None:  # swarmkit's useExistingTask: keep the task of this spec, stop the others
            others = [g for g in group if g.id != keep.id]
            for g in others:
                out.append(Change("tasks", set_desired(g, states.SHUTDOWN)))
            if keep.desired != states.RUNNING and others:
                self.restarts.wait_for(keep.id, others[-1].id)
            run.cooling.append(t + run.delay)
            return
        old = group[-1]
        order = run.cfg.get("Order") or "stop-first"
        nt = new_task(svc.raw, old.slot, node_id,
                      desired=states.READY if order == "stop-first" else states.RUNNING)
        out.append(Change("tasks", nt, create=True))
        if order == "stop-first":
            for g in group:
                out.append(Change("tasks", set_desired(g, states.SHUTDOWN)))
            self.restarts.delay(nt["ID"], 0, after=old.id)
        run.inflight[key] = nt["ID"]
        run.started[nt["ID"]] = None

    # -- UpdateStatus -----------------------------------------------------------------------------
    def _complete(self, svc: ServiceView, out: list[Change]) -> None:
        if svc.update_status.get("State") == "rollback_started":
            self._set_status(svc, "rollback_completed", "rollback completed", out)
        else:
            self._set_status(svc, "completed", "update completed", out)

    def _set_status(self, svc: ServiceView, state: str, message: str, out: list[Change]) -> None:
        st = {**svc.update_status, "State": state, "Message": message}
        if state == "updating" or "StartedAt" not in st:
            st["StartedAt"] = now()
        st.pop("CompletedAt", None)
        if state in ("completed", "rollback_completed"):
            st["CompletedAt"] = now()
        out.append(Change("services", {**svc.raw, "UpdateStatus": st}))
