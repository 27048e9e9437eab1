"""The allocator: network resources for services, tasks and nodes.

- networks get a subnet (from the cluster's default address pool unless given) and a VXLAN ID;
- services get a virtual IP on each network they are on (``endpoint_mode: vip``) and their published
  ingress ports (30000-32767 when not given);
- tasks get an address on each of their service's networks (``NetworksAttachments``) and then move
  ``new`` → ``pending``;
- a node gets its own address on every network one of its tasks uses (the overlay bridge's address,
  used as the tasks' next hop for VIPs and as SNAT source).
The leader keeps the bookkeeping in memory (:class:`NetworkAllocator`), rebuilt from the store.
"""

from __future__ import annotations

import copy
import ipaddress

from shoal.manager.controller import Controller, commit_all
from shoal.manager.ipam import FIRST_VNI, PortPool, Subnet, check_overlap, next_subnet
from shoal.model import states
from shoal.model.errors import InvalidArgument, NotFound
from shoal.model.ids import now
from shoal.model.labels import VXLAN_ID
from shoal.store.objects import Change, Objects


def _subnet_of(net: dict) -> tuple[str, str]:
    cfgs = (net.get("IPAMOptions") or {}).get("Configs") or [{}]
    return cfgs[0].get("Subnet", ""), cfgs[0].get("Gateway", "")


def vni_of(net: dict) -> int:
    opts = (net.get("DriverState") or {}).get("Options") or {}
    return int(opts.get(VXLAN_ID, "0").split(",")[0] or 0)


def service_networks(svc: dict) -> list[dict]:
    """The service's network attachment configs (TaskTemplate.Networks, or the legacy Spec.Networks)."""
    spec = svc["Spec"]
    return list((spec.get("TaskTemplate") or {}).get("Networks") or spec.get("Networks") or [])


def ingress_ports(spec: dict) -> list[dict]:
    return [p for p in (spec.get("EndpointSpec") or {}).get("Ports") or []
            if (p.get("PublishMode") or "ingress") == "ingress"]


