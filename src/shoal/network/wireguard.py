"""WireGuard tunnels under the encrypted overlays (``docker network create --opt encrypted``).

Docker encrypts an overlay's VXLAN traffic with IPsec ESP. This kernel has no ESP, so shoal carries an
encrypted network's VXLAN inside WireGuard (Noise IKpsk2: Curve25519, ChaCha20-Poly1305, BLAKE2s) —
the kernel's module where it exists, else ``wireguard-go`` (userspace, on TUN), both configured with
``wg``. Per encrypted network and node:

- an interface ``swg-<net id[:10]>`` listening on the network's UDP port (from the leader), with this
  node's key pair (:func:`load_or_make_key`, ``<data-dir>/wireguard.key``, mode 0600) and one peer per
  other node of the network: its public key, its underlay address as endpoint, and the network's
  pre-shared key, which the leader makes and rotates and sends only to the nodes on the network;
- an inner IPv6 address per node, made from the VNI and the node's underlay address
  (:func:`inner_addr`), so nothing has to be allocated; the network's VXLAN device uses it as its local
  address and its peers' as FDB destinations (see :mod:`shoal.network.overlay`).

VXLAN over IPv6 is used only here, and IPv6 VXLAN that did not come out of a ``swg-*`` interface is
dropped (nftables table ``ip6 shoal_wg``), so nobody on the LAN can inject clear frames into an
encrypted network. A new pre-shared key changes nothing for the sessions already established (WireGuard
mixes the key into handshakes only): traffic goes on, and the next handshake (at most 2 minutes later)
uses the new key.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import logging
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from shoal.model.network import valid_wg_key
from shoal.tls.files import KEY_MODE, write_file

log = logging.getLogger(__name__)

PREFIX = "swg-"
INNER = ipaddress.IPv6Network("fd53:6f61::/32")  # "So" "a": the inner addresses of every tunnel
WG_OVERHEAD = 60  # outer IPv4 20 + UDP 8 + WireGuard 32
INNER_VXLAN_OVERHEAD = 70  # IPv6 40 + UDP 8 + VXLAN 8 + inner Ethernet 14
NFT_TABLE = "shoal_wg"
LINK_WAIT = 5.0  # how long a userspace tunnel may take to show its interface
IFA_F_NODAD = 0x02


def wg_name(net_id: str) -> str:
    return PREFIX + net_id[:10]


def inner_addr(vni: int, ipv4: str) -> str:
    """A node's inner address on a network's tunnel: fd53:6f61:<VNI, 32 bits>::<its IPv4 address>."""
    return str(ipaddress.IPv6Address(int(INNER.network_address) | (vni << 64) | int(ipaddress.IPv4Address(ipv4))))


def public_key(private: str) -> str:
    raw = X25519PrivateKey.from_private_bytes(base64.b64decode(private)).public_key().public_bytes_raw()
    return base64.b64encode(raw).decode()


def load_or_make_key(path: Path) -> str:
    """This node's private key (base64), made on first use and kept in ``path`` (mode 0600)."""
    with contextlib.suppress(FileNotFoundError):
        text = path.read_text().strip()
        if valid_wg_key(text):
            return text
        log.warning("wireguard: %s holds no valid key; making a new one", path)
    key = base64.b64encode(X25519PrivateKey.generate().private_bytes_raw()).decode()
    write_file(path, (key + "\n").encode(), KEY_MODE)  # 0600 from its first byte, in a 0700 directory
    return key


@dataclass(frozen=True)
class Peer:
    key: str  # its public key
    endpoint: str  # its underlay address
    inner: str  # its inner address on this tunnel


