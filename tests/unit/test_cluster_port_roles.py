"""Roles checked at each request on the cluster port, against the store and not only the certificate:
a demoted manager may no longer forward writes, a removed node is refused everything at once (its session
ends as it is removed), and the dispatcher tells every session the cluster's CA."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp import web
from fakeclock import settle

from shoal.cluster.client import ClusterClient
from shoal.cluster.messages import CAUpdate, Hello, Message, RenewAnswer, RenewRequest, SessionError
from shoal.cluster.server import ClusterServer, Peer
from shoal.manager.dispatcher import Dispatcher
from shoal.manager.manager import Manager
from shoal.model.errors import APIError
from shoal.model.ids import new_id, now
from shoal.store.memory import MemoryStore
from shoal.store.objects import Objects
from shoal.tls.certs import Signer, issue_node_cert, key_pem, make_csr, make_root_ca, new_key
from shoal.tls.contexts import ServerContexts, client_context
from shoal.tls.files import NodeTLS

CLUSTER = "c" * 25


def identity(tmp: Path, root: tuple[bytes, bytes], node_id: str, role: str) -> ClusterClient:
    tls = NodeTLS(tmp / node_id / "certificates")
    key = new_key()
    tls.write(root[0], issue_node_cert(Signer(*root), make_csr(key), node_id, role, CLUSTER), key_pem(key))
    return ClusterClient(lambda: client_context(tls))


class Leader:
    """A leading manager's endpoints over a store of nodes; its store checks are the manager's own."""

    node_id = "m" * 25
    revision = 0
    has_node = Manager.has_node
    role_of = Manager.role_of

    def __init__(self, objs: Objects) -> None:
        self.objs = objs
        self.forwarded = 0
        self.requests: list[Peer] = []

    def cluster_id(self) -> str:
        return CLUSTER

    def leader(self) -> str | None:
        return None

    def sessions(self) -> None:
        return None

    async def request(self, peer: Peer, msg: Message) -> Message:
        self.requests.append(peer)
        return RenewAnswer(cert="", role=peer.role)

    async def api(self, request: web.Request) -> web.StreamResponse:
        self.forwarded += 1
        return web.json_response({"ID": "x"}, status=201)


async def test_forwarding_and_requests_follow_the_store_at_each_request(tmp_path: Path) -> None:
    root = make_root_ca()
    m2, w1 = "m2".ljust(25, "0"), "w1".ljust(25, "0")
    objs = Objects(MemoryStore())
    await objs.start()
    for nid, role in ((Leader.node_id, "manager"), (m2, "manager"), (w1, "worker")):
        await objs.create("nodes", {"ID": nid, "Spec": {"Role": role, "Availability": "active"}, "CreatedAt": now(),
                                    "UpdatedAt": now(), "Status": {"State": "ready"},
                                    **({"ManagerStatus": {"Reachability": "reachable"}} if role == "manager" else {})})
    leader = Leader(objs)
    tls = NodeTLS(tmp_path / "leader" / "certificates")
    key = new_key()
    tls.write(root[0], issue_node_cert(Signer(*root), make_csr(key), Leader.node_id, "manager", CLUSTER), key_pem(key))
    server = ClusterServer(leader, leader, ServerContexts(tls).context, "127.0.0.1", 0)  # type: ignore[arg-type]
    await server.start()
    assert server._runner is not None
    addr = f"127.0.0.1:{server._runner.addresses[0][1]}"
    manager, worker = identity(tmp_path, root, m2, "manager"), identity(tmp_path, root, w1, "worker")
    try:
        answer = await manager.forward(addr, "POST", "/services/create", b"{}", {})
        assert answer.status == 201 and leader.forwarded == 1
        answer = await worker.forward(addr, "POST", "/services/create", b"{}", {})  # a worker's certificate
        assert answer.status == 403 and leader.forwarded == 1

        def demote(n: dict) -> bool:
            n["Spec"]["Role"] = "worker"
            return True

        # `docker node demote`: its certificate still says manager, its etcd member is not removed yet
        await objs.modify("nodes", m2, demote)
        assert objs.get("nodes", m2)["ManagerStatus"]
        answer = await manager.forward(addr, "POST", "/services/create", b"{}", {})
        assert answer.status == 403 and b"only managers" in answer.body and leader.forwarded == 1

        renew = RenewRequest(csr=make_csr(new_key()).decode())
        assert (await worker.request(addr, renew, RenewAnswer)).role == "worker"
        await objs.delete("nodes", objs.get("nodes", w1))  # `docker node rm`
        with pytest.raises(APIError) as e:
            await worker.request(addr, renew, RenewAnswer)
        assert e.value.status == 403 and "removed from the swarm" in e.value.message
        assert [p.node_id for p in leader.requests] == [w1]
    finally:
        await server.stop()
        await objs.stop()


class Channel:
    def __init__(self) -> None:
        self.sent: list[Message] = []
        self.closed = False

    async def send(self, msg: Message) -> None:
        self.sent.append(msg)

    async def close(self) -> None:
        self.closed = True


async def test_the_dispatcher_tells_the_ca_and_ends_a_removed_node_session_at_once() -> None:
    objs = Objects(MemoryStore())
    await objs.start()
    cid, nid = new_id(), new_id()
    info = {"TrustRoot": "root-1", "CertIssuerSubject": "s1", "CertIssuerPublicKey": "k1"}
    await objs.create("clusters", {"ID": cid, "CreatedAt": now(), "UpdatedAt": now(), "Spec": {}, "TLSInfo": info})
    await objs.create("nodes", {"ID": nid, "Spec": {"Role": "worker", "Availability": "active", "Labels": {}},
                                "Status": {"State": "unknown"}, "Description": {}})
    dispatcher = Dispatcher(objs)
    runner = asyncio.create_task(dispatcher.run())
    channel = Channel()
    try:
        await settle()
        await dispatcher.open(nid, "worker", channel, Hello(), "10.0.0.2")
        assert [m for m in channel.sent if isinstance(m, CAUpdate)] == [
            CAUpdate(trust_root="root-1", issuer_subject="s1", issuer_public_key="k1")]

        def rotate(c: dict) -> None:
            c["TLSInfo"] = {**info, "CertIssuerPublicKey": "k2"}

        await objs.modify("clusters", cid, rotate)
        await settle()
        assert [m.issuer_public_key for m in channel.sent if isinstance(m, CAUpdate)] == ["k1", "k2"]

        await objs.delete("nodes", objs.get("nodes", nid))
        await settle()
        assert isinstance(channel.sent[-1], SessionError) and "removed" in channel.sent[-1].message
        assert channel.closed and nid not in dispatcher.sessions
    finally:
        runner.cancel()
        await dispatcher.shutdown()
        await objs.stop()
