"""Address management for swarm networks: subnets from the default pool, addresses inside a subnet,
VXLAN IDs and ingress ports. Pure bookkeeping; the allocator persists the results.

Every change goes through an :class:`UndoLog`, so that the allocator can take back what one request
allocated when the store refuses its write.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from typing import Any

from shoal.model.errors import InvalidArgument

PORT_RANGE = (30000, 32767)
FIRST_VNI = 4096
_ABSENT = object()


def next_subnet(pools: Iterable[str], size: int, taken: Iterable[str]) -> str:
    """The first ``/size`` in ``pools`` that overlaps none of ``taken``."""
    used = [ipaddress.ip_network(t) for t in taken if t]
    for pool in pools:
        net = ipaddress.ip_network(pool)
        for cand in net.subnets(new_prefix=max(size, net.prefixlen)):
            if not any(cand.overlaps(u) for u in used):
                return str(cand)
    raise InvalidArgument("could not find an available, non-overlapping IPv4 address pool among the "
                          "defaults to assign to the network")


def check_overlap(subnet: str, taken: Iterable[tuple[str, str]]) -> None:
    net = ipaddress.ip_network(subnet)
    for name, other in taken:
        if other and net.overlaps(ipaddress.ip_network(other)):
            raise InvalidArgument(f"invalid pool request: Pool overlaps with other one on this address space "
                                  f"(network {name} uses {other})")


class UndoLog:
    """Changes to dicts and attributes, recorded while a transaction is open so they can be rolled back."""

    def __init__(self) -> None:
        self._entries: list[tuple[Any, Any, Any]] | None = None  # (dict or object, key or attribute, old)

    def set(self, d: dict, key: Any, value: Any) -> None:
        self._record(d, key, d.get(key, _ABSENT))
        d[key] = value

    def delete(self, d: dict, key: Any) -> None:
        if key in d:
            self._record(d, key, d[key])
            del d[key]

    def set_attr(self, obj: object, name: str, value: Any) -> None:
        self._record(obj, name, getattr(obj, name))
        setattr(obj, name, value)

    def _record(self, target: Any, key: Any, old: Any) -> None:
        if self._entries is not None:
            self._entries.append((target, key, old))

    def begin(self) -> None:
        if self._entries is not None:
            raise RuntimeError("an allocator transaction is already open")
        self._entries = []

    def commit(self) -> None:
        self._entries = None

    def rollback(self) -> None:
        entries, self._entries = self._entries or [], None
        for target, key, old in reversed(entries):
            if not isinstance(target, dict):
                setattr(target, key, old)
            elif old is _ABSENT:
                target.pop(key, None)
            else:
                target[key] = old


class Subnet:
    """Addresses of one network: the gateway is reserved, the rest handed out in turn (after the last one
    given, wrapping around), so an address just freed is not given again at once."""

    def __init__(self, subnet: str, gateway: str = "", undo: UndoLog | None = None) -> None:
        self.net = ipaddress.ip_network(subnet)
        self.gateway = ipaddress.ip_address(gateway) if gateway else self.net.network_address + 1
        self.owner: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, str] = {}
        self.undo = undo or UndoLog()
        self._next = int(self.net.network_address) + 1

    def cidr(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
        return f"{ip}/{self.net.prefixlen}"

    def take(self, ip: str, owner: str) -> None:
        self.undo.set(self.owner, ipaddress.ip_address(ip.split("/")[0]), owner)

    def free(self, ip: str) -> None:
        self.undo.delete(self.owner, ipaddress.ip_address(ip.split("/")[0]))

    def allocate(self, owner: str) -> str:
        first = int(self.net.network_address) + 1
        last = int(self.net.broadcast_address) - 1
        span = last - first + 1
        for i in range(span):
            cand = ipaddress.ip_address(first + (self._next - first + i) % span)
            if cand == self.gateway or cand in self.owner:
                continue
            self.undo.set(self.owner, cand, owner)
            self.undo.set_attr(self, "_next", int(cand) + 1)
            return self.cidr(cand)
        raise InvalidArgument(f"no available IP addresses on network subnet {self.net}")

    def release(self, owner: str) -> None:
        for ip in [ip for ip, o in self.owner.items() if o == owner]:
            self.undo.delete(self.owner, ip)


class PortPool:
    """Published ingress ports, per protocol."""

    def __init__(self, undo: UndoLog | None = None) -> None:
        self.owner: dict[tuple[str, int], str] = {}
        self.undo = undo or UndoLog()

    def claim(self, proto: str, port: int, owner: str, describe: Callable[[str], str] = str) -> None:
        """Take a port for ``owner``; ``describe(owner id)`` names the holder in the conflict error."""
        cur = self.owner.get((proto, port))
        if cur is not None and cur != owner:
            raise InvalidArgument(f"port '{port}' is already in use by {describe(cur)} as an ingress port")
        self.undo.set(self.owner, (proto, port), owner)

    def take(self, proto: str, port: int, owner: str) -> None:
        """Record a port the store says ``owner`` has."""
        self.undo.set(self.owner, (proto, port), owner)

    def allocate(self, proto: str, owner: str) -> int:
        for port in range(PORT_RANGE[0], PORT_RANGE[1] + 1):
            if (proto, port) not in self.owner:
                self.undo.set(self.owner, (proto, port), owner)
                return port
        raise InvalidArgument("no available ingress ports")

    def free(self, proto: str, port: int) -> None:
        self.undo.delete(self.owner, (proto, port))

    def release(self, owner: str) -> None:
        for key in [k for k, o in self.owner.items() if o == owner]:
            self.undo.delete(self.owner, key)
