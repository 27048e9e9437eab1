"""Network attachments of standalone containers, on the manager side: made by the leader with an address,
left alone by the orchestrator, reaper and dispatcher, carried in the network maps (the node's own list,
the other nodes' VXLAN peers), refused for networks that are not attachable, removed with their node."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace

import pytest
from test_control_plane import make_cluster, make_node

from shoal.manager import attachments
from shoal.manager.allocator import Allocator, NetworkAllocator
from shoal.manager.dispatcher import assigned_to
from shoal.manager.orchestrator import orchestrators
from shoal.model.errors import APIError
from shoal.model.network import ingress_spec, new_network, spec_from_request
from shoal.network import netmap
from shoal.store.memory import MemoryStore
from shoal.store.objects import Objects

pytestmark = pytest.mark.asyncio


@asynccontextmanager
async def manager() -> AsyncIterator[SimpleNamespace]:
    """The leader's parts an attachment touches: store, allocator (shared, as the daemon shares it),
    orchestrator and reaper, with three nodes and three networks."""
    store = MemoryStore()
    objs = Objects(store)
    await objs.start()
    await objs.create("clusters", make_cluster())
    netalloc = NetworkAllocator(objs)
    nets = {}
    for name, body in (("ingress", None), ("att", {"Name": "att", "Attachable": True}), ("plain", {"Name": "plain"})):
        spec = ingress_spec() if body is None else spec_from_request({**body, "Driver": "overlay"})
        net = netalloc.allocate_network(new_network(spec), ["10.0.0.0/8"], 24)
        await objs.create("networks", net)
        nets[name] = net
    nodes = []
    for i in range(3):
        node = make_node(i + 1, role="manager" if i == 0 else "worker")
        node["Status"]["Addr"] = f"192.168.77.{10 + i}"
        await objs.create("nodes", node)
        nodes.append(node["ID"])
    tasks = [asyncio.create_task(c.run()) for c in (Allocator(objs, netalloc), *orchestrators(objs))]
    daemon = SimpleNamespace(objs=objs, netalloc=netalloc, alloc_lock=asyncio.Lock(), nets=nets, nodes=nodes)
    try:
        yield daemon
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await objs.stop()
        await store.close()


async def until(predicate, timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - the store offers no event for "any change"
            await asyncio.sleep(0.02)


async def test_an_attachment_has_an_address_and_is_in_the_network_maps() -> None:
    async with manager() as d:
        n1, n2, _ = d.nodes
        task = await attachments.attach(d, n2, "att", "c1")
        ip = task["NetworksAttachments"][0]["Addresses"][0].split("/")[0]
        subnet = d.nets["att"]["IPAMOptions"]["Configs"][0]["Subnet"]
        assert ipaddress.ip_address(ip) in ipaddress.ip_network(subnet)
        assert task["Status"]["State"] == "running" and task["ServiceID"] == "" and attachments.is_attachment(task)
        att_id = d.nets["att"]["ID"]
        # the node gets its own address on the network (gateway, DNS), as for a task
        await until(lambda: any(a["Network"]["ID"] == att_id for a in d.objs.get("nodes", n2).get("Attachments") or []))
        own = netmap.compute(d.objs, n2)
        assert att_id in own["networks"]
        assert own["attachments"] == [{"id": task["ID"], "network": att_id, "ip": ip, "created": task["CreatedAt"]}]
        assert att_id not in netmap.compute(d.objs, n1)["networks"]  # n1 takes no part in it yet
        await attachments.attach(d, n1, "att", "c0")
        assert {"ip": ip, "vtep": "192.168.77.11"} in netmap.compute(d.objs, n1)["peers"][att_id]
        assert assigned_to(d.objs, n2) == []  # nothing for the node's agent to run
        await asyncio.sleep(0.5)  # orchestrator and reaper have had their turns
        assert d.objs.get("tasks", task["ID"])["DesiredState"] == "running"


async def test_the_same_network_by_id_and_a_second_container_get_different_addresses() -> None:
    async with manager() as d:
        a = await attachments.attach(d, d.nodes[1], d.nets["att"]["ID"], "c1")
        b = await attachments.attach(d, d.nodes[2], "att", "c2")
        assert a["NetworksAttachments"][0]["Addresses"] != b["NetworksAttachments"][0]["Addresses"]


@pytest.mark.parametrize(("target", "code", "status"), [
    ("plain", "PermissionDenied desc = network plain not manually attachable", 403),
    ("ingress", "PermissionDenied desc = network ingress not manually attachable", 403),
    ("nope", "NotFound desc = network nope not found", 404),
])
async def test_refused_networks(target: str, code: str, status: int) -> None:
    async with manager() as d:
        with pytest.raises(APIError) as e:
            await attachments.attach(d, d.nodes[1], target, "c1")
        assert e.value.message == f"Could not attach to network {target}: rpc error: code = {code}"
        assert e.value.status == status
        assert d.objs.list("tasks") == []


async def test_detach_frees_the_address_and_only_the_owner_may() -> None:
    async with manager() as d:
        task = await attachments.attach(d, d.nodes[1], "att", "c1")
        await until(lambda: d.objs.get("nodes", d.nodes[1]).get("Attachments"))
        assert not await attachments.detach(d, d.nodes[2], task["ID"])  # another node's
        assert await attachments.detach(d, d.nodes[1], task["ID"])
        assert d.objs.get("tasks", task["ID"]) is None
        att_id = d.nets["att"]["ID"]
        await attachments.attach(d, d.nodes[0], "att", "c0")
        ip = task["NetworksAttachments"][0]["Addresses"][0].split("/")[0]
        assert ip not in {p["ip"] for p in netmap.compute(d.objs, d.nodes[0])["peers"][att_id]}  # no peer any more
        assert f"task:{task['ID']}" not in d.netalloc.subnets[att_id].owner.values()  # its address is free again


async def test_attachments_of_a_removed_node_are_removed() -> None:
    async with manager() as d:
        task = await attachments.attach(d, d.nodes[2], "att", "c1")
        await d.objs.delete("nodes", d.objs.get("nodes", d.nodes[2]))
        await until(lambda: d.objs.get("tasks", task["ID"]) is None)
