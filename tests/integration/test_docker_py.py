"""The core scenario with docker-py as the client."""

from __future__ import annotations

import docker
import pytest
from conftest import running_containers, wait_for

pytestmark = pytest.mark.integration


def test_docker_py_scenario(shoald, docker_engine):
    client = shoald.client()
    assert client.info()["Swarm"]["LocalNodeState"] == "active"
    svc = client.services.create("shoal/demo-web:latest", name="pyweb",
                                 mode=docker.types.ServiceMode("replicated", replicas=4),
                                 env=["FROM=py"])
    wait_for(lambda: len(running_containers(docker_engine, "pyweb")) == 4, 30, what="4 running")
    assert [s.name for s in client.services.list(filters={"name": "pyweb"})] == ["pyweb"]
    tasks = svc.tasks(filters={"desired-state": "running"})
    assert len(tasks) == 4 and all(t["Status"]["State"] == "running" for t in tasks)
    assert all(t["Status"]["ContainerStatus"]["ContainerID"] for t in tasks)

    svc.scale(2)
    wait_for(lambda: len(running_containers(docker_engine, "pyweb")) == 2, 20, what="2 running")
    svc.reload()
    svc.update(env=["FROM=py", "X=1"])
    wait_for(lambda: all("X=1" in c.attrs["Config"]["Env"] for c in running_containers(docker_engine, "pyweb"))
             and len(running_containers(docker_engine, "pyweb")) == 2, 30, what="updated tasks")

    nodes = client.nodes.list()
    assert len(nodes) == 1 and nodes[0].attrs["Spec"]["Role"] == "manager"
    node = nodes[0]
    node.update({"Availability": "active", "Role": "manager", "Labels": {"disk": "ssd"}})
    node.reload()
    assert node.attrs["Spec"]["Labels"] == {"disk": "ssd"}

    with pytest.raises(docker.errors.APIError) as err:
        client.services.create("shoal/demo-web:latest", name="pyweb")
    assert err.value.status_code == 409

    svc.remove()
    wait_for(lambda: docker_engine.api.containers(
        all=True, filters={"label": "com.docker.swarm.service.name=pyweb"}) == [], 5, what="containers removed")
    with pytest.raises(docker.errors.NotFound):
        client.services.get("pyweb")
    client.close()
