"""Swarm networking across three lab hosts: the seed's routing mesh, overlay networks with VIPs and DNS,
host-mode ports, isolation between networks — on a kernel without IPVS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from labtools import module_lab, wait_for

from shoal.lab.hosts import start_shoald, terminate
from shoal.lab.lab import DOCKER_CLI, Lab, shoald_flags

pytestmark = pytest.mark.lab

HOSTS = ("manager", "worker1", "worker2")
WEB = "shoal/demo-web:latest"
BOX = "shoal/demo-busybox:latest"
FETCH = Path(__file__).with_name("fetch.py")
FAIL_BOUND = 3  # failed requests per loop and phase (see test_scale_and_kill_keep_serving)


@pytest.fixture(scope="module")
def lab(docker_engine) -> Iterator[Lab]:
    with module_lab(workers=2, swarm=True) as the_lab:
        yield the_lab
    # `shoal lab down` after all this networking: no host namespace (with its links and rules) is left
    left = [n for n in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
            if n.startswith("shoal-")]
    assert not left, f"network namespaces left after lab down: {left}"


def mgr(lab: Lab, *args: str, check: bool = True):
    return lab.docker("manager", *args, check=check)


def fetch(lab: Lab, from_host: str, url: str, count: int) -> tuple[Counter, int]:
    """``count`` HTTP GETs from inside a lab host: answers by body, and the number of failures."""
    cp = lab.exec(from_host, sys.executable, str(FETCH), url, str(count), check=True)
    data = json.loads(cp.stdout)
    return Counter(data["answers"]), data["fails"]


def task_containers(lab: Lab, service: str) -> dict[str, str]:
    """Container ID (12) → host, for the service's running containers."""
    out = {}
    for h in HOSTS:
        cp = lab.engine_docker(h, "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={service}",
                               check=False)
        for cid in cp.stdout.split():
            out[cid[:12]] = h
    return out


def in_task(lab: Lab, service: str, *cmd: str, check: bool = True):
    cid, host = next(iter(task_containers(lab, service).items()))
    return lab.engine_docker(host, "exec", cid, *cmd, check=check)


def test_routing_mesh_like_the_seed(lab: Lab) -> None:
    mgr(lab, "service", "create", "--name", "test-app", "-p", "80:80", "--replicas=4", WEB)
    wait_for(lambda: len(task_containers(lab, "test-app")) == 4, 20, "4 containers")
    names = {f"Hello from {cid}" for cid in task_containers(lab, "test-app")}
    for h in HOSTS:
        answers, fails = fetch(lab, "worker1", f"http://{lab.host(h).ip}:80/", 40)
        assert fails == 0
        assert set(answers) == names, (h, answers)
        assert min(answers.values()) >= 8, (h, answers)  # round-robin: 10 each


def test_overlay_vip_and_dns(lab: Lab) -> None:
    mgr(lab, "network", "create", "--subnet", "172.24.0.0/24", "-d", "overlay", "test-overlay")
    row = [line for line in mgr(lab, "network", "ls").stdout.splitlines() if "test-overlay" in line]
    assert row and row[0].split()[2:] == ["overlay", "swarm"]
    mgr(lab, "service", "create", "--name", "api", "--network", "test-overlay", "--replicas=2",
        "--constraint", "node.hostname==worker2", WEB)
    mgr(lab, "service", "create", "--name", "client", "--network", "test-overlay",
        "--constraint", "node.hostname==worker1", BOX, "sleep", "3600")
    vips = mgr(lab, "service", "inspect", "api", "--format", "{{json .Endpoint.VirtualIPs}}").stdout
    vip = json.loads(vips)[0]["Addr"]
    assert vip.startswith("172.24.0.") and vip.endswith("/24")
    net_id = mgr(lab, "network", "inspect", "test-overlay", "--format", "{{.Id}}").stdout.strip()
    assert json.loads(vips)[0]["NetworkID"] == net_id
    # by name: the VIP; by tasks.<name>: every task; both reach the tasks on the other host
    out = in_task(lab, "client", "nslookup", "api").stdout
    assert vip.split("/")[0] in out
    tasks_out = in_task(lab, "client", "nslookup", "tasks.api").stdout
    api_ids = set(task_containers(lab, "api"))
    seen = Counter(in_task(lab, "client", "wget", "-qO-", "http://api/").stdout.strip() for _ in range(6))
    assert set(seen) == {f"Hello from {c}" for c in api_ids}
    task_ips = [line.split()[-1] for line in tasks_out.splitlines() if line.startswith("Address") and
                "#" not in line and "127.0.0.11" not in line]
    assert len(task_ips) == 2
    for ip in task_ips:
        assert in_task(lab, "client", "wget", "-qO-", f"http://{ip}/").stdout.startswith("Hello from")


