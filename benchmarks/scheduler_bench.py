"""Benchmark the scheduling core: 1,000 simulated nodes, 10,000 and 100,000 tasks.

Run with ``.venv/bin/python benchmarks/scheduler_bench.py`` (``--profile`` to print a cProfile of the
largest run). Each task gets its own Spec dict, as tasks read from the store would.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from typing import Any

from shoal.manager.scheduler.scheduler import Scheduler

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", action="store_true", help="profile the 100,000-task run")
    args = parser.parse_args()
    run(100)
    elapsed = run(1000, profile=args.profile)
    if elapsed >= 5:
        raise SystemExit(f"too slow: 100,000 tasks took {elapsed:.2f} s (limit 5 s)")


if __name__ == "__main__":
    main()
