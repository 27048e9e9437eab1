"""Routing mesh and VIP throughput against direct access, in a 3-host lab (wrk from worker2, the
tasks on manager and worker1), over a clear and an encrypted overlay network (`--opt encrypted`:
VXLAN through WireGuard) side by side, plus a bulk TCP transfer over each; the time from
`docker service scale` to the load balancer using the new task; and what Docker's own routing mesh does
on this kernel (no IPVS).

Run: .venv/bin/python benchmarks/mesh_throughput.py  (installs wrk with apt if it is missing); a shorter
run: --rounds 1 --duration 4 --pause 30 --bulk-mb 100 --no-docker
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _lab import docker_swarm, lab_in_use  # noqa: E402

from shoal.lab.lab import Lab, down  # noqa: E402

WEB = "shoal/demo-web:latest"
DURATION = 8
ROUNDS = 3
PAUSE = 62  # s: TIME_WAIT lasts 60 s on Linux
FETCH = Path(__file__).resolve().parents[1] / "tests" / "cluster" / "fetch.py"
BULK_MB = 200  # one bulk transfer
BULK_PORT = 9100
SINK = ("import socket,sys,time\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
        "s.bind(('0.0.0.0',int(sys.argv[1])));s.listen(1);print('ready',flush=True)\nc,_=s.accept();n=0\n"
        "t0=time.monotonic()\nwhile (b:=c.recv(1<<20)):\n  n+=len(b)\nprint(n,time.monotonic()-t0,flush=True)\n")
SOURCE = ("import socket,sys\nc=socket.create_connection((sys.argv[1],int(sys.argv[2])))\nbuf=bytes(1<<20)\n"
          "for _ in range(int(sys.argv[3])):\n  c.sendall(buf)\nc.close()\n")


def quiet(_m: str) -> None:
    pass


def parse_wrk(out: str) -> dict:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = re.search(r"Latency\s+([\d.]+)(\w+)", out)
    p99 = re.search(r"99%\s+([\d.]+)(\w+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)

    def ms(m: re.Match | None) -> float:
        if m is None:
            return 0.0
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}.get(m.group(2), 1.0)

    return {"rps": rps, "avg_ms": ms(lat), "p99_ms": ms(p99), "errors": errors.group(0) if errors else ""}


def wrk_cmd(url: str, conns: int) -> list[str]:
    return ["wrk", "-t1", f"-c{conns}", f"-d{DURATION}s", "--latency", "--timeout", "3s", url]


def run_in(lab: Lab, host: str, netns_pid: int | None, cmds: list[list[str]]) -> list[dict]:
    """Run the commands at once inside a lab host (and inside a container's network namespace)."""
    prefix = ["nsenter", "-t", str(lab.host(host).holder), "-m", "-u", "-n", "--"]
    if netns_pid:
        prefix += ["nsenter", "-t", str(netns_pid), "-n", "--"]
    procs = [subprocess.Popen(prefix + c, stdout=subprocess.PIPE, text=True) for c in cmds]
    outs = [p.communicate(timeout=DURATION + 60)[0] for p in procs]
    return [parse_wrk(o) for o in outs]


def combine(parts: list[dict]) -> dict:
    total = sum(p["rps"] for p in parts)
    return {"rps": total, "avg_ms": sum(p["avg_ms"] * p["rps"] for p in parts) / total,
            "p99_ms": max(p["p99_ms"] for p in parts), "errors": " ".join(p["errors"] for p in parts).strip()}


def median_run(runs: list[dict]) -> dict:
    """The run with the median throughput (its latencies come with it)."""
    return sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]


def task_ips(lab: Lab, service: str, net_id: str) -> list[str]:
    out = lab.docker("manager", "service", "ps", "-q", "--filter", "desired-state=running", service).stdout.split()
    ips = []
    for tid in out:
        t = json.loads(lab.docker("manager", "inspect", tid).stdout)[0]
        for a in t.get("NetworksAttachments") or []:
            if a["Network"]["ID"] == net_id:
                ips.append(a["Addresses"][0].split("/")[0])
    return ips


def node_addr(lab: Lab, host: str, net_id: str) -> str:
    """The host's own address on a network (on its bridge, beside the VIPs' /32s)."""
    out = lab.exec(host, "ip", "-4", "-o", "addr", "show", "dev", "sbr-" + net_id[:10], check=True).stdout
    return next(f.split("/")[0] for line in out.splitlines() for f in line.split()
                if "/" in f and not f.endswith("/32"))


