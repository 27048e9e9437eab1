"""The leader's controllers share its event loop: a big pass lets the loop in between its slices and still
decides what one uninterrupted pass would. Pacers with a zero budget yield at every step, so what these
tests see does not depend on the machine's speed."""

from __future__ import annotations

import asyncio
import gc
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from test_control_plane import make_cluster, make_node, service_spec

from shoal.aio import FrozenSurvivors, Pacer
from shoal.manager.orchestrator.reaper import TaskReaper
from shoal.manager.orchestrator.replicated import ReplicatedOrchestrator
from shoal.manager.scheduler import controller as scheduler_controller
from shoal.manager.scheduler.controller import SchedulerController
from shoal.model import states
from shoal.model.ids import new_id, now
from shoal.model.service import validate_spec
from shoal.store.memory import MemoryStore
from shoal.store.objects import Objects


@pytest.fixture
async def objs() -> AsyncIterator[Objects]:
    store = MemoryStore()
    o = Objects(store)
    await o.start()
    await o.create("clusters", make_cluster(retention=2))
    yield o
    await o.stop()
    await store.close()


async def add_service(objs: Objects, replicas: int) -> str:
    ts = now()
    svc = {"ID": new_id(), "CreatedAt": ts, "UpdatedAt": ts, "Spec": validate_spec(service_spec("web", replicas)),
           "Endpoint": {"Spec": {"Mode": "vip"}}}
    await objs.create("services", svc)
    return svc["ID"]


async def while_running(coro: object) -> int:
    """Run ``coro`` to its end; how many times another coroutine got the loop meanwhile."""
    turns = 0
    task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
    while not task.done():
        await asyncio.sleep(0)
        turns += 1
    await task
    return turns


def slots(objs: Objects, sid: str) -> list[int]:
    return sorted(t["Slot"] for t in objs.tasks_of_service(sid))


async def test_a_service_of_many_replicas_is_made_in_slices_of_the_loop(objs: Objects) -> None:
    sid = await add_service(objs, 300)
    orch = ReplicatedOrchestrator(objs)
    orch.pace = Pacer(0)
    turns = await while_running(orch.reconcile(None))
    assert turns > 300  # at least once per task made
    assert slots(objs, sid) == list(range(1, 301))
    # a second pass finds nothing to do, and scaling down still removes the extra slots
    await orch.reconcile(None)
    assert len(objs.tasks_of_service(sid)) == 300
    svc = objs.get("services", sid)
    svc["Spec"]["Mode"]["Replicated"]["Replicas"] = 100
    await objs.update("services", svc)
    await while_running(orch.reconcile({("services", sid)}))
    kept = [t for t in objs.tasks_of_service(sid) if t["DesiredState"] == states.RUNNING]
    assert len(kept) == 100
    orch.objs.unwatch(orch.watcher)


async def test_pending_tasks_are_placed_in_slices_as_evenly_as_at_once(objs: Objects,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(1, 11):
        await objs.create("nodes", make_node(i))
    sid = await add_service(objs, 103)
    orch = ReplicatedOrchestrator(objs)
    await orch.reconcile(None)
    for t in objs.tasks_of_service(sid):  # as the allocator leaves them
        await objs.update("tasks", {**t, "Status": {**t["Status"], "State": states.PENDING}})
    monkeypatch.setattr(scheduler_controller, "BATCH", 7)
    sched = SchedulerController(objs)
    sched.pace = Pacer(0)
    turns = await while_running(sched.reconcile(None))
    assert turns >= 103 // 7
    per_node = Counter(t.get("NodeID") for t in objs.tasks_of_service(sid))
    assert None not in per_node and sorted(per_node.values()) == [10] * 7 + [11] * 3
    for u in (orch, sched):
        objs.unwatch(u.watcher)


async def test_the_reaper_keeps_each_changed_slot_to_the_retention_limit(objs: Objects) -> None:
    """Only tasks changed: the reaper looks at their slots, through the cache's slot index."""
    node = make_node(1)
    await objs.create("nodes", node)
    sid = await add_service(objs, 2)
    svc = objs.get("services", sid)
    ts = now()
    made: dict[int, list[str]] = {1: [], 2: []}
    for slot in (1, 2):
        for n in range(4):  # three stopped tasks then a running one, in each slot
            state = states.RUNNING if n == 3 else states.FAILED
            t = {"ID": new_id(), "CreatedAt": f"{ts[:-4]}{n}00Z", "UpdatedAt": ts, "ServiceID": sid, "Slot": slot,
                 "NodeID": node["ID"], "Spec": svc["Spec"]["TaskTemplate"], "Labels": {},
                 "Status": {"State": state, "Timestamp": ts}, "DesiredState":
                 states.RUNNING if n == 3 else states.SHUTDOWN}
            await objs.create("tasks", t)
            made[slot].append(t["ID"])
    assert {len(objs.tasks_of_slot(sid, s)) for s in (1, 2)} == {4}
    reaper = TaskReaper(objs)
    reaper.pace = Pacer(0)
    await reaper.reconcile({("tasks", made[1][-1])})  # a change in slot 1 only
    assert [objs.get("tasks", t) is not None for t in made[1]] == [False, False, True, True]
    assert len(objs.tasks_of_slot(sid, 2)) == 4  # slot 2 is trimmed when it changes (or at a full pass)
    await reaper.reconcile(None)
    assert [objs.get("tasks", t) is not None for t in made[2]] == [False, False, True, True]
    objs.unwatch(reaper.watcher)


async def test_the_slot_index_follows_the_tasks(objs: Objects) -> None:
    sid = await add_service(objs, 1)
    t = {"ID": new_id(), "ServiceID": sid, "Slot": 1, "Status": {"State": states.NEW}, "DesiredState": "running"}
    await objs.create("tasks", t)
    assert [x["ID"] for x in objs.tasks_of_slot(sid, 1)] == [t["ID"]]
    await objs.update("tasks", {**t, "Slot": 2})
    assert objs.tasks_of_slot(sid, 1) == [] and [x["ID"] for x in objs.tasks_of_slot(sid, 2)] == [t["ID"]]
    await objs.delete("tasks", objs.get("tasks", t["ID"]))
    assert objs.tasks_of_slot(sid, 2) == [] and objs.tasks_by_slot == {}


def test_what_survives_the_middle_generation_is_frozen_until_the_thaw() -> None:
    survivors = FrozenSurvivors()
    survivors.install()
    try:
        kept = [{"n": i} for i in range(1000)]
        gc.collect(1)
        frozen = gc.get_freeze_count()
        assert frozen >= len(kept)
        survivors.collect_all()  # the hourly thaw: one full collection, then frozen again
        assert gc.get_freeze_count() >= len(kept)
    finally:
        survivors.remove()
    assert gc.get_freeze_count() == 0
