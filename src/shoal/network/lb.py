"""Service load balancing without IPVS: nftables rules for VIPs, the ingress routing mesh, SNAT and
isolation between networks.

Modelled on kube-proxy's nftables mode: :func:`render` computes the whole ruleset of table ``ip shoal``
from the network map, and :class:`LoadBalancer` applies it as one ``nft -f -`` transaction that deletes
and recreates the table, so what is in the kernel is always one complete map, never a mix.

Chains of ``table ip shoal``:

- ``prerouting`` (nat): from a network's bridge to a service VIP on it, any TCP/UDP/SCTP port, DNAT
  round-robin (``numgen inc``) over the service's backends on that network; to any local address on an
  ingress-published port, DNAT round-robin to ``backend:target`` on the ingress network;
- ``output`` (nat): the same for connections made on the node itself (``curl 127.0.0.1:P`` works:
  ``route_localnet`` is set on the ingress bridge, see :func:`_route_localnet`);
- ``postrouting`` (nat): DNATed connections leaving through a shoal bridge get SNAT to the node's own
  address on that network, so replies come back through this node (conntrack un-NATs them);
- ``input`` (filter): TCP/UDP to a VIP that was not DNATed (no backend, or from another network) and
  ingress ports without backends are rejected; packets to 127.0.0.0/8 from a shoal bridge that do not
  belong to a DNATed connection are dropped (``route_localnet`` must not open the node's loopback);
- ``forward`` (filter): what enters a shoal bridge from another interface is dropped unless it was
  DNATed by these rules or is a reply; traffic within one bridge is untouched.

Conntrack keeps established connections on their backend; new connections see the new maps at once.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from pathlib import Path

from shoal.model.addr import ip_of
from shoal.network.overlay import bridge_name

log = logging.getLogger(__name__)

TABLE = "shoal"
PROTOCOLS = ("tcp", "udp", "sctp")


def _comment(text: str) -> str:
    return 'comment "' + text.replace('"', "")[:120] + '"'


def _spread(ips: list[str]) -> str:
    """``numgen inc mod K map { 0 : ip0, ... }``: round-robin over ``ips``, one pick per new connection."""
    return f"numgen inc mod {len(ips)} map {{ " + ", ".join(f"{i} : {ip}" for i, ip in enumerate(ips)) + " }"


def ingress_network(netmap: dict) -> str | None:
    """The ID of the ingress network in ``netmap`` (if this node takes part in it)."""
    return next((nid for nid, n in sorted((netmap.get("networks") or {}).items()) if n.get("ingress")), None)


def render(netmap: dict, table: str = TABLE) -> str:
    """The complete ``nft -f`` script for ``netmap``: (re)creates ``table ip <table>`` in one transaction."""
    nets = netmap.get("networks") or {}
    local = {nid: ip_of(n["local_addr"]) for nid, n in sorted(nets.items()) if n.get("local_addr")}
    services = sorted(netmap.get("services") or [], key=lambda s: s["name"])
    pre: list[str] = []
    out: list[str] = []
    inp: list[str] = []
    vips: list[str] = []

    for svc in services:
        if (svc.get("mode") or "vip") != "vip":
            continue
        for nid, vip in sorted((svc.get("vips") or {}).items()):
            if nid not in local:  # no own address on the network: nothing to SNAT to
                continue
            vip = ip_of(vip)
            vips.append(vip)
            backends = (svc.get("backends") or {}).get(nid) or []
            if backends:
                match = f"ip daddr {vip} meta l4proto {{ {', '.join(PROTOCOLS)} }}"
                action = f"dnat to {_spread(backends)} {_comment(svc['name'])}"
                pre.append(f'iifname "{bridge_name(nid)}" {match} {action}')
                out.append(f"{match} {action}")

    ingress = ingress_network(netmap)
    # the mesh answers on the node's own addresses, not on overlay addresses (VIPs, bridges) that are
    # local only so containers can reach them
    overlay_addrs = sorted({ip_of(v) for svc in services for nid, v in (svc.get("vips") or {}).items() if nid in local}
                           | {ip for nid, ip in local.items() if nid != ingress}, key=ipaddress.IPv4Address)
    not_overlay = f"ip daddr != {{ {', '.join(overlay_addrs)} }} " if overlay_addrs else ""
    if ingress in local:
        for svc in services:
            backends = (svc.get("backends") or {}).get(ingress) or []
            for port in svc.get("ports") or []:
                proto = (port.get("protocol") or "tcp").lower()
                if port.get("mode", "ingress") != "ingress" or not port.get("published") or proto not in PROTOCOLS:
                    continue
                match = f"{proto} dport {int(port['published'])}"
                note = _comment(f"{svc['name']} {port['published']}/{proto}")
                if backends:
                    action = f"dnat to {_spread(backends)} : {int(port['target'])} {note}"
                    pre.append(f"fib daddr type local {not_overlay}{match} {action}")
                    out.append(f"fib daddr type local {not_overlay}{match} {action}")
                else:
                    inp.append(f"{match} {_reject(proto)} {note}")

    if vips:
        vset = "{ " + ", ".join(sorted(set(vips), key=ipaddress.IPv4Address)) + " }"
        inp.insert(0, f"ip daddr {vset} meta l4proto tcp reject with tcp reset")
        inp.insert(1, f"ip daddr {vset} meta l4proto {{ udp, sctp }} reject")
    inp.append('iifname "sbr-*" ip daddr 127.0.0.0/8 ct status & dnat == 0 drop')

    post = [f'oifname "{bridge_name(nid)}" ct status dnat snat to {ip}' for nid, ip in local.items()]
    fwd = ['oifname "sbr-*" ct state established,related accept']
    fwd += [f'oifname "{br}" iifname != "{br}" ct status & dnat == 0 drop'
            for br in (bridge_name(nid) for nid in sorted(nets))]

    chains = [
        ("prerouting", "type nat hook prerouting priority dstnat; policy accept;", pre),
        ("output", "type nat hook output priority -100; policy accept;", out),
        ("postrouting", "type nat hook postrouting priority srcnat; policy accept;", post),
        ("input", "type filter hook input priority filter; policy accept;", inp),
        ("forward", "type filter hook forward priority filter; policy accept;", fwd),
    ]
    lines = [f"table ip {table}", f"delete table ip {table}", f"table ip {table} {{"]
    for name, hook, rules in chains:
        lines += [f"\tchain {name} {{", f"\t\t{hook}", *(f"\t\t{r}" for r in rules), "\t}"]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _reject(proto: str) -> str:
    return "reject with tcp reset" if proto == "tcp" else "reject"


def _route_localnet(netmap: dict) -> None:
    """Let node-local connections to ``127.0.0.1:<published>`` be DNATed out of the ingress bridge.

    Without ``route_localnet`` the kernel refuses to route a 127.0.0.0/8 source (and the un-NATed
    replies) through a non-loopback device; the ``input`` chain drops what does not belong to our DNAT.
    """
    ingress = ingress_network(netmap)
    if ingress is None:
        return
    path = Path("/proc/sys/net/ipv4/conf") / bridge_name(ingress) / "route_localnet"
    try:
        if path.exists() and path.read_text().strip() != "1":
            path.write_text("1")
    except OSError as e:
        log.warning("lb: cannot set route_localnet on %s: %s", bridge_name(ingress), e)


async def _nft(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        "nft", *args, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    return proc.returncode or 0, out.decode(), err.decode()


class LoadBalancer:
    """Keeps table ``ip shoal`` equal to :func:`render` of the latest network map."""

    def __init__(self, table: str = TABLE) -> None:
        self.table = table
        self.applied: str | None = None  # the ruleset text last applied successfully
        self.listed: str | None = None  # ``nft list table`` right after that apply

    async def sync(self, netmap: dict, verify: bool = False) -> None:
        """Apply the ruleset for ``netmap`` as one transaction; nothing to do when the text is unchanged
        — unless ``verify`` finds the kernel's table differing from what was applied (drift)."""
        text = render(netmap, self.table)
        if text == self.applied and verify:
            rc, out, _ = await _nft("list", "table", "ip", self.table)
            if rc != 0 or out != self.listed:
                log.warning("lb: table ip %s %s; applying it again", self.table,
                            "is gone" if rc != 0 else "differs from the one applied")
                self.applied = None
        if text != self.applied:
            self.applied = self.listed = None
            rc, _, err = await _nft("-f", "-", stdin=text)
            if rc != 0:
                raise RuntimeError(f"nft -f failed: {err.strip()}")
            self.applied = text
            rc, out, _ = await _nft("list", "table", "ip", self.table)
            self.listed = out if rc == 0 else None
            log.info("lb: applied table ip %s (%d services)", self.table, len(netmap.get("services") or []))
        await asyncio.to_thread(_route_localnet, netmap)

    async def clear(self) -> None:
        """Delete table ``ip shoal`` (no error when it does not exist)."""
        await _nft("-f", "-", stdin=f"table ip {self.table}\ndelete table ip {self.table}\n")
        self.applied = self.listed = None

    async def current(self) -> dict:
        """The table as the kernel has it (``nft -j list table``), or ``{}`` when it does not exist."""
        rc, out, _ = await _nft("-j", "list", "table", "ip", self.table)
        return json.loads(out) if rc == 0 and out.strip() else {}
