"""The manager pipeline end to end, in process: a MemoryStore, the Objects cache and the leader's real
controllers (``store_controllers``: the orchestrators, the reaper, the allocator and the scheduler, the
same list the leader runs) as asyncio tasks.

Only the agent side is simulated: :class:`SimAgent` reads what the dispatcher assigns to its node
(``dispatcher.assigned_to``) and reports states through ``dispatcher.update_status`` as a real agent
would (accepted → preparing → ready → starting → running; shutdown when told to stop). Tests can make a
running task fail or complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from shoal.manager.allocator import Allocator
from shoal.manager.dispatcher import assigned_to, update_status
from shoal.manager.manager import store_controllers
from shoal.manager.orchestrator.reaper import TaskReaper
from shoal.model import states
from shoal.model.cluster import default_cluster_spec
from shoal.model.ids import new_id, now
from shoal.model.service import SECOND, validate_spec
from shoal.store.memory import MemoryStore
from shoal.store.objects import PREFIX, Change, Objects, _decode

MS = SECOND // 1000
IMAGE = "shoal/demo-web:latest"
NO_FIT = "no suitable node (scheduling constraints not satisfied on 3 nodes)"


# ---- time limits ------------------------------------------------------------------------------

def deadline(seconds: float) -> Callable:
    """Fail the (async) test if it runs longer than ``seconds``."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        async def run(*args: Any, **kwargs: Any) -> Any:
            async with asyncio.timeout(seconds):
                return await fn(*args, **kwargs)

        return run

    return wrap


# ---- objects shaped as shoald makes them ------------------------------------------------------

def make_cluster(retention: int | None = 5) -> dict:
    """The cluster object of ``Daemon.init_swarm`` (``retention`` None: the daemon's default spec as is)."""
    ts = now()
    spec = default_cluster_spec()
    if retention is not None:
        spec["Orchestration"]["TaskHistoryRetentionLimit"] = retention
    return {
        "ID": new_id(), "CreatedAt": ts, "UpdatedAt": ts, "Spec": spec,
        "TLSInfo": {"TrustRoot": "", "CertIssuerSubject": "", "CertIssuerPublicKey": ""},
        "RootRotationInProgress": False, "DefaultAddrPool": ["10.0.0.0/8"], "SubnetSize": 24,
        "DataPathPort": 4789, "JoinTokens": {"Worker": "SWMTKN-1-w", "Manager": "SWMTKN-1-m"},
    }


def make_node(i: int, *, role: str = "worker", labels: dict[str, str] | None = None) -> dict:
    """A node object as ``Daemon.init_swarm`` / ``_describe`` shape it."""
    ts = now()
    node = {
        "ID": new_id(), "CreatedAt": ts, "UpdatedAt": ts,
        "Spec": {"Labels": dict(labels or {}), "Role": role, "Availability": "active"},
        "Description": {
            "Hostname": f"node-{i}",
            "Platform": {"Architecture": "x86_64", "OS": "linux"},
            "Resources": {"NanoCPUs": 4 * SECOND, "MemoryBytes": 8 << 30},
            "Engine": {"EngineVersion": "27.0.0", "Labels": {}, "Plugins": []},
        },
        "Status": {"State": "ready", "Addr": f"10.0.0.{i}"},
    }
    if role == "manager":
        node["ManagerStatus"] = {"Leader": i == 1, "Reachability": "reachable", "Addr": f"10.0.0.{i}:2377"}
    return node


def service_spec(name: str, replicas: int | None = 1, *, mode: str = "replicated", env: list[str] | None = None,
                 restart: dict | None = None, constraints: list[str] | None = None,
                 update: dict | None = None) -> dict:
    """A ServiceSpec as a client sends it (restart delay 0.2 s unless told otherwise)."""
    tt: dict = {
        "ContainerSpec": {"Image": IMAGE, "Env": list(env or [])},
        "RestartPolicy": {"Condition": "any", "Delay": 200 * MS, **(restart or {})},
    }
    if constraints:
        tt["Placement"] = {"Constraints": list(constraints)}
    spec: dict = {"Name": name, "Labels": {}, "TaskTemplate": tt,
                  "Mode": {"Global": {}} if mode == "global" else {"Replicated": {"Replicas": replicas}}}
    if update:
        spec["UpdateConfig"] = dict(update)
    return spec


# ---- the harness ------------------------------------------------------------------------------

class ProbedObjects(Objects):
    """Objects that lets tests watch every cache write as it happens (and remembers deleted tasks)."""

    def __init__(self, store: Any) -> None:
        super().__init__(store)
        self.probes: list[Callable[[str, str, dict | None], None]] = []
        self.deleted: dict[str, dict] = {}  # task id -> its last state before deletion

    def _set(self, kind: str, oid: str, obj: dict | None) -> None:
        old = self.cache.get(kind, {}).get(oid)
        super()._set(kind, oid, obj)
        if kind == "tasks" and obj is None and old is not None:
            self.deleted[oid] = old
        for probe in self.probes:
            probe(kind, oid, obj)