class NetworkAllocator:
    """In-memory address bookkeeping of the leader."""

    def __init__(self, objs: Objects) -> None:
        self.objs = objs
        self.subnets: dict[str, Subnet] = {}
        self.ports = PortPool()
        self.loaded = False

    def load(self) -> None:
        self.subnets.clear()
        self.ports = PortPool()
        for net in self.objs.list("networks"):
            self._add_network(net)
        for svc in self.objs.list("services"):
            for vip in (svc.get("Endpoint") or {}).get("VirtualIPs") or []:
                sub = self.subnets.get(vip["NetworkID"])
                if sub and vip.get("Addr"):
                    sub.take(vip["Addr"], f"svc:{svc['ID']}")
            for p in (svc.get("Endpoint") or {}).get("Ports") or []:
                if (p.get("PublishMode") or "ingress") == "ingress" and p.get("PublishedPort"):
                    self.ports.owner[(p.get("Protocol") or "tcp", p["PublishedPort"])] = svc["ID"]
        for t in self.objs.list("tasks"):
            for att in t.get("NetworksAttachments") or []:
                sub = self.subnets.get(att["Network"]["ID"])
                for addr in att.get("Addresses") or []:
                    if sub:
                        sub.take(addr, f"task:{t['ID']}")
        for node in self.objs.list("nodes"):
            for att in node.get("Attachments") or []:
                sub = self.subnets.get(att["Network"]["ID"])
                for addr in att.get("Addresses") or []:
                    if sub:
                        sub.take(addr, f"node:{node['ID']}")
        self.loaded = True

    def _add_network(self, net: dict) -> None:
        subnet, gw = _subnet_of(net)
        if subnet:
            self.subnets[net["ID"]] = Subnet(subnet, gw)

    # -- networks ------------------------------------------------------------------------------------
    def allocate_network(self, net: dict, pools: list[str], size: int) -> dict:
        """Fill IPAMOptions (subnet, gateway) and DriverState (VXLAN ID) of a new network."""
        if not self.loaded:
            self.load()
        net = copy.deepcopy(net)
        spec = net["Spec"]
        taken = [(n["Spec"]["Name"], _subnet_of(n)[0]) for n in self.objs.list("networks")]
        cfgs = copy.deepcopy((spec.get("IPAMOptions") or {}).get("Configs") or [])
        cfg = cfgs[0] if cfgs else {}
        if cfg.get("Subnet"):
            check_overlap(cfg["Subnet"], taken)
        else:
            cfg["Subnet"] = next_subnet(pools, size, [t for _, t in taken])
        if not cfg.get("Gateway"):
            cfg["Gateway"] = str(ipaddress.ip_network(cfg["Subnet"]).network_address + 1)
        used = {vni_of(n) for n in self.objs.list("networks")}
        vni = FIRST_VNI if spec.get("Ingress") else FIRST_VNI + 1
        while vni in used:
            vni += 1
        net["IPAMOptions"] = {"Driver": (spec.get("IPAMOptions") or {}).get("Driver") or {"Name": "default"},
                              "Configs": [{"Subnet": cfg["Subnet"], "Gateway": cfg["Gateway"]}]}
        net["DriverState"] = {"Name": "overlay", "Options": {VXLAN_ID: str(vni)}}
        self._add_network(net)
        return net

    def release_network(self, net_id: str) -> None:
        self.subnets.pop(net_id, None)

    # -- services ------------------------------------------------------------------------------------
    def resolve_network(self, ref: str) -> dict:
        net = self.objs.get("networks", ref)
        if net is None:
            matches = [n for n in self.objs.list("networks") if n["Spec"]["Name"] == ref]
            if not matches:
                matches = [n for n in self.objs.list("networks") if n["ID"].startswith(ref)]
            if len(matches) != 1:
                raise NotFound(f"network {ref} not found")
            net = matches[0]
        return net

    def normalise_networks(self, spec: dict) -> None:
        """Resolve network names to IDs in a service spec (as Docker stores them)."""
        tt = spec.get("TaskTemplate") or {}
        nets = tt.get("Networks") or spec.get("Networks") or []
        seen: set[str] = set()
        out = []
        for n in nets:
            if not isinstance(n, dict) or not n.get("Target"):
                raise InvalidArgument("NetworkAttachmentConfig: network target must be provided")
            net = self.resolve_network(n["Target"])
            if net["Spec"].get("Ingress"):
                raise InvalidArgument("Service cannot be explicitly attached to the ingress network "
                                      f"\"{net['Spec']['Name']}\"")
            if net["ID"] in seen:
                raise InvalidArgument(f"duplicate network attachment: {n['Target']}")
            seen.add(net["ID"])
            out.append({**n, "Target": net["ID"]})
        if nets:
            tt["Networks"] = out
            spec.pop("Networks", None)

    def ingress(self) -> dict | None:
        return next((n for n in self.objs.list("networks") if n["Spec"].get("Ingress")), None)

    def networks_of(self, spec: dict) -> list[str]:
        ids = [n["Target"] for n in (spec.get("TaskTemplate") or {}).get("Networks") or spec.get("Networks") or []]
        ing = self.ingress()
        if ingress_ports(spec) and ing is not None and ing["ID"] not in ids:
            ids.insert(0, ing["ID"])
        return ids

    def allocate_service(self, svc: dict) -> None:
        """Fill ``svc["Endpoint"]`` (ports and VIPs), keeping what it already had."""
        if not self.loaded:
            self.load()
        spec = svc["Spec"]
        sid = svc["ID"]
        ep_spec = spec.get("EndpointSpec") or {"Mode": "vip"}
        old = svc.get("Endpoint") or {}
        # ports
        old_ports = {(p.get("Protocol") or "tcp", p["TargetPort"]): p.get("PublishedPort")
                     for p in old.get("Ports") or [] if (p.get("PublishMode") or "ingress") == "ingress"}
        claimed: list[tuple[str, int]] = []
        ports = []
        try:
            for p in ep_spec.get("Ports") or []:
                p = {"Protocol": "tcp", "PublishMode": "ingress", **p}
                proto = p["Protocol"]
                if p["PublishMode"] == "ingress":
                    if p.get("PublishedPort"):
                        self.ports.claim(proto, p["PublishedPort"], sid, self._describe)
                    else:
                        prev = old_ports.get((proto, p["TargetPort"]))
                        if prev and self.ports.owner.get((proto, prev)) in (None, sid):
                            self.ports.owner[(proto, prev)] = sid
                            p["PublishedPort"] = prev
                        else:
                            p["PublishedPort"] = self.ports.allocate(proto, sid)
                    claimed.append((proto, p["PublishedPort"]))
                ports.append(p)
        except InvalidArgument:
            for key in claimed:
                if self.ports.owner.get(key) == sid and key not in {(k[0], v) for k, v in old_ports.items()}:
                    del self.ports.owner[key]
            raise
        for key in [k for k, o in self.ports.owner.items() if o == sid and k not in claimed]:
            del self.ports.owner[key]
        # VIPs
        vips = []
        if (ep_spec.get("Mode") or "vip") == "vip":
            have = {v["NetworkID"]: v["Addr"] for v in old.get("VirtualIPs") or []}
            for nid in self.networks_of(spec):
                sub = self.subnets.get(nid)
                if sub is None:
                    continue
                addr = have.get(nid) or sub.allocate(f"svc:{sid}")
                vips.append({"NetworkID": nid, "Addr": addr})
            for nid, addr in have.items():
                if nid not in {v["NetworkID"] for v in vips} and nid in self.subnets:
                    self.subnets[nid].owner.pop(ipaddress.ip_address(addr.split("/")[0]), None)  # type: ignore[arg-type]
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
        aliases = {n["Target"]: n.get("Aliases") or [] for n in service_networks(svc)}
        for nid in self.networks_of(svc["Spec"]):
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
        for att in node.get("Attachments") or []:
            if att["Network"]["ID"] == net_id:
                return None
        sub = self.subnets.get(net_id)
        if sub is None:
            return None
        return {"Network": {"ID": net_id}, "Addresses": [sub.allocate(f"node:{node['ID']}")]}


