"""The seed's three-host walk-through (manager, worker1, worker2) in `shoal lab`: spread, availability,
labels and constraints, node loss, joining security and mounts — each host a separate network
namespace with its own Docker Engine and shoald."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from labtools import module_lab, wait_for

from shoal.lab.lab import Lab
from shoal.tls.certs import identity_of
from shoal.tls.files import NodeTLS

pytestmark = pytest.mark.lab

HOSTS = ("manager", "worker1", "worker2")
WEB = "shoal/demo-web:latest"




@pytest.fixture(scope="module")
def lab(docker_engine) -> Iterator[Lab]:
    with module_lab(workers=2, swarm=True) as the_lab:
        yield the_lab


def mgr(lab: Lab, *args: str, check: bool = True):
    return lab.docker("manager", *args, check=check)


def node_ids(lab: Lab) -> dict[str, str]:
    out = mgr(lab, "node", "ls", "--format", "{{.Hostname}} {{.ID}}").stdout.split("\n")
    return dict(line.split() for line in out if line.strip())


def placement(lab: Lab, service: str) -> Counter:
    """Running containers of ``service`` per host, as each host's own engine reports them."""
    counts: Counter = Counter()
    for h in HOSTS:
        try:
            out = lab.engine_docker(h, "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={service}",
                                    check=True).stdout
        except Exception:
            continue  # a killed host's engine does not answer
        counts[h] = len(out.split())
    return counts


def running_tasks(lab: Lab, service: str) -> list[dict]:
    out = mgr(lab, "service", "ps", service, "--filter", "desired-state=running", "--format", "{{json .}}").stdout
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    return [r for r in rows if r["CurrentState"].startswith("Running")]


def test_node_ls_like_the_seed(lab: Lab) -> None:
    out = mgr(lab, "node", "ls").stdout.splitlines()
    assert out[0].split() == ["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER", "STATUS", "ENGINE",
                              "VERSION"]
    rows = {line.split()[1 if "*" not in line else 2]: line for line in out[1:]}
    assert set(rows) == set(HOSTS)
    assert "*" in rows["manager"] and "Leader" in rows["manager"]
    for h in HOSTS:
        assert "Ready" in rows[h] and "Active" in rows[h]


def node_tls(lab: Lab, host: str) -> NodeTLS:
    return NodeTLS(lab.host(host).dir / "shoal" / "certificates")  # under the host's shoald --data-dir


def test_node_certificates_and_description(lab: Lab) -> None:
    ids = node_ids(lab)
    cluster_id = mgr(lab, "info", "--format", "{{.Swarm.Cluster.ID}}").stdout.strip()
    root = node_tls(lab, "manager").ca.read_bytes()
    for h, role in (("manager", "manager"), ("worker1", "worker"), ("worker2", "worker")):
        tls = node_tls(lab, h)
        pem = tls.cert.read_bytes()
        cert = x509.load_pem_x509_certificate(pem)
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == ids[h]
        assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == f"swarm-{role}"
        assert identity_of(pem) == (ids[h], role, cluster_id)
        assert tls.ca.read_bytes() == root  # every node trusts the one cluster CA, which signed its certificate
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(root))
    # what `docker node inspect` shows is what each host's engine reports
    for node in json.loads(mgr(lab, "node", "inspect", *HOSTS).stdout):
        desc = node["Description"]
        info = json.loads(lab.engine_docker(desc["Hostname"], "info", "--format", "{{json .}}").stdout)
        assert desc["Platform"] == {"OS": info["OSType"], "Architecture": info["Architecture"]} == \
            {"OS": "linux", "Architecture": os.uname().machine}
        assert desc["Resources"]["MemoryBytes"] == info["MemTotal"] > 0
        assert desc["Resources"]["NanoCPUs"] == info["NCPU"] * 10**9 == os.cpu_count() * 10**9
        assert desc["Engine"]["EngineVersion"] == info["ServerVersion"]
        assert "Labels" not in desc["Engine"]  # none yet: omitted, as Docker does
    pretty = mgr(lab, "node", "inspect", "--pretty", "worker1").stdout
    assert re.search(r"Operating System:\s+linux\n", pretty) and re.search(rf"Architecture:\s+{os.uname().machine}\n",
                                                                          pretty)
    assert re.search(rf"CPUs:\s+{os.cpu_count()}\n", pretty) and re.search(r"Memory:\s+[\d.]+\s?GiB\n", pretty)


