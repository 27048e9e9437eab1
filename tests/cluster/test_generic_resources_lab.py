"""Generic resources in the lab: worker1's engine advertises two GPUs by name and worker2's two SSDs by
count (dockerd's ``node-generic-resources``). Nodes show them, the scheduler gives them out and counts
them, and each task gets the ones it holds as ``DOCKER_RESOURCE_<KIND>`` in its environment."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from labtools import module_lab, wait_for

from shoal.lab.lab import Lab

pytestmark = pytest.mark.lab

BOX = "shoal/demo-busybox:latest"
LOOP = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
ENGINES = {"worker1": ["gpu=GPU-A", "gpu=GPU-B"], "worker2": ["ssd=2"]}


@pytest.fixture(scope="module")
def lab(docker_engine) -> Iterator[Lab]:
    with module_lab(workers=2, swarm=False) as the_lab:
        for name, resources in ENGINES.items():  # the engines start again with their resources
            the_lab.stop(name)
            (the_lab.host(name).dir / "daemon.json").write_text(json.dumps({"node-generic-resources": resources}))
            the_lab.start(name)
        first = the_lab.host("manager")
        the_lab.docker("manager", "swarm", "init", "--advertise-addr", first.ip)
        token = the_lab.docker("manager", "swarm", "join-token", "-q", "worker").stdout.strip()
        for w in ENGINES:
            the_lab.docker(w, "swarm", "join", "--token", token, "--advertise-addr", the_lab.host(w).ip,
                           f"{first.ip}:2377")
        wait_for(lambda: the_lab.docker("manager", "node", "ls", "--format", "{{.Status}}").stdout.split()
                 == ["Ready"] * 3, 30, "3 ready nodes")
        yield the_lab


def running(lab: Lab, service: str, n: int) -> list[dict]:
    """The service's ``n`` running tasks (as ``docker inspect`` shows them)."""
    def tasks() -> list[dict] | None:
        ids = lab.docker("manager", "service", "ps", "-q", "--filter", "desired-state=running", service).stdout.split()
        found = json.loads(lab.docker("manager", "inspect", "--type", "task", *ids).stdout) if ids else []
        up = [t for t in found if t["Status"]["State"] == "running"]
        return up if len(up) == n else None
    return wait_for(tasks, 40, f"{n} running tasks of {service}")


def task_env(lab: Lab, task: dict, name: str) -> str:
    host = lab.docker("manager", "node", "inspect", "--format", "{{.Description.Hostname}}", task["NodeID"]).stdout
    cid = task["Status"]["ContainerStatus"]["ContainerID"]
    return lab.engine_docker(host.strip(), "exec", cid, "sh", "-c", f'echo "${name}"').stdout.strip()


@pytest.mark.field("ResourceObject.GenericResources", how="honoured")
def test_generic_resources_are_advertised_given_out_and_counted(lab: Lab) -> None:
    resources = {h: json.loads(lab.docker("manager", "node", "inspect", "--format",
                                          "{{json .Description.Resources.GenericResources}}", h).stdout)
                 for h in ("manager", *ENGINES)}
    assert resources == {
        "manager": None,
        "worker1": [{"NamedResourceSpec": {"Kind": "gpu", "Value": "GPU-A"}},
                    {"NamedResourceSpec": {"Kind": "gpu", "Value": "GPU-B"}}],
        "worker2": [{"DiscreteResourceSpec": {"Kind": "ssd", "Value": 2}}]}
    worker1 = lab.docker("manager", "node", "inspect", "--format", "{{.ID}}", "worker1").stdout.strip()

    # one GPU each: both tasks on worker1, each with its own
    lab.docker("manager", "service", "create", "-d", "--name", "ml", "--replicas", "2", "--generic-resource", "gpu=1",
               BOX, *LOOP)
    tasks = running(lab, "ml", 2)
    assert {t["NodeID"] for t in tasks} == {worker1}
    held = sorted(t["GenericResources"][0]["NamedResourceSpec"]["Value"] for t in tasks)
    assert held == ["GPU-A", "GPU-B"]
    assert sorted(task_env(lab, t, "DOCKER_RESOURCE_GPU") for t in tasks) == held

    # no third GPU anywhere: the third task waits, and says why
    lab.docker("manager", "service", "scale", "-d", "ml=3")
    def errors() -> list[str]:  # the CLI prints each task's error with Go's %q
        rows = lab.docker("manager", "service", "ps", "--no-trunc", "--format", "{{json .Error}}", "ml").stdout
        return [json.loads(e) for e in map(json.loads, rows.splitlines()) if e]
    assert wait_for(errors, 30, "the third task's error") == ["no suitable node (insufficient resources on 3 nodes)"]

    # counted resources: both SSDs of worker2 for one task
    lab.docker("manager", "service", "create", "-d", "--name", "db", "--generic-resource", "ssd=2", BOX, *LOOP)
    [db] = running(lab, "db", 1)
    assert db["GenericResources"] == [{"DiscreteResourceSpec": {"Kind": "ssd", "Value": 2}}]
    assert task_env(lab, db, "DOCKER_RESOURCE_SSD") == "2"

    # freed when the tasks go: a task wanting both GPUs now fits
    lab.docker("manager", "service", "rm", "ml")
    lab.docker("manager", "service", "create", "-d", "--name", "ml2", "--generic-resource", "gpu=2", BOX, *LOOP)
    [ml2] = running(lab, "ml2", 1)
    assert task_env(lab, ml2, "DOCKER_RESOURCE_GPU") in ("GPU-A,GPU-B", "GPU-B,GPU-A")
    lab.docker("manager", "service", "rm", "db", "ml2")
