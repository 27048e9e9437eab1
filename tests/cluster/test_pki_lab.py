"""The swarm's PKI on three lab hosts (a manager, two workers) whose certificates live 30 s (the test lowers
Docker's 1 h minimum with SHOAL_TEST_MIN_CERT_EXPIRY; users keep the 1 h floor): every node renews before
its certificate expires with no task moved and no session cut; a root rotation reaches every node; and a
hostile worker holding its own certificate and key (tests/cluster/hostile.py, run in its namespaces)
tries what it must not — each refused, nothing changed — until it is removed and refused everything."""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from labtools import module_lab, wait_for

from shoal.lab.hosts import SRC_DIR
from shoal.lab.lab import Lab
from shoal.manager.ca import TEST_MIN_EXPIRY_ENV
from shoal.tls.certs import chains_to, load_pems, validity
from shoal.tls.files import NodeTLS

pytestmark = pytest.mark.lab

HOSTS = ("manager", "worker1", "worker2")
WEB = "shoal/demo-web:latest"
HOSTILE = Path(__file__).with_name("hostile.py")


@pytest.fixture(scope="module")
def lab(docker_engine) -> Iterator[Lab]:
    os.environ[TEST_MIN_EXPIRY_ENV] = "10"  # the lab's shoalds inherit it
    try:
        with module_lab(workers=2, swarm=False) as the_lab:
            first = the_lab.host("manager")
            the_lab.docker("manager", "swarm", "init", "--advertise-addr", first.ip, "--cert-expiry", "30s")
            token = the_lab.docker("manager", "swarm", "join-token", "-q", "worker").stdout.strip()
            for w in ("worker1", "worker2"):
                the_lab.docker(w, "swarm", "join", "--token", token, "--advertise-addr", the_lab.host(w).ip,
                               f"{first.ip}:2377")
            wait_for(lambda: the_lab.docker("manager", "node", "ls", "--format", "{{.Status}}").stdout.split()
                     == ["Ready"] * 3, 30, "3 ready nodes")
            the_lab.docker("manager", "service", "create", "-d", "--name", "pki-web", "--replicas", "2",
                           "--constraint", "node.role==worker", WEB)
            wait_for(lambda: tasks(the_lab, "pki-web"), 30, "pki-web's two tasks running")
            yield the_lab
    finally:
        os.environ.pop(TEST_MIN_EXPIRY_ENV, None)


def certs(lab: Lab, host: str) -> NodeTLS:
    return NodeTLS(lab.host(host).dir / "shoal" / "certificates")


def serial(pem: bytes) -> int:
    return load_pems(pem)[0].serial_number


def tasks(lab: Lab, service: str) -> dict[str, tuple[str, str]]:
    """The service's running tasks: ID → (node, state); {} until all its replicas run."""
    out = lab.docker("manager", "service", "ps", service, "--filter", "desired-state=running", "--format",
                     "{{.ID}} {{.Node}} {{.CurrentState}}", "--no-trunc", check=False).stdout
    rows = {line.split()[0]: (line.split()[1], line.split()[2]) for line in out.splitlines() if line.strip()}
    return rows if rows and all(state == "Running" for _, state in rows.values()) else {}


def log_size(lab: Lab, host: str) -> int:
    return lab.host(host).shoald_log.stat().st_size