class JitterStore:
    """A store whose calls yield to the event loop a random number of times before and after the
    operation, so concurrent writers interleave as they would against etcd."""

    def __init__(self, inner: MemoryStore, seed: int) -> None:
        self.inner = inner
        self.rng = random.Random(seed)

    async def _jitter(self) -> None:
        for _ in range(self.rng.randrange(4)):
            await asyncio.sleep(0)

    async def txn(self, compares: Any, ops: Any) -> Any:
        await self._jitter()
        res = await self.inner.txn(compares, ops)
        await self._jitter()
        return res

    async def get(self, key: str) -> Any:
        await self._jitter()
        kv = await self.inner.get(key)
        await self._jitter()
        return kv

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class SimAgent:
    """The agent side of one node, simulated: reads its assignments and reports task states."""

    def __init__(self, objs: Objects, node_id: str, crash: dict[str, int]) -> None:
        self.objs = objs
        self.node_id = node_id
        self.watcher = objs.watcher(("tasks",))
        self.endings: dict[str, int] = {}  # task id -> exit code to end with once running
        self.crash = crash  # service id -> how many more of its tasks fail once running (shared by all agents)
        self.reported: dict[str, str] = {}  # task id -> last state this agent reported (and was accepted)
        self.paused = False

    def end(self, task_id: str, exit_code: int = 1) -> None:
        """Make a running task exit with ``exit_code`` (0: complete, else failed)."""
        self.endings[task_id] = exit_code
        self.watcher.poke()

    async def run(self) -> None:
        try:
            while True:
                if not self.paused:
                    for t in assigned_to(self.objs, self.node_id):
                        await self.step(t["ID"])
                await self.watcher.wait(0.2)
        finally:
            self.objs.unwatch(self.watcher)

    async def report(self, task_id: str, state: str, exit_code: int | None = None) -> None:
        status: dict = {"Timestamp": now(), "State": state, "Message": states.MESSAGES[state]}
        if not states.before(state, states.READY):  # the container exists from "ready" on
            cs: dict = {"ContainerID": f"c{task_id}", "PID": 4242 if state == states.RUNNING else 0}
            if exit_code is not None:
                cs["ExitCode"] = exit_code
            status["ContainerStatus"] = cs
        if state == states.FAILED:
            status["Err"] = f"task: non-zero exit ({exit_code})"
        if await update_status(self.objs, task_id, status):
            t = self.objs.get("tasks", task_id)
            if t is not None and t["Status"]["State"] == state:
                self.reported[task_id] = state

    async def step(self, task_id: str) -> None:
        t = self.objs.get("tasks", task_id)
        if t is None or t.get("NodeID") != self.node_id:
            return
        observed, desired = t["Status"]["State"], t["DesiredState"]
        if states.terminal(observed):
            return
        if not states.before(desired, states.SHUTDOWN):
            await self.report(task_id, states.SHUTDOWN, exit_code=0 if observed == states.RUNNING else None)
            return
        if observed == states.RUNNING:
            code = self.endings.pop(task_id, None)
            if code is None and self.crash.get(t["ServiceID"], 0) > 0:
                self.crash[t["ServiceID"]] -= 1
                code = 1
            if code is not None:
                await self.report(task_id, states.COMPLETE if code == 0 else states.FAILED, exit_code=code)
            return
        path = [states.ACCEPTED, states.PREPARING, states.READY]
        if desired == states.RUNNING:
            path += [states.STARTING, states.RUNNING]
        for state in path:
            if not states.before(observed, state):
                continue
            await self.report(task_id, state)
            await asyncio.sleep(0)  # let the managers interleave between reports
            t = self.objs.get("tasks", task_id)
            if t is None or t["DesiredState"] != desired:
                return  # told something new; the next pass handles it
            observed = t["Status"]["State"]
        if observed == states.RUNNING:
            self.watcher.poke()  # an ending may already be planned for it