def test_spread_over_three_hosts(lab: Lab) -> None:
    mgr(lab, "service", "create", "--name", "test-app", "--replicas=4", WEB)
    counts = wait_for(lambda: (c := placement(lab, "test-app")) and sum(c.values()) == 4 and c, 20,
                      "4 containers")
    assert max(counts.values()) <= 2 and len([h for h in HOSTS if counts[h]]) == 3
    # each host's `docker ps` shows its share, and the page names the container
    for h in HOSTS:
        ids = lab.engine_docker(h, "ps", "-q", "--filter", "label=com.docker.swarm.service.name=test-app").stdout
        for cid in ids.split():
            page = lab.engine_docker(h, "exec", cid, "wget", "-qO-", "http://127.0.0.1/").stdout
            assert f"Hello from {cid[:12]}" in page


def test_drain_active_pause(lab: Lab) -> None:
    before = placement(lab, "test-app")
    assert before["worker1"] >= 1
    mgr(lab, "node", "update", "--availability", "drain", "worker1")
    wait_for(lambda: placement(lab, "test-app")["worker1"] == 0 and len(running_tasks(lab, "test-app")) == 4,
             20, "worker1's tasks to move")
    after_drain = placement(lab, "test-app")
    assert sum(after_drain.values()) == 4
    mgr(lab, "node", "update", "--availability", "active", "worker1")
    time.sleep(3)
    assert placement(lab, "test-app") == after_drain  # Swarm does not rebalance
    mgr(lab, "node", "update", "--availability", "pause", "worker2")
    paused_had = placement(lab, "test-app")["worker2"]
    mgr(lab, "service", "scale", "test-app=7")
    wait_for(lambda: len(running_tasks(lab, "test-app")) == 7, 20, "7 running")
    assert placement(lab, "test-app")["worker2"] == paused_had  # running tasks stay, no new ones
    mgr(lab, "node", "update", "--availability", "active", "worker2")
    mgr(lab, "service", "rm", "test-app")


def test_drain_the_manager(lab: Lab) -> None:
    mgr(lab, "service", "create", "--name", "onmgr", "--replicas=3", WEB)
    assert placement(lab, "onmgr")["manager"] >= 1
    mgr(lab, "node", "update", "--availability", "drain", "manager")
    try:
        wait_for(lambda: placement(lab, "onmgr")["manager"] == 0 and len(running_tasks(lab, "onmgr")) == 3,
                 20, "the manager's tasks to move to the workers")
        assert sum(placement(lab, "onmgr").values()) == 3
        # a drained manager still manages
        rows = mgr(lab, "node", "ls", "--format", "{{.Hostname}} {{.Availability}} {{.ManagerStatus}}").stdout
        assert "manager Drain Leader" in rows.splitlines()
    finally:
        mgr(lab, "node", "update", "--availability", "active", "manager")
    assert "manager Active Leader" in mgr(lab, "node", "ls", "--format",
                                          "{{.Hostname}} {{.Availability}} {{.ManagerStatus}}").stdout
    mgr(lab, "service", "scale", "onmgr=6")
    assert placement(lab, "onmgr")["manager"] >= 1  # it takes new tasks again
    mgr(lab, "service", "rm", "onmgr")