def log_since(lab: Lab, host: str, offset: int) -> str:
    with open(lab.host(host).shoald_log, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def renewal_plan(log: str, not_after: datetime.datetime) -> float:
    """The point (in % of its life) at which the node planned to renew its certificate ending at ``not_after``."""
    found = re.findall(rf"valid until {re.escape(not_after.isoformat())} renews at ([\d.]+) % of its life", log)
    assert found, f"no renewal planned for the certificate valid until {not_after.isoformat()}"
    return float(found[0])


def test_certificates_renew_before_they_expire_with_nothing_disturbed(lab: Lab) -> None:
    before = tasks(lab, "pki-web")
    first = {h: certs(lab, h).cert.read_bytes() for h in HOSTS}
    manager_id = lab.docker("manager", "node", "inspect", "--format", "{{.ID}}", "self").stdout.strip()
    etcd_cert = lab.host("manager").dir / "shoal" / "etcd-tls" / f"{manager_id}.crt"
    etcd_first = etcd_cert.read_bytes()
    logs = {h: log_size(lab, h) for h in HOSTS}
    for pem in first.values():
        nb, na = validity(pem)
        assert na - nb == datetime.timedelta(seconds=33)  # --cert-expiry 30s (backdated by a tenth)
    # each renews at a random point between 50 % and 80 % of its life: within ~27 s of its issue
    wait_for(lambda: all(serial(certs(lab, h).cert.read_bytes()) != serial(first[h]) for h in HOSTS), 40,
             "every node's certificate renewed")
    assert serial(etcd_cert.read_bytes()) != serial(etcd_first)  # the manager's etcd certificate followed
    for h in HOSTS:  # at the random point each node planned for its first certificate, and not before
        nb, na = validity(first[h])
        planned = renewal_plan(log_since(lab, h, 0), na)
        assert 50.0 <= planned <= 80.0, (h, planned)
        issued = validity(certs(lab, h).cert.read_bytes())[0] + (na - nb) / 11  # backdated by a tenth of 30 s
        assert issued >= nb + (na - nb) * planned / 100 - datetime.timedelta(seconds=1), (h, planned, issued)
    # past the expiry of every first certificate: everything still talks, nothing moved
    time.sleep(max(0.0, max(validity(p)[1] for p in first.values()).timestamp() - time.time() + 1))
    assert lab.docker("manager", "node", "ls", "--format", "{{.Status}}").stdout.split() == ["Ready"] * 3
    assert tasks(lab, "pki-web") == before
    lab.docker("manager", "service", "scale", "pki-web=3")
    wait_for(lambda: len(tasks(lab, "pki-web")) == 3, 30, "a third task, scheduled over renewed sessions")
    for h in ("worker1", "worker2"):
        text = log_since(lab, h, logs[h])
        assert "certificate was renewed" in text
        assert "session with" not in text, f"{h}'s session was cut:\n{text[-2000:]}"
    assert "heartbeat failure" not in json.dumps(
        json.loads(lab.docker("manager", "node", "inspect", *HOSTS).stdout))


def test_a_root_rotation_reaches_every_node(lab: Lab) -> None:
    before = tasks(lab, "pki-web")
    token = lab.docker("manager", "swarm", "join-token", "-q", "worker").stdout.strip()
    cp = lab.docker("manager", "swarm", "ca", "--rotate", timeout=90)
    swarm = json.loads(lab.docker("manager", "info", "--format", "{{json .Swarm.Cluster}}").stdout)
    root = swarm["TLSInfo"]["TrustRoot"]
    assert cp.stdout.rstrip().endswith(root.strip()) and swarm["RootRotationInProgress"] is False
    assert len(load_pems(root.encode())) == 1  # the old root dropped once every node moved
    for node in json.loads(lab.docker("manager", "node", "inspect", *HOSTS).stdout):
        assert node["Description"]["TLSInfo"] == swarm["TLSInfo"], node["Description"]["Hostname"]
    for h in HOSTS:
        tls = certs(lab, h)
        assert tls.ca.read_text() == root and chains_to(tls.cert.read_bytes(), root.encode())
    new_token = lab.docker("manager", "swarm", "join-token", "-q", "worker").stdout.strip()
    assert new_token.split("-")[2] != token.split("-")[2]
    assert tasks(lab, "pki-web") == before


def hostile(lab: Lab, host: str, *args: str, timeout: float = 60) -> dict:
    cp = lab.exec(host, "env", f"PYTHONPATH={SRC_DIR}", sys.executable, str(HOSTILE), *args, timeout=timeout)
    lines = [line for line in cp.stdout.splitlines() if line.startswith("{")]
    assert lines, f"hostile.py {args[0]} on {host} printed nothing: {cp.stderr[-2000:]}"
    return json.loads(lines[-1])


def state(lab: Lab) -> tuple:
    """What a hostile node must not change: services (and their versions), tasks, nodes."""
    services = json.loads(lab.docker("manager", "service", "inspect", *lab.docker(
        "manager", "service", "ls", "-q").stdout.split()).stdout)
    return ({s["ID"]: s["Version"]["Index"] for s in services}, tasks(lab, "pki-web"),
            lab.docker("manager", "node", "ls", "-q").stdout.split())


def managers(lab: Lab) -> tuple[list[str], list[str]]:
    """Each node's MANAGER STATUS (``docker node ls``) and the names of the etcd members (read from the
    manager's etcd peer port with its member certificate)."""
    statuses = lab.docker("manager", "node", "ls", "--format", "{{.Hostname}} {{.ManagerStatus}}").stdout.split("\n")
    manager_id = lab.docker("manager", "node", "inspect", "--format", "{{.ID}}", "self").stdout.strip()
    etcd_tls = lab.host("manager").dir / "shoal" / "etcd-tls"
    got = hostile(lab, "manager", "etcd-peer", str(etcd_tls / f"{manager_id}.crt"), str(etcd_tls / f"{manager_id}.key"),
                  f"{lab.host('manager').ip}:2380")
    assert got["answer"] == "answered" and got["status"] == 200, got
    return statuses, sorted(m["name"] for m in json.loads(got["body"]))


def test_a_hostile_worker_is_refused_and_changes_nothing(lab: Lab) -> None:
    manager = f"{lab.host('manager').ip}:2377"
    mine = str(certs(lab, "worker2").dir)
    before = state(lab)

    got = hostile(lab, "worker2", "api-write", mine, manager)  # an Engine-API write
    assert got["status"] == 403 and "only managers" in got["body"], got

    # posing as a manager to another node's agent: worker1's client checks for swarm-manager
    w2 = lab.host("worker2").ip
    server = subprocess.Popen(lab.host("worker2").enter("env", f"PYTHONPATH={SRC_DIR}", sys.executable, str(HOSTILE),
                                                       "pose-as-manager", mine, f"{w2}:2399", "20"),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and "listening" in server.stdout.readline()
        got = hostile(lab, "worker1", "session", str(certs(lab, "worker1").dir), f"{w2}:2399")
        assert got["answer"] == "certificate refused" and "swarm-manager" in got["message"], got
    finally:
        server.terminate()
        server.wait(10)

    # joining etcd as a peer: the manager's etcd accepts only the managers' etcd certificates
    etcd = f"{lab.host('manager').ip}:2380"
    got = hostile(lab, "worker2", "etcd-peer", str(certs(lab, "worker2").cert), str(certs(lab, "worker2").key), etcd)
    assert got["answer"] == "refused", got
    before_managers = managers(lab)  # the same call with a member's certificate is answered
    assert len(before_managers[1]) == 1

    got = hostile(lab, "worker2", "renew", mine, manager)  # its own certificate: a worker's, nothing more
    assert got == {"answer": "renewed", "role": "worker"}
    # asking for a promotion nobody made: a worker's certificate again, no keys, no etcd member
    got = hostile(lab, "worker2", "ask-manager-role", mine, manager, w2)
    assert got == {"answer": "role", "role": "worker", "cert_role": "worker", "keys": []}, got
    assert managers(lab) == before_managers and state(lab) == before


def test_a_worker_cannot_report_another_nodes_task(lab: Lab) -> None:
    """The dispatcher takes status reports only for the tasks of the session's node (issue 12, item 3)."""
    victim = next(tid for tid, (node, _) in tasks(lab, "pki-web").items() if node == "worker1")
    before = state(lab)
    got = hostile(lab, "worker2", "spoof-status", str(certs(lab, "worker2").dir), f"{lab.host('manager').ip}:2377",
                  victim)
    assert got["answer"] == "Refused" and f"task {victim} is not assigned" in got["message"], got
    status = json.loads(lab.docker("manager", "inspect", "--type", "task", "--format", "{{json .Status}}",
                                   victim).stdout)
    assert status["State"] == "running" and "hostile" not in json.dumps(status), status
    assert victim in tasks(lab, "pki-web") and state(lab) == before
    wait_for(lambda: lab.docker("manager", "node", "ls", "--format", "{{.Status}}").stdout.split() == ["Ready"] * 3,
             15, "worker2's own agent back in session")


def test_a_removed_node_is_refused_at_once(lab: Lab) -> None:
    manager = f"{lab.host('manager').ip}:2377"
    mine = str(certs(lab, "worker2").dir)
    log = log_size(lab, "worker2")
    lab.docker("manager", "node", "rm", "--force", "worker2")
    assert hostile(lab, "worker2", "renew", mine, manager)["status"] == 403
    assert hostile(lab, "worker2", "session", mine, manager)["answer"] == "rejected"
    got = hostile(lab, "worker2", "api-write", mine, manager)
    assert got["status"] == 403 and "removed" in got["body"]
    wait_for(lambda: "removed from the swarm" in log_since(lab, "worker2", log), 10,
             "worker2's own agent told it was removed")