class Loop:
    """A request loop running in the background; every line it prints, with the time it arrived."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        self.lines: list[tuple[float, str]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.strip()))

    def between(self, t0: float, t1: float) -> list[str]:
        return [line for t, line in list(self.lines) if t0 <= t < t1]

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.reader.join(timeout=10)


def mesh_loop(lab: Lab, from_host: str, url: str) -> Loop:
    """GETs from a lab host through the routing mesh, every 20 ms."""
    return Loop(lab.host(from_host).enter(sys.executable, str(FETCH), url, "loop", "0.02"))


VIP_LOOP = ("end=$(($(date +%s) + {secs})); while [ ! -e /tmp/stop-loop ] && [ $(date +%s) -lt $end ]; do "
            "echo \"$(timeout 2 wget -qO- {url} 2>/dev/null || echo FAIL)\"; sleep 0.02; done")


def vip_loop(lab: Lab, service: str, url: str, secs: int = 240) -> tuple[Loop, str, str]:
    """GETs from inside a task container of ``service`` (by service name: DNS, then the VIP)."""
    cid, host = next(iter(task_containers(lab, service).items()))
    lab.engine_docker(host, "exec", cid, "rm", "-f", "/tmp/stop-loop")
    argv = [DOCKER_CLI, "exec", cid, "sh", "-c", VIP_LOOP.format(secs=secs, url=url)]
    return Loop(argv, env={**os.environ, "DOCKER_HOST": lab.host(host).engine_host}), cid, host


def test_scale_and_kill_keep_serving(lab: Lab) -> None:
    """Requests through the mesh and through the VIP keep being answered while the service is scaled
    4→1→3 and a task is killed; after each phase the answers name exactly the running tasks.

    The issue accepts "a few failures in the second a task dies": each loop sends one request at a time
    with a 2 s timeout, so a second in which a connection is sent to a task that is gone (a killed task
    until its death reaches the store and the rules; a stopping one in a scale-down) costs each loop at
    most a request or two. FAIL_BOUND = 3 per loop and phase."""
    mgr(lab, "service", "create", "--name", "scaler", "-p", "8081:80", "--network", "test-overlay",
        "--replicas=4", WEB)
    wait_for(lambda: len(task_containers(lab, "scaler")) == 4, 30, "4 scaler containers")
    mesh = mesh_loop(lab, "worker2", f"http://{lab.host('manager').ip}:8081/")
    vip, client_cid, client_host = vip_loop(lab, "client", "http://scaler/")
    loops = {"mesh": mesh, "vip": vip}
    report: list[str] = []
    failures: dict[tuple[str, str], list[float]] = {}

    def serving(running: set[str]) -> bool:
        """Both loops' answers of the last 1.5 s name exactly the running tasks."""
        now = time.monotonic()
        want = {f"Hello from {c}" for c in running}
        return all(set(loop.between(now - 1.5, now)) == want for loop in loops.values())

    def phase(name: str, action, replicas: int, gone: str = "") -> None:
        t0 = time.monotonic()
        action()
        wait_for(lambda: len(task_containers(lab, "scaler")) == replicas and gone not in task_containers(lab, "scaler"),
                 30, f"{replicas} scaler containers ({name})")
        t_conv = time.monotonic()
        running = set(task_containers(lab, "scaler"))
        wait_for(lambda: serving(running), 8, f"answers from exactly the running tasks after {name}")
        t1 = time.monotonic()
        for lname, loop in loops.items():
            lines = loop.between(t0, t1)
            fails = [t - t0 for t, line in list(loop.lines) if t0 <= t < t1 and line.startswith("FAIL")]
            failures[(name, lname)] = fails
            report.append(f"{name}: {lname} {len(lines) - len(fails)} ok, {len(fails)} failed "
                          f"(at +{', +'.join(f'{f:.1f}' for f in fails) or '-'} s); "
                          f"containers after {t_conv - t0:.1f} s, answers = running tasks after {t1 - t0:.1f} s")

    try:
        running = set(task_containers(lab, "scaler"))
        deadline = time.monotonic() + 15
        while not serving(running):
            now = time.monotonic()
            assert now < deadline, ("not all 4 tasks answer before scaling", running,
                                    {n: Counter(loop.between(now - 1.5, now)) for n, loop in loops.items()})
            time.sleep(0.2)
        phase("scale 4→1", lambda: mgr(lab, "service", "scale", "-d", "scaler=1"), 1)
        phase("scale 1→3", lambda: mgr(lab, "service", "scale", "-d", "scaler=3"), 3)
        victim, host = next(iter(task_containers(lab, "scaler").items()))
        phase("docker kill", lambda: lab.engine_docker(host, "kill", victim), 3, gone=victim)
    finally:
        lab.engine_docker(client_host, "exec", client_cid, "touch", "/tmp/stop-loop", check=False)
        for loop in loops.values():
            loop.stop()
    print("\n".join(["requests during scale 4→1→3 and a task kill:", *report]), file=sys.stderr)
    for (name, lname), fails in failures.items():
        assert len(fails) <= FAIL_BOUND, (name, lname, report)


