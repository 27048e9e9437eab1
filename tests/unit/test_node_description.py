"""A node's description after its session opened: the agent describes itself again every period and
sends the description only when it changed; the dispatcher writes it to the node only when it differs.
In process: a MemoryStore, the real Dispatcher behind the real cluster port (ClusterServer, mutual TLS
with certificates from a real swarm CA) on loopback, and the real agent session (RemoteSession)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shoal.agent import session as agent_session
from shoal.agent.session import RemoteSession
from shoal.cluster.client import ClusterClient
from shoal.cluster.messages import Description, Heartbeat, Hello, Message, StatusReport
from shoal.cluster.server import Channel, ClusterServer, Peer
from shoal.manager.dispatcher import Dispatcher
from shoal.model.cluster import default_cluster_spec
from shoal.model.ids import new_id, now
from shoal.store.memory import MemoryStore
from shoal.store.objects import Change, Objects
from shoal.tls.certs import Signer, issue_node_cert, key_pem, make_csr, make_root_ca, new_key
from shoal.tls.contexts import ServerContexts, client_context
from shoal.tls.files import NodeTLS


class CountingObjects(Objects):
    """Objects that counts the store writes touching nodes."""

    def __init__(self, store: MemoryStore) -> None:
        super().__init__(store)
        self.node_writes = 0

    async def commit(self, changes: list[Change]) -> bool:
        self.node_writes += sum(ch.kind == "nodes" for ch in changes)
        return await super().commit(changes)


def describe_as(labels: dict[str, str], hostname: str = "worker1") -> dict:
    return {"Hostname": hostname, "Platform": {"Architecture": "x86_64", "OS": "linux"},
            "Resources": {"NanoCPUs": 4_000_000_000, "MemoryBytes": 8 << 30},
            "Engine": {"EngineVersion": "28.0.0", "Labels": labels, "Plugins": []}}


@pytest.fixture
async def objs() -> AsyncIterator[CountingObjects]:
    o = CountingObjects(MemoryStore())
    await o.start()
    await o.create("clusters", {"ID": new_id(), "CreatedAt": now(), "UpdatedAt": now(),
                                "Spec": default_cluster_spec()})
    try:
        yield o
    finally:
        await o.stop()


async def new_node(objs: Objects) -> str:
    node = {"ID": new_id(), "CreatedAt": now(), "UpdatedAt": now(),
            "Spec": {"Labels": {}, "Role": "worker", "Availability": "active"},
            "Description": describe_as({}), "Status": {"State": "unknown"}}
    return (await objs.create("nodes", node))["ID"]


async def test_dispatcher_writes_a_changed_description_and_nothing_else(objs: CountingObjects) -> None:
    nid = await new_node(objs)
    dispatcher = Dispatcher(objs)
    sent: list[dict] = []

    class Recorder:
        async def send(self, msg: Message) -> None:
            sent.append(msg.to_wire())

        async def close(self) -> None:
            pass

    s = await dispatcher.open(nid, "worker", Recorder(), Hello(addr="10.0.0.2", description=describe_as({})),
                              "10.0.0.2")
    assert objs.get("nodes", nid)["Status"]["State"] == "ready"
    before = objs.get("nodes", nid)
    writes = objs.node_writes

    await dispatcher.receive(s, Description(describe_as({"disk": "ssd"})))
    await dispatcher.flush()  # written apart from the session's messages
    node = objs.get("nodes", nid)
    assert node["Description"]["Engine"]["Labels"] == {"disk": "ssd"}
    assert node["Version"]["Index"] > before["Version"]["Index"] and node["UpdatedAt"] >= before["UpdatedAt"]
    assert node["Spec"] == before["Spec"] and node["Status"] == before["Status"]  # only the description
    assert objs.node_writes == writes + 1

    # the same description again (or one the agent sent twice): no store write at all
    await dispatcher.receive(s, Description(describe_as({"disk": "ssd"})))
    await dispatcher.flush()
    assert objs.node_writes == writes + 1 and objs.get("nodes", nid) == node
    assert not await dispatcher.update_description(nid, describe_as({"disk": "ssd"}))
    assert objs.node_writes == writes + 1
    # a renamed host
    assert await dispatcher.update_description(nid, describe_as({"disk": "ssd"}, hostname="worker1b"))
    assert objs.get("nodes", nid)["Description"]["Hostname"] == "worker1b"
    assert not any(m["type"] == "describe-again" for m in sent)
    # a malformed message changes nothing
    await dispatcher.receive(s, Description("nope"))  # type: ignore[arg-type]
    await dispatcher.flush()
    assert objs.get("nodes", nid)["Description"]["Hostname"] == "worker1b"


CLUSTER_ID = "c" * 25


def node_tls(root: Path, ca: tuple[bytes, bytes], node_id: str, role: str) -> NodeTLS:
    """A node's certificate files, signed by the test swarm's CA."""
    tls = NodeTLS(root / node_id / "certificates")
    key = new_key()
    tls.write(ca[0], issue_node_cert(Signer(*ca), make_csr(key), node_id, role, CLUSTER_ID), key_pem(key))
    return tls


class Manager:
    """A manager's cluster port with the real Dispatcher behind it; remembers what agents said."""

    def __init__(self, objs: Objects, tls: NodeTLS) -> None:
        self.objs = objs
        self.dispatcher = Dispatcher(objs)
        self.received: list[dict] = []
        self.server = ClusterServer(self, self, ServerContexts(tls).context, "127.0.0.1", 0)
        self.port = 0

    # NodeEndpoints and ManagerEndpoints, as far as sessions need them
    node_id = "m" * 25
    revision = 0

    def cluster_id(self) -> str:
        return CLUSTER_ID

    def has_node(self, node_id: str) -> bool:
        return self.objs.get("nodes", node_id) is not None

    def role_of(self, node_id: str) -> str | None:
        node = self.objs.get("nodes", node_id)
        return None if node is None else node["Spec"]["Role"]

    def leader(self) -> str | None:
        return None

    def sessions(self) -> Manager:
        return self

    async def open(self, node_id: str, role: str, channel: Channel, hello: Hello, addr: str) -> object:
        self.received.append(hello.to_wire())
        return await self.dispatcher.open(node_id, role, channel, hello, addr)

    async def receive(self, session: object, msg: Message) -> None:
        if not isinstance(msg, Heartbeat):
            self.received.append(msg.to_wire())
        await self.dispatcher.receive(session, msg)  # type: ignore[arg-type]

    def close(self, session: object) -> None:
        self.dispatcher.close(session)  # type: ignore[arg-type]

    async def request(self, peer: Peer, msg: Message) -> Message:
        raise NotImplementedError

    async def start(self) -> None:
        await self.server.start()
        assert self.server._runner is not None
        self.port = self.server._runner.addresses[0][1]

    def descriptions(self) -> list[dict]:
        return [m["description"] for m in self.received if m["type"] in ("hello", "description")]


