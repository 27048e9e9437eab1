"""Resident memory of shoald (and, separately, its etcd member): idle right after ``docker swarm init``,
then with one 100-replica ``shoal/demo-busybox`` service running ``sleep 3600``, 10 s after all 100 run.

Run with ``.venv/bin/python benchmarks/memory.py [--replicas N] [--settle S]``. Needs root (or docker
group) and a running dockerd with the shoal/demo-busybox image.
"""

from __future__ import annotations

import argparse
import time

from _shoald import Shoald, docker, rss_kib, service_containers, wait_count

IMAGE = "shoal/demo-busybox:latest"
SERVICE = "bench-mem"


def snapshot(d: Shoald, what: str) -> None:
    etcd = d.etcd_pid()
    shoald_mib = rss_kib(d.pid) / 1024
    etcd_mib = rss_kib(etcd) / 1024 if etcd else 0.0
    print(f"memory {what}: shoald RSS {shoald_mib:.1f} MiB, etcd RSS {etcd_mib:.1f} MiB "
          f"(total {shoald_mib + etcd_mib:.1f} MiB)", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--replicas", type=int, default=100)
    p.add_argument("--settle", type=float, default=10.0)
    args = p.parse_args()
    if service_containers(SERVICE, running_only=False):
        raise SystemExit(f"containers of a service named {SERVICE} already exist on the engine; remove them first")

    with Shoald() as d:
        d.swarm_init()
        snapshot(d, "idle after swarm init")
        t0 = time.monotonic()
        docker(d.host, "service", "create", "--name", SERVICE, "--replicas", str(args.replicas), "--detach",
               IMAGE, "sleep", "3600")
        try:
            t_up = wait_count(SERVICE, args.replicas, running_only=True, timeout=150, interval=0.2) - t0
            print(f"  {args.replicas} replicas running after {t_up:.1f} s; settling {args.settle:.0f} s", flush=True)
            time.sleep(args.settle)
            snapshot(d, f"with {args.replicas} running replicas")
        finally:
            docker(d.host, "service", "rm", SERVICE, check=False)
            wait_count(SERVICE, 0, running_only=False, timeout=120, interval=0.2)


if __name__ == "__main__":
    main()
