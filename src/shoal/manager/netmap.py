"""The network map: everything one node needs to wire its part of the swarm's networks.

The leader computes it from the store for each node and the dispatcher pushes it with the node's
assignments; the node applies it as a whole (overlay links and neighbours, load-balancing rules, DNS
records), never as deltas. Shape::

    {
      "node": {"id": "...", "addr": "192.168.77.10"},          # underlay address (VXLAN endpoint)
      "networks": {NET_ID: {"name", "vni", "subnet", "gateway", "ingress", "internal",
                            "local_addr": "10.0.1.3/24" | None,     # this node's own address on it
                            "resource": {...},                      # its Engine API NetworkResource
                            "encrypted": bool,                      # --opt encrypted, and then
                            "encryption": {"port", "psk", "peers": [{"addr", "key"}]} | None}},
      "peers": {NET_ID: [{"ip": "10.0.1.7", "vtep": "192.168.77.11"}, ...]},  # endpoints elsewhere
      "services": [{"id", "name", "aliases": {NET_ID: [...]}, "mode": "vip" | "dnsrr",
                    "vips": {NET_ID: "10.0.1.2"}, "backends": {NET_ID: ["10.0.1.7", ...]},
                    "ports": [{"protocol", "target", "published", "mode"}]}],
      "attachments": [{"id", "network", "ip", "created"}],   # this node's standalone containers
    }

A node takes part in the ingress network always (the routing mesh) and in every network one of its
tasks, or one of its standalone containers (an attachment), is attached to. An encrypted network's
``encryption`` holds its WireGuard pre-shared key (opened here, so it reaches only the nodes on the
network), its port, and the public key of every other node on it (:mod:`shoal.manager.netkeys`); it is
None until the leader has made the keys, and the node then keeps the network closed.
"""

from __future__ import annotations

from shoal.manager.netkeys import node_public_keys, open_psk
from shoal.manager.secrets import Sealer
from shoal.model import states
from shoal.model.addr import ip_of
from shoal.model.network import resource
from shoal.model.views import NetworkView, NodeView, ServiceView, TaskView
from shoal.store.objects import Objects


def _present(t: TaskView) -> bool:
    """Its container may still run: a stopping task stays a VXLAN peer (and keeps its node on the network)
    until it has stopped, so connections already sent to it finish; new ones go elsewhere (``_serving``)."""
    return t.live or (bool(t.node_id) and not states.before(t.state, states.ASSIGNED) and not t.terminal)


def _serving(t: TaskView) -> bool:
    return t.state == states.RUNNING and t.desired == states.RUNNING


def _encryption(objs: Objects, sealer: Sealer | None, nid: str, peers: list[dict], nodes: dict[str, NodeView],
                keys: dict[str, str]) -> dict | None:
    """An encrypted network's keys for one node: the pre-shared key, the port, the other nodes' keys."""
    opened = open_psk(objs, sealer, nid)
    if opened is None:
        return None
    by_addr = {n.addr: keys[nid_] for nid_, n in nodes.items() if n.addr and nid_ in keys}
    addrs = sorted({p["vtep"] for p in peers if p["vtep"] in by_addr})
    return {"psk": opened[0], "port": opened[1], "peers": [{"addr": a, "key": by_addr[a]} for a in addrs]}


