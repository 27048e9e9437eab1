"""The lab's LAN: bridge ``lan0`` in a namespace of its own (``shoal-lan``), one veth cable per host.

The bridge is not in the machine's namespace on purpose: a dockerd there sets the FORWARD policy to DROP
and, with br_netfilter loaded, frames crossing a bridge in that namespace are dropped. The LAN namespace
has no uplink and the machine has no route to it, so lab traffic never leaves the lab.
"""

from __future__ import annotations

import json

from shoal.lab.hosts import NETNS_DIR, Host, LabError, run

LAN_NS = "shoal-lan"
BRIDGE = "lan0"
SUBNET = "192.168.77.0/24"
GATEWAY = "192.168.77.1"  # lan0's address: a router with nowhere to route, so outside traffic fails fast


def host_ip(index: int) -> str:
    """The LAN address of the index-th host (0-based): 192.168.77.10, .11, ..."""
    if not 0 <= index < 240:
        raise LabError("a lab has at most 240 hosts")
    return f"192.168.77.{10 + index}"


def lan_exists() -> bool:
    return (NETNS_DIR / LAN_NS).exists()


def create_lan() -> None:
    """Create the LAN namespace and its bridge (idempotent)."""
    if not lan_exists():
        run(["ip", "netns", "add", LAN_NS], what="creating the LAN namespace")
    ip = ["ip", "-n", LAN_NS]
    if run([*ip, "link", "show", BRIDGE], check=False).returncode != 0:
        run([*ip, "link", "add", BRIDGE, "type", "bridge"], what="creating the LAN bridge")
    run([*ip, "addr", "replace", f"{GATEWAY}/24", "dev", BRIDGE], what="addressing the LAN bridge")
    run([*ip, "link", "set", "lo", "up"], what="LAN loopback")
    run([*ip, "link", "set", BRIDGE, "up"], what="LAN bridge up")


def port(host: Host) -> str:
    """The bridge-side end of the host's cable."""
    name = f"v-{host.name}"
    if len(name) > 15:
        raise LabError(f"host name {host.name!r} is too long for an interface name")
    return name


def connect(host: Host) -> None:
    """Cable the host to the LAN: ``eth0`` (its address, default route via the LAN) in the host's netns,
    ``v-<host>`` on the bridge."""
    ip = ["ip", "-n", LAN_NS]
    what = f"host {host.name}: cabling to the LAN"
    if run([*ip, "link", "show", port(host)], check=False).returncode != 0:
        run([*ip, "link", "add", port(host), "type", "veth", "peer", "name", "eth0", "netns", host.netns],
            what=what)
    run([*ip, "link", "set", port(host), "master", BRIDGE, "up"], what=what)
    hip = ["ip", "-n", host.netns]
    run([*hip, "addr", "replace", f"{host.ip}/24", "dev", "eth0"], what=what)
    run([*hip, "link", "set", "eth0", "up"], what=what)
    run([*hip, "route", "replace", "default", "via", GATEWAY, "dev", "eth0"], what=what)
    host.link = "up"


def set_link(host: Host, up: bool) -> None:
    """Plug (up) or pull (down) the host's cable at the bridge."""
    run(["ip", "-n", LAN_NS, "link", "set", port(host), "up" if up else "down"],
        what=f"host {host.name}: setting its LAN link {'up' if up else 'down'}")
    host.link = "up" if up else "down"


def link_is_up(host: Host) -> bool | None:
    """Whether the bridge-side port is administratively up (None if it does not exist)."""
    cp = run(["ip", "-j", "-n", LAN_NS, "link", "show", port(host)], check=False)
    if cp.returncode != 0:
        return None
    try:
        return "UP" in json.loads(cp.stdout)[0].get("flags", [])
    except (ValueError, IndexError):
        return None


def delete_netns(name: str) -> None:
    """Delete a network namespace if it exists (its veths go with it)."""
    if (NETNS_DIR / name).exists():
        run(["ip", "netns", "del", name], what=f"deleting netns {name}")
