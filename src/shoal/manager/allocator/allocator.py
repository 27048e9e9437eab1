"""The allocator: the one owner of network resources on the leader.

- networks get a subnet (from the cluster's default address pool unless given) and a VXLAN ID;
- services get a virtual IP on each network they are on (``endpoint_mode: vip``) and their published
  ingress ports (30000-32767 when not given);
- tasks get an address on each of their service's networks (``NetworksAttachments``) and then move
  ``new`` → ``pending``;
- a node gets its own address on every network one of its tasks uses (the overlay bridge's address,
  used as the tasks' next hop for VIPs and as SNAT source);
- standalone containers' attachments get their address when they are made.

As a controller it allocates tasks and nodes from the store's changes and frees what deleted objects
held. The API's writes that need an allocation (a service's endpoint, a network, an attachment) come to
it as requests (:meth:`create_service` ...): it allocates and writes the object itself, under the same
lock as its reconciliation, and takes the allocation back if the store refuses the write. Nothing else
touches its bookkeeping (:class:`~shoal.manager.allocator.networks.NetworkAllocator`).
"""

from __future__ import annotations

import asyncio
import copy

from shoal.manager.allocator.networks import NetworkAllocator, allocate_network, ingress_of
from shoal.manager.controller import Controller, commit_all
from shoal.model import states
from shoal.model.errors import FailedPrecondition
from shoal.model.ids import now
from shoal.model.views import ClusterView, NodeView, TaskView
from shoal.store.objects import Change, Objects


class Allocator(Controller):
    kinds = ("tasks", "services", "networks", "nodes")
    name = "allocator"

    def __init__(self, objs: Objects) -> None:
        super().__init__(objs)
        self.net = NetworkAllocator(objs)
        self.net.load()  # requests may come before the first reconciliation
        self.lock = asyncio.Lock()  # one allocation at a time: requests and reconciliation
        self._known_tasks: set[str] = set(objs.cache["tasks"])

    # -- requests (the leader's control API) ---------------------------------------------------------
    async def create_service(self, svc: dict) -> None:
        """Allocate the new service's endpoint and store it."""
        async with self.lock:
            with self.net.transaction():
                self.net.allocate_service(svc)
                await self.objs.create("services", svc)

    async def update_service(self, svc: dict) -> None:
        """Allocate what the updated spec needs (keeping the VIPs and ports it had) and store it
        (OutOfSequence if ``svc`` is stale)."""
        async with self.lock:
            with self.net.transaction():
                self.net.allocate_service(svc)
                await self.objs.update("services", svc)

    async def create_network(self, net: dict) -> dict:
        """Give the new network its subnet and VXLAN ID and store it; returns what was stored."""
        async with self.lock:
            cluster = ClusterView(self._cluster())
            allocated = allocate_network(net, self.objs.list("networks"), cluster.default_addr_pool,
                                         cluster.subnet_size)
            with self.net.transaction():
                self.net.add_network(allocated)
                await self.objs.create("networks", allocated)
            return allocated

    async def create_attachment(self, task: dict, net: dict) -> None:
        """Give a standalone container's attachment its address on ``net`` and store it."""
        async with self.lock:
            sub = self.net.subnets.get(net["ID"])
            if sub is None:
                raise FailedPrecondition(f"network {net['Spec']['Name']} has no subnet allocated")
            with self.net.transaction():
                task["NetworksAttachments"] = [{"Network": copy.deepcopy(net),
                                                "Addresses": [sub.allocate(f"task:{task['ID']}")]}]
                await self.objs.create("tasks", task)

    async def remove_attachment(self, task: dict) -> bool:
        """Delete an attachment and free its address at once (False: it changed or is gone)."""
        async with self.lock:
            if not await self.objs.delete("tasks", task):
                return False
            self.net.release_task(task["ID"])
            self._known_tasks.discard(task["ID"])
            return True

    def has_subnet(self, net_id: str) -> bool:
        return net_id in self.net.subnets

    def _cluster(self) -> dict:
        clusters = self.objs.list("clusters")
        return clusters[0] if clusters else {}

    # -- reconciliation ------------------------------------------------------------------------------
    async def reconcile(self, changes: set[tuple[str, str]] | None) -> None:
        async with self.lock:
            await self._reconcile(changes)

    async def _reconcile(self, changes: set[tuple[str, str]] | None) -> None:
        tasks = self.objs.cache["tasks"]
        if changes is None:
            self.net.load()
            self._known_tasks = set(tasks)
            ids = list(tasks)
        else:
            ids = []
            for kind, oid in changes:
                await self.pace.tick()
                if kind == "tasks":
                    ids.append(oid)
                if kind == "tasks" and oid not in tasks and oid in self._known_tasks:
                    self._known_tasks.discard(oid)
                    self.net.release_task(oid)
                elif kind == "services" and self.objs.get("services", oid) is None:
                    self.net.release_service(oid)
                elif kind == "networks" and self.objs.get("networks", oid) is None:
                    self.net.release_network(oid)
        out: list[Change] = []
        node_needs: dict[str, set[str]] = {}
        for oid in ids:
            await self.pace.tick()
            raw = tasks.get(oid)
            if raw is None:
                continue
            self._known_tasks.add(oid)
            t = TaskView(raw)
            if t.state == states.NEW and t.desired != states.REMOVE:
                svc = self.objs.get("services", t.service_id)
                if svc is None:
                    continue
                nt = copy.deepcopy(raw)
                self.net.release_task(oid)
                nt["NetworksAttachments"] = self.net.attachments_for(nt, svc)
                ts = now()
                nt["Status"] = {**t.status, "State": states.PENDING, "Message": states.MESSAGES[states.PENDING],
                                "Timestamp": ts}
                nt["UpdatedAt"] = ts
                out.append(Change("tasks", nt))
            elif t.node_id and t.attachments and not t.terminal:
                node_needs.setdefault(t.node_id, set()).update(t.network_ids)
        ingress = ingress_of(self.objs)
        if ingress is not None:  # every node takes part in the routing mesh
            for node in map(NodeView, self.objs.list("nodes")):
                if not any(a["Network"]["ID"] == ingress["ID"] for a in node.attachments):
                    node_needs.setdefault(node.id, set()).add(ingress["ID"])
        for nid, nets in node_needs.items():
            node = self.objs.get("nodes", nid)
            if node is None:
                continue
            new_atts = [a for a in (self.net.node_address(node, n) for n in sorted(nets)) if a]
            if new_atts:
                nn = copy.deepcopy(node)
                nn["Attachments"] = (nn.get("Attachments") or []) + new_atts
                out.append(Change("nodes", nn))
        await commit_all(self.objs, out, pace=self.pace)