async def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s")


async def test_agent_sends_its_description_again_only_when_it_changed(objs: CountingObjects,
                                                                     tmp_path: Path) -> None:
    assert agent_session.DESCRIBE_PERIOD == 20.0  # swarmkit's period; shortened below to keep the test quick
    nid = await new_node(objs)
    ca = make_root_ca()
    manager = Manager(objs, node_tls(tmp_path, ca, Manager.node_id, "manager"))
    await manager.start()
    current = {"desc": describe_as({})}
    calls = 0

    async def describe() -> dict:
        nonlocal calls
        calls += 1
        if isinstance(current["desc"], Exception):
            raise current["desc"]
        return json.loads(json.dumps(current["desc"]))

    worker_tls = node_tls(tmp_path, ca, nid, "worker")
    client = ClusterClient(lambda: client_context(worker_tls))
    agent = RemoteSession([f"127.0.0.1:{manager.port}"], client, describe)
    agent.describe_period = 0.05
    agent.start()
    serving = agent._task
    assert serving is not None
    try:
        await wait_until(lambda: objs.get("nodes", nid)["Status"]["State"] == "ready")
        await wait_until(lambda: calls >= 6)  # five periods with nothing new: nothing sent, nothing written
        writes = objs.node_writes
        await wait_until(lambda: calls >= 11)
        assert manager.descriptions() == [describe_as({})] and objs.node_writes == writes

        current["desc"] = describe_as({"disk": "ssd"})
        await wait_until(lambda: objs.get("nodes", nid)["Description"]["Engine"]["Labels"] == {"disk": "ssd"})
        seen = calls
        await wait_until(lambda: calls >= seen + 5)
        assert manager.descriptions() == [describe_as({}), describe_as({"disk": "ssd"})]
        assert objs.node_writes == writes + 1

        # the engine does not answer for a while: nothing is sent, the session goes on
        current["desc"] = RuntimeError("engine restarting")
        seen = calls
        await wait_until(lambda: calls >= seen + 3)
        current["desc"] = describe_as({"disk": "ssd"}, hostname="renamed")
        await wait_until(lambda: objs.get("nodes", nid)["Description"]["Hostname"] == "renamed")
        assert len(manager.descriptions()) == 3 and objs.node_writes == writes + 2
        assert not serving.done() and objs.get("nodes", nid)["Status"]["State"] == "ready"
    finally:
        await agent.close()
        await manager.server.stop()


