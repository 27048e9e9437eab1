"""Rolling updates: tasks made from an older spec are replaced a batch at a time, and ``UpdateStatus`` says
how far it got.

``UpdateConfig`` decides the pace: ``Parallelism`` tasks at a time (0: all), ``Delay`` between batches,
``Order`` stop-first (the new task starts once the old one stopped, through the restart supervisor) or
start-first (the old task is shut down once the new one runs). The update completes once the last new
task has run for ``Monitor``. The bookkeeping (the batch in flight, when the last batch ended) is in
memory, per orchestrator; a new leader finds the outdated tasks again and goes on. What a failed batch
does (``FailureAction``, ``MaxFailureRatio``, automatic rollback) belongs here too.
"""

from __future__ import annotations

import time
from collections import defaultdict

from shoal.manager.orchestrator.common import new_task, set_desired
from shoal.manager.orchestrator.restart import RestartSupervisor
from shoal.model import states
from shoal.model.ids import now
from shoal.model.task import is_dirty
from shoal.model.views import ServiceView, TaskView
from shoal.store.objects import Change

ACTIVE_UPDATE = ("updating", "rollback_started")  # UpdateStatus states of an update under way


class Updater:
    def __init__(self, restarts: RestartSupervisor) -> None:
        self.restarts = restarts
        # service id -> {group key (slot or node id): (new task id, old task id, order)}
        self._updates: dict[str, dict[object, tuple[str, str, str]]] = defaultdict(dict)
        self._last_batch: dict[str, float] = {}  # service id -> when its last batch was made or ended

    def busy(self) -> bool:
        """An update is in flight or waits (Delay, Monitor): the orchestrator should look again soon."""
        return any(self._updates.values()) or bool(self._last_batch)

    def forget(self, service_id: str) -> None:
        self._updates.pop(service_id, None)
        self._last_batch.pop(service_id, None)

    def drop(self, service_id: str, key: object) -> None:
        """The group ``key`` is gone (scaled down): its replacement no longer counts as in flight."""
        self._updates[service_id].pop(key, None)

    def update(self, svc: ServiceView, groups: dict[object, list[TaskView]], out: list[Change],
               node_of: dict[object, str]) -> None:
        """Replace outdated tasks a batch at a time and keep UpdateStatus.

        ``groups`` are the service's live tasks per slot (per node for global services, whose new tasks
        go to ``node_of[key]``)."""
        sid = svc.id
        cfg = svc.update_config
        tasks_by_id = {t.id: t for g in groups.values() for t in g}
        inflight = self._updates[sid]
        for key, (new_id, old_id, order) in list(inflight.items()):
            new = tasks_by_id.get(new_id)
            if new is None or new.terminal or new.state == states.RUNNING:
                if order == "start-first" and old_id in tasks_by_id and tasks_by_id[old_id].runnable:
                    out.append(Change("tasks", set_desired(tasks_by_id[old_id], states.SHUTDOWN)))
                del inflight[key]
                self._last_batch[sid] = time.monotonic()
        dirty = [k for k, g in groups.items() if g and is_dirty(svc.raw, g[-1].raw) and k not in inflight]
        state = svc.update_status.get("State")
        if not dirty and not inflight:
            # like swarmkit, the update completes once the last new task has run for Monitor
            last = self._last_batch.get(sid)
            monitor = (cfg.get("Monitor") or 0) / 1e9
            if last is not None and state in ACTIVE_UPDATE and time.monotonic() - last < monitor:
                return
            self._last_batch.pop(sid, None)
            if state == "updating":
                self._set_status(svc, "completed", "update completed", out)
            elif state == "rollback_started":  # `docker service rollback`
                self._set_status(svc, "rollback_completed", "rollback completed", out)
            return
        if state not in ACTIVE_UPDATE and svc.previous_spec is not None:
            self._set_status(svc, "updating", "update in progress", out)
        parallelism = cfg.get("Parallelism") or len(dirty)
        delay = (cfg.get("Delay") or 0) / 1e9
        if inflight and len(inflight) >= parallelism:
            return
        last = self._last_batch.get(sid)
        if not inflight and last is not None and time.monotonic() - last < delay:
            return
        order = cfg.get("Order") or "stop-first"
        for key in sorted(dirty, key=str)[: parallelism - len(inflight)]:
            old = groups[key][-1]
            nt = new_task(svc.raw, old.slot, node_of.get(key, ""),
                          desired=states.READY if order == "stop-first" else states.RUNNING)
            out.append(Change("tasks", nt, create=True))
            if order == "stop-first":
                for t in groups[key]:
                    out.append(Change("tasks", set_desired(t, states.SHUTDOWN)))
                self.restarts.delay(nt["ID"], 0, after=old.id)
            inflight[key] = (nt["ID"], old.id, order)
            self._last_batch[sid] = time.monotonic()

    def _set_status(self, svc: ServiceView, state: str, message: str, out: list[Change]) -> None:
        st = {"State": state, "Message": message}
        st["StartedAt"] = now() if state == "updating" else svc.update_status.get("StartedAt", now())
        if state in ("completed", "rollback_completed"):
            st["CompletedAt"] = now()
        out.append(Change("services", {**svc.raw, "UpdateStatus": st}))