@pytest.mark.field("TaskSpec.Placement.Constraints", how="honoured")
def test_labels_and_constraints(lab: Lab) -> None:
    ids = node_ids(lab)
    mgr(lab, "node", "update", "--label-add", "storage=hdd", "worker1")
    mgr(lab, "node", "update", "--label-add", "storage=ssd", "worker2")
    mgr(lab, "service", "create", "--name", "hdd", "--constraint", "node.labels.storage == hdd", "--replicas=5", WEB)
    assert placement(lab, "hdd") == Counter({"worker1": 5, "manager": 0, "worker2": 0})
    mgr(lab, "service", "create", "--name", "onw2", "--constraint", f"node.id == {ids['worker2']}",
        "--replicas=3", WEB)
    assert placement(lab, "onw2")["worker2"] == 3 and sum(placement(lab, "onw2").values()) == 3
    # no node qualifies: created, tasks pending with the reason; placed once a node gets the label
    cp = mgr(lab, "service", "create", "-d", "--name", "nvme", "--constraint", "node.labels.storage == nvme",
             "--replicas=2", WEB)
    assert cp.returncode == 0
    err = wait_for(lambda: mgr(lab, "service", "ps", "nvme", "--no-trunc", "--format", "{{.Error}}").stdout.strip(),
                   10, "the pending reason")
    assert "no suitable node (scheduling constraints not satisfied on 3 nodes)" in err
    assert all(r["CurrentState"].startswith("Pending") for r in
               (json.loads(x) for x in mgr(lab, "service", "ps", "nvme", "--format", "{{json .}}").stdout.split("\n")
                if x.strip()))
    mgr(lab, "node", "update", "--label-add", "storage=nvme", "manager")
    wait_for(lambda: placement(lab, "nvme")["manager"] == 2, 20, "nvme tasks on the manager")
    for s in ("hdd", "onw2", "nvme"):
        mgr(lab, "service", "rm", s)


@pytest.mark.field("TaskSpec.Placement.Preferences.Spread.SpreadDescriptor", how="honoured")
def test_placement_preference_spreads_over_label_values(lab: Lab) -> None:
    for host, value in (("manager", "hdd"), ("worker1", "hdd"), ("worker2", "ssd")):
        mgr(lab, "node", "update", "--label-add", f"storage={value}", host)
    mgr(lab, "service", "create", "--name", "pref", "--replicas=6", "--placement-pref", "spread=node.labels.storage",
        WEB)
    counts = placement(lab, "pref")
    # half per label value (not a third per node): worker2 alone holds "ssd"
    assert counts["worker2"] == 3 and counts["manager"] + counts["worker1"] == 3
    assert counts["manager"] >= 1 and counts["worker1"] >= 1
    pref = json.loads(mgr(lab, "service", "inspect", "--format", "{{json .Spec.TaskTemplate.Placement}}",
                          "pref").stdout)
    assert pref["Preferences"] == [{"Spread": {"SpreadDescriptor": "node.labels.storage"}}]
    mgr(lab, "service", "rm", "pref")
    mgr(lab, "node", "update", "--label-rm", "storage", "manager")


PROBE = """import socket, sys
s = socket.create_connection((sys.argv[1], 2377), timeout=5)
print("connected", s.getpeername()[0])
s.sendall(b"GET /nodes HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
try:
    answer = s.recv(100)
    print(f"answer {answer[:16].hex()}" if answer else "closed")
except ConnectionResetError:
    print("reset")
except TimeoutError:
    print("timeout")
"""


def service_names(lab: Lab) -> list[str]:
    return mgr(lab, "service", "ls", "--format", "{{.Name}}").stdout.split()


