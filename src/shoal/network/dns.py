"""Service discovery: a small asyncio DNS server (UDP and TCP) on the node's own address of every network.

Task containers get the node's address on their network as ``--dns`` (Docker's embedded 127.0.0.11
forwards to it). Like Docker's embedded resolver (``libnetwork/resolver.go``), scoped to the querier's
network — the network whose subnet holds the query's source address (else the one the query arrived on):

- ``<service>`` (and each alias of the service on that network) → the service's VIP on that network, or
  every task address there for ``endpoint_mode: dnsrr``;
- ``tasks.<service>`` (and ``tasks.<alias>``) → every running task's address on that network;
- ``AAAA`` (or any other type) of such a name → NOERROR without answers; PTR of a VIP → the service name;
- a service name of another network → NXDOMAIN (never forwarded: it must not leak or resolve elsewhere);
- anything else is forwarded to the node's upstream nameservers (``/etc/resolv.conf`` without loopback
  entries; systemd-resolved's real list when only 127.0.0.53 is there); no answer → SERVFAIL.

Local answers carry TTL 600, as Docker's; multi-address answers are shuffled; UDP answers over 512 bytes
are truncated (TC) so the client retries over TCP. Records are replaced as a whole on each map update.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path

from dnslib import PTR, QTYPE, RCODE, RR, A, DNSError, DNSRecord

log = logging.getLogger(__name__)

TTL = 600  # libnetwork's respTTL
UDP_LIMIT = 512
MAX_UPSTREAMS = 3
MAX_CONCURRENT = 100  # forwarded queries in flight, as Docker's resolver
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)  # bind before the overlay has put the address up
SYSTEMD_RESOLV = Path("/run/systemd/resolve/resolv.conf")


@dataclass
class Zone:
    """The names one network's containers can resolve."""

    names: dict[str, list[str]] = field(default_factory=dict)  # lower-case name -> addresses
    ptr: dict[str, str] = field(default_factory=dict)  # VIP -> service name


def zones(netmap: dict) -> dict[str, Zone]:
    """Per network ID, the service records visible on it."""
    nets = netmap.get("networks") or {}
    by_name = {n.get("name"): nid for nid, n in nets.items()}
    out = {nid: Zone() for nid in nets}
    for svc in netmap.get("services") or []:
        vips = svc.get("vips") or {}
        backends = svc.get("backends") or {}
        aliases: dict[str, list[str]] = {}
        for key, names in (svc.get("aliases") or {}).items():  # keyed by network ID (or name)
            aliases.setdefault(by_name.get(key, key), []).extend(names or [])
        for nid in (set(vips) | set(backends) | set(aliases)) & set(out):
            tasks = list(backends.get(nid) or [])
            vip = vips.get(nid)
            addrs = [vip.split("/")[0]] if vip and (svc.get("mode") or "vip") == "vip" else tasks
            zone = out[nid]
            for name in dict.fromkeys([svc["name"], *aliases.get(nid, [])]):
                name = name.rstrip(".").lower()
                zone.names[name] = addrs
                zone.names["tasks." + name] = tasks
            if vip and (svc.get("mode") or "vip") == "vip":
                zone.ptr[vip.split("/")[0]] = svc["name"]
    return out


def upstreams_from(resolv_conf: Path) -> list[tuple[str, int]]:
    """The non-loopback nameservers of ``resolv_conf`` (port 53), at most three."""

    def read(path: Path) -> list[str]:
        try:
            lines = path.read_text().splitlines()
        except OSError:
            return []
        return [p[1] for p in (line.split() for line in lines) if len(p) >= 2 and p[0] == "nameserver"]

    def usable(ns: str) -> bool:
        try:
            return not ipaddress.ip_address(ns.split("%")[0]).is_loopback
        except ValueError:
            return False

    found = read(resolv_conf)
    servers = [ns for ns in found if usable(ns)]
    if found and not servers and resolv_conf == Path("/etc/resolv.conf"):
        servers = [ns for ns in read(SYSTEMD_RESOLV) if usable(ns)]  # like dockerd behind systemd-resolved
    return [(ns, 53) for ns in servers[:MAX_UPSTREAMS]]


