"""Benchmark the scheduler: 1,000 simulated nodes, 10,000 and 100,000 tasks, measured two ways.

1. ``Scheduler.schedule()`` alone on plain dicts: the placement algorithm (filters, spread ranking).
2. The scheduler as the manager runs it, like swarmkit's ``benchScheduler``: a MemoryStore, the Objects
   cache and the real ``SchedulerController`` watching it. The nodes are in the store first; the clock
   starts when the tasks are written (pending, as the allocator hands them over, in transactions of 128
   as the orchestrator writes them) and stops when every task has a NodeID in the store (the
   controller's assignments written back and seen through the cache's watch).

Run with ``.venv/bin/python benchmarks/scheduler_bench.py`` (``--profile`` to print a cProfile of the
largest plain run). Each task gets its own Spec dict, as tasks read from the store would.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time
from collections import Counter
from typing import Any

from shoal.manager.controller import commit_all
from shoal.manager.orchestrator.common import new_task
from shoal.manager.scheduler.controller import SchedulerController
from shoal.manager.scheduler.scheduler import Scheduler
from shoal.model import states
from shoal.model.ids import new_id, now
from shoal.store.memory import MemoryStore
from shoal.store.objects import PREFIX, Change, Objects, _decode

N_NODES = 1000
N_SERVICES = 100


def make_nodes(n: int) -> list[dict[str, Any]]:
    return [
        {
            "ID": f"node{i:04d}",
            "Spec": {"Role": "worker", "Availability": "active", "Labels": {"zone": f"z{i % 3}"}},
            "Description": {
                "Hostname": f"host{i:04d}",
                "Platform": {"OS": "linux", "Architecture": "x86_64"},
                "Resources": {"NanoCPUs": 64 * 10**9, "MemoryBytes": 256 * 2**30},
                "Engine": {"EngineVersion": "27.0.0", "Labels": {}},
            },
            "Status": {"State": "ready", "Addr": f"10.0.{i // 256}.{i % 256}"},
        }
        for i in range(n)
    ]


def make_tasks(services: int, replicas: int) -> list[dict[str, Any]]:
    tasks = []
    for s in range(services):
        for r in range(replicas):
            tasks.append(
                {
                    "ID": f"task-{s}-{r}",
                    "ServiceID": f"svc{s}",
                    "Slot": r + 1,
                    "Spec": {
                        "ContainerSpec": {"Image": "nginx:alpine"},
                        "Resources": {"Reservations": {"NanoCPUs": 10**7, "MemoryBytes": 2**20}},
                        "Placement": {"Constraints": ["node.role==worker"]},
                    },
                    "Status": {"State": "pending"},
                    "DesiredState": "running",
                    "ServiceLabels": {},
                }
            )
    return tasks


def run(replicas: int, profile: bool = False) -> float:
    sched = Scheduler(make_nodes(N_NODES))
    tasks = make_tasks(N_SERVICES, replicas)
    prof = cProfile.Profile() if profile else None
    t0 = time.perf_counter()
    if prof:
        prof.enable()
    assigned, failed = sched.schedule(tasks)
    if prof:
        prof.disable()
    elapsed = time.perf_counter() - t0
    per_node = [ni.active_tasks for ni in sched.nodes.values()]
    print(
        f"scheduler: {N_NODES} nodes, {len(tasks)} tasks: {elapsed:.2f} s "
        f"({len(tasks) / elapsed:,.0f} tasks/s); assigned {len(assigned)}, failed {len(failed)}; "
        f"spread max-min tasks per node: {max(per_node) - min(per_node)} "
        f"({min(per_node)}..{max(per_node)})"
    )
    if prof:
        pstats.Stats(prof).sort_stats("cumulative").print_stats(15)
    return elapsed


TASK_TEMPLATE = {
    "ContainerSpec": {"Image": "nginx:alpine"},
    "Resources": {"Reservations": {"NanoCPUs": 10**7, "MemoryBytes": 2**20}},
    "Placement": {"Constraints": ["node.role==worker"]},
}


def store_nodes(n: int) -> list[dict[str, Any]]:
    """The plain nodes, shaped as shoald stores them (IDs, timestamps)."""
    ts = now()
    return [{**node, "ID": new_id(), "CreatedAt": ts, "UpdatedAt": ts} for node in make_nodes(n)]


def store_tasks(services: int, replicas: int) -> list[dict[str, Any]]:
    """Tasks as the orchestrator makes them (``new_task``), moved to pending as the allocator does."""
    tasks = []
    for s in range(services):
        ts = now()
        svc = {"ID": new_id(), "CreatedAt": ts, "UpdatedAt": ts, "Version": {"Index": 1},
               "Spec": {"Name": f"svc{s}", "Labels": {}, "TaskTemplate": TASK_TEMPLATE,
                        "Mode": {"Replicated": {"Replicas": replicas}}}}
        for r in range(replicas):
            t = new_task(svc, r + 1)
            t["Status"] = {**t["Status"], "State": states.PENDING, "Message": states.MESSAGES[states.PENDING]}
            tasks.append(t)
    return tasks


async def store_run_async(replicas: int) -> float:
    n = N_SERVICES * replicas
    store = MemoryStore(history=4 * n + 10 * N_NODES)
    objs = Objects(store)
    await objs.start()
    await commit_all(objs, [Change("nodes", node, create=True) for node in store_nodes(N_NODES)])
    ctl = SchedulerController(objs)
    runner = asyncio.create_task(ctl.run(), name="scheduler")
    await asyncio.sleep(0.05)  # the controller has loaded the nodes
    tasks = store_tasks(N_SERVICES, replicas)
    watcher = objs.watcher(("tasks",))
    assigned: set[str] = set()
    cache = objs.cache["tasks"]
    t0 = time.perf_counter()
    await commit_all(objs, [Change("tasks", t, create=True) for t in tasks])
    written = time.perf_counter() - t0
    while len(assigned) < n:
        for _, oid in await watcher.wait(60):
            t = cache.get(oid)
            if t is not None and t.get("NodeID"):
                assigned.add(oid)
    elapsed = time.perf_counter() - t0
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    # checked in the store itself, not the cache (untimed)
    kvs, _ = await store.range(PREFIX + "tasks/")
    stored = [_decode(kv)[2] for kv in kvs]
    assert len(stored) == n and all(t.get("NodeID") and t["Status"]["State"] == states.ASSIGNED for t in stored)
    per_node = Counter(t["NodeID"] for t in stored)
    await objs.stop()
    await store.close()
    print(
        f"store + controller: {N_NODES} nodes, {n} tasks: {elapsed:.2f} s ({n / elapsed:,.0f} tasks/s) "
        f"until every task has a NodeID in the store (writing the pending tasks: {written:.2f} s); "
        f"spread max-min tasks per node: {max(per_node.values()) - min(per_node.values())} "
        f"({min(per_node.values())}..{max(per_node.values())})"
    )
    return elapsed


def store_run(replicas: int) -> float:
    return asyncio.run(store_run_async(replicas))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", action="store_true", help="profile the 100,000-task run")
    args = parser.parse_args()
    run(100)
    elapsed = run(1000, profile=args.profile)
    store_run(100)
    store_run(1000)
    if elapsed >= 5:
        raise SystemExit(f"too slow: 100,000 tasks took {elapsed:.2f} s (limit 5 s)")


if __name__ == "__main__":
    main()