def test_worker_cannot_manage_and_bad_tokens(lab: Lab) -> None:
    services = service_names(lab)
    cp = lab.docker("worker1", "service", "create", "--name", "x", WEB, check=False)
    assert cp.returncode != 0 and "Worker nodes can't be used to view or modify cluster state" in cp.stderr
    cp = lab.docker("worker1", "node", "ls", check=False)
    assert cp.returncode != 0 and "not a swarm manager" in cp.stderr
    assert service_names(lab) == services  # nothing was created
    token = mgr(lab, "swarm", "join-token", "-q", "worker").stdout.strip()
    assert token.startswith("SWMTKN-1-")

    # a plain client on the cluster port: the TCP connection is made, then the TLS server refuses the
    # bytes: it hangs up (or sends a TLS alert, record type 0x15), never an HTTP answer
    addr = lab.host("manager").ip
    cp = lab.exec("worker2", sys.executable, "-c", PROBE, addr)
    assert cp.returncode == 0, cp.stderr
    connected, outcome = cp.stdout.splitlines()
    print(f"plain client on 2377: {connected}, then {outcome}", file=sys.stderr)
    assert connected == f"connected {addr}"
    assert outcome in ("closed", "reset") or outcome.startswith("answer 15"), outcome

    # bad, rotated and wrong-CA tokens from a real lab host: worker2 leaves, tries them, then rejoins
    old_id = node_ids(lab)["worker2"]
    w2 = lab.host("worker2")
    remote = f"{addr}:2377"
    lab.docker("worker2", "swarm", "leave")
    wait_for(lambda: "worker2 Down" in mgr(lab, "node", "ls", "--format", "{{.Hostname}} {{.Status}}").stdout,
             15, "worker2 to be down after leaving")
    mgr(lab, "node", "rm", "worker2")
    nodes = sorted(mgr(lab, "node", "ls", "-q").stdout.split())
    prefix, one, digest, secret = token.split("-")
    rotated = ""
    try:
        def refused(bad: str, message: str) -> None:
            cp = lab.docker("worker2", "swarm", "join", "--token", bad, "--advertise-addr", w2.ip, remote, check=False)
            assert cp.returncode != 0 and message in cp.stderr, cp.stderr
            assert sorted(mgr(lab, "node", "ls", "-q").stdout.split()) == nodes  # nothing changed
            assert lab.docker("worker2", "info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip() == \
                "inactive"

        refused(f"{prefix}-{one}-{digest}-{'0' * 25}", "A valid join token is necessary to join this cluster")
        refused(f"{prefix}-{one}-{'1' * 50}-{secret}", "remote CA does not match fingerprint")
        rotated = mgr(lab, "swarm", "join-token", "--rotate", "-q", "worker").stdout.strip()
        assert rotated != token and rotated.startswith(f"{prefix}-{one}-{digest}-")  # same CA, new secret
        refused(token, "A valid join token is necessary to join this cluster")
    finally:
        cp = lab.docker("worker2", "swarm", "join", "--token", rotated or token, "--advertise-addr", w2.ip, remote)
        assert "This node joined a swarm as a worker." in cp.stdout
    ids = wait_for(lambda: (i := node_ids(lab)) and len(i) == 3 and i, 15, "three nodes again")
    assert ids["worker2"] != old_id
    wait_for(lambda: "worker2 Ready" in mgr(lab, "node", "ls", "--format", "{{.Hostname}} {{.Status}}").stdout,
             15, "worker2 ready")


def test_loaded_node_is_never_declared_down(lab: Lab) -> None:
    """worker1's CPUs saturated for 15 s (the lab's hosts share this machine's CPUs, so every daemon feels it)
    plus a burst of container starts on it: no host is ever seen down, no task moves."""
    mgr(lab, "service", "create", "--name", "steady", "--replicas=6", WEB)

    def steady_tasks() -> list[str]:
        return sorted(mgr(lab, "service", "ps", "steady", "--no-trunc", "--format",
                          "{{.ID}} {{.Node}} {{.DesiredState}}").stdout.splitlines())

    before = steady_tasks()
    assert len(before) == 6 and all(line.endswith(" Running") for line in before)
    spin = "for i in 1 2 3 4; do timeout 40 sh -c 'while :; do :; done' </dev/null >/dev/null 2>&1 & echo $!; done"
    pids = [int(p) for p in lab.exec("worker1", "sh", "-c", spin, check=True).stdout.split()]
    assert len(pids) == 4
    seen: list[str] = []
    polls = 0
    try:
        t0 = time.monotonic()
        burst = False
        while (elapsed := time.monotonic() - t0) < 15:
            if not burst and elapsed > 2:
                mgr(lab, "service", "create", "-d", "--name", "burst", "--replicas=6",
                    "--constraint", "node.hostname == worker1", WEB)
                burst = True
            rows = mgr(lab, "node", "ls", "--format", "{{.Hostname}} {{.Status}}").stdout.splitlines()
            polls += 1
            seen += [f"{elapsed:.1f}s {r}" for r in rows if not r.endswith(" Ready")]
            time.sleep(0.5)
        assert all(os.path.exists(f"/proc/{p}") for p in pids)  # the load lasted the whole time
    finally:
        for p in pids:  # timeout passes SIGTERM on to its busy loop
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGTERM)
    print(f"loaded worker1: {polls} polls of docker node ls in 15 s, never Down", file=sys.stderr)
    assert polls >= 10
    assert seen == []
    assert steady_tasks() == before  # same tasks on the same nodes: nothing rescheduled
    wait_for(lambda: placement(lab, "burst")["worker1"] == 6, 60, "the burst's 6 containers on worker1")
    rows = mgr(lab, "service", "ps", "burst", "--format", "{{.Node}} {{.CurrentState}}").stdout.splitlines()
    assert len(rows) == 6 and all(r.startswith("worker1 Running") for r in rows)
    mgr(lab, "service", "rm", "steady", "burst")


