"""Inspect-then-update of a node right after ``swarm init`` and ``swarm join`` (docker-py's ``node.update()``,
the CLI's ``docker node update``, Ansible's modules): the node never rewrites its own object under the
client, so the version the client read is still the node's when its update arrives."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import docker
import pytest
from conftest import Shoald, free_port, running_containers, wait_for

from shoal.agent.session import DESCRIBE_PERIOD

pytestmark = pytest.mark.integration


def _node_id(d: Shoald) -> str:
    return json.loads(d.docker("info", "--format", "{{json .Swarm}}").stdout)["NodeID"]


def _read_modify_write(client: docker.DockerClient, node_id: str, n: int) -> int:
    """docker-py as a user drives it: read the node, change its labels, write it back with the version
    read; the version after the write."""
    node = client.nodes.get(node_id)
    spec = node.attrs["Spec"]
    assert node.update({**spec, "Labels": {**spec["Labels"], "n": str(n)}}) is True
    node.reload()
    assert node.attrs["Spec"]["Labels"]["n"] == str(n)
    return node.version


def test_inspect_then_update_right_after_init_and_join(docker_engine):
    with tempfile.TemporaryDirectory(prefix="shoal-m-") as m, tempfile.TemporaryDirectory(prefix="shoal-w-") as w:
        # the worker shares this host's network namespace (and engine) with the manager
        mgr, wrk = Shoald(Path(m)), Shoald(Path(w), "--no-networking")
        mgr.start()
        wrk.start()
        client = mgr.client()
        try:
            addr = f"127.0.0.1:{free_port()}"
            mgr.docker("swarm", "init", "--listen-addr", addr, "--advertise-addr", addr)
            manager_id = _node_id(mgr)
            _read_modify_write(client, manager_id, 0)  # at once, with docker-py
            mgr.docker("node", "update", "--label-add", "cli=1", manager_id)  # and with the CLI
            token = mgr.docker("swarm", "join-token", "-q", "worker").stdout.strip()
            wrk.docker("swarm", "join", "--token", token, addr)
            worker_id = _node_id(wrk)
            _read_modify_write(client, worker_id, 0)
            mgr.docker("node", "update", "--label-add", "cli=1", worker_id)

            # a task on an overlay network: the engine now has a network of shoal's driver (and names the
            # driver in /info); over a whole describe period the nodes must not rewrite themselves
            mgr.docker("network", "create", "-d", "overlay", "rmwnet")
            mgr.docker("service", "create", "-d", "--name", "rmw", "--network", "rmwnet", "shoal/demo-web:latest")
            wait_for(lambda: running_containers(docker_engine, "rmw"), 60, what="the task on rmwnet running")
            last = {nid: client.nodes.get(nid).version for nid in (manager_id, worker_id)}
            deadline, n = time.time() + DESCRIBE_PERIOD + 3, 1
            while time.time() < deadline:
                for nid in (manager_id, worker_id):
                    assert client.nodes.get(nid).version == last[nid], "the node changed its own object"
                    last[nid] = _read_modify_write(client, nid, n)
                n += 1
                time.sleep(0.3)
            for nid in (manager_id, worker_id):
                assert client.nodes.get(nid).version == last[nid]
                plugins = client.nodes.get(nid).attrs["Description"]["Engine"]["Plugins"]
                assert {"Type": "Network", "Name": "shoal"} in plugins
            mgr.docker("service", "rm", "rmw")
            wait_for(lambda: not running_containers(docker_engine, "rmw"), 30, what="the container removed")
        finally:
            client.close()
            wrk.stop()
            mgr.stop()