class Swarm:
    """One manager's worth of control plane plus a simulated agent per node."""

    def __init__(self, store: Any = None, retention: int | None = 5) -> None:
        self.store = store if store is not None else MemoryStore()
        self.objs = ProbedObjects(self.store)
        self.retention = retention
        self.agents: dict[str, SimAgent] = {}
        self.crash: dict[str, int] = {}
        self.nodes: list[str] = []
        self._tasks: list[asyncio.Task] = []
        self.errors: list[logging.LogRecord] = []

    async def start(self, nodes: int = 3) -> None:
        await self.objs.start()
        await self.objs.create("clusters", make_cluster(self.retention))
        for i in range(nodes):
            await self.add_node(role="manager" if i == 0 else "worker")
        for ctl in store_controllers(self.objs, Allocator(self.objs)):
            self._tasks.append(asyncio.create_task(ctl.run(), name=ctl.name))

    async def stop(self) -> None:
        """Cancel controllers and agents; each must end promptly (a daemon's leave/stop does this)."""
        for t in self._tasks:
            t.cancel()
        done, stuck = await asyncio.wait(self._tasks, timeout=2)
        await self.objs.stop()
        await self.store.close()
        assert not stuck, f"did not stop when cancelled: {sorted(t.get_name() for t in stuck)}"
        for t in done:
            assert t.cancelled() or t.exception() is None, f"{t.get_name()} crashed: {t.exception()!r}"

    async def add_node(self, role: str = "worker", labels: dict[str, str] | None = None) -> str:
        node = make_node(len(self.nodes) + 1, role=role, labels=labels)
        await self.objs.create("nodes", node)
        self.nodes.append(node["ID"])
        agent = self.agents[node["ID"]] = SimAgent(self.objs, node["ID"], self.crash)
        self._tasks.append(asyncio.create_task(agent.run(), name=f"agent-{len(self.nodes)}"))
        return node["ID"]

    def tasks_ever(self, sid: str) -> set[str]:
        """The IDs of every task of ``sid`` written from now on (a set that keeps filling)."""
        ever: set[str] = set()

        def probe(kind: str, oid: str, obj: dict | None) -> None:
            if kind == "tasks" and obj is not None and obj["ServiceID"] == sid:
                ever.add(oid)

        self.objs.probes.append(probe)
        return ever

    async def edit_node(self, node_id: str, fn: Callable[[dict], None]) -> None:
        def apply(node: dict) -> None:
            fn(node["Spec"])
            node["UpdatedAt"] = now()

        await self.objs.modify("nodes", node_id, apply)

    # -- the service API, as api/services.py does it --------------------------------------------------
    async def create_service(self, body: dict) -> str:
        spec = validate_spec(body)
        ts = now()
        svc = {"ID": new_id(), "CreatedAt": ts, "UpdatedAt": ts, "Spec": spec,
               "Endpoint": {"Spec": spec.get("EndpointSpec") or {"Mode": "vip"}}}
        await self.objs.create("services", svc)
        return svc["ID"]

    async def update_service(self, sid: str, edit: Callable[[dict], None]) -> None:
        """``docker service update``: retried like a client does on "update out of sequence"."""
        for _ in range(100):
            svc = self.objs.get("services", sid)
            assert svc is not None
            body = copy.deepcopy(svc["Spec"])
            edit(body)
            spec = validate_spec(body)
            new = copy.deepcopy(svc)
            new["PreviousSpec"] = copy.deepcopy(svc["Spec"])
            new["Spec"] = spec
            new["UpdatedAt"] = now()
            new["Endpoint"] = {**(svc.get("Endpoint") or {}), "Spec": spec.get("EndpointSpec") or {"Mode": "vip"}}
            if spec.get("TaskTemplate") != svc["Spec"].get("TaskTemplate"):
                new["UpdateStatus"] = {"State": "updating", "StartedAt": now(), "Message": "update in progress"}
            if await self.objs.commit([Change("services", new)]):
                return
            await asyncio.sleep(0.01)
        raise AssertionError("service update kept failing")

    async def scale(self, sid: str, replicas: int) -> None:
        def edit(spec: dict) -> None:
            spec["Mode"]["Replicated"]["Replicas"] = replicas

        await self.update_service(sid, edit)

    async def delete_service(self, sid: str) -> None:
        for _ in range(100):
            if await self.objs.delete("services", self.objs.get("services", sid)):
                return
            await asyncio.sleep(0.01)
        raise AssertionError("service delete kept failing")

    # -- reading ------------------------------------------------------------------------------------
    def tasks(self, sid: str) -> list[dict]:
        return sorted(self.objs.tasks_of_service(sid), key=lambda t: (t["Slot"], t["CreatedAt"]))

    def running(self, sid: str) -> list[dict]:
        """Tasks that run and are meant to."""
        return [t for t in self.tasks(sid)
                if t["Status"]["State"] == states.RUNNING and t["DesiredState"] == states.RUNNING]

    def agent_of(self, task: dict) -> SimAgent:
        return self.agents[task["NodeID"]]

    def dump(self, sid: str | None = None) -> str:
        names = {nid: f"node{i + 1}" for i, nid in enumerate(self.nodes)}
        rows = []
        for t in sorted(self.objs.list("tasks"), key=lambda t: (t["ServiceID"], t["Slot"], t["CreatedAt"])):
            if sid is not None and t["ServiceID"] != sid:
                continue
            rows.append(f"  {t['ID'][:6]} svc={t['ServiceID'][:6]} slot={t['Slot']} "
                        f"node={names.get(t.get('NodeID', ''), t.get('NodeID', '-'))} desired={t['DesiredState']} "
                        f"state={t['Status']['State']} err={t['Status'].get('Err', '')!r} "
                        f"env={t['Spec']['ContainerSpec'].get('Env')}")
        return "\n".join(rows) or "  (no tasks)"

    async def until(self, pred: Callable[[], Any], what: str, timeout: float = 5.0, sid: str | None = None) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not pred():
            if loop.time() > end:
                raise AssertionError(f"timed out waiting for: {what}\n{self.dump(sid)}")
            await asyncio.sleep(0.01)

    def check_cache(self) -> None:
        """The cache holds exactly what the store holds."""
        kvs = self.store._kv  # (through JitterStore.__getattr__ when wrapped)
        stored: dict[tuple[str, str], dict] = {}
        for key, kv in kvs.items():
            if key.startswith(PREFIX):
                kind, oid, obj = _decode(kv)
                stored[(kind, oid)] = obj
        cached = {(kind, oid): obj for kind, bucket in self.objs.cache.items() for oid, obj in bucket.items()}
        assert cached.keys() == stored.keys()
        for k, obj in stored.items():
            assert cached[k] == obj, f"stale cache entry for {k}"


class _ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.asynccontextmanager
async def running_swarm(nodes: int = 3, *, retention: int | None = 5, store: Any = None) -> Any:
    """A started swarm; on exit the controllers must not have logged an error (a crash in reconcile)."""
    handler = _ErrorLog()
    logging.getLogger("shoal").addHandler(handler)
    h = Swarm(store, retention)
    try:
        await h.start(nodes)
        yield h
    finally:
        try:
            await h.stop()
        finally:
            logging.getLogger("shoal").removeHandler(handler)
    assert not handler.records, [r.getMessage() for r in handler.records]


def slots(tasks: list[dict]) -> list[int]:
    return sorted(t["Slot"] for t in tasks)


def desired_running_slots(h: Swarm, sid: str) -> Iterator[int]:
    return (t["Slot"] for t in h.objs.tasks_of_service(sid) if t["DesiredState"] == states.RUNNING)


def watch_slots(h: Swarm, sid: str) -> list[str]:
    """Record every moment two tasks of one slot are both meant to run."""
    problems: list[str] = []

    def probe(kind: str, oid: str, obj: dict | None) -> None:
        if kind == "tasks" and obj is not None and obj["ServiceID"] == sid:
            dup = [s for s, n in Counter(desired_running_slots(h, sid)).items() if n > 1]
            if dup:
                problems.append(f"slots {dup} duplicated")

    h.objs.probes.append(probe)
    return problems


def first_desired_running(h: Swarm) -> dict[str, float]:
    """Monotonic time at which each task was first meant to run."""
    seen: dict[str, float] = {}

    def probe(kind: str, oid: str, obj: dict | None) -> None:
        if kind == "tasks" and obj is not None and obj["DesiredState"] == states.RUNNING and oid not in seen:
            seen[oid] = time.monotonic()

    h.objs.probes.append(probe)
    return seen


# ---- replicated services ----------------------------------------------------------------------

