"""Joining over the cluster port (mutual TLS), heartbeats and node loss, with two shoalds sharing the
machine's engine (each agent only touches containers labelled with its own node ID)."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import tempfile
import time
from pathlib import Path

import pytest
from conftest import Shoald, free_port, running_containers, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def pair(docker_engine):
    """A manager and a worker (joined)."""
    with tempfile.TemporaryDirectory(prefix="shoal-m-") as m, tempfile.TemporaryDirectory(prefix="shoal-w-") as w:
        # the worker shares this host's network namespace with the manager: only one may own its overlay links
        mgr, wrk = Shoald(Path(m)), Shoald(Path(w), "--no-networking")
        mgr.cluster_port = free_port()
        mgr.start()
        wrk.start()
        try:
            addr = f"127.0.0.1:{mgr.cluster_port}"
            mgr.docker("swarm", "init", "--listen-addr", addr, "--advertise-addr", addr)
            token = mgr.docker("swarm", "join-token", "-q", "worker").stdout.strip()
            cp = wrk.docker("swarm", "join", "--token", token, addr)
            assert "This node joined a swarm as a worker." in cp.stdout
            yield mgr, wrk
        finally:
            wrk.stop()
            mgr.stop()


def _nodes(mgr) -> dict[str, dict]:
    return {n["ID"]: n for n in json.loads(mgr.docker("node", "inspect", *_node_ids(mgr)).stdout)}


def _node_ids(mgr) -> list[str]:
    return mgr.docker("node", "ls", "-q").stdout.split()


def test_join_and_node_ls(pair):
    mgr, wrk = pair
    rows = mgr.docker("node", "ls", "--format", "{{.Self}} {{.Status}} {{.ManagerStatus}}").stdout.splitlines()
    assert sorted(rows) == sorted(["true Ready Leader", "false Ready "])
    info = json.loads(wrk.docker("info", "--format", "{{json .Swarm}}").stdout)
    assert info["LocalNodeState"] == "active" and not info["ControlAvailable"]
    worker = _nodes(mgr)[info["NodeID"]]
    assert worker["Spec"]["Role"] == "worker" and worker["Description"]["Engine"]["EngineVersion"]
    # a worker answers manager endpoints with Docker's 503
    cp = wrk.docker("service", "create", "--name", "nope", "shoal/demo-web:latest", check=False)
    assert cp.returncode != 0 and "Worker nodes can't be used to view or modify cluster state" in cp.stderr
    assert wrk.request("GET", "/nodes")[0] == 503
    _, headers, _ = wrk.request("GET", "/_ping")
    assert headers["Swarm"] == "active/worker"


def test_bad_tokens_are_refused(pair, docker_engine):
    mgr, _ = pair
    addr = f"127.0.0.1:{mgr.cluster_port}"
    token = mgr.docker("swarm", "join-token", "-q", "worker").stdout.strip()
    with tempfile.TemporaryDirectory(prefix="shoal-x-") as x:
        other = Shoald(Path(x), "--no-networking")
        other.start()
        try:
            before = len(_node_ids(mgr))
            prefix, one, digest, secret = token.split("-")
            wrong_secret = f"{prefix}-{one}-{digest}-{'0' * 25}"
            cp = other.docker("swarm", "join", "--token", wrong_secret, addr, check=False)
            assert cp.returncode != 0 and "A valid join token is necessary to join this cluster" in cp.stderr
            wrong_ca = f"{prefix}-{one}-{'1' * 50}-{secret}"
            cp = other.docker("swarm", "join", "--token", wrong_ca, addr, check=False)
            assert cp.returncode != 0 and "remote CA does not match fingerprint" in cp.stderr
            cp = other.docker("swarm", "join", "--token", "garbage", addr, check=False)
            assert cp.returncode != 0 and "invalid join token" in cp.stderr
            # a rotated token no longer works
            mgr.docker("swarm", "join-token", "--rotate", "worker")
            cp = other.docker("swarm", "join", "--token", token, addr, check=False)
            assert cp.returncode != 0 and "valid join token" in cp.stderr
            assert len(_node_ids(mgr)) == before
            assert json.loads(other.docker("info", "--format", "{{json .Swarm}}").stdout)["LocalNodeState"] == \
                "inactive"
        finally:
            other.stop()


def test_cluster_port_requires_tls_and_a_client_certificate(pair):
    mgr, _ = pair
    # plain HTTP: the TLS server hangs up
    with socket.create_connection(("127.0.0.1", mgr.cluster_port), timeout=5) as s:
        s.sendall(b"GET /session HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            answer = s.recv(1024)
        except ConnectionResetError:
            answer = b""
        assert not answer.startswith(b"HTTP/")
    # TLS without a client certificate: the session endpoint refuses
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", mgr.cluster_port), timeout=5) as raw, \
            ctx.wrap_socket(raw) as s:
        s.sendall(b"GET /session HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        head = s.recv(4096)
        assert head.startswith(b"HTTP/1.1 401"), head


def test_tasks_spread_and_node_loss(pair, docker_engine):
    mgr, wrk = pair
    mgr.docker("service", "create", "--name", "pairweb", "--replicas", "4", "shoal/demo-web:latest")
    containers = running_containers(docker_engine, "pairweb")
    by_node: dict[str, int] = {}
    for c in containers:
        by_node[c.labels["com.docker.swarm.node.id"]] = by_node.get(c.labels["com.docker.swarm.node.id"], 0) + 1
    assert sorted(by_node.values()) == [2, 2]
    worker_id = json.loads(wrk.docker("info", "--format", "{{json .Swarm}}").stdout)["NodeID"]

    wrk.kill(signal.SIGKILL)  # its containers keep running, its heartbeats stop
    t0 = time.time()
    wait_for(lambda: _nodes(mgr)[worker_id]["Status"]["State"] == "down", 15, 0.1, "the worker to be down")
    down_after = time.time() - t0
    assert down_after < 10

    def replaced():
        rows = [json.loads(line) for line in mgr.docker(
            "service", "ps", "pairweb", "--filter", "desired-state=running", "--format", "{{json .}}"
        ).stdout.splitlines()]
        return len(rows) == 4 and all(r["CurrentState"].startswith("Running") for r in rows)

    wait_for(replaced, 15, 0.1, "4 running tasks on the manager")
    # the worker comes back: its stale containers are stopped, the service never settles above 4
    wrk.start()
    wait_for(lambda: _nodes(mgr)[worker_id]["Status"]["State"] == "ready", 15, what="the worker to be ready")
    wait_for(lambda: len(running_containers(docker_engine, "pairweb")) == 4, 15, what="exactly 4 containers")
    time.sleep(2)
    assert len(running_containers(docker_engine, "pairweb")) == 4


def test_drain_pause_and_labels(pair, docker_engine):
    mgr, wrk = pair
    worker_id = json.loads(wrk.docker("info", "--format", "{{json .Swarm}}").stdout)["NodeID"]
    mgr.docker("node", "update", "--availability", "drain", worker_id)
    mgr.docker("service", "create", "--name", "drained", "--replicas", "3", "shoal/demo-web:latest")
    assert all(c.labels["com.docker.swarm.node.id"] != worker_id
               for c in running_containers(docker_engine, "drained"))
    mgr.docker("node", "update", "--availability", "active", "--label-add", "disk=ssd", worker_id)
    assert _nodes(mgr)[worker_id]["Spec"]["Labels"] == {"disk": "ssd"}
    mgr.docker("service", "create", "--name", "ssdonly", "--replicas", "3", "--constraint",
               "node.labels.disk == ssd", "shoal/demo-web:latest")
    assert {c.labels["com.docker.swarm.node.id"] for c in running_containers(docker_engine, "ssdonly")} == \
        {worker_id}
    # draining moves them: the constraint can no longer be met, so they wait with the reason
    mgr.docker("node", "update", "--availability", "drain", worker_id)
    wait_for(lambda: running_containers(docker_engine, "ssdonly") == [], 20, what="tasks to leave the worker")
    err = mgr.docker("service", "ps", "ssdonly", "--filter", "desired-state=running", "--no-trunc",
                     "--format", "{{.Error}}").stdout
    assert "no suitable node" in err
    mgr.docker("node", "update", "--availability", "active", worker_id)
    wait_for(lambda: len(running_containers(docker_engine, "ssdonly")) == 3, 20, what="tasks back on the worker")


def test_removed_node_is_refused(pair):
    mgr, wrk = pair
    worker_id = json.loads(wrk.docker("info", "--format", "{{json .Swarm}}").stdout)["NodeID"]
    cp = mgr.docker("node", "rm", worker_id, check=False)
    assert cp.returncode != 0 and "is not down and can't be removed" in cp.stderr
    mgr.docker("node", "rm", "--force", worker_id)
    assert worker_id not in _node_ids(mgr)
    wrk.kill(signal.SIGKILL)
    wrk.start()  # it still has its certificate, but the manager refuses it
    time.sleep(3)
    assert worker_id not in _node_ids(mgr)
    assert "has been removed" in (wrk.root / "shoald.log").read_text()


@pytest.mark.field("TaskSpec.Placement.Constraints", "TaskSpec.Placement.MaxReplicas", how="honoured")
def test_constraint_enforcer_pause_binpack_and_max_per_node(pair, docker_engine):
    mgr, wrk = pair
    worker_id = json.loads(wrk.docker("info", "--format", "{{json .Swarm}}").stdout)["NodeID"]

    def nodes_of(service: str) -> list[str]:
        return [c.labels["com.docker.swarm.node.id"] for c in running_containers(docker_engine, service)]

    # a label removed under running tasks: they leave the node and wait with the reason
    mgr.docker("node", "update", "--label-add", "zone=a", worker_id)
    mgr.docker("service", "create", "--name", "zoned", "--replicas", "2", "--constraint", "node.labels.zone==a",
               "shoal/demo-web:latest")
    assert nodes_of("zoned") == [worker_id, worker_id]
    mgr.docker("node", "update", "--label-rm", "zone", worker_id)
    wait_for(lambda: nodes_of("zoned") == [], 15, what="tasks moved off the unlabelled node")
    err = mgr.docker("service", "ps", "zoned", "--filter", "desired-state=running", "--no-trunc",
                     "--format", "{{.Error}}").stdout
    assert "no suitable node (scheduling constraints not satisfied on 2 nodes)" in err

    # pause: running tasks stay, new ones go elsewhere
    mgr.docker("service", "create", "--name", "paused", "--replicas", "2", "shoal/demo-web:latest")
    manager_id = json.loads(mgr.docker("info", "--format", "{{json .Swarm}}").stdout)["NodeID"]
    assert sorted(nodes_of("paused")) == sorted([worker_id, manager_id])
    mgr.docker("node", "update", "--availability", "pause", worker_id)
    mgr.docker("service", "scale", "paused=4")
    placed = nodes_of("paused")
    assert len(placed) == 4 and placed.count(worker_id) == 1
    mgr.docker("node", "update", "--availability", "active", worker_id)

    # binpack, chosen per service: everything on one node while it fits
    mgr.docker("service", "create", "--name", "packed", "--replicas", "4", "--label", "shoal.strategy=binpack",
               "shoal/demo-web:latest")
    assert len(set(nodes_of("packed"))) == 1

    # at most one per node: the third replica waits with the reason
    mgr.docker("service", "create", "-d", "--name", "onepernode", "--replicas", "3", "--replicas-max-per-node", "1",
               "shoal/demo-web:latest")
    wait_for(lambda: len(nodes_of("onepernode")) == 2, 20, what="2 of 3 running")
    err = wait_for(lambda: mgr.docker("service", "ps", "onepernode", "--no-trunc", "--format", "{{.Error}}")
                   .stdout.strip(), 10, what="the pending task's reason")
    assert "max replicas per node limit exceed" in err


def test_dispatcher_heartbeat_sets_detection_time(pair):
    """Heartbeats go every HeartbeatPeriod / 5 (at most 1 s) and 3 silent intervals mark a node down: the
    default 5 s gives about 3 s, `--dispatcher-heartbeat 1s` about 0.6 s."""
    mgr, wrk = pair
    worker_id = json.loads(wrk.docker("info", "--format", "{{json .Swarm}}").stdout)["NodeID"]

    def state() -> str:
        status, _, node = mgr.request("GET", f"/nodes/{worker_id}")
        assert status == 200
        return node["Status"]["State"]

    def time_to_down() -> float:
        wrk.kill(signal.SIGKILL)  # no more heartbeats (its socket closes too: silence alone decides)
        t0 = time.monotonic()
        wait_for(lambda: state() == "down", 15, 0.02, "the worker to be down")
        took = time.monotonic() - t0
        wrk.start()
        wait_for(lambda: state() == "ready", 15, 0.1, "the worker to be ready again")
        return took

    default = time_to_down()
    mgr.docker("swarm", "update", "--dispatcher-heartbeat", "1s")
    assert "Heartbeat Period: 1 second\n" in mgr.docker("info").stdout
    time.sleep(1.5)  # the agent hears the new interval at once and uses it after its current wait
    fast = time_to_down()
    print(f"node down after SIGKILL: {default:.2f} s with the default period, {fast:.2f} s with 1s")
    assert 1.8 < default < 4.0
    assert fast < 1.2 and fast < default / 2
