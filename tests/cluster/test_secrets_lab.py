"""Secrets across lab hosts: only the node that runs a task gets its secret, in a tmpfs of that host,
never on any host's disk and never in the store in the clear."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from labtools import module_lab, wait_for

from shoal.lab.lab import Lab

pytestmark = pytest.mark.lab

HOSTS = ("manager", "worker1", "worker2")
BOX = "shoal/demo-busybox:latest"
LOOP = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]


@pytest.fixture(scope="module")
def lab(docker_engine) -> Iterator[Lab]:
    with module_lab(workers=2, swarm=True) as the_lab:
        yield the_lab


def containers(lab: Lab, host: str, service: str) -> list[str]:
    cp = lab.engine_docker(host, "ps", "-aq", "--filter", f"label=com.docker.swarm.service.name={service}")
    return cp.stdout.split()


def on_disk(path: Path, needle: bytes) -> list[str]:
    """Files under path (as the machine's own mount namespace sees them: no host's tmpfs) holding needle."""
    cp = subprocess.run(["grep", "-rlaF", "--", needle.decode(), str(path)], capture_output=True, text=True)
    return cp.stdout.split()


def test_secret_reaches_only_the_node_of_its_task(lab: Lab, tmp_path: Path) -> None:
    marker = "lab-secret-" + base64.b32encode(os.urandom(10)).decode()
    (tmp_path / "secret").write_text(marker)
    lab.docker("manager", "secret", "create", "lab_secret", str(tmp_path / "secret"))
    lab.docker("manager", "service", "create", "-d", "--name", "sec", "--constraint", "node.hostname==worker1",
               "--secret", "source=lab_secret,mode=0400", BOX, *LOOP)
    [cid] = wait_for(lambda: containers(lab, "worker1", "sec"), 40, "the task on worker1")
    wait_for(lambda: lab.engine_docker("worker1", "exec", cid, "cat", "/run/secrets/lab_secret",
                                       check=False).stdout == marker, 20, "the secret readable in the task")
    stat = lab.engine_docker("worker1", "exec", cid, "stat", "-c", "%a %u %g", "/run/secrets/lab_secret").stdout
    assert stat.split() == ["400", "0", "0"]
    mount = lab.engine_docker("worker1", "exec", cid, "grep", " /run/secrets/lab_secret ", "/proc/mounts").stdout
    assert mount.split()[2] == "tmpfs"
    # worker1 keeps it in a tmpfs of its own mount namespace
    files = lab.host("worker1").dir / "shoal" / "task-files"
    cp = lab.exec("worker1", "sh", "-c", f"grep -rlF {marker} {files}; grep ' {files} ' /proc/mounts", check=True)
    assert len(cp.stdout.splitlines()) == 2 and " tmpfs " in cp.stdout.splitlines()[1]

    for h in HOSTS:  # nothing on any host's disk: not the task's node, not the others, not the manager's etcd
        assert on_disk(lab.host(h).dir, marker.encode()) == [], h
        assert on_disk(lab.host(h).dir, base64.b64encode(marker.encode())) == [], h
    for h in ("manager", "worker2"):  # no copy in the tmpfs of nodes without a task of the service
        other = lab.host(h).dir / "shoal" / "task-files"
        cp = lab.exec(h, "sh", "-c", f"grep -rlF {marker} {other} 2>/dev/null; true", check=True)
        assert cp.stdout.strip() == "", h

    [info] = json.loads(lab.docker("manager", "secret", "inspect", "lab_secret").stdout)
    assert "Data" not in info["Spec"]

    lab.docker("manager", "service", "rm", "sec")
    wait_for(lambda: containers(lab, "worker1", "sec") == [], 30, "the task's container removed")
    wait_for(lambda: lab.exec("worker1", "sh", "-c", f"grep -rlF {marker} {files} 2>/dev/null; true",
                              check=True).stdout.strip() == "", 10, "the secret's file removed on worker1")
    lab.docker("manager", "secret", "rm", "lab_secret")