def mesh_ok(lab: Lab, host: str, port: int = 8081) -> Counter:
    """Answers of 6 GETs from worker2 to ``host``'s address on the mesh port, or an empty Counter on any failure."""
    answers, fails = fetch(lab, "worker2", f"http://{lab.host(host).ip}:{port}/", 6)
    return Counter() if fails else answers


def test_rules_are_repaired_and_rebuilt(lab: Lab) -> None:
    """A deleted nftables table comes back by the periodic resync; a restarted shoald rebuilds the rules and
    re-adopts the running containers (no task is replaced)."""
    names = {f"Hello from {c}" for c in task_containers(lab, "scaler")}
    assert set(mesh_ok(lab, "manager")) == names
    lab.exec("manager", "nft", "delete", "table", "ip", "shoal", check=True)
    t0 = time.monotonic()
    assert fetch(lab, "worker2", f"http://{lab.host('manager').ip}:8081/", 1)[1] == 1  # the mesh is gone ...
    wait_for(lambda: set(mesh_ok(lab, "manager")) == names, 10, "the mesh on manager after its table was deleted")
    repaired = time.monotonic() - t0

    before = {s: task_containers(lab, s) for s in ("scaler", "client", "api")}
    h = lab.host("worker1")
    assert not terminate(h.shoald, 15), "shoald ignored SIGTERM"
    h.shoald = 0
    lab.save(h)
    lab.exec("worker1", "nft", "delete", "table", "ip", "shoal", check=True)  # rules lost while it is down
    assert not mesh_ok(lab, "worker1")
    t0 = time.monotonic()
    start_shoald(h, shoald_flags(h))
    lab.save(h)
    wait_for(lambda: set(mesh_ok(lab, "worker1")) == names, 30, "the mesh on worker1 after shoald restarted")
    rebuilt = time.monotonic() - t0
    wait_for(lambda: in_task(lab, "client", "timeout", "2", "wget", "-qO-", "http://scaler/",
                             check=False).stdout.strip() in names, 15, "the VIP from the client on worker1")
    seen = Counter(in_task(lab, "client", "timeout", "2", "wget", "-qO-", "http://scaler/").stdout.strip()
                   for _ in range(6))
    assert set(seen) == names
    assert {s: task_containers(lab, s) for s in before} == before  # the same containers: re-adopted
    print(f"table deleted on manager: mesh back after {repaired:.1f} s; shoald restarted on worker1 with no rules: "
          f"mesh back {rebuilt:.1f} s after its start", file=sys.stderr)