@dataclass(frozen=True)
class Tunnel:
    """What one encrypted network's tunnel should be on this node."""

    net_id: str
    vni: int
    port: int
    psk: str
    local: str  # this node's inner address
    peers: tuple[Peer, ...]

    @property
    def name(self) -> str:
        return wg_name(self.net_id)

    def config(self, private_key: str) -> str:
        """The tunnel in ``wg syncconf``'s format (read from stdin: the keys never reach argv)."""
        lines = ["[Interface]", f"PrivateKey = {private_key}", f"ListenPort = {self.port}"]
        for p in self.peers:
            lines += ["", "[Peer]", f"PublicKey = {p.key}", f"PresharedKey = {self.psk}",
                      f"Endpoint = {p.endpoint}:{self.port}", f"AllowedIPs = {p.inner}/128"]
        return "\n".join(lines) + "\n"


def desired_tunnels(netmap: dict) -> dict[str, Tunnel]:
    """The tunnels ``netmap`` asks for, by network ID: one per encrypted network that came with its keys
    (an encrypted network without them gets no tunnel, and so no overlay: never clear traffic)."""
    local = (netmap.get("node") or {}).get("addr") or ""
    out: dict[str, Tunnel] = {}
    for nid, net in (netmap.get("networks") or {}).items():
        enc = net.get("encryption")
        if not net.get("encrypted") or not enc or not local:
            continue
        vni = int(net["vni"])
        peers = tuple(Peer(p["key"], p["addr"], inner_addr(vni, p["addr"]))
                      for p in sorted(enc.get("peers") or [], key=lambda p: p["addr"])
                      if p["addr"] != local and valid_wg_key(p.get("key")))
        out[nid] = Tunnel(nid, vni, int(enc["port"]), enc["psk"], inner_addr(vni, local), peers)
    return out


def nft_script(active: bool) -> str:
    """Drop IPv6 VXLAN that did not come through a tunnel (only encrypted networks use IPv6 VXLAN)."""
    script = f"table ip6 {NFT_TABLE}\ndelete table ip6 {NFT_TABLE}\n"
    if active:
        script += (f"table ip6 {NFT_TABLE} {{\n"
                   "  chain input {\n"
                   "    type filter hook input priority -10; policy accept;\n"
                   f'    iifname != "{PREFIX}*" udp dport 4789 drop\n'
                   "  }\n}\n")
    return script


async def _run(*argv: str, stdin: str | None = None) -> tuple[int, str]:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    except FileNotFoundError:
        return 127, f"{argv[0]} is not installed (scripts/install-deps.sh installs it)"
    out, _ = await proc.communicate(stdin.encode() if stdin is not None else None)
    return proc.returncode or 0, out.decode(errors="replace").strip()


