"""Leader failover and write throughput with 3 managers, side by side: shoal, then Docker's own swarm
mode formed by the same kind of lab hosts' dockerds.

- failover: time from killing the leader's host (`shoal lab kill`) to the first successful
  `docker service create` through a surviving manager;
- writes/s: service updates (GET the service, POST /services/{id}/update with its version) through the
  Engine API of one manager for 8 s.

Run: .venv/bin/python benchmarks/failover.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the unix_http helper

import unix_http  # noqa: E402
from _lab import docker_swarm, lab_in_use  # noqa: E402

from shoal.lab.lab import Lab, down  # noqa: E402

WEB = "shoal/demo-web:latest"
MANAGERS = ("manager1", "manager2", "manager3")


def quiet(_m: str) -> None:
    pass


def call(sock: str, method: str, path: str, body: object = None) -> tuple[int, object]:
    status, _headers, parsed = unix_http.request(sock, method, path, body)
    return status, parsed


def writes_per_second(sock: str, service: str, seconds: float = 8.0) -> float:
    n = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        _, svc = call(sock, "GET", f"/services/{service}")
        spec = svc["Spec"]  # type: ignore[index]
        spec.setdefault("Labels", {})["bench"] = str(n)
        status, _ = call(sock, "POST", f"/services/{svc['ID']}/update?version={svc['Version']['Index']}", spec)  # type: ignore[index]
        if status == 200:
            n += 1
    return n / (time.monotonic() - t0)


def leader_of(lab: Lab, docker) -> str:
    out = docker("node", "ls", "--format", "{{.Hostname}} {{.ManagerStatus}}").stdout
    return next(line.split()[0] for line in out.splitlines() if line.endswith("Leader"))


def failover(lab: Lab, docker_on) -> float:
    lead = leader_of(lab, lambda *a, **k: docker_on("manager1", *a, **k))
    survivor = next(m for m in MANAGERS if m != lead)
    t0 = time.monotonic()
    lab.kill(lead)
    i = 0
    while time.monotonic() - t0 < 120:
        i += 1
        cp = docker_on(survivor, "service", "create", "-d", "-q", "--no-resolve-image", "--name", f"after{i}", WEB,
                       check=False)
        if cp.returncode == 0:
            return time.monotonic() - t0
        time.sleep(0.05)
    raise TimeoutError("no write succeeded")


def shoal_side() -> dict:
    lab = Lab.up(workers=0, managers=3, swarm=True, out=quiet)
    try:
        sock = str(lab.host("manager1").dir / "shoal.sock")
        lab.docker("manager1", "service", "create", "-d", "--no-resolve-image", "--name", "wbench", WEB)
        time.sleep(2)
        wps = writes_per_second(sock, "wbench")
        return {"failover": failover(lab, lab.docker), "wps": wps}
    finally:
        down(out=quiet)


def docker_side() -> dict:
    lab = Lab.up(workers=0, managers=3, swarm=False, out=quiet)
    try:
        e = lab.engine_docker
        docker_swarm(lab)
        time.sleep(3)
        sock = str(lab.host("manager1").dir / "docker.sock")
        e("manager1", "service", "create", "-d", "--no-resolve-image", "--name", "wbench", WEB)
        time.sleep(2)
        wps = writes_per_second(sock, "wbench")
        return {"failover": failover(lab, e), "wps": wps}
    finally:
        down(out=quiet)


def main() -> int:
    if lab_in_use():
        return 1
    s = shoal_side()
    d = docker_side()
    print(f"leader failover (kill the leader's host → first successful service create via a survivor): "
          f"shoal {s['failover']:.1f} s, docker swarm {d['failover']:.1f} s "
          f"(shoal takes {s['failover'] / d['failover']:.0%} of Docker's time)")
    print(f"writes through the API with 3 managers (service updates): shoal {s['wps']:.0f}/s, "
          f"docker swarm {d['wps']:.0f}/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