def bulk(lab: Lab, pid: int, dst: str) -> float:
    """MB/s of one TCP stream of BULK_MB from the client container on worker2 to worker1's address ``dst``."""
    sink = subprocess.Popen(lab.host("worker1").enter(sys.executable, "-c", SINK, str(BULK_PORT)),
                            stdout=subprocess.PIPE, text=True)
    assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
    subprocess.run(["nsenter", "-t", str(lab.host("worker2").holder), "-m", "-u", "-n", "--", "nsenter", "-t",
                    str(pid), "-n", "--", sys.executable, "-c", SOURCE, dst, str(BULK_PORT), str(BULK_MB)],
                   check=True, timeout=300)
    n, secs = sink.communicate(timeout=60)[0].split()
    return int(n) / float(secs) / 1e6


def shoal_side() -> dict:
    lab = Lab.up(workers=2, swarm=True, out=quiet)
    try:
        d = lambda *a, **k: lab.docker("manager", *a, **k)  # noqa: E731
        d("network", "create", "-d", "overlay", "bench-net")
        d("network", "create", "-d", "overlay", "--opt", "encrypted", "bench-sec")
        d("service", "create", "--name", "web", "-p", "8080:80", "--network", "bench-net", "--network", "bench-sec",
          "--replicas=2", "--constraint", "node.hostname!=worker2", WEB)
        d("service", "create", "--name", "client", "--network", "bench-net", "--network", "bench-sec",
          "--constraint", "node.hostname==worker2", "shoal/demo-busybox:latest", "sleep", "3600")
        nets = {n: d("network", "inspect", n, "--format", "{{.Id}}").stdout.strip() for n in ("bench-net", "bench-sec")}
        svc = json.loads(d("service", "inspect", "web").stdout)[0]
        vips = {name: next(v for v in svc["Endpoint"]["VirtualIPs"] if v["NetworkID"] == nid)["Addr"].split("/")[0]
                for name, nid in nets.items()}
        ips = {name: task_ips(lab, "web", nid) for name, nid in nets.items()}
        cid = lab.engine_docker("worker2", "ps", "-q", "--filter", "label=com.docker.swarm.service.name=client").stdout
        pid = int(lab.engine_docker("worker2", "inspect", "-f", "{{.State.Pid}}", cid.strip()).stdout)
        time.sleep(1)
        runs: dict[str, list[dict]] = {"direct": [], "vip": [], "direct_enc": [], "vip_enc": [], "mesh": []}
        bulks: dict[str, list[float]] = {"clear": [], "encrypted": []}
        for _ in range(ROUNDS):  # interleaved, so that drift in the machine's load hits every path alike
            # busybox httpd closes every connection, so each run leaves ~20,000 sockets in TIME_WAIT on the
            # same few address pairs; a run started before they expire (60 s) measures port reuse, not the
            # path: pause between runs
            for suffix, net in (("", "bench-net"), ("_enc", "bench-sec")):
                time.sleep(PAUSE)
                # from a task container on worker2: straight to the two tasks (together), then through their VIP
                runs["direct" + suffix].append(combine(run_in(lab, "worker2", pid, [
                    wrk_cmd(f"http://{ip}:80/", 8) for ip in ips[net]])))
                time.sleep(PAUSE)
                runs["vip" + suffix].append(combine(run_in(lab, "worker2", pid, [
                    wrk_cmd(f"http://{vips[net]}:80/", 8)] * 2)))
            for kind, net in (("clear", "bench-net"), ("encrypted", "bench-sec")):
                bulks[kind].append(bulk(lab, pid, node_addr(lab, "worker1", nets[net])))
            time.sleep(PAUSE)
            # from worker2's own network namespace, to worker1's published port
            runs["mesh"].append(combine(run_in(lab, "worker2", None,
                                               [wrk_cmd(f"http://{lab.host('worker1').ip}:8080/", 8)] * 2)))
        res: dict = {name: median_run(r) for name, r in runs.items()}
        res["runs"] = {name: [round(r["rps"]) for r in rs] for name, rs in runs.items()}
        res["bulk"] = bulks
        res["scale"] = scale_lag(lab)
        return res
    finally:
        down(out=quiet)


