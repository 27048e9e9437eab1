"""The service DNS server, on loopback addresses, with a fake upstream on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from dnslib import QTYPE, RCODE, RR, A, DNSRecord

from shoal.network.dns import DNSServer, upstreams_from

NET_A, NET_B = "neta0123456789", "netb0123456789"
A_SRC, B_SRC, STRANGER = "127.0.1.50", "127.0.2.50", "127.0.9.9"
A_DNS, B_DNS = "127.0.1.1", "127.0.2.1"


def free_port() -> int:
    """A port free for UDP and TCP on the test addresses."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((A_DNS, 0))
            port = s.getsockname()[1]
        try:
            for ip in (A_DNS, B_DNS):
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    with socket.socket(socket.AF_INET, kind) as s:
                        s.bind((ip, port))
            return port
        except OSError:
            continue


def netmap(backends_db: list[str] | None = None, with_b: bool = True, with_web: bool = True) -> dict:
    nets = {NET_A: {"name": "neta", "vni": 1, "subnet": "127.0.1.0/24", "gateway": "", "ingress": False,
                    "internal": False, "local_addr": f"{A_DNS}/24"}}
    if with_b:
        nets[NET_B] = {"name": "netb", "vni": 2, "subnet": "127.0.2.0/24", "gateway": "", "ingress": False,
                       "internal": False, "local_addr": f"{B_DNS}/24"}
    services = [
        {"id": "s2", "name": "db", "aliases": {}, "mode": "dnsrr", "vips": {},
         "backends": {NET_A: backends_db if backends_db is not None else ["10.1.0.20", "10.1.0.21"]}, "ports": []},
        {"id": "s3", "name": "far", "aliases": {}, "mode": "vip", "vips": {NET_B: "10.2.0.30"},
         "backends": {NET_B: ["10.2.0.31"]}, "ports": []},
    ]
    if with_web:
        services.append(
            {"id": "s1", "name": "web", "aliases": {NET_A: ["frontend"], "netb": ["www"]}, "mode": "vip",
             "vips": {NET_A: "10.1.0.2", NET_B: "10.2.0.2"},
             "backends": {NET_A: ["10.1.0.7", "10.1.0.8"], NET_B: ["10.2.0.7", "10.2.0.8"]}, "ports": []})
    return {"node": {"id": "n1", "addr": ""}, "networks": nets, "peers": {}, "services": services}


