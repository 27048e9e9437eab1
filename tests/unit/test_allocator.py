"""The allocator is the only owner of the leader's address bookkeeping: the API's writes that need
addresses go to it, and a write the store refuses leaves the bookkeeping exactly as it was (the next
request gets the same addresses, nothing leaks). In process: a MemoryStore that can be made to refuse."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from typing import Any

import pytest
from test_control_plane import make_cluster, make_node

from shoal.manager.allocator import Allocator, allocate_network
from shoal.model.errors import NameConflict, OutOfSequence, StoreError
from shoal.model.ids import new_id, now
from shoal.model.network import ingress_spec, new_network, spec_from_request
from shoal.model.service import validate_spec
from shoal.store.memory import MemoryStore
from shoal.store.objects import Objects


class FlakyStore:
    """A MemoryStore whose transactions fail while ``down`` (an etcd without quorum)."""

    def __init__(self) -> None:
        self.inner = MemoryStore()
        self.down = False

    async def txn(self, compares: Any, ops: Any) -> Any:
        if self.down:
            raise StoreError("etcdserver: request timed out")
        return await self.inner.txn(compares, ops)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture
async def setup() -> AsyncIterator[tuple[FlakyStore, Objects, Allocator, dict]]:
    store = FlakyStore()
    objs = Objects(store)  # type: ignore[arg-type]
    await objs.start()
    await objs.create("clusters", make_cluster())
    await objs.create("nodes", make_node(1, role="manager"))
    for spec in (ingress_spec(), spec_from_request({"Name": "front", "Driver": "overlay", "Attachable": True})):
        await objs.create("networks", allocate_network(new_network(spec), objs.list("networks"), ["10.0.0.0/8"], 24))
    front = next(n for n in objs.list("networks") if n["Spec"]["Name"] == "front")
    try:
        yield store, objs, Allocator(objs), front
    finally:
        await objs.stop()
        await store.close()


def bookkeeping(allocator: Allocator) -> dict:
    """Everything the allocator knows: who owns which address of which network, and which port."""
    net = allocator.net
    return copy.deepcopy({"ports": net.ports.owner,
                          "subnets": {nid: dict(sub.owner) for nid, sub in net.subnets.items()}})


def service(front: dict, name: str = "web") -> dict:
    spec = validate_spec({"Name": name, "TaskTemplate": {"ContainerSpec": {"Image": "shoal/demo-web:latest"},
                                                         "Networks": [{"Target": front["ID"]}]},
                          "EndpointSpec": {"Ports": [{"TargetPort": 80}]}})
    ts = now()
    return {"ID": new_id(), "CreatedAt": ts, "UpdatedAt": ts, "Spec": spec, "Endpoint": {"Spec": spec["EndpointSpec"]}}


async def test_a_refused_service_create_leaves_the_bookkeeping_unchanged(setup) -> None:
    store, objs, allocator, front = setup
    before = bookkeeping(allocator)
    store.down = True
    with pytest.raises(StoreError):
        await allocator.create_service(service(front))
    assert bookkeeping(allocator) == before
    assert objs.list("services") == []
    # once the store answers, the same request gets the same addresses and port, and they are taken
    store.down = False
    svc = service(front)
    await allocator.create_service(svc)
    assert svc["Endpoint"]["Ports"][0]["PublishedPort"] == 30000
    assert {v["Addr"] for v in svc["Endpoint"]["VirtualIPs"]} == {"10.0.0.2/24", "10.0.1.2/24"}
    assert bookkeeping(allocator) != before


async def test_a_stale_service_update_leaves_the_bookkeeping_unchanged(setup) -> None:
    _, objs, allocator, front = setup
    svc = service(front)
    await allocator.create_service(svc)
    before = bookkeeping(allocator)
    stale = copy.deepcopy(svc)
    stale["Spec"]["EndpointSpec"]["Ports"] = [{"TargetPort": 80}, {"TargetPort": 443, "PublishedPort": 8443}]
    stale["Version"] = {"Index": svc["Version"]["Index"] - 1}
    with pytest.raises(OutOfSequence):
        await allocator.update_service(stale)
    assert bookkeeping(allocator) == before
    assert ("tcp", 8443) not in allocator.net.ports.owner


async def test_a_refused_network_or_attachment_leaves_the_bookkeeping_unchanged(setup) -> None:
    store, objs, allocator, front = setup
    before = bookkeeping(allocator)
    with pytest.raises(NameConflict):  # the name is taken: the store refuses the create
        await allocator.create_network(new_network(spec_from_request({"Name": "front", "Driver": "overlay"})))
    assert bookkeeping(allocator) == before
    node_id = objs.list("nodes")[0]["ID"]
    task = {"ID": new_id(), "ServiceID": "", "NodeID": node_id, "Spec": {"NetworkAttachmentSpec": {}},
            "Status": {"State": "running"}, "DesiredState": "running"}
    store.down = True
    with pytest.raises(StoreError):
        await allocator.create_attachment(task, front)
    assert bookkeeping(allocator) == before
    store.down = False
    await allocator.create_attachment(task, front)
    assert task["NetworksAttachments"][0]["Addresses"] == ["10.0.1.2/24"]
    assert bookkeeping(allocator) != before
