"""A task container joins swarm networks through the ``shoal`` plugin, with the machine's dockerd (root).

The network agent (real plugin on /run/docker/plugins/shoal.sock, real overlay; load balancer and DNS
stubbed) applies a map of two networks without peers; a TaskRunner then runs a task attached to both.
Everything made here (container, engine networks, links, docker_gwbridge if it was not there) is removed.
"""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from pathlib import Path

import docker
import pytest

from shoal.agent.executor.docker import DockerExecutor
from shoal.agent.runner import TaskRunner
from shoal.model import states
from shoal.network.agent import NetworkAgent
from shoal.network.overlay import Overlay, bridge_name, mac_of

pytestmark = pytest.mark.integration

ENGINE = "unix:///var/run/docker.sock"
SYS_NET = Path("/sys/class/net")
NODE = "shoalnettestnode"
NET1 = "plgnet1" + uuid.uuid4().hex[:18]
NET2 = "plgnet2" + uuid.uuid4().hex[:18]
NAME1, NAME2 = f"shoaltest-{NET1[:10]}", f"shoaltest-{NET2[:10]}"
IP1, IP2 = "10.213.0.10", "10.214.0.10"
LOCAL1 = "10.213.0.2"
SERVICE = "shoalnettest"
# the container's own command: what its network looks like when its process starts
SCRIPT = "ip addr; echo ROUTES; ip route; exec sleep 300"