class FakeUpstream(asyncio.DatagramProtocol):
    """Answers ``*.example.test`` with 192.0.2.1 and everything else with NXDOMAIN (UDP and TCP)."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.queries: list[str] = []

    @staticmethod
    def reply(data: bytes) -> bytes:
        q = DNSRecord.parse(data)
        r = q.reply()
        if str(q.q.qname).rstrip(".").endswith("example.test"):
            r.add_answer(RR(q.q.qname, QTYPE.A, rdata=A("192.0.2.1"), ttl=42))
        else:
            r.header.rcode = RCODE.NXDOMAIN
        return r.pack()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.queries.append(str(DNSRecord.parse(data).q.qname))
        assert self.transport is not None
        self.transport.sendto(self.reply(data), addr)

    async def serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        size = int.from_bytes(await reader.readexactly(2), "big")
        resp = self.reply(await reader.readexactly(size))
        writer.write(len(resp).to_bytes(2, "big") + resp)
        await writer.drain()
        writer.close()


def ask(name: str, src: str, server: str, port: int, qtype: str = "A", tcp: bool = False) -> DNSRecord:
    """One query from source address ``src`` (blocking; run it in a thread)."""
    data = DNSRecord.question(name, qtype).pack()
    kind = socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.settimeout(5)
        s.bind((src, 0))
        s.connect((server, port))
        if tcp:
            s.sendall(len(data).to_bytes(2, "big") + data)
            size = int.from_bytes(s.recv(2), "big")
            resp = b""
            while len(resp) < size:
                resp += s.recv(size - len(resp))
        else:
            s.send(data)
            resp = s.recv(4096)
    return DNSRecord.parse(resp)


def ips(reply: DNSRecord) -> set[str]:
    return {str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A}


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[FakeUpstream, int]]:
    loop = asyncio.get_running_loop()
    up = FakeUpstream()
    transport, _ = await loop.create_datagram_endpoint(lambda: up, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    tcp = await asyncio.start_server(up.serve_tcp, "127.0.0.1", port)
    yield up, port
    transport.close()
    tcp.close()


@pytest.fixture
async def dns(upstream: tuple[FakeUpstream, int]) -> AsyncIterator[DNSServer]:
    server = DNSServer(port=free_port(), upstreams=[("127.0.0.1", upstream[1])], timeout=1)
    await server.start()
    await server.update(netmap())
    yield server
    await server.stop()


async def q(server: DNSServer, name: str, src: str = A_SRC, to: str = A_DNS, **kw: object) -> DNSRecord:
    return await asyncio.to_thread(ask, name, src, to, server.port, **kw)


async def test_service_name_is_the_vip_of_the_queriers_network(dns: DNSServer) -> None:
    r = await q(dns, "web")
    assert r.header.rcode == RCODE.NOERROR and ips(r) == {"10.1.0.2"}
    assert r.rr[0].ttl == 600
    assert ips(await q(dns, "web.", src=B_SRC, to=B_DNS)) == {"10.2.0.2"}
    assert ips(await q(dns, "WEB", src=B_SRC, to=A_DNS)) == {"10.2.0.2"}  # by source subnet
    assert ips(await q(dns, "web", src=STRANGER, to=B_DNS)) == {"10.2.0.2"}  # else by the address asked


async def test_aliases_per_network(dns: DNSServer) -> None:
    assert ips(await q(dns, "frontend")) == {"10.1.0.2"}
    assert ips(await q(dns, "www", src=B_SRC, to=B_DNS)) == {"10.2.0.2"}  # aliases keyed by network name
    assert (await q(dns, "www")).header.rcode == RCODE.NXDOMAIN


async def test_tasks_and_dnsrr(dns: DNSServer) -> None:
    assert ips(await q(dns, "tasks.web")) == {"10.1.0.7", "10.1.0.8"}
    assert ips(await q(dns, "tasks.web", src=B_SRC, to=B_DNS)) == {"10.2.0.7", "10.2.0.8"}
    assert ips(await q(dns, "db")) == {"10.1.0.20", "10.1.0.21"}
    assert ips(await q(dns, "tasks.db")) == {"10.1.0.20", "10.1.0.21"}


async def test_other_networks_service_is_nxdomain(dns: DNSServer, upstream: tuple[FakeUpstream, int]) -> None:
    r = await q(dns, "far")
    assert r.header.rcode == RCODE.NXDOMAIN and not r.rr
    assert (await q(dns, "db", src=B_SRC, to=B_DNS)).header.rcode == RCODE.NXDOMAIN
    assert ips(await q(dns, "far", src=B_SRC, to=B_DNS)) == {"10.2.0.30"}
    assert upstream[0].queries == []  # service names never leave the node


async def test_aaaa_is_empty_noerror(dns: DNSServer) -> None:
    r = await q(dns, "web", qtype="AAAA")
    assert r.header.rcode == RCODE.NOERROR and not r.rr


async def test_ptr_of_vip(dns: DNSServer) -> None:
    r = await q(dns, "2.0.1.10.in-addr.arpa", qtype="PTR")
    assert [str(rr.rdata) for rr in r.rr] == ["web."]


async def test_forwarding_udp_and_tcp(dns: DNSServer) -> None:
    r = await q(dns, "www.example.test")
    assert ips(r) == {"192.0.2.1"} and r.rr[0].ttl == 42
    assert ips(await q(dns, "www.example.test", tcp=True)) == {"192.0.2.1"}
    assert (await q(dns, "nothing.invalid")).header.rcode == RCODE.NXDOMAIN


async def test_no_upstream_answer_is_servfail() -> None:
    server = DNSServer(port=free_port(), upstreams=[("127.0.0.1", free_port())], timeout=0.5)
    await server.start()
    await server.update(netmap())
    try:
        assert (await q(server, "www.example.test")).header.rcode == RCODE.SERVFAIL
        assert ips(await q(server, "web")) == {"10.1.0.2"}
    finally:
        await server.stop()


async def test_update_removes_and_rebinds(dns: DNSServer) -> None:
    await dns.update(netmap(with_b=False, with_web=False))
    assert (await q(dns, "web")).header.rcode == RCODE.NXDOMAIN  # forwarded: upstream does not know it
    assert (await q(dns, "tasks.web")).header.rcode == RCODE.NXDOMAIN
    with pytest.raises(OSError):  # no longer listening on network B's address
        await q(dns, "db", src=B_SRC, to=B_DNS, tcp=True)
    await dns.update(netmap())
    assert ips(await q(dns, "web", src=B_SRC, to=B_DNS)) == {"10.2.0.2"}


async def test_large_answer_truncated_over_udp(dns: DNSServer) -> None:
    many = [f"10.1.1.{i}" for i in range(1, 61)]
    await dns.update(netmap(backends_db=many))
    r = await q(dns, "db")
    assert r.header.tc == 1 and not r.rr
    assert ips(await q(dns, "db", tcp=True)) == set(many)


async def test_stop_is_idempotent(dns: DNSServer) -> None:
    await dns.stop()
    await dns.stop()
    with pytest.raises(OSError):
        await q(dns, "web", tcp=True)


def test_upstreams_from_resolv_conf(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("# x\nnameserver 127.0.0.53\nnameserver 192.0.2.53\nsearch lan\nnameserver ::1\n"
                    "nameserver 2001:db8::1\nnameserver 198.51.100.1\nnameserver 198.51.100.2\n")
    assert upstreams_from(conf) == [("192.0.2.53", 53), ("2001:db8::1", 53), ("198.51.100.1", 53)]
    assert upstreams_from(tmp_path / "missing") == []