@deadline(10)
async def test_replicated_service_runs_its_replicas_spread_over_nodes() -> None:
    async with running_swarm(3) as h:
        sid = await h.create_service(service_spec("web", 4))
        await h.until(lambda: len(h.running(sid)) == 4, "4 running tasks", sid=sid)
        await asyncio.sleep(0.3)  # nothing more happens once converged
        tasks = h.tasks(sid)
        assert len(tasks) == 4, h.dump(sid)
        assert slots(tasks) == [1, 2, 3, 4]
        per_node = Counter(t["NodeID"] for t in tasks)
        assert set(per_node) <= set(h.nodes)
        assert len(per_node) == 3 and max(per_node.values()) == 2, per_node
        for t in tasks:
            assert t["DesiredState"] == states.RUNNING and t["Status"]["State"] == states.RUNNING
            assert t["ServiceAnnotations"]["Name"] == "web"
            assert t["Spec"] == h.objs.get("services", sid)["Spec"]["TaskTemplate"]
            assert "Err" not in t["Status"]


@deadline(10)
async def test_scale_down_removes_and_scale_up_adds_slots() -> None:
    async with running_swarm(3) as h:
        sid = await h.create_service(service_spec("web", 4))
        dup = watch_slots(h, sid)
        await h.until(lambda: len(h.running(sid)) == 4, "4 running tasks", sid=sid)
        before = {t["ID"] for t in h.tasks(sid)}

        await h.scale(sid, 2)
        await h.until(lambda: len(h.objs.tasks_of_service(sid)) == 2, "removed tasks reaped", sid=sid)
        assert len(h.running(sid)) == 2
        removed = before - {t["ID"] for t in h.tasks(sid)}
        assert len(removed) == 2
        for tid in removed:  # marked remove, shut down by the agent, then deleted
            last = h.objs.deleted[tid]
            assert last["DesiredState"] == states.REMOVE
            assert last["Status"]["State"] == states.SHUTDOWN
        per_node = Counter(t["NodeID"] for t in h.tasks(sid))
        assert max(per_node.values()) == 1, per_node  # the doubled-up node lost one

        await h.scale(sid, 6)
        await h.until(lambda: len(h.running(sid)) == 6, "6 running tasks", sid=sid)
        await asyncio.sleep(0.2)
        assert slots(h.running(sid)) == [1, 2, 3, 4, 5, 6]
        assert len(h.tasks(sid)) == 6, h.dump(sid)
        assert max(Counter(t["NodeID"] for t in h.tasks(sid)).values()) == 2
        assert not dup, dup[:3]


@deadline(10)
async def test_scale_down_removes_non_running_tasks_first() -> None:
    """A slot whose task is not running (here: its replacement waits out the restart delay) goes before
    any running one, even one on the node with the most tasks of the service."""
    async with running_swarm(3) as h:
        sid = await h.create_service(service_spec("web", 4, restart={"Delay": 3 * SECOND}))
        await h.until(lambda: len(h.running(sid)) == 4, "4 running tasks", sid=sid)
        per_node = Counter(t["NodeID"] for t in h.tasks(sid))
        assert sorted(per_node.values()) == [1, 1, 2], per_node
        victim = next(t for t in h.tasks(sid) if per_node[t["NodeID"]] == 1)
        h.agent_of(victim).end(victim["ID"], exit_code=1)

        def waiting_replacement() -> dict | None:
            return next((t for t in h.tasks(sid) if t["Slot"] == victim["Slot"] and t["ID"] != victim["ID"]
                         and t["Status"]["State"] == states.READY), None)

        await h.until(waiting_replacement, "a replacement prepared, waiting out the restart delay", sid=sid)
        replacement = waiting_replacement()
        assert replacement["DesiredState"] == states.READY
        keep = {t["ID"] for t in h.running(sid)}
        assert len(keep) == 3

        await h.scale(sid, 3)
        await h.until(lambda: not [t for t in h.objs.tasks_of_service(sid) if t["Slot"] == victim["Slot"]
                                   and states.before(t["DesiredState"], states.SHUTDOWN)],
                      "the non-running slot removed", sid=sid)
        await asyncio.sleep(0.3)
        assert {t["ID"] for t in h.running(sid)} == keep, h.dump(sid)
        assert victim["Slot"] not in slots(h.running(sid))
        assert h.objs.deleted.get(replacement["ID"], h.objs.get("tasks", replacement["ID"]))["DesiredState"] == (
            states.REMOVE)
        assert Counter(t["NodeID"] for t in h.running(sid)) == per_node - Counter([victim["NodeID"]])


# ---- restart policies --------------------------------------------------------------------------

@deadline(10)
async def test_failed_task_is_replaced_in_its_slot_after_the_restart_delay() -> None:
    async with running_swarm(3) as h:
        sid = await h.create_service(service_spec("web", 2))
        dup = watch_slots(h, sid)
        started = first_desired_running(h)
        await h.until(lambda: len(h.running(sid)) == 2, "2 running tasks", sid=sid)
        victim = next(t for t in h.tasks(sid) if t["Slot"] == 2)
        other = next(t for t in h.tasks(sid) if t["Slot"] == 1)
        h.agent_of(victim).end(victim["ID"], exit_code=3)
        await h.until(lambda: h.objs.get("tasks", victim["ID"])["Status"]["State"] == states.FAILED, "failure")
        failed_at = time.monotonic()

        def replaced() -> bool:
            return any(t["Slot"] == 2 and t["ID"] != victim["ID"] for t in h.running(sid))

        await h.until(replaced, "a replacement in slot 2", sid=sid)
        new = next(t for t in h.running(sid) if t["Slot"] == 2)
        assert started[new["ID"]] - failed_at >= 0.18, "replacement started before the restart delay"
        old = h.objs.get("tasks", victim["ID"])
        assert old["DesiredState"] == states.SHUTDOWN
        assert old["Status"]["State"] == states.FAILED
        assert old["Status"]["Err"] == "task: non-zero exit (3)"
        assert old["Status"]["ContainerStatus"]["ExitCode"] == 3
        assert h.objs.get("tasks", other["ID"])["DesiredState"] == states.RUNNING  # the other slot untouched
        assert slots(h.running(sid)) == [1, 2]
        assert len(h.tasks(sid)) == 3
        assert not dup, dup[:3]