class Stub:
    """Stands in for the load balancer and the DNS server."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def sync(self, netmap: dict) -> None: ...
    async def update(self, netmap: dict) -> None: ...
    async def clear(self) -> None: ...


def swarm_network(nid: str, name: str, subnet: str, gateway: str, vni: int) -> dict:
    return {"ID": nid, "Spec": {"Name": name, "Driver": "overlay"},
            "IPAMOptions": {"Configs": [{"Subnet": subnet, "Gateway": gateway}]},
            "DriverState": {"Name": "overlay", "Options": {"com.docker.network.driver.overlay.vxlanid_list": str(vni)}}}


NETWORKS = [swarm_network(NET1, NAME1, "10.213.0.0/24", "10.213.0.1", 4997),
            swarm_network(NET2, NAME2, "10.214.0.0/24", "10.214.0.1", 4998)]


def netmap(nets: list[dict]) -> dict:
    out: dict = {"node": {"id": NODE, "addr": "127.0.0.1"}, "networks": {}, "peers": {}, "services": []}
    for net, local in zip(nets, ("10.213.0.2/24", "10.214.0.2/24"), strict=False):
        cfg = net["IPAMOptions"]["Configs"][0]
        out["networks"][net["ID"]] = {"name": net["Spec"]["Name"], "vni": 4997 if net["ID"] == NET1 else 4998,
                                      "subnet": cfg["Subnet"], "gateway": cfg["Gateway"], "ingress": False,
                                      "internal": False, "local_addr": local}
        out["peers"][net["ID"]] = []
    return out


def task() -> dict:
    tid = "shoalnettest" + uuid.uuid4().hex[:13]
    return {
        "ID": tid, "ServiceID": "shoalnettestservice", "Slot": 1, "NodeID": NODE,
        "ServiceAnnotations": {"Name": SERVICE},
        "Spec": {"ContainerSpec": {"Image": "shoal/demo-busybox:latest", "Command": ["sh", "-c", SCRIPT]}},
        "Status": {"State": states.ASSIGNED, "Message": ""}, "DesiredState": states.RUNNING,
        "NetworksAttachments": [
            {"Network": NETWORKS[0], "Addresses": [f"{IP1}/24"], "Aliases": ["web-alias", SERVICE]},
            {"Network": NETWORKS[1], "Addresses": [f"{IP2}/24"], "Aliases": []},
        ],
    }


def interfaces(ip_addr: str) -> dict[str, str]:
    """``ip addr`` output -> {ifname: its block}."""
    blocks: dict[str, str] = {}
    name = ""
    for line in ip_addr.splitlines():
        m = re.match(r"^\d+: ([^:@]+)", line)
        if m:
            name = m.group(1)
        if name:
            blocks[name] = blocks.get(name, "") + line + "\n"
    return blocks


async def test_task_joins_its_networks(docker_engine: docker.DockerClient) -> None:
    if os.geteuid() != 0:
        pytest.fail("needs root (links in the root namespace, the plugin socket)", pytrace=False)
    had_gwbridge = bool(docker_engine.networks.list(names=["docker_gwbridge"]))
    agent = NetworkAgent(NODE, ENGINE, overlay=Overlay(), lb=Stub(), dns=Stub())
    ex = DockerExecutor(ENGINE)
    reports: list[str] = []
    runner: TaskRunner | None = None
    await agent.start()
    try:
        await agent.apply(netmap(NETWORKS))
        t = task()

        async def report(task_id: str, status: dict) -> None:
            reports.append(status["State"] + (f" ({status['Err']})" if status.get("Err") else ""))

        runner = TaskRunner(t, NODE, ex, report, network=agent)
        runner.start()
        for _ in range(300):
            if any(r.startswith((states.RUNNING, states.FAILED, states.REJECTED)) for r in reports):
                break
            await asyncio.sleep(0.1)
        assert reports[-1] == states.RUNNING, reports
        assert runner.cid is not None
        c = docker_engine.containers.get(runner.cid)

        # what the process saw when it started: eth0 is the first network, with the allocator's address
        for _ in range(50):
            logs = c.logs().decode()
            if "ROUTES" in logs and "default" in logs:
                break
            await asyncio.sleep(0.1)
        addr, routes = logs.split("ROUTES")
        ifs = interfaces(addr)
        assert f"inet {IP1}/24" in ifs["eth0"] and mac_of(IP1) in ifs["eth0"], logs
        assert any(f"inet {IP2}/24" in block for block in ifs.values()), logs
        gw_dev = re.search(r"default via (\S+) dev (\S+)", routes)
        assert gw_dev and gw_dev.group(2) != "eth0", routes  # egress is not through the overlay

        # the default route is docker_gwbridge, as with Docker's overlay networks
        gwbridge = docker_engine.networks.get("docker_gwbridge")
        gwbridge.reload()
        assert c.id in (gwbridge.attrs.get("Containers") or {})

        # the node's own address on the network answers from inside
        ping = c.exec_run(["ping", "-c", "1", "-W", "2", LOCAL1])
        assert ping.exit_code == 0, ping.output.decode()
        assert any(p.name.startswith("shv") for p in (SYS_NET / bridge_name(NET1) / "brif").iterdir())

        # engine settings: shoal's DNS on the node's address; neither the aliases nor the service name in the
        # engine (its DNS would answer them with this container's address instead of the VIP)
        c.reload()
        assert c.attrs["HostConfig"]["Dns"] == [LOCAL1]
        aliases = c.attrs["NetworkSettings"]["Networks"][NAME1]["Aliases"] or []
        assert "web-alias" not in aliases and SERVICE not in aliases
        assert c.attrs["NetworkSettings"]["Networks"][NAME2]["IPAddress"] == IP2

        # the container gone, a map without NET2 removes NET2's engine network (and its links)
        await runner.remove()
        runner = None
        agent._recent.clear()  # pretend the preparation was long ago
        await agent.apply(netmap(NETWORKS[:1]))
        names = {n.name for n in docker_engine.networks.list(filters={"label": "shoal.network"})}
        assert NAME1 in names and NAME2 not in names
        assert not (SYS_NET / bridge_name(NET2)).exists()
    finally:
        if runner is not None:
            await runner.remove()
        await agent.cleanup()
        await agent.stop()
        await ex.close()
        for name in (NAME1, NAME2):
            for n in docker_engine.networks.list(names=[name]):
                n.remove()
        if not had_gwbridge:
            try:
                docker_engine.networks.get("docker_gwbridge").remove()
            except docker.errors.APIError:
                pass  # someone else uses it now
    assert not (SYS_NET / bridge_name(NET1)).exists() and not (SYS_NET / bridge_name(NET2)).exists()
    assert not docker_engine.networks.list(names=[NAME1])
