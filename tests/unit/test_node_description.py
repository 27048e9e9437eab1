"""A node's description after its session opened: the agent describes itself again every period and
sends the description only when it changed; the dispatcher writes it to the node only when it differs.
In process: a MemoryStore, the real Dispatcher, and the real agent session (RemoteSession) over a real
WebSocket on loopback (plain HTTP here; the cluster port adds mutual TLS)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from shoal.agent import session as agent_session
from shoal.agent.session import RemoteSession
from shoal.daemon import default_cluster_spec
from shoal.manager.dispatcher import Dispatcher
from shoal.model.ids import new_id, now
from shoal.store.memory import MemoryStore
from shoal.store.objects import Change, Objects


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

    async def send(msg: dict) -> None:
        sent.append(msg)

    s = await dispatcher.open(nid, send, {"addr": "10.0.0.2", "description": describe_as({})}, "10.0.0.2")
    assert objs.get("nodes", nid)["Status"]["State"] == "ready"
    before = objs.get("nodes", nid)
    writes = objs.node_writes

    await dispatcher.handle(s, {"type": "description", "description": describe_as({"disk": "ssd"})})
    node = objs.get("nodes", nid)
    assert node["Description"]["Engine"]["Labels"] == {"disk": "ssd"}
    assert node["Version"]["Index"] > before["Version"]["Index"] and node["UpdatedAt"] >= before["UpdatedAt"]
    assert node["Spec"] == before["Spec"] and node["Status"] == before["Status"]  # only the description
    assert objs.node_writes == writes + 1

    # the same description again (or one the agent sent twice): no store write at all
    await dispatcher.handle(s, {"type": "description", "description": describe_as({"disk": "ssd"})})
    assert objs.node_writes == writes + 1 and objs.get("nodes", nid) == node
    assert not await dispatcher.update_description(nid, describe_as({"disk": "ssd"}))
    assert objs.node_writes == writes + 1
    # a renamed host
    assert await dispatcher.update_description(nid, describe_as({"disk": "ssd"}, hostname="worker1b"))
    assert objs.get("nodes", nid)["Description"]["Hostname"] == "worker1b"
    assert not any(m["type"] == "describe-again" for m in sent)
    # a malformed message changes nothing
    await dispatcher.handle(s, {"type": "description", "description": "nope"})
    assert objs.get("nodes", nid)["Description"]["Hostname"] == "worker1b"


class Manager:
    """The manager's end of sessions over a WebSocket, as the cluster port serves it (without TLS)."""

    def __init__(self, objs: Objects) -> None:
        self.dispatcher = Dispatcher(objs)
        self.received: list[dict] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def session(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=None)
        await ws.prepare(request)
        lock = asyncio.Lock()

        async def send(msg: dict) -> None:
            async with lock:
                await ws.send_str(json.dumps(msg))

        hello = json.loads((await ws.receive(timeout=10)).data)
        self.received.append(hello)
        s = await self.dispatcher.open(request.query["node"], send, hello, "127.0.0.1")
        pump = asyncio.create_task(self.dispatcher.pump(s))
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    break
                data = json.loads(msg.data)
                if data.get("type") != "heartbeat":
                    self.received.append(data)
                await self.dispatcher.handle(s, data)
        finally:
            self.dispatcher.close(s)
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        return ws

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/session", self.session)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def descriptions(self) -> list[dict]:
        return [m["description"] for m in self.received if m["type"] in ("hello", "description")]


async def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s")


async def test_agent_sends_its_description_again_only_when_it_changed(objs: CountingObjects) -> None:
    assert agent_session.DESCRIBE_PERIOD == 20.0  # swarmkit's period; shortened below to keep the test quick
    nid = await new_node(objs)
    manager = Manager(objs)
    await manager.start()
    current = {"desc": describe_as({})}
    calls = 0

    async def describe() -> dict:
        nonlocal calls
        calls += 1
        if isinstance(current["desc"], Exception):
            raise current["desc"]
        return json.loads(json.dumps(current["desc"]))

    agent = RemoteSession([f"127.0.0.1:{manager.port}"], None, describe)  # type: ignore[arg-type]
    agent.describe_period = 0.05
    http = aiohttp.ClientSession()
    ws = await http.ws_connect(f"http://127.0.0.1:{manager.port}/session?node={nid}")
    serving = asyncio.create_task(agent._serve(ws))
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
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await serving
        await ws.close()
        await http.close()
        assert manager.runner is not None
        await manager.runner.cleanup()