@deadline(10)
async def test_restart_condition_none_leaves_the_slot_empty() -> None:
    async with running_swarm(3) as h:
        sid = await h.create_service(service_spec("once", 2, restart={"Condition": "none"}))
        await h.until(lambda: len(h.running(sid)) == 2, "2 running tasks", sid=sid)
        victim = next(t for t in h.tasks(sid) if t["Slot"] == 1)
        h.agent_of(victim).end(victim["ID"], exit_code=1)
        await h.until(lambda: h.objs.get("tasks", victim["ID"])["DesiredState"] == states.SHUTDOWN,
                      "the failed task shut down", sid=sid)
        await asyncio.sleep(0.6)  # well past the restart delay
        tasks = h.tasks(sid)
        assert len(tasks) == 2, h.dump(sid)
        assert slots(h.running(sid)) == [2]
        assert h.objs.get("tasks", victim["ID"])["Status"]["State"] == states.FAILED


@deadline(10)
async def test_on_failure_does_not_restart_a_completed_task() -> None:
    async with running_swarm(3) as h:
        sid = await h.create_service(service_spec("job", 2, restart={"Condition": "on-failure"}))
        await h.until(lambda: len(h.running(sid)) == 2, "2 running tasks", sid=sid)
        done = next(t for t in h.tasks(sid) if t["Slot"] == 1)
        crashed = next(t for t in h.tasks(sid) if t["Slot"] == 2)
        h.agent_of(done).end(done["ID"], exit_code=0)
        h.agent_of(crashed).end(crashed["ID"], exit_code=1)
        await h.until(lambda: any(t["Slot"] == 2 and t["ID"] != crashed["ID"] for t in h.running(sid)),
                      "slot 2 restarted (it failed)", sid=sid)
        await asyncio.sleep(0.5)
        slot1 = [t for t in h.tasks(sid) if t["Slot"] == 1]
        assert [t["ID"] for t in slot1] == [done["ID"]], h.dump(sid)
        assert slot1[0]["Status"]["State"] == states.COMPLETE
        assert slot1[0]["DesiredState"] == states.SHUTDOWN
        assert slots(h.running(sid)) == [2]


@deadline(10)
async def test_max_attempts_bounds_the_restarts() -> None:
    async with running_swarm(3) as h:
        sid = await h.create_service(service_spec("flaky", 1, restart={"MaxAttempts": 2, "Delay": 50 * MS}))
        h.crash[sid] = 100  # every task fails once it runs
        await h.until(lambda: sum(t["Status"]["State"] == states.FAILED for t in h.tasks(sid)) == 3,
                      "3 failures", sid=sid)
        await asyncio.sleep(0.5)
        tasks = h.tasks(sid)
        assert len(tasks) == 3, h.dump(sid)  # the first run and 2 restarts
        assert {t["Slot"] for t in tasks} == {1}
        assert all(t["Status"]["State"] == states.FAILED and t["DesiredState"] == states.SHUTDOWN for t in tasks)


@deadline(10)
async def test_max_attempts_counts_only_restarts_within_the_window() -> None:
    """MaxAttempts 2 within a 0.5 s Window: failures further apart than the window are always restarted
    (here 3, more than MaxAttempts); failures in quick succession stop after 2 restarts."""
    async with running_swarm(3) as h:
        window = 500 * MS
        sid = await h.create_service(service_spec("flaky", 1, restart={"MaxAttempts": 2, "Window": window,
                                                                       "Delay": 20 * MS}))
        ever = h.tasks_ever(sid)
        await h.until(lambda: len(h.running(sid)) == 1, "1 running task", sid=sid)
        for n in range(3):  # spaced failures: each restart is alone in its window
            await asyncio.sleep(window / 1e9 + 0.1)
            [t] = h.running(sid)
            h.agent_of(t).end(t["ID"], exit_code=1)
            await h.until(lambda old=t["ID"]: h.running(sid) and h.running(sid)[0]["ID"] != old,
                          f"restart {n + 1}", sid=sid)
        assert len(ever) == 4, h.dump(sid)

        await asyncio.sleep(window / 1e9 + 0.1)
        h.crash[sid] = 100  # now every task fails as soon as it runs
        await h.until(lambda: not h.running(sid) and len(ever) == 6 and all(
            states.terminal(t["Status"]["State"]) for t in h.tasks(sid)), "2 quick restarts, then none", sid=sid)
        await asyncio.sleep(0.2)  # still within the window of the last restart
        assert len(ever) == 6, h.dump(sid)
        assert not [t for t in h.tasks(sid) if states.before(t["DesiredState"], states.SHUTDOWN)], h.dump(sid)


@deadline(10)
async def test_max_attempts_holds_beyond_the_history_retention_limit() -> None:
    async with running_swarm(3, retention=2) as h:
        sid = await h.create_service(service_spec("flaky", 1, restart={"MaxAttempts": 3, "Delay": 30 * MS}))
        ever = h.tasks_ever(sid)
        h.crash[sid] = 100  # every task fails once it runs
        await h.until(lambda: len(ever) >= 4 and not h.running(sid), "the first run and 3 restarts", sid=sid)
        await asyncio.sleep(1.0)  # ~30 restart delays: any restart beyond MaxAttempts would show
        assert len(ever) == 4, h.dump(sid)
        assert len(h.tasks(sid)) <= 2  # the retention limit still trims the slot's history


@deadline(10)
async def test_task_history_retention_limit_bounds_each_slot() -> None:
    async with running_swarm(3, retention=2) as h:
        sid = await h.create_service(service_spec("flaky", 2, restart={"Delay": 30 * MS}))
        ever = h.tasks_ever(sid)
        h.crash[sid] = 6  # six failures, then the tasks stay up
        await h.until(lambda: len(h.running(sid)) == 2 and len(ever) >= 8, "recovery after 6 failures", sid=sid)

        def bounded() -> bool:
            per_slot = Counter(t["Slot"] for t in h.objs.tasks_of_service(sid))
            return set(per_slot) == {1, 2} and max(per_slot.values()) <= 2

        await h.until(bounded, "at most 2 tasks per slot", timeout=2, sid=sid)
        assert len(ever) == 8
        assert sum(not h.objs.get("tasks", t) for t in ever) >= 4  # the history was reaped
        for tid in ever - {t["ID"] for t in h.tasks(sid)}:
            last = h.objs.deleted[tid]
            assert last["Status"]["State"] == states.FAILED and last["DesiredState"] == states.SHUTDOWN


