"""The dispatcher's node-loss detection, in process: a MemoryStore, the real Dispatcher, and agents
simulated as tasks that send heartbeats over an in-loop channel (as through TLS and WebSocket framing,
a message takes a few loop iterations to be read). Time is virtual (FakeClock): the dispatcher and the
agents sleep on it, and the tests move it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from fakeclock import FakeClock

from shoal.cluster.messages import Ack, Heartbeat, Hello, Message, StatusReport
from shoal.manager.dispatcher import AgentSession, Dispatcher, heartbeat_interval
from shoal.model.cluster import default_cluster_spec
from shoal.model.ids import new_id, now
from shoal.model.service import SECOND
from shoal.store.memory import MemoryStore
from shoal.store.objects import Objects


class RecordingObjects(Objects):
    """Objects that remembers every state each node was written with, in order."""

    def __init__(self, store: MemoryStore) -> None:
        super().__init__(store)
        self.node_states: dict[str, list[str]] = {}

    def _set(self, kind: str, oid: str, obj: dict | None) -> None:
        super()._set(kind, oid, obj)
        if kind == "nodes" and obj is not None:
            states = self.node_states.setdefault(oid, [])
            state = obj["Status"]["State"]
            if not states or states[-1] != state:
                states.append(state)


@dataclass
class SimAgent:
    """One agent: a heartbeat every interval while ``beating``; messages cross a queue to a reader."""

    session: AgentSession
    channel: RecordingChannel
    inbox: asyncio.Queue[Message]
    beating: bool = True
    tasks: list[asyncio.Task] = field(default_factory=list)


def cluster(period_ns: int) -> dict:
    spec = default_cluster_spec()
    spec["Dispatcher"]["HeartbeatPeriod"] = period_ns
    return {"ID": new_id(), "CreatedAt": now(), "UpdatedAt": now(), "Spec": spec}


def node(i: int) -> dict:
    return {"ID": new_id(), "CreatedAt": now(), "UpdatedAt": now(),
            "Spec": {"Labels": {}, "Role": "manager" if i == 0 else "worker", "Availability": "active"},
            "Description": {"Hostname": f"node-{i}"}, "Status": {"State": "unknown"}}


class RecordingChannel:
    """The transport of a simulated session: remembers what the dispatcher sent."""

    def __init__(self) -> None:
        self.sent: list[Message] = []

    async def send(self, msg: Message) -> None:
        self.sent.append(msg)

    async def close(self) -> None:
        pass


class StallStore:
    """A MemoryStore whose transactions can be made to wait (etcd electing a leader, a full disk)."""

    def __init__(self) -> None:
        self.inner = MemoryStore()
        self.flowing = asyncio.Event()
        self.flowing.set()

    async def txn(self, compares: Any, ops: Any) -> Any:
        await self.flowing.wait()
        return await self.inner.txn(compares, ops)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class Harness:
    def __init__(self, objs: RecordingObjects, dispatcher: Dispatcher, clock: FakeClock) -> None:
        self.objs = objs
        self.dispatcher = dispatcher
        self.clock = clock
        self.agents: dict[str, SimAgent] = {}

    async def connect(self, node_id: str) -> SimAgent:
        channel = RecordingChannel()
        s = await self.dispatcher.open(node_id, "worker", channel, Hello(addr="10.0.0.1"), "10.0.0.1")
        inbox: asyncio.Queue[Message] = asyncio.Queue()
        agent = SimAgent(s, channel, inbox)

        async def beat() -> None:
            while True:
                await self.clock.sleep(heartbeat_interval(self.objs))
                if agent.beating:
                    inbox.put_nowait(Heartbeat())

        async def read() -> None:
            while True:
                msg = await inbox.get()
                await asyncio.sleep(0)  # framing and decryption take another turn of the loop
                await self.dispatcher.receive(s, msg)

        agent.tasks = [asyncio.create_task(beat()), asyncio.create_task(read())]
        self.agents[node_id] = agent
        return agent

    def state(self, node_id: str) -> str:
        return self.objs.get("nodes", node_id)["Status"]["State"]

    def ever_down(self) -> list[str]:
        return [nid for nid, states in self.objs.node_states.items() if "down" in states]


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    objs = RecordingObjects(StallStore())  # type: ignore[arg-type]
    await objs.start()
    await objs.create("clusters", cluster(5 * SECOND))
    clock = FakeClock()
    dispatcher = Dispatcher(objs, clock=clock)
    runner = asyncio.create_task(dispatcher.run())
    h = Harness(objs, dispatcher, clock)
    try:
        yield h
    finally:
        for agent in h.agents.values():
            for t in agent.tasks:
                t.cancel()
        runner.cancel()
        await asyncio.gather(runner, *(t for a in h.agents.values() for t in a.tasks), return_exceptions=True)
        await objs.stop()


async def wait_state(h: Harness, node_id: str, state: str, timeout: float) -> float:
    """(Virtual) seconds until the node is in ``state``; fails after ``timeout``."""
    return await h.clock.until(lambda: h.state(node_id) == state, timeout)


async def test_a_stalled_manager_marks_no_live_node_down(harness: Harness) -> None:
    h = harness
    ids = [(await h.objs.create("nodes", node(i)))["ID"] for i in range(4)]
    for nid in ids:
        await h.connect(nid)
    await h.clock.advance(1.5)
    assert [h.state(n) for n in ids] == ["ready"] * 4
    # node 3's agent dies 1 s before the stall; its session stays open (no TCP reset after a power loss)
    h.agents[ids[3]].beating = False
    await h.clock.advance(1.0)
    h.clock.jump(4.0)  # the manager's event loop is blocked: nothing is read, no heartbeat is sent
    await h.clock.advance(1.0)
    assert h.ever_down() == []  # nobody, though every session was silent for 4 s
    # the silent one is still found: 3 intervals of silence outside the stall, so about 2 s from now
    took = await wait_state(h, ids[3], "down", 4.0)
    assert took < 3.0
    assert h.objs.get("nodes", ids[3])["Status"]["Message"] == "heartbeat failure"
    assert h.ever_down() == [ids[3]]
    assert [h.state(n) for n in ids[:3]] == ["ready"] * 3


async def test_detection_time_follows_the_heartbeat_period(harness: Harness) -> None:
    h = harness
    # the rule: heartbeats every HeartbeatPeriod / 5, at most 1 s (at least 0.1 s); down after 3 silent ones
    for period, interval in ((5, 1.0), (30, 1.0), (1, 0.2), (0.1, 0.1)):
        c = h.objs.list("clusters")[0]
        c["Spec"]["Dispatcher"]["HeartbeatPeriod"] = int(period * SECOND)
        await h.objs.update("clusters", c)
        assert heartbeat_interval(h.objs) == pytest.approx(interval)
        assert h.dispatcher.timeout == pytest.approx(3 * interval)
    took = {}
    for period in (5, 1):
        c = h.objs.list("clusters")[0]
        c["Spec"]["Dispatcher"]["HeartbeatPeriod"] = period * SECOND
        await h.objs.update("clusters", c)
        nid = (await h.objs.create("nodes", node(period)))["ID"]
        agent = await h.connect(nid)
        await wait_state(h, nid, "ready", 2.0)
        await h.clock.advance(1.0)
        agent.beating = False
        took[period] = await wait_state(h, nid, "down", 6.0)
    # silence counts from the last heartbeat, up to one interval before the agent stopped
    assert 1.9 < took[5] < 3.5
    assert 0.3 < took[1] < 0.9
    assert took[1] < took[5] / 2


async def test_a_stalled_store_neither_silences_heartbeats_nor_loses_a_report(harness: Harness) -> None:
    """Status reports are written apart from heartbeats: while the store does not answer (here 6 s,
    twice the 3 s timeout), heartbeats are still read and answered, no live node goes Down, and the
    report is written and acknowledged once the store is back."""
    h = harness
    nid = (await h.objs.create("nodes", node(1)))["ID"]
    task = {"ID": new_id(), "ServiceID": "s", "NodeID": nid, "DesiredState": "running",
            "Status": {"State": "assigned", "Timestamp": now()}}
    await h.objs.create("tasks", task)
    agent = await h.connect(nid)
    await h.clock.advance(1.0)
    store = h.objs.store
    store.flowing.clear()  # type: ignore[attr-defined]
    agent.inbox.put_nowait(StatusReport(id=task["ID"], status={"State": "running", "Timestamp": now()}, seq=7))
    await h.clock.advance(6.0)
    assert h.ever_down() == []
    assert sum(isinstance(m, Heartbeat) for m in agent.channel.sent) >= 5  # answered all along
    assert not any(isinstance(m, Ack) for m in agent.channel.sent)  # not written yet: not acknowledged
    store.flowing.set()  # type: ignore[attr-defined]
    await h.clock.until(lambda: any(isinstance(m, Ack) and m.seq == 7 for m in agent.channel.sent), 1.0)
    assert h.objs.get("tasks", task["ID"])["Status"]["State"] == "running"
    assert h.ever_down() == []
