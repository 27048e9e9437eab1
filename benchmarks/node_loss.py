"""Node loss, side by side: time from `shoal lab kill worker2` (power loss: processes SIGKILLed, link cut)
to all replicas running on the other hosts — for shoal, then for Docker's own swarm mode on the same
kind of lab hosts (their dockerds form the swarm). Also: `shoal lab up` time, shoald memory per host,
and whether a loaded (busy) but alive node is ever declared down.

Run: .venv/bin/python benchmarks/node_loss.py [--runs N]  (exits 1 if a loaded node was ever seen down)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _lab import docker_swarm, lab_in_use  # noqa: E402

from shoal.lab.lab import Lab, down  # noqa: E402

WEB = "shoal/demo-web:latest"
REPLICAS = 6


def quiet(_msg: str) -> None:
    pass


def wait_for(pred, timeout: float, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    raise TimeoutError("condition not reached")


def running_off(docker, host: str, service: str) -> bool:
    cp = docker("service", "ps", service, "--filter", "desired-state=running", "--format", "{{json .}}", check=False)
    rows = [json.loads(x) for x in cp.stdout.splitlines() if x.strip()]
    ok = [r for r in rows if r["CurrentState"].startswith("Running") and r["Node"] != host]
    return len(ok) == REPLICAS and len(rows) == REPLICAS


def node_down(docker, host: str) -> bool:
    out = docker("node", "ls", "--format", "{{.Hostname}} {{.Status}}", check=False).stdout
    return f"{host} Down" in out


def measure(lab: Lab, docker, victim: str, service: str) -> tuple[float, float]:
    docker("service", "create", "-d", "--name", service, f"--replicas={REPLICAS}", WEB)
    wait_for(lambda: running_off(docker, "nowhere", service), 60)
    t0 = time.monotonic()
    lab.kill(victim)
    down_at = None
    while True:
        if down_at is None and node_down(docker, victim):
            down_at = time.monotonic() - t0
        if running_off(docker, victim, service):
            break
        if time.monotonic() - t0 > 120:
            raise TimeoutError("replicas not back")
        time.sleep(0.05)
    total = time.monotonic() - t0
    if down_at is None:
        down_at = total
    lab.start(victim)
    wait_for(lambda: f"{victim} Ready" in docker("node", "ls", "--format", "{{.Hostname}} {{.Status}}",
                                                 check=False).stdout, 90, 0.2)
    docker("service", "rm", service)
    time.sleep(2)
    return down_at, total


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def false_detections(lab: Lab, seconds: float = 20) -> int:
    """Load worker1's CPUs with busy loops inside the host and count the times it is seen down."""
    busy = f"import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass"
    holder = str(lab.host("worker1").holder)
    procs = [subprocess.Popen(["nsenter", "-t", holder, "-n", "-m", "-u", sys.executable, "-c", busy])
             for _ in range(4)]
    seen_down = 0
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            if node_down(lambda *a, **k: lab.docker("manager", *a, **k), "worker1"):
                seen_down += 1
            time.sleep(0.25)
    finally:
        for p in procs:
            p.wait()
    return seen_down


def shoal_side(runs: int) -> dict:
    t0 = time.monotonic()
    lab = Lab.up(workers=2, swarm=True, out=quiet)
    up = time.monotonic() - t0
    try:
        mem = {h.name: rss_mib(h.shoald) for h in lab.hosts}
        docker = lambda *a, **k: lab.docker("manager", *a, **k)  # noqa: E731
        results = [measure(lab, docker, "worker2", f"loss{i}") for i in range(runs)]
        false = false_detections(lab)
    finally:
        down(out=quiet)
    return {"up": up, "mem": mem, "results": results, "false": false}


def docker_side(runs: int) -> dict:
    lab = Lab.up(workers=2, swarm=False, out=quiet)
    try:
        docker_swarm(lab)
        docker = lambda *a, **k: lab.engine_docker("manager", *a, **k)  # noqa: E731
        results = [measure(lab, docker, "worker2", f"dloss{i}") for i in range(runs)]
    finally:
        down(out=quiet)
    return {"results": results}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    if lab_in_use():
        return 1
    s = shoal_side(args.runs)
    d = docker_side(args.runs)
    print(f"shoal lab up (3 hosts, swarm formed): {s['up']:.1f} s")
    print("shoald RSS per host: " + ", ".join(f"{h} {v:.0f} MiB" for h, v in s["mem"].items()))
    for name, res in (("shoal", s["results"]), ("docker swarm", d["results"])):
        for i, (dn, tot) in enumerate(res, 1):
            print(f"node loss run {i} ({name}): node Down after {dn:.1f} s, all {REPLICAS} replicas running "
                  f"elsewhere after {tot:.1f} s")
    sm = statistics.median(t for _, t in s["results"])
    dm = statistics.median(t for _, t in d["results"])
    print(f"node loss: shoal median {sm:.1f} s, docker swarm median {dm:.1f} s, shoal takes {sm / dm:.0%} "
          f"of Docker's time")
    print(f"false node-down detections while worker1 was CPU-loaded for 20 s: {s['false']}")
    if s["false"]:
        print("FAIL: a loaded but alive node was declared down", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