class WireGuard:
    """Keeps this node's ``swg-*`` tunnels equal to the encrypted networks of the map."""

    def __init__(self, key_file: Path, userspace: str = "wireguard-go", wg: str = "wg", mtu: int | None = None,
                 firewall: bool = True) -> None:
        self.private_key = load_or_make_key(key_file)
        self.public_key = public_key(self.private_key)
        self.userspace, self.wg, self.mtu, self.firewall = userspace, wg, mtu, firewall
        self._firewall_on: bool | None = None

    async def sync(self, netmap: dict) -> set[str]:
        """Make the tunnels what ``netmap`` says; returns the networks whose tunnel is up."""
        want = desired_tunnels(netmap)
        ready: set[str] = set()
        if want or self._firewall_on:
            try:
                await self._set_firewall(bool(want))
            except RuntimeError as e:  # without the guard against injected frames: every encrypted network closed
                log.error("wireguard: %s", e)
                return ready
        local = (netmap.get("node") or {}).get("addr") or ""
        mtu = await asyncio.to_thread(self._prune_and_mtu, {t.name for t in want.values()}, local)
        for nid, t in sorted(want.items()):
            try:
                await self._sync_tunnel(t, mtu)
                ready.add(nid)
            except (OSError, NetlinkError, RuntimeError) as e:
                log.error("wireguard: network %s: %s", nid, e)
        return ready

    async def clear(self) -> None:
        """Leaving the swarm: every tunnel and the firewall table go."""
        await asyncio.to_thread(self._prune_and_mtu, set(), "")
        if self._firewall_on is not False:
            try:
                await self._set_firewall(False)
            except RuntimeError as e:
                log.warning("wireguard: %s", e)

    async def _set_firewall(self, active: bool) -> None:
        if not self.firewall:
            return
        rc, out = await _run("nft", "-f", "-", stdin=nft_script(active))
        if rc != 0:
            raise RuntimeError(f"nft: {out}")
        self._firewall_on = active

    def _prune_and_mtu(self, wanted: set[str], local: str) -> int:
        """Delete tunnels no longer wanted (a userspace tunnel's process ends with its interface); the
        tunnels' MTU from the underlay's."""
        with IPRoute() as ipr:
            for link in ipr.get_links():
                name = link.get("IFLA_IFNAME") or ""
                if name.startswith(PREFIX) and name not in wanted:
                    log.info("wireguard: removing %s", name)
                    with contextlib.suppress(NetlinkError):
                        ipr.link("del", index=link["index"])
            if self.mtu:
                return self.mtu
            for a in ipr.get_addr(family=socket.AF_INET):
                if local and a.get("IFA_ADDRESS") == local and a["index"] != 1:
                    return min(ipr.get_links(a["index"])[0].get("IFLA_MTU") or 1500, 9000) - WG_OVERHEAD
            return 1500 - WG_OVERHEAD

    async def _sync_tunnel(self, t: Tunnel, mtu: int) -> None:
        index = await asyncio.to_thread(self._link_index, t.name)
        if index is None:
            index = await self._create(t.name)
        await asyncio.to_thread(self._set_link, index, t, mtu)
        # every time (a map, the resync): syncconf changes only what differs, so drift is repaired and the
        # sessions in place go on
        rc, out = await _run(self.wg, "syncconf", t.name, "/dev/stdin", stdin=t.config(self.private_key))
        if rc != 0:
            raise RuntimeError(f"wg syncconf {t.name}: {out}")

    @staticmethod
    def _link_index(name: str) -> int | None:
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=name)
            return found[0] if found else None

    async def _create(self, name: str) -> int:
        """The kernel's WireGuard where it has it, else a ``wireguard-go`` process (which daemonizes)."""
        try:
            await asyncio.to_thread(self._create_kernel, name)
        except NetlinkError as e:
            log.info("wireguard: no kernel WireGuard (%s); starting %s %s", e, self.userspace, name)
            rc, out = await _run(self.userspace, name)
            if rc != 0:
                raise RuntimeError(f"{self.userspace} {name}: {out}") from None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LINK_WAIT
        while (index := await asyncio.to_thread(self._link_index, name)) is None:
            if loop.time() > deadline:
                raise RuntimeError(f"{name} did not appear")
            await asyncio.sleep(0.05)
        return index

    @staticmethod
    def _create_kernel(name: str) -> None:
        with IPRoute() as ipr:
            ipr.link("add", ifname=name, kind="wireguard")

    @staticmethod
    def _set_link(index: int, t: Tunnel, mtu: int) -> None:
        sysctl = Path(f"/proc/sys/net/ipv6/conf/{t.name}/disable_ipv6")
        with contextlib.suppress(OSError):
            if sysctl.read_text().strip() != "0":
                sysctl.write_text("0")
        with IPRoute() as ipr:
            ipr.link("set", index=index, mtu=mtu, state="up")
            have = {(a.get("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=index, family=socket.AF_INET6)
                    if not (a.get("IFA_ADDRESS") or "").startswith("fe80:")}
            want = (t.local, 64)
            for ip, plen in have - {want}:
                ipr.addr("del", index=index, address=ip, prefixlen=plen, family=socket.AF_INET6)
            if want not in have:
                ipr.addr("add", index=index, address=t.local, prefixlen=64, family=socket.AF_INET6,
                         flags=IFA_F_NODAD)