def test_node_loss_and_return(lab: Lab) -> None:
    mgr(lab, "service", "create", "--name", "resilient", "--replicas=6", WEB)
    wait_for(lambda: placement(lab, "resilient")["worker2"] >= 1, 10, "tasks on worker2")
    t0 = time.monotonic()
    lab.kill("worker2")
    wait_for(lambda: len(running_tasks(lab, "resilient")) == 6 and all(
        r["Node"] != "worker2" for r in running_tasks(lab, "resilient")), 30, "6 running off worker2", 0.1)
    took = time.monotonic() - t0
    print(f"node loss: all 6 replicas running elsewhere {took:.1f}s after the kill", file=sys.stderr)
    status = mgr(lab, "node", "ls", "--format", "{{.Hostname}} {{.Status}}").stdout
    assert "worker2 Down" in status
    # the machine comes back with an engine label in its daemon.json (checked in test_engine_labels)
    (lab.host("worker2").dir / "daemon.json").write_text(json.dumps({"labels": ["disk=ssd"]}))
    lab.start("worker2")
    wait_for(lambda: "worker2 Ready" in mgr(lab, "node", "ls", "--format", "{{.Hostname}} {{.Status}}").stdout,
             30, "worker2 back")
    time.sleep(3)
    assert sum(placement(lab, "resilient").values()) == 6
    # a partition: the cut-off host's tasks are replaced; after heal its stale copies stop
    lab.partition("worker1")
    wait_for(lambda: len(running_tasks(lab, "resilient")) == 6 and all(
        r["Node"] != "worker1" for r in running_tasks(lab, "resilient")), 30, "6 running off worker1")
    lab.heal("worker1")
    wait_for(lambda: sum(placement(lab, "resilient").values()) == 6, 30, "exactly 6 containers after heal")
    time.sleep(2)
    assert sum(placement(lab, "resilient").values()) == 6
    mgr(lab, "service", "rm", "resilient")


