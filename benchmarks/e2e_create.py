"""End to end on this machine: ``docker service create --replicas 20 --detach shoal/demo-web:latest``
until 20 running containers (polling the engine's container list every 50 ms), and ``docker service rm``
until all its containers are gone; for shoal, then for Docker's own swarm mode on the same dockerd.

Run with ``.venv/bin/python benchmarks/e2e_create.py [--runs N] [--replicas R]``. Needs root (or docker
group), a running dockerd with the shoal/demo-web image, and the engine not already in a swarm.
"""

from __future__ import annotations

import argparse
import contextlib
import time

from _shoald import ENGINE_SOCK, Shoald, docker, median, request, service_containers, wait_count

IMAGE = "shoal/demo-web:latest"
ENGINE_HOST = f"unix://{ENGINE_SOCK}"
TIMEOUT = 90.0


def measure(host: str, label: str, runs: int, replicas: int, first: int) -> tuple[list[float], list[float]]:
    """``runs`` create/remove cycles of a fresh service through the manager at ``host``."""
    creates, removes = [], []
    for i in range(runs):
        name = f"bench-e2e-{first + i}"
        if service_containers(name, running_only=False):
            raise RuntimeError(f"containers of a service named {name} already exist on the engine")
        t0 = time.monotonic()
        docker(host, "service", "create", "--name", name, "--replicas", str(replicas), "--detach", IMAGE)
        t_create = wait_count(name, replicas, running_only=True, timeout=TIMEOUT) - t0
        t0 = time.monotonic()
        docker(host, "service", "rm", name)
        t_rm = wait_count(name, 0, running_only=False, timeout=TIMEOUT) - t0
        creates.append(t_create)
        removes.append(t_rm)
        print(f"  {label} run {i + 1}: create {replicas} -> running {t_create:.2f} s, "
              f"rm -> containers gone {t_rm:.2f} s", flush=True)
    return creates, removes


def engine_swarm_state() -> str:
    status, info = request(ENGINE_SOCK, "GET", "/info")
    if status != 200 or not isinstance(info, dict):
        raise RuntimeError(f"engine /info failed: {status} {info!r}")
    return (info.get("Swarm") or {}).get("LocalNodeState", "")


def engine_networks() -> set[str]:
    status, nets = request(ENGINE_SOCK, "GET", "/networks")
    return {n["Name"] for n in nets} if status == 200 and isinstance(nets, list) else set()


def bench_shoal(runs: int, replicas: int) -> tuple[list[float], list[float]]:
    print("shoal:", flush=True)
    with Shoald() as d:
        d.swarm_init()
        return measure(d.host, "shoal", runs, replicas, first=1)


def bench_docker(runs: int, replicas: int) -> tuple[list[float], list[float]]:
    print("docker swarm:", flush=True)
    state = engine_swarm_state()
    if state not in ("inactive", ""):
        raise SystemExit(f"refusing: the engine at {ENGINE_SOCK} is already in a swarm (LocalNodeState={state!r}); "
                         "this benchmark would have to leave it")
    nets_before = engine_networks()
    try:
        docker(ENGINE_HOST, "swarm", "init", "--advertise-addr", "127.0.0.1")
        return measure(ENGINE_HOST, "docker", runs, replicas, first=runs + 1)
    finally:
        docker(ENGINE_HOST, "swarm", "leave", "--force", check=False)
        # swarm init creates docker_gwbridge, which leaving keeps; remove it if we created it
        if "docker_gwbridge" not in nets_before:
            with contextlib.suppress(Exception):
                docker(ENGINE_HOST, "network", "rm", "docker_gwbridge", check=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--replicas", type=int, default=20)
    args = p.parse_args()
    if engine_swarm_state() not in ("inactive", ""):
        raise SystemExit(f"refusing: the engine at {ENGINE_SOCK} is already in a swarm; leave it first")

    s_create, s_rm = bench_shoal(args.runs, args.replicas)
    d_create, d_rm = bench_docker(args.runs, args.replicas)

    n = args.replicas
    sc, dc, sr, dr = median(s_create), median(d_create), median(s_rm), median(d_rm)
    print(f"e2e create {n} replicas: shoal median {sc:.2f} s, docker swarm median {dc:.2f} s, "
          f"ratio {dc / sc:.2f}x")
    print(f"e2e remove {n} replicas: shoal median {sr:.2f} s, docker swarm median {dr:.2f} s, "
          f"ratio {dr / sr:.2f}x")


if __name__ == "__main__":
    main()
