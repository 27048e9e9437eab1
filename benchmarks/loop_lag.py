"""Event-loop lag on the leader while 100,000 tasks are created.

Everything on the leader shares one event loop: the API, the dispatcher's heartbeats, the election's
lease keepalive (2 s) and the controllers. A controller that reconciles 100,000 tasks in one synchronous
pass holds all of them up. This runs the leader's own controllers (``store_controllers``: orchestrators,
reaper, allocator, scheduler) on a MemoryStore with 1,000 ready nodes, creates the services the way the
control API does (through the allocator), and meanwhile a probe asks to wake every 10 ms and records how
late it woke. Until every task has a node. The garbage collector's survivors are frozen as shoald does
(``aio.FrozenSurvivors``; ``--no-freeze``: Python's default). Prints the probe's lag (p50, p99, max),
the time taken and the peak RSS.

Run: .venv/bin/python benchmarks/loop_lag.py [--services 1 --replicas 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from shoal.aio import FrozenSurvivors, cancel_all  # noqa: E402
from shoal.manager.allocator import Allocator  # noqa: E402
from shoal.manager.manager import store_controllers  # noqa: E402
from shoal.model.cluster import default_cluster_spec  # noqa: E402
from shoal.model.ids import new_id, now  # noqa: E402
from shoal.model.service import validate_spec  # noqa: E402
from shoal.store.memory import MemoryStore  # noqa: E402
from shoal.store.objects import Objects  # noqa: E402

PROBE = 0.010  # s


def node(i: int) -> dict:
    ts = now()
    return {"ID": new_id(), "CreatedAt": ts, "UpdatedAt": ts,
            "Spec": {"Labels": {}, "Role": "worker", "Availability": "active"},
            "Description": {"Hostname": f"host{i:04d}", "Platform": {"OS": "linux", "Architecture": "x86_64"},
                            "Resources": {"NanoCPUs": 64 * 10**9, "MemoryBytes": 256 * 2**30},
                            "Engine": {"EngineVersion": "28.2.2", "Labels": {}, "Plugins": []}},
            "Status": {"State": "ready", "Addr": f"10.1.{i // 256}.{i % 256}"}}


async def probe(lags: list[float], stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        due = loop.time() + PROBE
        await asyncio.sleep(PROBE)
        lags.append(max(0.0, loop.time() - due))


async def run(services: int, replicas: int, nodes: int, freeze: bool = True) -> None:
    survivors = FrozenSurvivors()  # as shoald does
    if freeze:
        survivors.install()
    store = MemoryStore()
    objs = Objects(store)
    await objs.start()
    await objs.create("clusters", {"ID": new_id(), "CreatedAt": now(), "UpdatedAt": now(),
                                   "Spec": default_cluster_spec()})
    for i in range(nodes):
        await objs.create("nodes", node(i))
    allocator = Allocator(objs)
    controllers = [asyncio.create_task(c.run(), name=c.name) for c in store_controllers(objs, allocator)]
    await asyncio.sleep(0.5)
    lags: list[float] = []
    stop = asyncio.Event()
    prober = asyncio.create_task(probe(lags, stop))
    t0 = time.perf_counter()
    for s in range(services):
        spec = validate_spec({"Name": f"svc{s}", "Mode": {"Replicated": {"Replicas": replicas}},
                              "TaskTemplate": {"ContainerSpec": {"Image": "shoal/demo-web:latest"}}})
        ts = now()
        await allocator.create_service({"ID": new_id(), "CreatedAt": ts, "UpdatedAt": ts, "Spec": spec,
                                        "Endpoint": {"Spec": {"Mode": "vip"}}})
    want = services * replicas
    while True:
        await asyncio.sleep(0.2)
        # through the cache's node index: a scan of every task here would hold the loop itself
        assigned = sum(len(ids) for ids in objs.tasks_by_node.values())
        if assigned >= want:
            break
    took = time.perf_counter() - t0
    stop.set()
    await prober
    t1 = time.perf_counter()
    if freeze:
        survivors.collect_all()
    else:
        gc.collect()
    full = time.perf_counter() - t1
    await cancel_all(controllers)
    await objs.stop()
    await store.close()
    survivors.remove()
    lags.sort()
    p = lambda q: lags[min(len(lags) - 1, int(q * len(lags)))] * 1000  # noqa: E731
    print(f"loop lag, {services} service(s) x {replicas} replicas on {nodes} nodes: {want} tasks assigned in "
          f"{took:.1f} s; probe woke late by p50 {p(0.5):.1f} ms, p99 {p(0.99):.1f} ms, max {lags[-1] * 1000:.0f} ms "
          f"(mean {statistics.mean(lags) * 1000:.1f} ms over {len(lags)} wake-ups); "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MiB; then one full garbage "
          f"collection (the hourly thaw) took {full * 1000:.0f} ms; load average {os.getloadavg()[0]:.1f} "
          f"(on {os.cpu_count()} CPUs: the probe's lag counts the time other processes had the CPU too)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, default=0, help="default: 1 x 100,000 then 100 x 1,000")
    ap.add_argument("--replicas", type=int, default=100_000)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--no-freeze", action="store_true", help="leave the garbage collector as Python sets it")
    args = ap.parse_args()
    runs = [(args.services, args.replicas)] if args.services else [(1, 100_000), (100, 1000)]
    for services, replicas in runs:
        asyncio.run(run(services, replicas, args.nodes, not args.no_freeze))


if __name__ == "__main__":
    main()