@deadline(10)
async def test_default_task_history_retention_is_five_per_slot() -> None:
    """The daemon's default cluster spec keeps 5 tasks per slot (the running one and 4 before it); a cluster
    spec without the field gets the same from the reaper."""
    assert default_cluster_spec()["Orchestration"]["TaskHistoryRetentionLimit"] == 5
    async with running_swarm(3, retention=None) as h:
        sid = await h.create_service(service_spec("flaky", 1, restart={"Delay": 20 * MS}))
        ever = h.tasks_ever(sid)
        h.crash[sid] = 8  # eight failures, then the task stays up
        await h.until(lambda: len(h.running(sid)) == 1 and len(ever) == 9, "recovery after 8 failures", sid=sid)
        await h.until(lambda: len(h.objs.tasks_of_service(sid)) == 5, "the slot trimmed to 5", timeout=2, sid=sid)
        await asyncio.sleep(0.3)
        tasks = h.tasks(sid)
        assert len(tasks) == 5 and len(ever) == 9, h.dump(sid)
        newest = max(tasks, key=lambda t: t["CreatedAt"])
        assert h.running(sid) == [newest]
        for t in tasks:  # the 4 most recent failures are kept, the 4 oldest reaped
            if t is not newest:
                assert t["Status"]["State"] == states.FAILED and t["DesiredState"] == states.SHUTDOWN
        reaped = ever - {t["ID"] for t in tasks}
        assert len(reaped) == 4 and all(h.objs.deleted[tid]["Status"]["State"] == states.FAILED for tid in reaped)
        assert max(h.objs.deleted[tid]["CreatedAt"] for tid in reaped) <= min(t["CreatedAt"] for t in tasks)

        [cluster] = h.objs.list("clusters")
        await h.objs.modify("clusters", cluster["ID"],
                            lambda c: c["Spec"]["Orchestration"].pop("TaskHistoryRetentionLimit"))
        assert "TaskHistoryRetentionLimit" not in h.objs.list("clusters")[0]["Spec"]["Orchestration"]
        assert TaskReaper(h.objs).history_limit() == 5


# ---- rolling update -----------------------------------------------------------------------------

@deadline(10)
async def test_rolling_update_replaces_one_task_at_a_time() -> None:
    async with running_swarm(3) as h:
        n = 3
        cfg = {"Parallelism": 1, "Order": "stop-first", "Monitor": 50 * MS}
        sid = await h.create_service(service_spec("web", n, env=["V=1"], update=cfg))
        dup = watch_slots(h, sid)
        await h.until(lambda: len(h.running(sid)) == n, f"{n} running", sid=sid)
        old = {t["ID"] for t in h.tasks(sid)}
        counts: list[int] = []

        def probe(kind: str, oid: str, obj: dict | None) -> None:
            if kind == "tasks":  # containers up, whatever they are meant to do
                counts.append(sum(t["Status"]["State"] == states.RUNNING for t in h.objs.tasks_of_service(sid)))

        h.objs.probes.append(probe)

        def edit(spec: dict) -> None:
            spec["TaskTemplate"]["ContainerSpec"]["Env"] = ["V=2"]

        await h.update_service(sid, edit)
        svc = h.objs.get("services", sid)
        assert svc["UpdateStatus"]["State"] == "updating"
        assert svc["PreviousSpec"]["TaskTemplate"]["ContainerSpec"]["Env"] == ["V=1"]

        def done() -> bool:
            run = h.running(sid)
            return (len(run) == n and all(t["Spec"]["ContainerSpec"]["Env"] == ["V=2"] for t in run)
                    and (h.objs.get("services", sid).get("UpdateStatus") or {}).get("State") == "completed")

        await h.until(done, "update completed", timeout=6, sid=sid)
        assert counts and min(counts) >= n - 1, counts
        assert max(counts) <= n, counts
        assert not dup, dup[:3]
        assert not old & {t["ID"] for t in h.running(sid)}
        for tid in old:
            t = h.objs.get("tasks", tid)
            assert t["DesiredState"] == states.SHUTDOWN and t["Status"]["State"] == states.SHUTDOWN
        assert slots(h.running(sid)) == [1, 2, 3]
        status = h.objs.get("services", sid)["UpdateStatus"]
        assert status["Message"] == "update completed" and status["CompletedAt"] >= status["StartedAt"]


@deadline(10)
async def test_deleted_service_tasks_are_removed_then_reaped() -> None:
    async with running_swarm(3) as h:
        sid = await h.create_service(service_spec("web", 3))
        await h.until(lambda: len(h.running(sid)) == 3, "3 running", sid=sid)
        ids = {t["ID"] for t in h.tasks(sid)}
        await h.delete_service(sid)
        await h.until(lambda: not h.objs.tasks_of_service(sid), "all tasks deleted", sid=sid)
        assert set(h.objs.deleted) >= ids
        for tid in ids:
            last = h.objs.deleted[tid]
            assert last["DesiredState"] == states.REMOVE and last["Status"]["State"] == states.SHUTDOWN
        assert not h.objs.list("tasks")


# ---- global services and nodes ------------------------------------------------------------------