@pytest.mark.field("NetworkAttachmentConfig.Aliases", "EndpointSpec.Mode", how="honoured")
def test_alias_and_dnsrr(lab: Lab) -> None:
    """``--network name=X,alias=Y`` and ``--endpoint-mode dnsrr``, resolved from another task on X."""
    mgr(lab, "service", "create", "--name", "rr", "--endpoint-mode", "dnsrr", "--replicas=2",
        "--network", "name=test-overlay,alias=rr-alias", "--constraint", "node.hostname==worker2", WEB)
    mgr(lab, "service", "create", "--name", "aliased", "--network", "name=test-overlay,alias=web-alias", WEB)
    assert mgr(lab, "service", "inspect", "rr", "--format", "{{json .Endpoint.VirtualIPs}}").stdout.strip() \
        in ("null", "[]")
    rr_ips = {lab.engine_docker(h, "inspect", cid, "--format",
                                '{{(index .NetworkSettings.Networks "test-overlay").IPAddress}}').stdout.strip()
              for cid, h in task_containers(lab, "rr").items()}
    assert len(rr_ips) == 2

    def resolved(name: str) -> set[str]:
        out = in_task(lab, "client", "nslookup", name, check=False).stdout
        return {line.split()[-1] for line in out.splitlines()
                if line.startswith("Address") and "#" not in line and "127.0.0.11" not in line}

    assert resolved("rr") == rr_ips  # dnsrr: the task addresses, no VIP
    assert resolved("rr-alias") == rr_ips
    vip = json.loads(mgr(lab, "service", "inspect", "aliased", "--format",
                         "{{json .Endpoint.VirtualIPs}}").stdout)[0]["Addr"].split("/")[0]
    assert resolved("web-alias") == {vip} == resolved("aliased")
    assert in_task(lab, "client", "wget", "-qO-", "http://web-alias/").stdout.startswith("Hello from")
    assert in_task(lab, "client", "wget", "-qO-", "http://rr-alias/").stdout.startswith("Hello from")
    # a stack service answers by its full name and by its short name (the CLI's alias on the stack's networks)
    compose = Path(tempfile.mkdtemp(prefix="shoal-stack-")) / "stack.yml"
    compose.write_text(STACK)
    mgr(lab, "stack", "deploy", "--resolve-image", "never", "-c", str(compose), "st")
    st_vip = json.loads(mgr(lab, "service", "inspect", "st_web", "--format",
                            "{{json .Endpoint.VirtualIPs}}").stdout)[0]["Addr"].split("/")[0]
    wait_for(lambda: resolved("st_web"), 15, "st_web to resolve on the client's node")
    assert resolved("st_web") == {st_vip} == resolved("web")
    wait_for(lambda: in_task(lab, "client", "timeout", "3", "wget", "-qO-", "http://web/", check=False)
             .stdout.startswith("Hello from"), 20, "the stack service by its short name")
    mgr(lab, "stack", "rm", "st")
    for s in ("rr", "aliased"):
        mgr(lab, "service", "rm", s)


STACK = """
version: "3.8"
services:
  web:
    image: shoal/demo-web:latest
networks:
  default:
    external: true
    name: test-overlay
"""

EGRESS_SERVER = """
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("lan server saw " + self.client_address[0]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.HTTPServer(("0.0.0.0", 9999), H).serve_forever()
"""