class FakeEngine:
    """``GET /info`` of an engine whose network drivers come and go with its networks."""

    def __init__(self) -> None:
        self.networks = ["bridge", "host", "null"]

    async def get_json(self, path: str) -> dict:
        assert path == "/info"
        return {"Name": "h1", "Architecture": "x86_64", "OSType": "linux", "NCPU": 2, "MemTotal": 1 << 30,
                "ServerVersion": "20.10.24", "Labels": ["zone=a", "bare"],
                "Plugins": {"Volume": ["local"], "Network": list(self.networks), "Authorization": None,
                            "Log": ["json-file", "local"]}}


async def test_description_does_not_change_when_the_engine_lists_shoals_driver(tmp_path):
    """The engine names shoal's network driver in /info only while one of its networks exists: the node's
    description lists it (and overlay, as Docker's executor does) all along, so the node object does not
    change under a client's inspect-then-update when the first task network is made or the last removed."""
    from shoal.node.describe import describe

    engine, tls = FakeEngine(), NodeTLS(tmp_path / "certificates")
    before = await describe(engine, tls)  # type: ignore[arg-type]
    engine.networks.append("shoal")
    assert await describe(engine, tls) == before  # type: ignore[arg-type]
    assert before["Engine"]["Plugins"] == [
        {"Type": "Log", "Name": "json-file"}, {"Type": "Log", "Name": "local"},
        {"Type": "Network", "Name": "bridge"}, {"Type": "Network", "Name": "host"},
        {"Type": "Network", "Name": "null"}, {"Type": "Network", "Name": "overlay"},
        {"Type": "Network", "Name": "shoal"}, {"Type": "Volume", "Name": "local"}]
    assert before["Engine"]["Labels"] == {"zone": "a"}  # "bare" has no "=": Docker skips it


async def new_task(objs: Objects, node_id: str) -> str:
    task = {"ID": new_id(), "CreatedAt": now(), "UpdatedAt": now(), "ServiceID": new_id(), "Slot": 1,
            "NodeID": node_id, "DesiredState": "running", "Spec": {},
            "Status": {"State": "assigned", "Timestamp": now()}}
    return (await objs.create("tasks", task))["ID"]


async def test_a_node_cannot_report_the_status_of_another_nodes_task(objs: CountingObjects,
                                                                      tmp_path: Path) -> None:
    """Issue 12: a session for node A set node B's task to failed and got an ack. Now the dispatcher
    refuses it (unwritten), the agent drops the report, and its own reports are still stored."""
    a, b = await new_node(objs), await new_node(objs)
    theirs, mine = await new_task(objs, b), await new_task(objs, a)
    ca = make_root_ca()
    manager = Manager(objs, node_tls(tmp_path, ca, Manager.node_id, "manager"))
    await manager.start()
    a_tls = node_tls(tmp_path, ca, a, "worker")
    client = ClusterClient(lambda: client_context(a_tls))

    async def describe() -> dict:
        return describe_as({})

    agent = RemoteSession([f"127.0.0.1:{manager.port}"], client, describe)
    agent.start()
    try:
        await wait_until(agent.connected.is_set)
        await agent.report(theirs, {"State": "failed", "Timestamp": now(), "Err": "forged"})
        await agent.report(mine, {"State": "running", "Timestamp": now()})
        await wait_until(lambda: objs.get("tasks", mine)["Status"]["State"] == "running")
        await wait_until(lambda: not agent._pending)  # the refused report is dropped, not sent again
        assert objs.get("tasks", theirs)["Status"] == {"State": "assigned",
                                                       "Timestamp": objs.get("tasks", theirs)["Status"]["Timestamp"]}
        reports = [m for m in manager.received if m["type"] == "status"]
        assert [m["id"] for m in reports] == [theirs, mine]
        # the same through the dispatcher directly: node B's own report of it is stored
        s = manager.dispatcher.sessions[a]
        other = await manager.dispatcher.open(b, "worker", s.channel, Hello(), "127.0.0.1")
        await manager.dispatcher.receive(other, StatusReport(id=theirs, status={"State": "running",
                                                                                "Timestamp": now()}, seq=1))
        await manager.dispatcher.flush()  # status reports are written in batches
        assert objs.get("tasks", theirs)["Status"]["State"] == "running"
    finally:
        await agent.close()
        await manager.server.stop()