class Allocator(Controller):
    kinds = ("tasks", "services", "networks", "nodes")
    name = "allocator"

    def __init__(self, objs: Objects, netalloc: NetworkAllocator | None = None) -> None:
        super().__init__(objs)
        self.net = netalloc or NetworkAllocator(objs)
        self._known_tasks: set[str] = set()

    async def reconcile(self, changes: set[tuple[str, str]] | None) -> None:
        tasks = self.objs.cache["tasks"]
        if changes is None:
            self.net.load()
            self._known_tasks = set(tasks)
            ids = list(tasks)
        else:
            ids = [oid for kind, oid in changes if kind == "tasks"]
            for kind, oid in changes:
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
            t = tasks.get(oid)
            if t is None:
                continue
            self._known_tasks.add(oid)
            if t["Status"]["State"] == states.NEW and t["DesiredState"] != states.REMOVE:
                svc = self.objs.get("services", t["ServiceID"])
                if svc is None:
                    continue
                nt = copy.deepcopy(t)
                self.net.release_task(oid)
                nt["NetworksAttachments"] = self.net.attachments_for(nt, svc)
                ts = now()
                nt["Status"] = {**t["Status"], "State": states.PENDING, "Message": states.MESSAGES[states.PENDING],
                                "Timestamp": ts}
                nt["UpdatedAt"] = ts
                out.append(Change("tasks", nt))
            elif t.get("NodeID") and t.get("NetworksAttachments") and not states.terminal(t["Status"]["State"]):
                need = node_needs.setdefault(t["NodeID"], set())
                need.update(a["Network"]["ID"] for a in t["NetworksAttachments"])
        ingress = self.net.ingress()
        if ingress is not None:  # every node takes part in the routing mesh
            for node in self.objs.list("nodes"):
                if not any(a["Network"]["ID"] == ingress["ID"] for a in node.get("Attachments") or []):
                    node_needs.setdefault(node["ID"], set()).add(ingress["ID"])
        for nid, nets in node_needs.items():
            node = self.objs.get("nodes", nid)
            if node is None:
                continue
            new_atts = [a for a in (self.net.node_address(node, n) for n in sorted(nets)) if a]
            if new_atts:
                nn = copy.deepcopy(node)
                nn["Attachments"] = (nn.get("Attachments") or []) + new_atts
                out.append(Change("nodes", nn))
        await commit_all(self.objs, out)
