"""The leader's address bookkeeping: which address of which network, and which ingress port, belongs to
whom (a service's VIP, a task, a node). Rebuilt from the store by :meth:`NetworkAllocator.load`; changed
only by the :class:`~shoal.manager.allocator.allocator.Allocator`, inside :meth:`transaction` when the
change goes with a store write that may be refused.
"""

from __future__ import annotations

import contextlib
import copy
import ipaddress
from collections.abc import Iterator

from shoal.manager.allocator.ipam import FIRST_VNI, PortPool, Subnet, UndoLog, check_overlap, next_subnet
from shoal.model.errors import InvalidArgument, NotFound
from shoal.model.labels import VXLAN_ID
from shoal.model.views import NetworkView, NodeView, ServiceView, TaskView, ingress_ports
from shoal.store.objects import Objects


def allocate_network(net: dict, existing: list[dict], pools: list[str], size: int) -> dict:
    """``net`` with its IPAMOptions (subnet, gateway) and DriverState (VXLAN ID) filled, given the networks
    that exist: a subnet from ``pools`` (or the one asked for, if it overlaps none) and a free VXLAN ID."""
    net = copy.deepcopy(net)
    spec = net["Spec"]
    views = [NetworkView(n) for n in existing]
    taken = [(n.name, n.subnet) for n in views]
    cfgs = copy.deepcopy((spec.get("IPAMOptions") or {}).get("Configs") or [])
    cfg = cfgs[0] if cfgs else {}
    if cfg.get("Subnet"):
        check_overlap(cfg["Subnet"], taken)
    else:
        cfg["Subnet"] = next_subnet(pools, size, [t for _, t in taken])
    if not cfg.get("Gateway"):
        cfg["Gateway"] = str(ipaddress.ip_network(cfg["Subnet"]).network_address + 1)
    used = {n.vni for n in views}
    vni = FIRST_VNI if spec.get("Ingress") else FIRST_VNI + 1
    while vni in used:
        vni += 1
    net["IPAMOptions"] = {"Driver": (spec.get("IPAMOptions") or {}).get("Driver") or {"Name": "default"},
                          "Configs": [{"Subnet": cfg["Subnet"], "Gateway": cfg["Gateway"]}]}
    net["DriverState"] = {"Name": "overlay", "Options": {VXLAN_ID: str(vni)}}
    return net


def find_network(objs: Objects, ref: str) -> dict:
    """The network ``ref`` names in a service spec: its ID, its name, or a unique ID prefix."""
    net = objs.get("networks", ref)
    if net is None:
        matches = [n for n in objs.list("networks") if n["Spec"]["Name"] == ref]
        if not matches:
            matches = [n for n in objs.list("networks") if n["ID"].startswith(ref)]
        if len(matches) != 1:
            raise NotFound(f"network {ref} not found")
        net = matches[0]
    return net


def normalise_networks(objs: Objects, spec: dict) -> None:
    """Resolve network names to IDs in a service spec (as Docker stores them)."""
    tt = spec.get("TaskTemplate") or {}
    nets = tt.get("Networks") or spec.get("Networks") or []
    seen: set[str] = set()
    out = []
    for n in nets:
        if not isinstance(n, dict) or not n.get("Target"):
            raise InvalidArgument("NetworkAttachmentConfig: network target must be provided")
        net = find_network(objs, n["Target"])
        if NetworkView(net).ingress:
            raise InvalidArgument("Service cannot be explicitly attached to the ingress network "
                                  f"\"{net['Spec']['Name']}\"")
        if net["ID"] in seen:
            raise InvalidArgument(f"duplicate network attachment: {n['Target']}")
        seen.add(net["ID"])
        out.append({**n, "Target": net["ID"]})
    if nets:
        tt["Networks"] = out
        spec.pop("Networks", None)


def ingress_of(objs: Objects) -> dict | None:
    return next((n for n in objs.list("networks") if NetworkView(n).ingress), None)


def service_network_ids(objs: Objects, spec: dict) -> list[str]:
    """The networks a service's tasks are on: its own, and ingress first when it publishes ports there."""
    ids = [n["Target"] for n in ServiceView({"Spec": spec}).network_configs]
    ing = ingress_of(objs)
    if ingress_ports(spec) and ing is not None and ing["ID"] not in ids:
        ids.insert(0, ing["ID"])
    return ids