def _bound_socket(ip: str, port: int, kind: socket.SocketKind) -> socket.socket:
    sock = socket.socket(socket.AF_INET, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
        sock.bind((ip, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class _UDPServer(asyncio.DatagramProtocol):
    def __init__(self, owner: DNSServer, local_ip: str) -> None:
        self.owner, self.local_ip = owner, local_ip
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        async def reply() -> None:
            resp = await self.owner.handle(data, addr[0], self.local_ip, tcp=False)
            if resp is not None and self.transport is not None and not self.transport.is_closing():
                self.transport.sendto(resp, addr)

        self.owner._spawn(reply())


class _UDPClient(asyncio.DatagramProtocol):
    """Waits for the one answer (same ID) to a forwarded query."""

    def __init__(self, qid: bytes) -> None:
        self.qid = qid
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        if data[:2] == self.qid and not self.answer.done():
            self.answer.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc)


@dataclass
class _Endpoint:
    udp: asyncio.DatagramTransport
    tcp: asyncio.Server


class DNSServer:
    """Answers service names for the containers on this node, per network, and forwards the rest."""

    def __init__(self, port: int = 53, upstreams: list[tuple[str, int]] | None = None,
                 resolv_conf: Path = Path("/etc/resolv.conf"), ttl: int = TTL, timeout: float = 2.0) -> None:
        self.port = port
        self.fixed_upstreams = upstreams  # None: read resolv_conf at each update
        self.resolv_conf = resolv_conf
        self.ttl = ttl
        self.timeout = timeout
        self.upstreams: list[tuple[str, int]] = list(upstreams or [])
        self.zones: dict[str, Zone] = {}
        self.subnets: list[tuple[ipaddress.IPv4Network, str]] = []
        self.local: dict[str, str] = {}  # local address -> network ID
        self._known: set[str] = set()  # every service name of the map, on any network
        self._endpoints: dict[str, _Endpoint] = {}
        self._tasks: set[asyncio.Task] = set()
        self._running = False
        self._limit = asyncio.Semaphore(MAX_CONCURRENT)

    # -- lifecycle ---------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Serve on the local addresses of the current map (and of later updates)."""
        self._running = True
        await self._rebind()

    async def stop(self) -> None:
        """Close every socket and drop in-flight queries; may be called more than once."""
        self._running = False
        for ip in list(self._endpoints):
            await self._unbind(ip)
        for task in list(self._tasks):
            task.cancel()
        self._tasks.clear()

    async def update(self, netmap: dict) -> None:
        """Replace every record with those of ``netmap`` and listen on its local addresses."""
        nets = netmap.get("networks") or {}
        self.zones = zones(netmap)
        self._known = {name for zone in self.zones.values() for name in zone.names}
        self.subnets = []
        for nid, net in sorted(nets.items()):
            with contextlib.suppress(ValueError):
                if net.get("subnet"):
                    self.subnets.append((ipaddress.IPv4Network(net["subnet"], strict=False), nid))
        self.local = {net["local_addr"].split("/")[0]: nid for nid, net in sorted(nets.items())
                      if net.get("local_addr")}
        if self.fixed_upstreams is None:
            self.upstreams = await asyncio.to_thread(upstreams_from, self.resolv_conf)
        if self._running:
            await self._rebind()

    async def _rebind(self) -> None:
        for ip in [ip for ip in self._endpoints if ip not in self.local]:
            await self._unbind(ip)
        loop = asyncio.get_running_loop()
        for ip in self.local:
            if ip in self._endpoints:
                continue
            udp_sock = tcp_sock = None
            try:
                udp_sock = _bound_socket(ip, self.port, socket.SOCK_DGRAM)
                tcp_sock = _bound_socket(ip, self.port, socket.SOCK_STREAM)
                udp, _ = await loop.create_datagram_endpoint(lambda ip=ip: _UDPServer(self, ip), sock=udp_sock)
                tcp = await asyncio.start_server(lambda r, w, ip=ip: self._serve_tcp(r, w, ip), sock=tcp_sock)
            except OSError as e:
                for s in (udp_sock, tcp_sock):
                    if s is not None:
                        s.close()
                log.warning("dns: cannot listen on %s:%d (retried at the next update): %s", ip, self.port, e)
                continue
            self._endpoints[ip] = _Endpoint(udp, tcp)
            log.info("dns: listening on %s:%d", ip, self.port)

    async def _unbind(self, ip: str) -> None:
        ep = self._endpoints.pop(ip)
        ep.udp.close()
        ep.tcp.close()
        with contextlib.suppress(Exception):  # 3.12+ also waits for open client connections
            await asyncio.wait_for(ep.tcp.wait_closed(), 1)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- queries -----------------------------------------------------------------------------------------
    def network_of(self, src: str, local_ip: str) -> str | None:
        """The querier's network: the one whose subnet holds ``src``, else the one ``local_ip`` is on."""
        with contextlib.suppress(ValueError):
            addr = ipaddress.IPv4Address(src)
            for subnet, nid in self.subnets:
                if addr in subnet:
                    return nid
        return self.local.get(local_ip)

    def answer(self, query: DNSRecord, net: str | None) -> DNSRecord | None:
        """The local reply to ``query`` from network ``net``, or None when it must be forwarded."""
        q = query.q
        name = str(q.qname).rstrip(".").lower()
        zone = self.zones.get(net or "") or Zone()
        reply = query.reply()
        if name in zone.names:
            if q.qtype in (QTYPE.A, QTYPE.ANY):
                addrs = list(zone.names[name])
                random.shuffle(addrs)
                for ip in addrs:
                    reply.add_answer(RR(q.qname, QTYPE.A, rdata=A(ip), ttl=self.ttl))
            return reply
        if name in self._known:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        if q.qtype == QTYPE.PTR and name.endswith(".in-addr.arpa"):
            ip = ".".join(reversed(name[: -len(".in-addr.arpa")].split(".")))
            if ip in zone.ptr:
                reply.add_answer(RR(q.qname, QTYPE.PTR, rdata=PTR(zone.ptr[ip] + "."), ttl=self.ttl))
                return reply
        return None

    async def handle(self, data: bytes, src: str, local_ip: str, tcp: bool) -> bytes | None:
        """The wire answer to one wire query (None: not a query, nothing to send)."""
        try:
            query = DNSRecord.parse(data)
        except (DNSError, ValueError, IndexError):
            return None
        if query.header.qr or not query.questions:
            return None
        reply = self.answer(query, self.network_of(src, local_ip))
        if reply is None:
            forwarded = await self._forward(data, tcp)
            if forwarded is not None:
                return forwarded
            reply = query.reply()
            reply.header.rcode = RCODE.SERVFAIL
        packed = reply.pack()
        if not tcp and len(packed) > UDP_LIMIT:
            reply.rr = []
            reply.header.tc = 1
            packed = reply.pack()
        return packed

    async def _forward(self, data: bytes, tcp: bool) -> bytes | None:
        async with self._limit:
            for host, port in self.upstreams:
                try:
                    if tcp:
                        return await asyncio.wait_for(self._ask_tcp(host, port, data), self.timeout)
                    return await self._ask_udp(host, port, data)
                except (OSError, TimeoutError, asyncio.IncompleteReadError) as e:
                    log.debug("dns: upstream %s:%d: %r", host, port, e)
        return None

    async def _ask_udp(self, host: str, port: int, data: bytes) -> bytes:
        loop = asyncio.get_running_loop()
        transport, proto = await loop.create_datagram_endpoint(lambda: _UDPClient(data[:2]),
                                                               remote_addr=(host, port))
        try:
            transport.sendto(data)
            return await asyncio.wait_for(proto.answer, self.timeout)
        finally:
            transport.close()

    async def _ask_tcp(self, host: str, port: int, data: bytes) -> bytes:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(len(data).to_bytes(2, "big") + data)
            await writer.drain()
            size = int.from_bytes(await reader.readexactly(2), "big")
            return await reader.readexactly(size)
        finally:
            writer.close()

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, local_ip: str) -> None:
        src = (writer.get_extra_info("peername") or ("",))[0]
        try:
            while True:
                size = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), 10), "big")
                data = await asyncio.wait_for(reader.readexactly(size), 10)
                resp = await self.handle(data, src, local_ip, tcp=True)
                if resp is None:
                    break
                writer.write(len(resp).to_bytes(2, "big") + resp)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
