"""The seed's `docker network ls` on every host of a 3-host lab: right after the swarm forms, each host
lists bridge, docker_gwbridge, host, ingress (overlay, swarm) and none; a worker lists an overlay network
while one of its tasks is on it, and can inspect it, as Docker's workers do."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from labtools import module_lab, wait_for

from shoal.lab.lab import Lab

pytestmark = pytest.mark.lab

WEB = "shoal/demo-web:latest"
SEED_ROWS = {"bridge bridge local", "docker_gwbridge bridge local", "host host local", "ingress overlay swarm",
             "none null local"}


@pytest.fixture(scope="module")
def lab(docker_engine) -> Iterator[Lab]:
    with module_lab(workers=2, swarm=True) as the_lab:
        yield the_lab


def rows(lab: Lab, host: str) -> set[str]:
    out = lab.docker(host, "network", "ls", "--format", "{{.Name}} {{.Driver}} {{.Scope}}").stdout
    return {line.strip() for line in out.splitlines() if line.strip()}


def test_every_host_lists_the_seeds_networks_after_init(lab: Lab) -> None:
    for host in ("manager", "worker1", "worker2"):
        assert wait_for(lambda h=host: rows(lab, h) == SEED_ROWS, 20, f"the seed's networks on {host}")
    ingress = json.loads(lab.docker("worker1", "network", "inspect", "ingress").stdout)[0]
    assert ingress["Ingress"] is True and ingress["Scope"] == "swarm"
    assert ingress["IPAM"]["Config"][0]["Subnet"] == "10.0.0.0/24"


def test_a_worker_lists_an_overlay_while_its_task_is_on_it(lab: Lab) -> None:
    lab.docker("manager", "network", "create", "--subnet", "172.24.0.0/24", "-d", "overlay", "test-overlay")
    lab.docker("manager", "service", "create", "-d", "--name", "on-w1", "--network", "test-overlay",
               "--constraint", "node.hostname==worker1", WEB)
    assert wait_for(lambda: "test-overlay overlay swarm" in rows(lab, "worker1"), 30, "test-overlay on worker1")
    assert "test-overlay overlay swarm" not in rows(lab, "worker2")  # no task of it there
    grep = lab.exec("worker1", "sh", "-c", "docker network ls | grep test-overlay", check=True).stdout
    assert grep.split()[1:] == ["test-overlay", "overlay", "swarm"]
    net = json.loads(lab.docker("worker1", "network", "inspect", "test-overlay").stdout)[0]
    assert net["Scope"] == "swarm" and net["Driver"] == "overlay"
    assert net["IPAM"]["Config"][0]["Subnet"] == "172.24.0.0/24"
    lab.docker("manager", "service", "rm", "on-w1")
    assert wait_for(lambda: "test-overlay overlay swarm" not in rows(lab, "worker1"), 30,
                    "test-overlay gone from worker1 with its last task")
    assert lab.docker("worker1", "network", "inspect", "test-overlay", check=False).returncode != 0