class NetworkAllocator:
    """In-memory address bookkeeping of the leader."""

    def __init__(self, objs: Objects) -> None:
        self.objs = objs
        self.undo = UndoLog()
        self.subnets: dict[str, Subnet] = {}
        self.ports = PortPool(self.undo)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Changes made inside are taken back if the block raises (e.g. the store refused the write)."""
        self.undo.begin()
        try:
            yield
        except BaseException:
            self.undo.rollback()
            raise
        self.undo.commit()

    def load(self) -> None:
        """Rebuild the bookkeeping from the store."""
        self.subnets.clear()
        self.ports = PortPool(self.undo)
        for net in self.objs.list("networks"):
            self.add_network(net)
        for raw in self.objs.list("services"):
            svc = ServiceView(raw)
            for vip in svc.virtual_ips:
                sub = self.subnets.get(vip["NetworkID"])
                if sub and vip.get("Addr"):
                    sub.take(vip["Addr"], f"svc:{svc.id}")
            for p in svc.ports:
                if (p.get("PublishMode") or "ingress") == "ingress" and p.get("PublishedPort"):
                    self.ports.take(p.get("Protocol") or "tcp", p["PublishedPort"], svc.id)
        for t in map(TaskView, self.objs.list("tasks")):
            self._take(t.attachments, f"task:{t.id}")
        for node in map(NodeView, self.objs.list("nodes")):
            self._take(node.attachments, f"node:{node.id}")

    def _take(self, attachments: list[dict], owner: str) -> None:
        for att in attachments:
            sub = self.subnets.get(att["Network"]["ID"])
            for addr in att.get("Addresses") or []:
                if sub:
                    sub.take(addr, owner)

    # -- networks ------------------------------------------------------------------------------------
    def add_network(self, net: dict) -> None:
        view = NetworkView(net)
        if view.subnet:
            self.undo.set(self.subnets, view.id, Subnet(view.subnet, view.gateway, self.undo))

    def release_network(self, net_id: str) -> None:
        self.undo.delete(self.subnets, net_id)

    # -- services ------------------------------------------------------------------------------------
    def allocate_service(self, svc: dict) -> None:
        """Fill ``svc["Endpoint"]`` (ports and VIPs), keeping what it already had."""
        view = ServiceView(svc)
        sid = view.id
        ep_spec = svc["Spec"].get("EndpointSpec") or {"Mode": "vip"}
        old = view.endpoint
        # ports
        old_ports = {(p.get("Protocol") or "tcp", p["TargetPort"]): p.get("PublishedPort")
                     for p in old.get("Ports") or [] if (p.get("PublishMode") or "ingress") == "ingress"}
        claimed: list[tuple[str, int]] = []
        ports = []
        for p in ep_spec.get("Ports") or []:
            p = {"Protocol": "tcp", "PublishMode": "ingress", **p}
            proto = p["Protocol"]
            if p["PublishMode"] == "ingress":
                if p.get("PublishedPort"):
                    self.ports.claim(proto, p["PublishedPort"], sid, self._describe)
                else:
                    prev = old_ports.get((proto, p["TargetPort"]))
                    if prev and self.ports.owner.get((proto, prev)) in (None, sid):
                        self.ports.claim(proto, prev, sid)
                        p["PublishedPort"] = prev
                    else:
                        p["PublishedPort"] = self.ports.allocate(proto, sid)
                claimed.append((proto, p["PublishedPort"]))
            ports.append(p)
        for key in [k for k, o in self.ports.owner.items() if o == sid and k not in claimed]:
            self.ports.free(*key)
        # VIPs
        vips = []
        if (ep_spec.get("Mode") or "vip") == "vip":
            have = {v["NetworkID"]: v["Addr"] for v in old.get("VirtualIPs") or []}
            for nid in service_network_ids(self.objs, svc["Spec"]):
                sub = self.subnets.get(nid)
                if sub is None:
                    continue
                addr = have.get(nid) or sub.allocate(f"svc:{sid}")
                vips.append({"NetworkID": nid, "Addr": addr})
            for nid, addr in have.items():
                if nid not in {v["NetworkID"] for v in vips} and nid in self.subnets:
                    self.subnets[nid].free(addr)
        else:
            for sub in self.subnets.values():
                sub.release(f"svc:{sid}")
        endpoint: dict = {"Spec": ep_spec}
        if ports:
            endpoint["Ports"] = ports
        if vips:
            endpoint["VirtualIPs"] = vips
        svc["Endpoint"] = endpoint

    def _describe(self, sid: str) -> str:
        svc = self.objs.get("services", sid)
        return f"service '{svc['Spec']['Name']}' ({sid})" if svc else f"service '{sid}'"

    def release_service(self, sid: str) -> None:
        self.ports.release(sid)
        for sub in self.subnets.values():
            sub.release(f"svc:{sid}")

    # -- tasks and nodes ---------------------------------------------------------------------------------
    def attachments_for(self, task: dict, svc: dict) -> list[dict]:
        out = []
        aliases = {n["Target"]: n.get("Aliases") or [] for n in ServiceView(svc).network_configs}
        for nid in service_network_ids(self.objs, svc["Spec"]):
            net = self.objs.get("networks", nid)
            sub = self.subnets.get(nid)
            if net is None or sub is None:
                continue
            out.append({"Network": copy.deepcopy(net), "Addresses": [sub.allocate(f"task:{task['ID']}")],
                        "Aliases": aliases.get(nid, [])})
        return out

    def release_task(self, tid: str) -> None:
        for sub in self.subnets.values():
            sub.release(f"task:{tid}")

    def node_address(self, node: dict, net_id: str) -> dict | None:
        """The node's attachment on ``net_id``, allocating one if it has none (None: nothing to write)."""
        view = NodeView(node)
        if any(a["Network"]["ID"] == net_id for a in view.attachments):
            return None
        sub = self.subnets.get(net_id)
        if sub is None:
            return None
        return {"Network": {"ID": net_id}, "Addresses": [sub.allocate(f"node:{view.id}")]}