def compute(objs: Objects, node_id: str, sealer: Sealer | None = None) -> dict:
    """The network map of ``node_id``; ``sealer`` opens the encrypted networks' keys."""
    nodes = {nid: NodeView(n) for nid, n in objs.cache["nodes"].items()}
    node = nodes.get(node_id)
    networks = {n["ID"]: NetworkView(n) for n in objs.list("networks")}
    ingress = next((nid for nid, n in networks.items() if n.ingress), None)
    mine: set[str] = {ingress} if ingress else set()
    for raw in objs.tasks_of_node(node_id):
        t = TaskView(raw)
        if _present(t):
            mine.update(t.network_ids)
    out_nets = {}
    for nid in sorted(mine):
        net = networks.get(nid)
        if net is None:
            continue
        out_nets[nid] = {
            "name": net.name, "vni": net.vni, "subnet": net.subnet, "gateway": net.gateway,
            "ingress": net.ingress, "internal": net.internal,
            "local_addr": node.address_on(nid) if node is not None else None,
            "resource": resource(net.raw),  # what `docker network ls/inspect` shows on this node
            "encrypted": net.encrypted,
        }
    peers: dict[str, list[dict]] = {nid: [] for nid in out_nets}
    for other_id, other in nodes.items():
        if other_id == node_id or not other.addr:
            continue
        for a in other.attachments:
            if a["Network"]["ID"] in peers and a.get("Addresses"):
                peers[a["Network"]["ID"]].append({"ip": ip_of(a["Addresses"][0]), "vtep": other.addr})
    services = []
    for raw_svc in objs.list("services"):
        svc = ServiceView(raw_svc)
        svc_nets = set()
        backends: dict[str, list[str]] = {}
        for t in map(TaskView, objs.tasks_of_service(svc.id)):
            tnode = nodes.get(t.node_id)
            vtep = tnode.addr if tnode is not None else ""
            for a in t.attachments:
                nid = a["Network"]["ID"]
                svc_nets.add(nid)
                if nid not in out_nets or not a.get("Addresses"):
                    continue
                ip = ip_of(a["Addresses"][0])
                if _present(t) and t.node_id and t.node_id != node_id and vtep:
                    peers[nid].append({"ip": ip, "vtep": vtep})
                if _serving(t):
                    backends.setdefault(nid, []).append(ip)
        vips = {v["NetworkID"]: ip_of(v["Addr"]) for v in svc.virtual_ips if v.get("Addr")}
        if not (svc_nets | set(vips)) & set(out_nets) and not svc.ports:
            continue
        services.append({
            "id": svc.id, "name": svc.name,
            "aliases": {n["Target"]: n.get("Aliases") or [] for n in svc.task_template.get("Networks") or []},
            "mode": (svc.endpoint.get("Spec") or {}).get("Mode") or "vip",
            "vips": {nid: ip for nid, ip in vips.items() if nid in out_nets},
            "backends": {nid: sorted(ips) for nid, ips in backends.items()},
            "ports": [{"protocol": p.get("Protocol") or "tcp", "target": p["TargetPort"],
                       "published": p.get("PublishedPort") or 0, "mode": p.get("PublishMode") or "ingress"}
                      for p in svc.ports],
        })
    attachments = []  # standalone containers on attachable networks (tasks without a service)
    for t in map(TaskView, objs.tasks_of_service("")):
        tnode = nodes.get(t.node_id)
        vtep = tnode.addr if tnode is not None else ""
        for a in t.attachments:
            nid = a["Network"]["ID"]
            if not a.get("Addresses") or not t.live:
                continue
            if t.node_id == node_id:
                attachments.append({"id": t.id, "network": nid, "ip": ip_of(a["Addresses"][0]),
                                    "created": t.created_at})
            elif nid in peers and vtep:
                peers[nid].append({"ip": ip_of(a["Addresses"][0]), "vtep": vtep})
    for nid in peers:
        seen: dict[str, dict] = {}
        for p in peers[nid]:
            seen[p["ip"]] = p
        peers[nid] = sorted(seen.values(), key=lambda p: p["ip"])
    node_keys = node_public_keys(objs)
    for nid, net_out in out_nets.items():
        if net_out["encrypted"]:
            net_out["encryption"] = _encryption(objs, sealer, nid, peers[nid], nodes, node_keys)
    return {"node": {"id": node_id, "addr": node.addr if node is not None else ""},
            "networks": out_nets, "peers": peers, "services": sorted(services, key=lambda s: s["name"]),
            "attachments": sorted(attachments, key=lambda a: a["id"])}