@deadline(10)
async def test_global_service_follows_the_nodes() -> None:
    async with running_swarm(3) as h:
        sid = await h.create_service(service_spec("agent", mode="global"))
        await h.until(lambda: len(h.running(sid)) == 3, "one running task per node", sid=sid)
        tasks = h.tasks(sid)
        assert sorted(t["NodeID"] for t in tasks) == sorted(h.nodes)
        assert all(t["Slot"] == 0 for t in tasks)

        drained = h.nodes[1]
        on_drained = next(t for t in tasks if t["NodeID"] == drained)
        await h.edit_node(drained, lambda spec: spec.update(Availability="drain"))
        await h.until(lambda: h.objs.get("tasks", on_drained["ID"])["Status"]["State"] == states.SHUTDOWN,
                      "the drained node's task shut down", sid=sid)
        assert h.objs.get("tasks", on_drained["ID"])["DesiredState"] == states.SHUTDOWN

        new_node = await h.add_node()
        await h.until(lambda: any(t["NodeID"] == new_node for t in h.running(sid)), "a task on the new node",
                      sid=sid)
        await asyncio.sleep(0.3)
        run = h.running(sid)
        assert sorted(t["NodeID"] for t in run) == sorted([h.nodes[0], h.nodes[2], new_node])
        assert not [t for t in h.tasks(sid) if t["NodeID"] == drained and t["DesiredState"] == states.RUNNING]
        assert len(h.tasks(sid)) == 4


@deadline(10)
async def test_drained_node_tasks_move_to_other_nodes() -> None:
    """Like swarmkit, tasks lost to a drained node did not crash: their replacements do not wait out the
    restart delay (5 s here)."""
    async with running_swarm(3) as h:
        sid = await h.create_service(service_spec("web", 4, restart={"Delay": 5 * SECOND}))
        dup = watch_slots(h, sid)
        started = first_desired_running(h)
        await h.until(lambda: len(h.running(sid)) == 4, "4 running", sid=sid)
        per_node = Counter(t["NodeID"] for t in h.tasks(sid))
        drained = per_node.most_common(1)[0][0]
        moved = {t["ID"]: t["Slot"] for t in h.tasks(sid) if t["NodeID"] == drained}
        assert len(moved) == 2
        await h.edit_node(drained, lambda spec: spec.update(Availability="drain"))
        drained_at = time.monotonic()

        def moved_away() -> bool:
            run = h.running(sid)
            return len(run) == 4 and all(t["NodeID"] != drained for t in run)

        await h.until(moved_away, "tasks moved off the drained node", timeout=2, sid=sid)
        assert slots(h.running(sid)) == [1, 2, 3, 4]
        for tid, slot in moved.items():
            old = h.objs.get("tasks", tid)
            assert old["DesiredState"] == states.SHUTDOWN and old["Status"]["State"] == states.SHUTDOWN
            new = next(t for t in h.running(sid) if t["Slot"] == slot)
            assert started[new["ID"]] - drained_at < 2, "replacement waited for the restart delay"
        assert max(Counter(t["NodeID"] for t in h.running(sid)).values()) == 2
        assert not dup, dup[:3]


@deadline(10)
async def test_unsatisfiable_constraints_keep_tasks_pending_until_a_node_fits() -> None:
    async with running_swarm(3) as h:
        sid = await h.create_service(service_spec("east", 2, constraints=["node.labels.zone==east"]))

        def stuck() -> bool:
            tasks = h.tasks(sid)
            return len(tasks) == 2 and all(t["Status"]["State"] == states.PENDING
                                           and t["Status"].get("Err") == NO_FIT for t in tasks)

        await h.until(stuck, "pending tasks with the scheduling error", sid=sid)
        await asyncio.sleep(0.2)
        assert stuck() and not any(t.get("NodeID") for t in h.tasks(sid))

        target = h.nodes[2]
        await h.edit_node(target, lambda spec: spec["Labels"].update(zone="east"))
        await h.until(lambda: len(h.running(sid)) == 2, "placed once a node has the label", sid=sid)
        assert all(t["NodeID"] == target and "Err" not in t["Status"] for t in h.tasks(sid))
        assert len(h.tasks(sid)) == 2


# ---- concurrency --------------------------------------------------------------------------------

@deadline(10)
async def test_concurrent_writers_of_one_task_lose_no_update() -> None:
    """Desired-state writes (managers) and status reports (agents) race on the same task objects."""
    async with running_swarm(3, store=JitterStore(MemoryStore(), seed=7)) as h:
        sid = await h.create_service(service_spec("web", 6))
        await h.until(lambda: len(h.running(sid)) == 6, "6 running", sid=sid)
        tasks = h.tasks(sid)

        async def manager_side(tid: str) -> None:
            def apply(t: dict) -> None:
                t["DesiredState"] = states.SHUTDOWN
                t["Labels"] = {"touched": "yes"}

            await h.objs.modify("tasks", tid, apply)

        async def agent_side(tid: str) -> None:
            assert await update_status(h.objs, tid, {"Timestamp": now(), "State": states.FAILED,
                                                     "Message": "failed", "Err": "boom"})

        for a in h.agents.values():
            a.paused = True  # only the writers below touch these tasks' status
        await asyncio.gather(*(f(t["ID"]) for t in tasks for f in (manager_side, agent_side)))
        for t in tasks:
            got = h.objs.get("tasks", t["ID"])
            assert got["Labels"] == {"touched": "yes"}
            assert got["DesiredState"] == states.SHUTDOWN
            assert got["Status"]["State"] == states.FAILED and got["Status"]["Err"] == "boom"
        h.check_cache()
        for a in h.agents.values():
            a.paused = False
            a.watcher.poke()
        # the orchestrator sees six dead tasks; the whole pipeline must converge again
        await h.until(lambda: len(h.running(sid)) == 6, "6 replacements running", sid=sid)