def test_egress_to_the_lan(lab: Lab) -> None:
    """A task reaches a server on another lab host's LAN address through its egress (docker_gwbridge,
    masqueraded to its own host's address)."""
    server = subprocess.Popen(lab.host("manager").enter(sys.executable, "-c", EGRESS_SERVER),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://{lab.host('manager').ip}:9999/"
        wait_for(lambda: fetch(lab, "worker2", url, 1)[1] == 0, 10, "the server on manager")
        assert task_containers(lab, "client").popitem()[1] == "worker1"
        out = in_task(lab, "client", "timeout", "5", "wget", "-qO-", url).stdout.strip()
        assert out == f"lan server saw {lab.host('worker1').ip}"
    finally:
        server.kill()
        server.wait(timeout=10)


@pytest.mark.field("EndpointPortConfig.PublishMode", how="honoured")
def test_host_mode_publish(lab: Lab) -> None:
    mgr(lab, "service", "create", "--name", "hostport", "--publish", "mode=host,target=80,published=8888",
        "--replicas=1", "--constraint", "node.hostname==worker2", WEB)
    answers, fails = fetch(lab, "manager", f"http://{lab.host('worker2').ip}:8888/", 3)
    assert fails == 0 and len(answers) == 1
    for h in ("manager", "worker1"):
        answers, fails = fetch(lab, "worker2", f"http://{lab.host(h).ip}:8888/", 2)
        assert fails == 2
    # a second host-mode task on the same port cannot share worker2: it waits with the reason
    mgr(lab, "service", "create", "-d", "--name", "hostport2", "--publish", "mode=host,target=80,published=8888",
        "--constraint", "node.hostname==worker2", WEB)
    err = wait_for(lambda: mgr(lab, "service", "ps", "hostport2", "--no-trunc", "--format", "{{.Error}}")
                   .stdout.strip(), 15, "the pending reason")
    assert "host-mode port already in use on 1 node" in err
    cp = mgr(lab, "service", "create", "--name", "clash", "-p", "80:80", WEB, check=False)
    assert cp.returncode != 0 and "port '80' is already in use by service 'test-app'" in cp.stderr
    for s in ("hostport", "hostport2"):
        mgr(lab, "service", "rm", s)


def test_isolation_and_removal(lab: Lab) -> None:
    mgr(lab, "network", "create", "-d", "overlay", "other-net")
    mgr(lab, "service", "create", "--name", "outsider", "--network", "other-net",
        "--constraint", "node.hostname==worker1", BOX, "sleep", "3600")
    api_ip = json.loads(mgr(lab, "service", "inspect", "api", "--format",
                            "{{json .Endpoint.VirtualIPs}}").stdout)[0]["Addr"].split("/")[0]
    cp = in_task(lab, "outsider", "nslookup", "api", check=False)
    assert api_ip not in cp.stdout
    cp = in_task(lab, "outsider", "sh", "-c", f"wget -qO- http://{api_ip}/ 2>&1; echo rc=$?", check=False)
    assert "Hello from" not in cp.stdout
    cp = mgr(lab, "network", "rm", "test-overlay", check=False)
    assert cp.returncode != 0 and "is in use by service" in cp.stderr
    # a removed service: its name stops resolving and its VIP stops answering
    assert in_task(lab, "client", "wget", "-qO-", "http://api/").stdout.startswith("Hello from")
    mgr(lab, "service", "rm", "api")
    wait_for(lambda: api_ip not in in_task(lab, "client", "nslookup", "api", check=False).stdout, 15,
             "the name to stop resolving")
    cp = in_task(lab, "client", "sh", "-c", f"wget -qO- http://{api_ip}/ 2>&1; echo rc=$?", check=False)
    assert "Hello from" not in cp.stdout


def test_leave_leaves_nothing_behind(lab: Lab) -> None:
    """After ``docker swarm leave`` on a worker that ran tasks on overlays: no shoal links (bridges, VXLAN
    devices, container veths), no nftables table, no DOCKER-USER rules, no engine twin networks, no DNS
    listener on the host."""
    for s in ("client", "outsider"):
        mgr(lab, "service", "rm", s, check=False)
    assert "shv" in lab.exec("worker1", "ip", "-o", "link", "show").stdout  # scaler tasks still there
    lab.docker("worker1", "swarm", "leave")

    def leftovers():
        links = lab.exec("worker1", "ip", "-o", "link", "show").stdout
        left = [w for w in ("sbr-", "svx-", "shv", "shc") if w in links]
        if "shoal" in lab.exec("worker1", "nft", "list", "tables").stdout:
            left.append("nft table")
        if "sbr-" in lab.exec("worker1", "iptables", "-S", "DOCKER-USER", check=False).stdout:
            left.append("DOCKER-USER rules")
        twins = lab.engine_docker("worker1", "network", "ls", "--filter", "driver=shoal", "-q").stdout.split()
        twins += lab.engine_docker("worker1", "network", "ls", "--filter", "label=shoal.network", "-q").stdout.split()
        if twins:
            left.append(f"engine networks {sorted(set(twins))}")
        dns = [line for line in lab.exec("worker1", "ss", "-Hlntu").stdout.splitlines()
               if line.split()[4].endswith(":53")]
        if dns:
            left.append(f"DNS listeners {dns}")
        return left

    deadline = time.monotonic() + 20
    while left := leftovers():
        assert time.monotonic() < deadline, f"left behind on worker1 after swarm leave: {left}"
        time.sleep(0.5)
