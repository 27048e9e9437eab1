"""Nothing is lost when a process is killed: shoald restarts re-adopt, etcd restarts under shoald."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from conftest import running_containers, started_shoald, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def own_shoald(docker_engine):
    with started_shoald(init=True) as d:
        yield d


def _task_ids(shoald) -> set[str]:
    _, _, tasks = shoald.request("GET", "/tasks")
    return {t["ID"] for t in tasks if t["DesiredState"] == "running"}


def test_shoald_sigkill_restart_readopts(own_shoald, docker_engine):
    d = own_shoald
    d.docker("service", "create", "--name", "durable", "--replicas", "3", "shoal/demo-web:latest")
    containers = {c.id for c in running_containers(docker_engine, "durable")}
    assert len(containers) == 3
    tasks = _task_ids(d)
    _, _, services = d.request("GET", "/services")
    d.kill(signal.SIGKILL)
    d.start()
    # it answers at once; the swarm part once its etcd member is back
    services_after = wait_for(lambda: (r := d.request("GET", "/services"))[0] == 200 and r[2], 30,
                              what="the services after the restart")
    assert [s["ID"] for s in services_after] == [s["ID"] for s in services]
    assert _task_ids(d) == tasks
    # a few seconds of reconciliation later: the same containers, no duplicates
    wait_for(lambda: "3/3" in d.docker("service", "ls").stdout, 20)
    time.sleep(3)
    assert {c.id for c in running_containers(docker_engine, "durable")} == containers
    all_containers = docker_engine.api.containers(all=True, filters={"label": "com.docker.swarm.service.name=durable"})
    assert len(all_containers) == 3
    # and it still works: scale up
    d.docker("service", "scale", "durable=4")
    assert len(running_containers(docker_engine, "durable")) == 4


def test_etcd_killed_is_restarted_nothing_lost(own_shoald, docker_engine):
    d = own_shoald
    d.docker("service", "create", "-d", "--name", "keepme", "shoal/demo-web:latest")
    pid = d.etcd_pid()
    assert pid
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: (d.etcd_pid() or pid) != pid, 15, what="a new etcd pid")
    # writes answer again once etcd is back (a write during its restart gets a 503)
    wait_for(lambda: d.docker("service", "create", "--name", "afterkill", "shoal/demo-web:latest",
                              check=False).returncode == 0, 20, interval=0.5, what="a write after the restart")
    assert len(running_containers(docker_engine, "afterkill")) == 1
    names = d.docker("service", "ls", "--format", "{{.Name}}").stdout.split()
    assert sorted(names) == ["afterkill", "keepme"]


def test_leave_removes_task_containers(own_shoald, docker_engine):
    d = own_shoald
    d.docker("service", "create", "--name", "leaver", "--replicas", "2", "shoal/demo-web:latest")
    assert len(running_containers(docker_engine, "leaver")) == 2
    cp = d.docker("swarm", "leave", check=False)
    assert cp.returncode != 0 and "--force" in cp.stderr
    d.docker("swarm", "leave", "--force")
    assert docker_engine.api.containers(all=True, filters={"label": "com.docker.swarm.service.name=leaver"}) == []
    _, headers, _ = d.request("GET", "/_ping")
    assert headers["Swarm"] == "inactive"


def test_backup_and_restore(own_shoald, docker_engine, tmp_path):
    from conftest import SHOAL

    d = own_shoald
    d.docker("service", "create", "-d", "--name", "before-backup", "shoal/demo-web:latest")
    snap = tmp_path / "swarm.db"
    cp = subprocess.run([*SHOAL, "backup", str(snap), "--socket", d.sock], capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
    blob = snap.read_bytes()  # sealed under the data key, readable by root only
    assert snap.stat().st_mode & 0o777 == 0o600 and blob[:8] == b"SHOALBK1" and b"before-backup" not in blob
    d.docker("service", "create", "-d", "--name", "after-backup", "shoal/demo-web:latest")
    restore = [*SHOAL, "restore", str(snap), "--data-dir", str(d.data)]
    cp = subprocess.run(restore, capture_output=True, text=True, timeout=60)
    assert cp.returncode == 1 and "stop shoald first" in cp.stderr
    d.kill(signal.SIGTERM)
    cp = subprocess.run(restore, capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, cp.stderr
    d.start()
    names = wait_for(lambda: (r := d.request("GET", "/services"))[0] == 200 and [s["Spec"]["Name"] for s in r[2]],
                     60, what="the services after the restore")
    assert names == ["before-backup"]
    wait_for(lambda: d.docker("service", "create", "-d", "--name", "after-restore", "shoal/demo-web:latest",
                              check=False).returncode == 0, 30, interval=0.5, what="a write after the restore")
    assert "Leader" in d.docker("node", "ls").stdout
