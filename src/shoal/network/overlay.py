"""The overlay: per swarm network a Linux bridge and a VXLAN device on this node, with static forwarding.

For every network in the node's network map:

- a bridge ``sbr-<id>`` (up) holding the node's own address on the network and every service VIP on it
  (as /32); task containers are attached to it by the plugin (:mod:`shoal.network.plugin`);
- a VXLAN device ``svx-<id>`` (VNI of the network, UDP 4789, local = the node's underlay address, no
  learning, proxy ARP) enslaved to the bridge;
- for every endpoint on another node (``peers``): a permanent FDB entry ``MAC → VTEP`` and a permanent
  neighbour entry ``IP → MAC`` on the VXLAN device, so ARP is answered locally and nothing floods.

An encrypted network (``--opt encrypted``) is carried through its WireGuard tunnel
(:mod:`shoal.network.wireguard`): its VXLAN device's local address and its FDB destinations are the
nodes' inner IPv6 addresses on the tunnel, and its bridge's MTU leaves room for both encapsulations. It
is set up only once its tunnel is up: never in clear.

MACs are derived from IPs (``02:42:<ip bytes>``), like Docker's overlay, so no MAC has to be distributed.
:meth:`Overlay.sync` computes the whole desired state and makes the kernel match it (creating, changing
and deleting links, addresses and entries); there are no hand-tracked deltas.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from dataclasses import dataclass, field
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import ndmsg

from shoal.network.wireguard import INNER_VXLAN_OVERHEAD, WG_OVERHEAD, WireGuard, inner_addr

log = logging.getLogger(__name__)

BRIDGE_PREFIX = "sbr-"
VXLAN_PREFIX = "svx-"
VXLAN_PORT = 4789
VXLAN_OVERHEAD = 50  # outer IPv4 + UDP + VXLAN + inner Ethernet
ENCRYPTED_EXTRA = WG_OVERHEAD + INNER_VXLAN_OVERHEAD - VXLAN_OVERHEAD  # what an encrypted bridge gives up more
DEFAULT_MTU = 1450
NUD_PERMANENT = ndmsg.states["permanent"]
NTF_MASTER = ndmsg.flags["master"]
#: accept what is bridged or routed through shoal's bridges (Docker sets the FORWARD policy to DROP)
IPTABLES_RULES = (("-i", "sbr-+", "-j", "ACCEPT"), ("-o", "sbr-+", "-j", "ACCEPT"))
IPTABLES_CHAIN = "DOCKER-USER"


def bridge_name(net_id: str) -> str:
    return BRIDGE_PREFIX + net_id[:10]


def vxlan_name(net_id: str) -> str:
    return VXLAN_PREFIX + net_id[:10]


def mac_of(ip: str) -> str:
    """The MAC of an overlay address: ``02:42`` and the four bytes of the IPv4 address."""
    return "02:42:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(ip.split("/")[0]).packed)


@dataclass
class _NetState:
    """What one network should look like on this node."""

    vni: int
    local: str | None = None  # the VXLAN device's local address, if not the node's underlay address
    blocked: bool = False  # encrypted, and its tunnel is not up: the bridge stays, no VXLAN device
    addrs: set[tuple[str, int]] = field(default_factory=set)  # (ip, prefixlen) on the bridge
    mac: str | None = None  # the bridge's MAC (derived from the node's own address)
    fdb: dict[str, str] = field(default_factory=dict)  # MAC -> VTEP
    neigh: dict[str, str] = field(default_factory=dict)  # IP -> MAC


def desired_state(netmap: dict, tunnels: set[str] | frozenset[str] = frozenset()) -> dict[str, _NetState]:
    """The links and entries ``netmap`` asks for, by network ID; an encrypted network only when its
    tunnel is up (in ``tunnels``), with the tunnel's inner addresses as VXLAN endpoints."""
    out: dict[str, _NetState] = {}
    node_addr = (netmap.get("node") or {}).get("addr") or ""
    for nid, net in (netmap.get("networks") or {}).items():
        encrypted = bool(net.get("encrypted"))
        vni = int(net["vni"])
        st = _NetState(vni=vni, local=inner_addr(vni, node_addr) if encrypted and node_addr else None,
                       blocked=encrypted and (nid not in tunnels or not node_addr))
        if net.get("local_addr"):
            iface = ipaddress.IPv4Interface(net["local_addr"])
            st.addrs.add((str(iface.ip), iface.network.prefixlen))
            st.mac = mac_of(str(iface.ip))
        for svc in netmap.get("services") or []:
            vip = (svc.get("vips") or {}).get(nid)
            if vip:
                st.addrs.add((vip.split("/")[0], 32))
        for peer in (netmap.get("peers") or {}).get(nid) or []:
            mac = mac_of(peer["ip"])
            st.fdb[mac] = inner_addr(vni, peer["vtep"]) if encrypted else peer["vtep"]
            st.neigh[peer["ip"]] = mac
        out[nid] = st
    return out