@deadline(15)
async def test_pipeline_converges_with_interleaved_writes() -> None:
    """Scale, update and failures at once against a store that interleaves every write."""
    async with running_swarm(3, store=JitterStore(MemoryStore(), seed=11)) as h:
        cfg = {"Parallelism": 2, "Monitor": 20 * MS}
        sid = await h.create_service(service_spec("web", 5, env=["V=1"], update=cfg, restart={"Delay": 20 * MS}))
        dup = watch_slots(h, sid)
        await h.until(lambda: len(h.running(sid)) == 5, "5 running", sid=sid)
        for t in h.tasks(sid)[:2]:
            h.agent_of(t).end(t["ID"])
        await h.scale(sid, 3)
        await h.update_service(sid, lambda spec: spec["TaskTemplate"]["ContainerSpec"].update(Env=["V=2"]))
        await h.scale(sid, 4)

        def settled() -> bool:
            run = h.running(sid)
            tasks = h.tasks(sid)
            return (len(run) == 4 and all(t["Spec"]["ContainerSpec"]["Env"] == ["V=2"] for t in run)
                    and not any(t["DesiredState"] == states.REMOVE for t in tasks)
                    and all(states.terminal(t["Status"]["State"]) or not t.get("NodeID")
                            for t in tasks if t not in run)
                    and (h.objs.get("services", sid).get("UpdateStatus") or {}).get("State") == "completed")

        await h.until(settled, "converged", timeout=8, sid=sid)
        await asyncio.sleep(0.1)
        assert len(set(slots(h.running(sid)))) == 4  # which slots survive the scale-down is the orchestrator's pick
        assert not dup, dup[:3]
        # no status report was lost: every task shows the last state its agent reported
        for t in h.objs.list("tasks"):
            if not t.get("NodeID"):
                continue
            reported = h.agents[t["NodeID"]].reported.get(t["ID"])
            assert reported == t["Status"]["State"], (t["ID"], reported, t["Status"]["State"])
        h.check_cache()


@pytest.mark.parametrize("seed", [1, 2, 3])
@deadline(10)
async def test_update_status_and_desired_state_race(seed: int) -> None:
    """Objects.modify against update_status on one task, many times, with interleaving writes."""
    store = JitterStore(MemoryStore(), seed=seed)
    objs = Objects(store)
    await objs.start()
    try:
        ts = now()
        task = {"ID": new_id(), "CreatedAt": ts, "UpdatedAt": ts, "ServiceID": "s", "Slot": 1, "NodeID": "n",
                "Labels": {}, "Spec": {}, "DesiredState": states.RUNNING,
                "Status": {"State": states.ASSIGNED, "Message": "", "Timestamp": ts}}
        await objs.create("tasks", task)
        path = [states.ACCEPTED, states.PREPARING, states.READY, states.STARTING, states.RUNNING]

        async def agent() -> None:
            for state in path:
                await update_status(objs, task["ID"], {"State": state, "Timestamp": now(), "Message": state})

        async def manager(i: int) -> None:
            await objs.modify("tasks", task["ID"], lambda t: t["Labels"].update({f"m{i}": "1"}))

        await asyncio.gather(agent(), *(manager(i) for i in range(10)))
        for got in (objs.get("tasks", task["ID"]), await objs.fetch("tasks", task["ID"])):
            assert got["Status"]["State"] == states.RUNNING
            assert got["Labels"] == {f"m{i}": "1" for i in range(10)}
            assert got["Version"] == objs.get("tasks", task["ID"])["Version"]
    finally:
        await objs.stop()
        await store.close()


class LateReplies:
    """A store whose txn replies can be held back after the write took effect, as etcd responses on
    concurrent requests may come back in any order."""

    def __init__(self, inner: MemoryStore) -> None:
        self.inner = inner
        self.hold: asyncio.Event | None = None

    async def txn(self, compares: Any, ops: Any) -> Any:
        hold = self.hold
        res = await self.inner.txn(compares, ops)
        if hold is not None:
            await hold.wait()
        return res

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.parametrize("later", ["status report", "delete"])
@deadline(5)
async def test_a_late_reply_does_not_roll_the_cache_back(later: str) -> None:
    """Manager and agent write one task; the manager's reply arrives after the agent's write (and its
    watch event). The cache must end as the store is, not at the manager's older version."""
    store = LateReplies(MemoryStore())
    objs = Objects(store)
    await objs.start()
    try:
        ts = now()
        await objs.create("tasks", {"ID": "t1", "CreatedAt": ts, "UpdatedAt": ts, "ServiceID": "s", "Slot": 1,
                                    "NodeID": "n", "Labels": {}, "Spec": {}, "DesiredState": states.RUNNING,
                                    "Status": {"State": states.RUNNING, "Message": "started", "Timestamp": ts}})
        mine = copy.deepcopy(objs.get("tasks", "t1"))
        mine["DesiredState"] = states.SHUTDOWN
        store.hold = release = asyncio.Event()
        manager = asyncio.create_task(objs.update("tasks", mine))  # written at once, reply held back
        await asyncio.sleep(0)
        store.hold = None
        if later == "status report":  # the agent's report retries from the store and lands after it
            assert await update_status(objs, "t1", {"State": states.FAILED, "Timestamp": now(), "Err": "boom"})
        else:
            assert await objs.delete("tasks", await objs.fetch("tasks", "t1"))
        await asyncio.sleep(0.01)  # the watch delivers both writes
        release.set()
        await manager
        await asyncio.sleep(0.01)
        stored = await objs.fetch("tasks", "t1")
        assert objs.get("tasks", "t1") == stored
        if stored is not None:
            assert stored["Status"]["State"] == states.FAILED and stored["DesiredState"] == states.SHUTDOWN
    finally:
        await objs.stop()
        await store.close()


@deadline(5)
async def test_cancelling_a_woken_watcher_is_not_lost() -> None:
    """Controllers and agents sleep in Watcher.wait; stopping them cancels that wait. A cancellation
    that lands just as the watcher is woken must still end the waiter (else shutdown hangs)."""
    objs = Objects(MemoryStore())
    for ticks in range(4):
        w = objs.watcher(("tasks",))
        waiting = asyncio.create_task(w.wait(5))
        await asyncio.sleep(0)
        w.poke()
        for _ in range(ticks):
            await asyncio.sleep(0)
        if waiting.cancel():  # the cancellation was accepted: it must win
            with pytest.raises(asyncio.CancelledError):
                await waiting
        else:
            assert await waiting == set()
        objs.unwatch(w)
