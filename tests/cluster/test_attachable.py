"""Standalone containers on attachable overlay networks, across lab hosts: `docker run --network` and
`docker network connect`/`disconnect` through a worker's shoald, reaching a service by name and being
reached from a task on another host; non-attachable networks are refused with Docker's message; the
address is given back when the container is removed."""

from __future__ import annotations

import ipaddress
import json
import urllib.parse
from collections.abc import Iterator

import pytest
import unix_http
from labtools import module_lab, wait_for

from shoal.lab.lab import Lab

pytestmark = pytest.mark.lab

WEB = "shoal/demo-web:latest"
BOX = "shoal/demo-busybox:latest"
SUBNET = "172.28.0.0/24"


@pytest.fixture(scope="module")
def lab(docker_engine) -> Iterator[Lab]:
    with module_lab(workers=2, swarm=True) as the_lab:
        mgr = lambda *a: the_lab.docker("manager", *a)  # noqa: E731
        mgr("network", "create", "-d", "overlay", "--attachable", "--subnet", SUBNET, "att-net")
        mgr("network", "create", "-d", "overlay", "plain-net")
        mgr("service", "create", "--name", "web", "--network", "att-net", "--replicas", "2",
            "--constraint", "node.hostname!=worker2", WEB)
        yield the_lab


def attachments(lab: Lab) -> list[dict]:
    """The swarm's attachment tasks, as a manager lists them (`runtime=attachment`)."""
    q = urllib.parse.quote(json.dumps({"runtime": ["attachment"]}))
    sock = lab.host("manager").docker_host.removeprefix("unix://")
    status, _headers, tasks = unix_http.request(sock, "GET", f"/tasks?filters={q}")
    assert status == 200, tasks
    return tasks  # type: ignore[return-value]


def address(lab: Lab, host: str, container: str, network: str) -> str:
    nets = json.loads(lab.docker(host, "inspect", container).stdout)[0]["NetworkSettings"]["Networks"]
    return nets[network]["IPAddress"]


def test_docker_run_on_an_attachable_network(lab: Lab) -> None:
    run = lab.docker("worker2", "run", "-d", "--name", "c1", "--network", "att-net", BOX, "sleep", "3600",
                     check=False)
    assert run.returncode == 0, run.stderr
    ip = address(lab, "worker2", "c1", "att-net")
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(SUBNET)
    # the standalone container finds the service by name (its VIP) and reaches its tasks on other hosts
    got = wait_for(lambda: lab.docker("worker2", "exec", "c1", "timeout", "5", "wget", "-qO-", "http://web/",
                                      check=False).stdout.strip(), 30, "web answering c1")
    assert got
    # a task on another host reaches the standalone container over the overlay
    cid = lab.engine_docker("manager", "ps", "-q", "--filter", "label=com.docker.swarm.service.name=web").stdout
    cid = cid.split()[0] if cid.split() else ""
    if not cid:
        cid = lab.engine_docker("worker1", "ps", "-q", "--filter",
                                "label=com.docker.swarm.service.name=web").stdout.split()[0]
        host = "worker1"
    else:
        host = "manager"
    ping = lab.engine_docker(host, "exec", cid, "ping", "-c", "1", "-W", "3", ip, check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    # worker2 now takes part in att-net: it lists it, and the manager lists the attachment
    assert "att-net overlay swarm" in lab.docker("worker2", "network", "ls", "--format",
                                                 "{{.Name}} {{.Driver}} {{.Scope}}").stdout
    atts = attachments(lab)
    assert len(atts) == 1 and atts[0]["Status"]["State"] == "running"
    assert atts[0]["NetworksAttachments"][0]["Addresses"][0].split("/")[0] == ip


def test_non_attachable_networks_are_refused(lab: Lab) -> None:
    for net in ("plain-net", "ingress"):
        cp = lab.docker("worker1", "run", "--rm", "--network", net, BOX, "true", check=False)
        assert cp.returncode != 0
        assert (f"Could not attach to network {net}: rpc error: code = PermissionDenied desc = network {net} "
                f"not manually attachable") in cp.stderr
    assert len(attachments(lab)) == 1  # only c1's


def test_connect_and_disconnect(lab: Lab) -> None:
    lab.docker("worker1", "run", "-d", "--name", "c2", BOX, "sleep", "3600")
    lab.docker("worker1", "network", "connect", "att-net", "c2")
    ip = address(lab, "worker1", "c2", "att-net")
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(SUBNET)
    # c2 began on the default bridge, so it has the host's resolver (as with Docker): it uses the VIP itself
    net_id = lab.docker("manager", "network", "inspect", "att-net", "--format", "{{.Id}}").stdout.strip()
    vips = json.loads(lab.docker("manager", "service", "inspect", "web", "--format",
                                 "{{json .Endpoint.VirtualIPs}}").stdout)
    vip = next(v["Addr"].split("/")[0] for v in vips if v["NetworkID"] == net_id)
    assert wait_for(lambda: lab.docker("worker1", "exec", "c2", "timeout", "5", "wget", "-qO-", f"http://{vip}/",
                                       check=False).returncode == 0, 30, "web's VIP answering c2")
    assert len(attachments(lab)) == 2
    lab.docker("worker1", "network", "disconnect", "att-net", "c2")
    nets = json.loads(lab.docker("worker1", "inspect", "c2").stdout)[0]["NetworkSettings"]["Networks"]
    assert "att-net" not in nets
    assert wait_for(lambda: len(attachments(lab)) == 1, 30, "c2's attachment given back")


def test_removed_container_gives_its_address_back(lab: Lab) -> None:
    lab.docker("worker2", "rm", "-f", "c1")
    assert wait_for(lambda: attachments(lab) == [], 40, "c1's attachment given back")
    assert wait_for(lambda: "att-net" not in lab.docker("worker2", "network", "ls", "--format", "{{.Name}}").stdout,
                    30, "att-net gone from worker2")
    # the network can be removed once nothing uses it
    lab.docker("manager", "service", "rm", "web")
    wait_for(lambda: lab.docker("manager", "network", "rm", "att-net", check=False).returncode == 0, 30,
             "att-net removable")