def test_engine_labels(lab: Lab) -> None:
    """worker2's engine came back with the label disk=ssd: `docker node inspect` shows it and
    `engine.labels.*` constraints use it."""
    assert lab.engine_docker("worker2", "info", "--format", "{{json .Labels}}").stdout.strip() == '["disk=ssd"]'
    nodes = {n["Description"]["Hostname"]: n for n in json.loads(mgr(lab, "node", "inspect", *HOSTS).stdout)}
    assert nodes["worker2"]["Description"]["Engine"]["Labels"] == {"disk": "ssd"}
    assert "Labels" not in nodes["worker1"]["Description"]["Engine"]
    assert "disk=ssd" in mgr(lab, "node", "inspect", "--pretty", "worker2").stdout
    mgr(lab, "service", "create", "--name", "ssdonly", "--replicas=3", "--constraint", "engine.labels.disk == ssd",
        WEB)
    assert placement(lab, "ssdonly") == Counter({"worker2": 3, "manager": 0, "worker1": 0})
    mgr(lab, "service", "rm", "ssdonly")


def test_engine_labels_follow_a_dockerd_reload(lab: Lab) -> None:
    """worker1's daemon.json gets an engine label and its dockerd reloads it (SIGHUP), shoald left alone:
    within the describe period (20 s, as swarmkit's agent) `docker node inspect` shows the label, without
    a reconnect, and a service waiting for `engine.labels.disk == nvme` gets its tasks there."""
    w1 = lab.host("worker1")
    mgr(lab, "service", "create", "-d", "--name", "nvmeonly", "--replicas=2", "--constraint",
        "engine.labels.disk == nvme", WEB)
    (w1.dir / "daemon.json").write_text(json.dumps({"labels": ["disk=nvme"]}))
    lab.exec(w1, "sh", "-c", "kill -HUP $(cat /run/docker.pid)", check=True)
    wait_for(lambda: lab.engine_docker(w1, "info", "--format", "{{json .Labels}}").stdout.strip() == '["disk=nvme"]',
             10, "worker1's dockerd to reload its labels")
    t0 = time.monotonic()

    def labels() -> dict:
        return json.loads(mgr(lab, "node", "inspect", "--format", "{{json .Description.Engine.Labels}}",
                              "worker1").stdout)

    wait_for(lambda: labels() == {"disk": "nvme"}, 25, "the engine label in docker node inspect", 0.5)
    print(f"engine label in docker node inspect {time.monotonic() - t0:.1f}s after the reload", file=sys.stderr)
    assert "disk=nvme" in mgr(lab, "node", "inspect", "--pretty", "worker1").stdout
    wait_for(lambda: placement(lab, "nvmeonly") == Counter({"worker1": 2, "manager": 0, "worker2": 0}), 20,
             "nvmeonly's tasks on worker1")
    assert os.path.exists(f"/proc/{w1.shoald}")  # the same shoald all along
    assert "worker1 Ready" in mgr(lab, "node", "ls", "--format", "{{.Hostname}} {{.Status}}").stdout
    mgr(lab, "service", "rm", "nvmeonly")


def test_bind_mount_missing_on_one_node(lab: Lab) -> None:
    # /run is private per host: the source exists on manager and worker1 only
    for h in ("manager", "worker1"):
        lab.exec(h, "mkdir", "-p", "/run/seed-logs", check=True)
    cp = mgr(lab, "service", "create", "--name", "binder", "--replicas=6",
             "--mount", "type=bind,source=/run/seed-logs,target=/var/log/web", WEB, check=False)
    out = cp.stdout + cp.stderr
    assert 'invalid mount config for type "bind": bind source path does not exist' in out

    def converged():
        rows = [json.loads(x) for x in mgr(lab, "service", "ps", "binder", "--no-trunc", "--format", "{{json .}}")
                .stdout.splitlines() if x.strip()]
        running = [r for r in rows if r["DesiredState"] == "Running" and r["CurrentState"].startswith("Running")]
        rejected = [r for r in rows if r["CurrentState"].startswith("Rejected")]
        return (len(running) == 6 and rejected) and (running, rejected)

    running, rejected = wait_for(converged, 60, "6 running on the nodes that have the path")
    assert {r["Node"] for r in running} <= {"manager", "worker1"}
    assert all(r["Node"] == "worker2" for r in rejected)
    assert all("bind source path does not exist: /run/seed-logs" in r["Error"] for r in rejected)
    mgr(lab, "service", "rm", "binder")


