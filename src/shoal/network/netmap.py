"""The network map: everything one node needs to wire its part of the swarm's networks.

The leader computes it from the store for each node and the dispatcher pushes it with the node's
assignments; the node applies it as a whole (overlay links and neighbours, load-balancing rules, DNS
records), never as deltas. Shape::

    {
      "node": {"id": "...", "addr": "192.168.77.10"},          # underlay address (VXLAN endpoint)
      "networks": {NET_ID: {"name", "vni", "subnet", "gateway", "ingress", "internal",
                            "local_addr": "10.0.1.3/24" | None,     # this node's own address on it
                            "resource": {...}}},                     # its Engine API NetworkResource
      "peers": {NET_ID: [{"ip": "10.0.1.7", "vtep": "192.168.77.11"}, ...]},  # endpoints elsewhere
      "services": [{"id", "name", "aliases": {NET_ID: [...]}, "mode": "vip" | "dnsrr",
                    "vips": {NET_ID: "10.0.1.2"}, "backends": {NET_ID: ["10.0.1.7", ...]},
                    "ports": [{"protocol", "target", "published", "mode"}]}],
      "attachments": [{"id", "network", "ip", "created"}],   # this node's standalone containers
    }

A node takes part in the ingress network always (the routing mesh) and in every network one of its
tasks, or one of its standalone containers (an attachment), is attached to.
"""

from __future__ import annotations

from shoal.manager.allocator import vni_of
from shoal.model import states
from shoal.model.addr import ip_of
from shoal.model.network import resource
from shoal.store.objects import Objects


def _live(task: dict) -> bool:
    return states.rank(task["DesiredState"]) <= states.rank(states.RUNNING) and \
        not states.terminal(task["Status"]["State"])


def _present(task: dict) -> bool:
    """Its container may still run: a stopping task stays a VXLAN peer (and keeps its node on the network)
    until it has stopped, so connections already sent to it finish; new ones go elsewhere (``_serving``)."""
    observed = task["Status"]["State"]
    return _live(task) or (bool(task.get("NodeID")) and states.rank(observed) >= states.rank(states.ASSIGNED)
                           and not states.terminal(observed))


def _serving(task: dict) -> bool:
    return task["Status"]["State"] == states.RUNNING and task["DesiredState"] == states.RUNNING


def compute(objs: Objects, node_id: str) -> dict:
    nodes = objs.cache["nodes"]
    node = nodes.get(node_id) or {}
    networks = {n["ID"]: n for n in objs.list("networks")}
    ingress = next((nid for nid, n in networks.items() if n["Spec"].get("Ingress")), None)
    mine: set[str] = {ingress} if ingress else set()
    for t in objs.tasks_of_node(node_id):
        if _present(t):
            mine.update(a["Network"]["ID"] for a in t.get("NetworksAttachments") or [])
    own = {a["Network"]["ID"]: a["Addresses"][0] for a in node.get("Attachments") or [] if a.get("Addresses")}
    out_nets = {}
    for nid in sorted(mine):
        net = networks.get(nid)
        if net is None:
            continue
        cfg = ((net.get("IPAMOptions") or {}).get("Configs") or [{}])[0]
        out_nets[nid] = {
            "name": net["Spec"]["Name"], "vni": vni_of(net), "subnet": cfg.get("Subnet", ""),
            "gateway": cfg.get("Gateway", ""), "ingress": bool(net["Spec"].get("Ingress")),
            "internal": bool(net["Spec"].get("Internal")), "local_addr": own.get(nid),
            "resource": resource(net),  # what `docker network ls/inspect` shows on this node
        }
    peers: dict[str, list[dict]] = {nid: [] for nid in out_nets}
    for other_id, other in nodes.items():
        vtep = (other.get("Status") or {}).get("Addr", "")
        if other_id == node_id or not vtep:
            continue
        for a in other.get("Attachments") or []:
            if a["Network"]["ID"] in peers and a.get("Addresses"):
                peers[a["Network"]["ID"]].append({"ip": ip_of(a["Addresses"][0]), "vtep": vtep})
    services = []
    for svc in objs.list("services"):
        tasks = objs.tasks_of_service(svc["ID"])
        svc_nets = set()
        backends: dict[str, list[str]] = {}
        for t in tasks:
            tnode = nodes.get(t.get("NodeID", "")) or {}
            vtep = (tnode.get("Status") or {}).get("Addr", "")
            for a in t.get("NetworksAttachments") or []:
                nid = a["Network"]["ID"]
                svc_nets.add(nid)
                if nid not in out_nets or not a.get("Addresses"):
                    continue
                ip = ip_of(a["Addresses"][0])
                if _present(t) and t.get("NodeID") and t["NodeID"] != node_id and vtep:
                    peers[nid].append({"ip": ip, "vtep": vtep})
                if _serving(t):
                    backends.setdefault(nid, []).append(ip)
        ep = svc.get("Endpoint") or {}
        vips = {v["NetworkID"]: ip_of(v["Addr"]) for v in ep.get("VirtualIPs") or [] if v.get("Addr")}
        if not (svc_nets | set(vips)) & set(out_nets) and not ep.get("Ports"):
            continue
        aliases = {n["Target"]: n.get("Aliases") or []
                   for n in (svc["Spec"].get("TaskTemplate") or {}).get("Networks") or []}
        services.append({
            "id": svc["ID"], "name": svc["Spec"]["Name"], "aliases": aliases,
            "mode": (ep.get("Spec") or {}).get("Mode") or "vip",
            "vips": {nid: ip for nid, ip in vips.items() if nid in out_nets},
            "backends": {nid: sorted(ips) for nid, ips in backends.items()},
            "ports": [{"protocol": p.get("Protocol") or "tcp", "target": p["TargetPort"],
                       "published": p.get("PublishedPort") or 0, "mode": p.get("PublishMode") or "ingress"}
                      for p in ep.get("Ports") or []],
        })
    attachments = []  # standalone containers on attachable networks (tasks without a service)
    for t in objs.tasks_of_service(""):
        tnode = nodes.get(t.get("NodeID", "")) or {}
        vtep = (tnode.get("Status") or {}).get("Addr", "")
        for a in t.get("NetworksAttachments") or []:
            nid = a["Network"]["ID"]
            if not a.get("Addresses") or not _live(t):
                continue
            if t.get("NodeID") == node_id:
                attachments.append({"id": t["ID"], "network": nid, "ip": ip_of(a["Addresses"][0]),
                                    "created": t.get("CreatedAt", "")})
            elif nid in peers and vtep:
                peers[nid].append({"ip": ip_of(a["Addresses"][0]), "vtep": vtep})
    for nid in peers:
        seen: dict[str, dict] = {}
        for p in peers[nid]:
            seen[p["ip"]] = p
        peers[nid] = sorted(seen.values(), key=lambda p: p["ip"])
    return {"node": {"id": node_id, "addr": (node.get("Status") or {}).get("Addr", "")},
            "networks": out_nets, "peers": peers, "services": sorted(services, key=lambda s: s["name"]),
            "attachments": sorted(attachments, key=lambda a: a["id"])}