def scale_lag(lab: Lab) -> dict:
    """Time from `docker service scale web=3` to the mesh sending a request to the new task."""
    entry = f"http://{lab.host('worker1').ip}:8080/"
    probe = ("import sys,time,urllib.request\nold=set(sys.argv[2].split(','))\nt0=time.time()\n"
             "while time.time()-t0<30:\n  try:\n    b=urllib.request.urlopen(sys.argv[1],timeout=1).read().decode()\n"
             "    if b.split()[-1] not in old: print(time.time()); break\n  except Exception: pass\n")
    hosts_before = set()
    for h in ("manager", "worker1", "worker2"):
        hosts_before |= {c[:12] for c in lab.engine_docker(h, "ps", "-q", "--filter",
                                                           "label=com.docker.swarm.service.name=web").stdout.split()}
    t0 = time.time()
    p = subprocess.Popen(["nsenter", "-t", str(lab.host("worker2").holder), "-n", "-m", "-u", sys.executable, "-c",
                          probe, entry, ",".join(hosts_before)], stdout=subprocess.PIPE, text=True)
    lab.docker("manager", "service", "scale", "-d", "web=3")
    running_at = None
    while running_at is None and time.time() - t0 < 30:
        rows = [json.loads(x) for x in lab.docker("manager", "service", "ps", "web", "--format", "{{json .}}")
                .stdout.splitlines() if x.strip()]
        if sum(1 for r in rows if r["CurrentState"].startswith("Running")) == 3:
            running_at = time.time()
        time.sleep(0.05)
    served_at = float(p.communicate()[0].strip() or 0)
    return {"to_running": (running_at or 0) - t0, "to_served": served_at - t0 if served_at else float("nan")}


def docker_side() -> str:
    """Docker's own routing mesh on the same kind of lab hosts."""
    lab = Lab.up(workers=2, swarm=False, out=quiet)
    try:
        e = lambda h, *a, **k: lab.engine_docker(h, *a, **k)  # noqa: E731
        docker_swarm(lab)
        cp = e("manager", "service", "create", "--name", "web", "-p", "8080:80", "--replicas=2", "-d", WEB,
               check=False)
        time.sleep(10)
        state = e("manager", "service", "ps", "web", "--format", "{{.CurrentState}} {{.Error}}", check=False).stdout
        fetched = lab.exec("worker2", sys.executable, str(FETCH), f"http://{lab.host('worker1').ip}:8080/", "5")
        data = json.loads(fetched.stdout or '{"answers": {}, "fails": 5}')
        return (f"{data['fails']}/5 requests failed; tasks: {' | '.join(state.split(chr(10))[:2]).strip()}"
                f"{'; create: ' + cp.stderr.strip()[:120] if cp.returncode else ''}")
    finally:
        down(out=quiet)


def main() -> int:
    global ROUNDS, DURATION, PAUSE, BULK_MB
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=ROUNDS)
    p.add_argument("--duration", type=int, default=DURATION, help="seconds of each wrk run")
    p.add_argument("--pause", type=float, default=PAUSE, help="seconds between runs (TIME_WAIT: 60)")
    p.add_argument("--bulk-mb", type=int, default=BULK_MB)
    p.add_argument("--no-docker", action="store_true", help="skip Docker's own routing mesh")
    args = p.parse_args()
    ROUNDS, DURATION, PAUSE, BULK_MB = args.rounds, args.duration, args.pause, args.bulk_mb
    if lab_in_use():
        return 1
    if not shutil.which("wrk"):
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True, capture_output=True)
    s = shoal_side()
    docker = "not run (--no-docker)" if args.no_docker else docker_side()
    print(f"{ROUNDS} interleaved rounds of {DURATION} s each, req/s: " +
          "; ".join(f"{name} {runs}" for name, runs in s["runs"].items()) + " (medians below)")
    direct = s["direct"]["rps"]
    print(f"direct to the 2 tasks' IPs (from a container on worker2): {direct:.0f} req/s, avg latency "
          f"{s['direct']['avg_ms']:.2f} ms, p99 {s['direct']['p99_ms']:.2f} ms")
    labels = {"vip": "service VIP (same container)", "direct_enc": "encrypted network, direct to the 2 tasks",
              "vip_enc": "encrypted network, service VIP", "mesh": "routing mesh (worker2 → worker1:8080)"}
    for name, label in labels.items():
        r = s[name]
        print(f"{label}: {r['rps']:.0f} req/s ({r['rps'] / direct:.2f} of direct), avg latency {r['avg_ms']:.2f} ms, "
              f"p99 {r['p99_ms']:.2f} ms {r['errors']}")
    b = {k: sorted(v)[len(v) // 2] for k, v in s["bulk"].items()}
    print(f"bulk TCP, {BULK_MB} MB from the client container on worker2 to worker1 (MB/s, {ROUNDS} rounds): "
          + "; ".join(f"{k} {[round(x) for x in v]}" for k, v in s["bulk"].items())
          + f" — median encrypted/clear {b['encrypted'] / b['clear']:.2f}")
    sc = s["scale"]
    print(f"scale 2→3: new task running after {sc['to_running']:.2f} s, first request through the mesh to it after "
          f"{sc['to_served']:.2f} s")
    print(f"Docker swarm mode routing mesh on this kernel: {docker}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