@pytest.mark.field("Mount.ReadOnly", "Mount.VolumeOptions.NoCopy", "Mount.VolumeOptions.DriverConfig.Name",
                   "Mount.VolumeOptions.DriverConfig.Options", "Mount.TmpfsOptions.SizeBytes", how="honoured")
def test_volumes(lab: Lab) -> None:
    for h in HOSTS:
        lab.exec(h, "sh", "-c", "mkdir -p /run/ro-src && echo hello >/run/ro-src/f", check=True)
    mgr(lab, "service", "create", "--name", "vols", "--replicas=3",
        "--mount", "type=volume,source=web-logs,target=/var/log/web",
        "--mount", "type=volume,target=/anon,volume-nocopy",
        "--mount", "type=volume,source=ro-vol,target=/ro-vol,readonly",
        "--mount", "type=bind,source=/run/ro-src,target=/ro-bind,readonly",
        "--mount", "type=volume,source=tmpvol,target=/tmpvol,volume-driver=local,"
                   "volume-opt=type=tmpfs,volume-opt=device=tmpfs",
        "--mount", "type=tmpfs,target=/scratch,tmpfs-size=16m", WEB)
    counts = placement(lab, "vols")
    assert counts == Counter({h: 1 for h in HOSTS})
    for h in HOSTS:
        def engine(*args: str, check: bool = True, h: str = h):
            return lab.engine_docker(h, *args, check=check)

        cid = engine("ps", "-q", "--filter", "label=com.docker.swarm.service.name=vols").stdout.strip()
        inspect = json.loads(engine("inspect", cid).stdout)[0]
        asked = {m["Target"]: m for m in inspect["HostConfig"]["Mounts"]}
        made = {m["Destination"]: m for m in inspect["Mounts"]}
        # read-only volume and bind: writes fail inside the container, reads work
        assert engine("exec", cid, "touch", "/var/log/web/ok").returncode == 0
        for target in ("/ro-vol", "/ro-bind"):
            cp = engine("exec", cid, "touch", f"{target}/x", check=False)
            assert cp.returncode != 0 and "Read-only file system" in cp.stderr, (h, target, cp.stderr)
            assert asked[target]["ReadOnly"] is True and made[target]["RW"] is False
        assert engine("exec", cid, "cat", "/ro-bind/f").stdout == "hello\n"
        # volume-nocopy, and the anonymous volume: an engine-named volume of its own on this host
        assert asked["/anon"]["VolumeOptions"]["NoCopy"] is True and not asked["/anon"].get("Source")
        anon = made["/anon"]
        assert anon["Type"] == "volume" and re.fullmatch(r"[0-9a-f]{64}", anon["Name"]), anon
        assert json.loads(engine("volume", "inspect", anon["Name"]).stdout)[0]["Name"] == anon["Name"]
        assert made["/var/log/web"]["Name"] == "web-logs" and made["/ro-vol"]["Name"] == "ro-vol"
        # a named volume made with the service's driver and options, on the node that runs the task
        vol = json.loads(engine("volume", "inspect", "tmpvol").stdout)[0]
        assert vol["Driver"] == "local" and vol["Options"] == {"type": "tmpfs", "device": "tmpfs"}
        mounts = engine("exec", cid, "cat", "/proc/mounts").stdout.splitlines()
        by_target = {line.split()[1]: line.split() for line in mounts}
        assert by_target["/tmpvol"][2] == "tmpfs"
        # tmpfs with a size
        assert by_target["/scratch"][2] == "tmpfs" and "size=16384k" in by_target["/scratch"][3].split(","), \
            by_target["/scratch"]
    mgr(lab, "service", "rm", "vols")
