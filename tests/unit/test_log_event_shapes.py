"""Pure parts of service logs and events: Docker's details prefix, the node wire format, swarm event
shapes and moby's event filter semantics."""

from __future__ import annotations

import asyncio

from shoal.agent.logs import LogLine, _split, drain
from shoal.api.events import matches, parse_event_filters, parse_timestamp
from shoal.api.logs import details
from shoal.manager.events import SwarmEvents, make_event, parse_time_ns


def test_details_are_sorted_escaped_pairs() -> None:
    line = LogLine("task1", 1, "2026-01-01T00:00:00.000000001Z", b"hello\n", "node1")
    assert details(line, "node1", "svc1") == ("com.docker.swarm.node.id=node1,com.docker.swarm.service.id=svc1,"
                                              "com.docker.swarm.task.id=task1")
    assert details(LogLine("a b", 1, "", b""), "n=1", "s,1").endswith("task.id=a+b")
    assert "node.id=n%3D1" in details(LogLine("t", 1, "", b""), "n=1", "s,1")


def test_log_line_wire_format_keeps_bytes() -> None:
    raw = LogLine("t", 2, "ts", bytes(range(256)) + b"\n")
    back = LogLine.from_json(raw.to_json())
    assert (back.task_id, back.stream, back.timestamp, back.data) == ("t", 2, "ts", raw.data)


def test_split_keeps_partial_lines() -> None:
    buf = bytearray()
    assert _split(buf, b"a\nb") == [b"a\n"]
    assert _split(buf, b"c\nd\n") == [b"bc\n", b"d\n"]
    assert buf == b""


def test_drain_ends_when_producers_are_done() -> None:
    async def run() -> list[int]:
        q: asyncio.Queue = asyncio.Queue()

        async def produce(n: int) -> None:
            for i in range(n):
                await q.put(i)
                await asyncio.sleep(0)

        producers = {asyncio.create_task(produce(3)), asyncio.create_task(produce(2))}
        return [x async for x in drain(q, producers)]

    assert sorted(asyncio.run(run())) == [0, 0, 1, 1, 2]


def _svc(replicas: int, image: str = "img:1", state: str | None = None) -> dict:
    svc = {"ID": "s" * 25, "CreatedAt": "2026-01-02T03:04:05.123456789Z", "UpdatedAt": "2026-01-02T03:04:06Z",
           "Version": {"Index": replicas},
           "Spec": {"Name": "web", "Mode": {"Replicated": {"Replicas": replicas}},
                    "TaskTemplate": {"ContainerSpec": {"Image": image}}}}
    if state:
        svc["UpdateStatus"] = {"State": state}
    return svc


def test_service_events_like_moby() -> None:
    ev = make_event("services", "create", _svc(1), None)
    assert ev == {"Type": "service", "Action": "create", "Actor": {"ID": "s" * 25, "Attributes": {"name": "web"}},
                  "scope": "swarm", "time": ev["timeNano"] // 10**9, "timeNano": parse_time_ns(_svc(1)["CreatedAt"])}
    assert ev["timeNano"] % 10**9 == 123456789
    ev = make_event("services", "update", _svc(3, "img:2", "updating"), _svc(1))
    assert ev["Actor"]["Attributes"] == {"name": "web", "replicas.old": "1", "replicas.new": "3",
                                         "image.old": "img:1", "image.new": "img:2", "updatestate.new": "updating"}


def test_node_events_like_moby() -> None:
    old = {"ID": "n", "Spec": {"Availability": "active", "Role": "manager"}, "Status": {"State": "ready"},
           "Description": {"Hostname": "h1"}, "ManagerStatus": {"Leader": True, "Reachability": "reachable"}}
    new = {**old, "Spec": {"Availability": "drain", "Role": "manager"}, "Status": {"State": "down"},
           "ManagerStatus": {"Leader": False, "Reachability": "unreachable"}}
    attrs = make_event("nodes", "update", new, old)["Actor"]["Attributes"]
    assert attrs == {"name": "h1", "availability.old": "active", "availability.new": "drain",
                     "state.old": "ready", "state.new": "down", "leader.old": "true", "leader.new": "false",
                     "reachability.old": "reachable", "reachability.new": "unreachable"}


def test_recorder_derives_create_update_remove() -> None:
    class FakeObjs:  # the cache's interface the recorder uses
        def __init__(self) -> None:
            self.data: dict[str, dict] = {}
            self.w = None

        def list(self, kind: str) -> list[dict]:
            return list(self.data.values()) if kind == "services" else []

        def get(self, kind: str, oid: str) -> dict | None:
            return self.data.get(oid) if kind == "services" else None

        def watcher(self, kinds):
            from shoal.store.objects import Watcher
            self.w = Watcher(kinds)
            return self.w

        def unwatch(self, w) -> None:
            pass

    async def run() -> list[tuple[str, str]]:
        objs, rec = FakeObjs(), SwarmEvents()
        task = asyncio.create_task(rec.run(objs))  # type: ignore[arg-type]
        await asyncio.sleep(0)
        for svc in (_svc(1), _svc(2), None):
            if svc is None:
                objs.data.pop("s" * 25)
            else:
                objs.data["s" * 25] = svc
            objs.w._notify("services", "s" * 25)
            await asyncio.sleep(0.01)
        task.cancel()
        return [(e["Action"], e["Actor"]["Attributes"].get("replicas.new", "")) for e in rec.history]

    assert asyncio.run(run()) == [("create", ""), ("update", "2"), ("remove", "")]


def test_event_filters_like_moby() -> None:
    ev = {"Type": "service", "Action": "create", "Actor": {"ID": "abc123", "Attributes": {"name": "web"}},
          "scope": "swarm"}
    f = parse_event_filters
    assert matches(f('{"type":{"service":true}}'), ev)
    assert not matches(f('{"type":{"container":true}}'), ev)
    assert matches(f('{"event":["create"],"scope":["swarm"]}'), ev)
    assert not matches(f('{"scope":["local"]}'), ev)
    assert matches(f('{"service":["we"]}'), ev) and matches(f('{"service":["abc"]}'), ev)
    assert not matches(f('{"node":["x"]}'), ev)
    assert matches(f('{"label":["name=web"]}'), ev) and not matches(f('{"label":["tier"]}'), ev)


def test_timestamps() -> None:
    assert parse_timestamp("1700000000") == 1700000000 * 10**9
    assert parse_timestamp("1700000000.5") == 1700000000 * 10**9 + 500_000_000
    assert parse_timestamp("2023-11-14T22:13:20Z") == 1700000000 * 10**9
    assert parse_time_ns("2023-11-14T22:13:20.000000007Z") == 1700000000 * 10**9 + 7