class Overlay:
    """Keeps this node's bridges and VXLAN devices equal to the network map."""

    def __init__(self, mtu: int | None = None, iptables: bool = True, tunnels: WireGuard | None = None) -> None:
        self.mtu = mtu
        self.iptables = iptables
        self.tunnels = tunnels  # the encrypted networks' WireGuard tunnels (None: no encrypted network here)
        self.ready: set[str] = set()  # networks whose bridge and VXLAN device are in place

    bridge_name = staticmethod(bridge_name)
    vxlan_name = staticmethod(vxlan_name)

    async def sync(self, netmap: dict) -> None:
        """Make links, addresses, FDB and neighbour entries exactly what ``netmap`` says."""
        local = (netmap.get("node") or {}).get("addr") or ""
        tunnels = await self.tunnels.sync(netmap) if self.tunnels is not None else set()
        self.ready = await asyncio.to_thread(self._sync, desired_state(netmap, tunnels), local)
        await asyncio.to_thread(_sysctls, sorted(bridge_name(n) for n in self.ready))
        if self.iptables:
            await _iptables(add=True)

    async def clear(self) -> None:
        """Remove every link shoal made, and its iptables rules."""
        self.ready = await asyncio.to_thread(self._sync, {}, "")
        if self.tunnels is not None:
            await self.tunnels.clear()
        if self.iptables:
            await _iptables(add=False)

    # -- netlink (runs in a worker thread) -------------------------------------------------------------
    def _sync(self, want: dict[str, _NetState], local: str) -> set[str]:
        with IPRoute() as ipr:
            mtu = self.mtu or _underlay_mtu(ipr, local)
            links = {_name(link): link for link in ipr.get_links()}
            wanted = {bridge_name(n) for n in want} | {vxlan_name(n) for n, st in want.items() if not st.blocked}
            for name, link in links.items():
                if name.startswith((BRIDGE_PREFIX, VXLAN_PREFIX)) and name not in wanted:
                    log.info("overlay: removing %s", name)
                    with contextlib.suppress(NetlinkError):
                        ipr.link("del", index=link["index"])
            ready = set()
            for nid, st in sorted(want.items()):
                try:
                    self._sync_net(ipr, links, nid, st, local, mtu)
                    if not st.blocked:
                        ready.add(nid)
                except NetlinkError as e:
                    log.error("overlay: network %s: %s", nid, e)
            return ready

    def _sync_net(self, ipr: IPRoute, links: dict, nid: str, st: _NetState, local: str, mtu: int) -> None:
        br, vx = bridge_name(nid), vxlan_name(nid)
        if st.local is not None or st.blocked:  # through the network's tunnel
            local, mtu = st.local or "", mtu - ENCRYPTED_EXTRA
        if br not in links:
            ipr.link("add", ifname=br, kind="bridge")
        bidx = ipr.link_lookup(ifname=br)[0]
        battrs: dict = {"mtu": mtu, "state": "up"}
        if st.mac:
            battrs["address"] = st.mac
        ipr.link("set", index=bidx, **battrs)
        have = {(a.get("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=bidx, family=socket.AF_INET)}
        for ip, plen in have - st.addrs:
            ipr.addr("del", index=bidx, address=ip, prefixlen=plen)
        for ip, plen in st.addrs - have:
            ipr.addr("add", index=bidx, address=ip, prefixlen=plen)
        if st.blocked:  # its tunnel is not up (no keys yet, or it failed): nothing leaves this node in clear
            log.warning("overlay: encrypted network %s waits for its tunnel", nid)
            return

        old = links.get(vx)
        if old is not None and not _vxlan_matches(old, st.vni, local):
            log.info("overlay: recreating %s (VNI or local address changed)", vx)
            ipr.link("del", index=old["index"])
            old = None
        if old is None:
            spec: dict = {"ifname": vx, "kind": "vxlan", "vxlan_id": st.vni, "vxlan_port": VXLAN_PORT,
                          "vxlan_learning": 0, "vxlan_proxy": 1}
            if local:
                spec["vxlan_local6" if ":" in local else "vxlan_local"] = local
            ipr.link("add", **spec)
        vidx = ipr.link_lookup(ifname=vx)[0]
        ipr.link("set", index=vidx, master=bidx, mtu=mtu, state="up")

        entries = [n for n in ipr.fdb("dump", ifindex=vidx) if n["ifindex"] == vidx]
        fdb = {n.get("NDA_LLADDR"): n.get("NDA_DST") for n in entries if n.get("NDA_DST")}
        for mac, dst in fdb.items():
            if st.fdb.get(mac) != dst:
                ipr.fdb("del", ifindex=vidx, lladdr=mac, dst=dst)
        for n in entries:  # what the bridge learned behind a removed peer: it may be local now
            mac = n.get("NDA_LLADDR")
            if n.get("NDA_MASTER") and not n["state"] & NUD_PERMANENT and mac not in st.fdb:
                with contextlib.suppress(NetlinkError):
                    ipr.fdb("del", ifindex=vidx, lladdr=mac, flags=NTF_MASTER)
        for mac, dst in st.fdb.items():
            if fdb.get(mac) != dst:
                ipr.fdb("append", ifindex=vidx, lladdr=mac, dst=dst, state=NUD_PERMANENT)

        neigh = {n.get("NDA_DST"): (n.get("NDA_LLADDR"), n["state"])
                 for n in ipr.get_neighbours(family=socket.AF_INET, ifindex=vidx) if n["ifindex"] == vidx}
        for ip, (mac, state) in neigh.items():
            if st.neigh.get(ip) != mac or not state & NUD_PERMANENT:
                with contextlib.suppress(NetlinkError):
                    ipr.neigh("del", dst=ip, ifindex=vidx)
        for ip, mac in st.neigh.items():
            if neigh.get(ip) != (mac, NUD_PERMANENT):
                ipr.neigh("replace", dst=ip, lladdr=mac, ifindex=vidx, state=NUD_PERMANENT)


def _name(link: dict) -> str:
    return link.get("IFLA_IFNAME") or ""


def _vxlan_matches(link: dict, vni: int, local: str) -> bool:
    info = link.get("IFLA_LINKINFO")
    if info is None or info.get("IFLA_INFO_KIND") != "vxlan":
        return False
    data = info.get("IFLA_INFO_DATA")
    return bool(data) and data.get("IFLA_VXLAN_ID") == vni and \
        (data.get("IFLA_VXLAN_LOCAL") or data.get("IFLA_VXLAN_LOCAL6") or "") == local


def _underlay_mtu(ipr: IPRoute, local: str) -> int:
    """The MTU of the link holding the node's underlay address, less the VXLAN overhead."""
    if local:
        for a in ipr.get_addr(family=socket.AF_INET):
            if a.get("IFA_ADDRESS") == local:
                link = ipr.get_links(a["index"])[0]
                mtu = link.get("IFLA_MTU") or 0
                if a["index"] != 1 and mtu > VXLAN_OVERHEAD:  # not lo: its 65536 would be useless
                    return min(mtu - VXLAN_OVERHEAD, 9000)
    return DEFAULT_MTU


def _sysctls(bridges: list[str]) -> None:
    """Routing through the bridges: forwarding on, no ICMP redirects (VIP traffic leaves where it came)."""
    settings = {"net/ipv4/ip_forward": "1", "net/ipv4/conf/all/send_redirects": "0"}
    settings.update({f"net/ipv4/conf/{br}/send_redirects": "0" for br in bridges})
    for key, value in settings.items():
        path = Path("/proc/sys") / key
        try:
            if path.read_text().strip() != value:
                path.write_text(value)
        except OSError as e:
            log.warning("overlay: cannot set %s=%s: %s", key.replace("/", "."), value, e)


async def _run(*args: str) -> int:
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.DEVNULL)
    return await proc.wait()


async def _iptables(add: bool) -> None:
    """Insert (or delete) the ACCEPT rules for shoal's bridges in DOCKER-USER, idempotently.

    Nothing to do when the chain does not exist: no dockerd in this namespace set FORWARD to DROP.
    """
    try:
        if await _run("iptables", "-w", "5", "-S", IPTABLES_CHAIN) != 0:
            return
        for rule in IPTABLES_RULES:
            present = await _run("iptables", "-w", "5", "-C", IPTABLES_CHAIN, *rule) == 0
            if add and not present:
                await _run("iptables", "-w", "5", "-I", IPTABLES_CHAIN, *rule)
            while not add and present:
                await _run("iptables", "-w", "5", "-D", IPTABLES_CHAIN, *rule)
                present = await _run("iptables", "-w", "5", "-C", IPTABLES_CHAIN, *rule) == 0
    except FileNotFoundError:
        log.warning("overlay: iptables not found; traffic through shoal bridges may be dropped by FORWARD")
