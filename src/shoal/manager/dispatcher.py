"""The dispatcher: the leader's side of agent sessions.

It hands each node the tasks assigned to it (with their secrets and configs), its network map and the
cluster's CA (:class:`CAUpdate`), writes the agents' status reports into the store (a task's observed
state only moves forward), marks nodes down when their heartbeats stop, and ends the session of a node
removed from the swarm at once. It holds no transport code: the cluster port's server gives it each
session's :class:`Channel` and the typed messages the agent sends (shoal.cluster.messages).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from shoal.aio import MONOTONIC, Clock, cancel_all
from shoal.cluster.messages import (
    Ack,
    Assignments,
    CAUpdate,
    DescribeAgain,
    Description,
    Heartbeat,
    Hello,
    Message,
    Nack,
    NetworkMap,
    Refused,
    RoleChange,
    SessionConfig,
    SessionError,
    StatusReport,
    Welcome,
)
from shoal.manager import netmap
from shoal.manager.netkeys import set_node_key
from shoal.manager.secrets import Sealer, needed, payload, task_registry_auth
from shoal.model import states
from shoal.model.errors import Deposed, OutOfSequence, StoreError
from shoal.model.ids import now
from shoal.model.network import valid_wg_key
from shoal.model.service import SEALED_AUTH
from shoal.model.task import REGISTRY_AUTH
from shoal.model.views import ClusterView, NodeView
from shoal.store.objects import Change, Objects

log = logging.getLogger(__name__)

REMOVED = "rpc error: code = PermissionDenied desc = node has been removed from the swarm"


class Channel(Protocol):
    """The transport of one session (the cluster port's WebSocket)."""

    async def send(self, msg: Message) -> None: ...

    async def close(self) -> None: ...


def assigned_to(objs: Objects, node_id: str) -> list[dict]:
    """Tasks a node must know about: scheduled to it and not yet forgotten."""
    return [t for t in objs.tasks_of_node(node_id)
            if not states.before(t["Status"]["State"], states.ASSIGNED) and t.get("ServiceID")]


class NotAssigned(Exception):
    """A node reported the status of a task that is not assigned to it."""


def check_assigned(task: dict | None, node_id: str) -> None:
    """swarmkit: PermissionDenied, "cannot update a task not assigned this node"."""
    if task is not None and task.get("NodeID") != node_id:
        raise NotAssigned(f"task {task['ID']} is not assigned to node {node_id}")


def apply_status(task: dict, status: dict) -> bool:
    """Merge an agent's report into ``task`` (observed states only move forward); False: nothing new."""
    cur = task["Status"]["State"]
    new = status["State"]
    if states.before(new, cur):
        return False
    if new == cur and status.get("Err", "") == task["Status"].get("Err", "") and \
            status.get("ContainerStatus") == task["Status"].get("ContainerStatus"):
        return False
    merged = {**task["Status"], **status}
    if "Err" not in status:
        merged.pop("Err", None)
    task["Status"] = merged
    task["UpdatedAt"] = now()
    return True


async def update_status(objs: Objects, task_id: str, status: dict, node_id: str | None = None) -> bool:
    """Apply an agent's report; False if the task is gone or the report is stale. With ``node_id`` (the
    reporting session's node), a task assigned to another node raises :class:`NotAssigned` unwritten."""
    applied = False

    def track(task: dict) -> bool:
        nonlocal applied
        if node_id is not None:
            check_assigned(task, node_id)
        applied = apply_status(task, status)
        return applied

    await objs.modify("tasks", task_id, track)
    return applied


def heartbeat_interval(objs: Objects) -> float:
    """How often agents send heartbeats: a fifth of the cluster's HeartbeatPeriod, at most 1 s."""
    period = 5e9
    for c in objs.list("clusters"):
        period = ClusterView(c).heartbeat_period
    return max(0.1, min(1.0, period / 1e9 / 5))


def for_node(sealer: Sealer | None, task: dict) -> dict:
    """A task as its node gets it: the sealed pull credentials opened (only for the node that runs it)."""
    if SEALED_AUTH not in task:
        return task
    out = {k: v for k, v in task.items() if k != SEALED_AUTH}
    if auth := task_registry_auth(sealer, task):
        out[REGISTRY_AUTH] = auth
    return out


def ca_update(objs: Objects) -> CAUpdate:
    """The cluster's CA as nodes should follow it: the root to trust and the issuer to hold a certificate of."""
    info = next(iter(objs.list("clusters")), {}).get("TLSInfo") or {}
    return CAUpdate(trust_root=info.get("TrustRoot", ""), issuer_subject=info.get("CertIssuerSubject", ""),
                    issuer_public_key=info.get("CertIssuerPublicKey", ""))


def _fingerprint(task: dict) -> tuple:
    """What an agent must hear about: everything but the status it reported itself."""
    return (task["DesiredState"], task.get("NodeID"))


class AgentSession:
    """The manager's end of one agent's session."""

    def __init__(self, node_id: str, channel: Channel, role: str = "worker") -> None:
        self.node_id = node_id
        self.channel = channel
        self.role = role  # the role in the node's certificate
        self.role_sent = ""
        self.sent: dict[str, tuple] = {}
        self.deps_sent: dict[str, set[str]] = {"secrets": set(), "configs": set()}  # secret/config IDs
        self.dirty = asyncio.Event()
        self.net_dirty = asyncio.Event()
        self.netmap: dict | None = None
        self.ca_sent: CAUpdate | None = None
        self.closed = False
        self.pumps: list[asyncio.Task] = []  # what sends the node its tasks and its network map

    async def send(self, msg: Message) -> None:
        await self.channel.send(msg)


STATUS_WINDOW = 0.1  # s: status reports arriving within it are written together (swarmkit: 100 ms)


@dataclass
class _Report:
    """The latest status of one task, and the reports (session, seq) waiting for its write."""

    status: dict
    acks: list[tuple[AgentSession, int]]


class Dispatcher:
    """Keeps agent sessions: pushes each node its tasks, applies status reports, and marks nodes down
    when their heartbeats stop (after ``timeout``: 3 heartbeat intervals)."""

    name = "dispatcher"

    def __init__(self, objs: Objects, sealer: Sealer | None = None, clock: Clock = MONOTONIC) -> None:
        self.objs = objs
        self.clock = clock
        self.sessions: dict[str, AgentSession] = {}
        self.last_seen: dict[str, float] = {}
        self._started = clock.now()
        self.stopped = False
        self.sealer = sealer  # opens secrets for the nodes that need them (None: no CA key here)
        # what agents sent that needs a store write is written apart from their heartbeats: status
        # reports in batches (a write may wait for etcd for seconds; heartbeats must not), the rest each
        # in a task of its own
        self._reports: dict[str, _Report] = {}
        self._reported = asyncio.Event()
        self._writer: asyncio.Task | None = None
        self._writing = False  # a batch is being written and answered
        self._background: set[asyncio.Task] = set()

    @property
    def interval(self) -> float:
        return heartbeat_interval(self.objs)

    @property
    def timeout(self) -> float:
        return 3 * self.interval

    def seen(self, node_id: str) -> None:
        self.last_seen[node_id] = self.clock.now()

    async def run(self) -> None:
        watcher = self.objs.watcher(("tasks", "clusters", "services", "networks", "nodes", "netkeys", "nodekeys"))
        checker = asyncio.create_task(self._check_heartbeats(), name="heartbeats")
        interval = self.interval
        try:
            while True:
                changes = await watcher.wait()
                if self.interval != interval:  # `docker swarm update --dispatcher-heartbeat`
                    interval = self.interval
                    for s in list(self.sessions.values()):
                        with contextlib.suppress(Exception):
                            await s.send(SessionConfig(heartbeat=interval))
                tasks = self.objs.cache["tasks"]
                nodes = set()
                if any(kind != "clusters" for kind, _ in changes):
                    for s in self.sessions.values():
                        s.net_dirty.set()
                for kind, tid in changes:
                    if kind != "tasks":
                        continue
                    t = tasks.get(tid)
                    if t is not None and t.get("NodeID"):
                        nodes.add(t["NodeID"])
                    else:
                        nodes.update(n for n, s in self.sessions.items() if tid in s.sent)
                for nid in nodes:
                    s = self.sessions.get(nid)
                    if s is not None:
                        s.dirty.set()
                for kind, nid in changes:
                    if kind == "nodes" and (s := self.sessions.get(nid)) is not None:
                        if self.objs.get("nodes", nid) is None:
                            await self.refuse_removed(s)
                        else:
                            await self.tell_role(s)
                if any(kind == "clusters" for kind, _ in changes):
                    for s in list(self.sessions.values()):
                        await self.tell_ca(s)
        finally:
            checker.cancel()
            self.objs.unwatch(watcher)

    def _excuse_stall(self, stalled: float, now_: float) -> None:
        """This manager could not read anything for ``stalled`` seconds (its event loop or process was
        held up): that time does not count against any node, so heartbeats still buffered unread cannot
        make a live node look silent."""
        log.warning("dispatcher: heartbeat check %.1f s late (this manager stalled); not held against nodes",
                    stalled)
        for nid, last in self.last_seen.items():
            self.last_seen[nid] = min(now_, last + stalled)
        self._started = min(now_, self._started + stalled)

    async def _check_heartbeats(self) -> None:
        tick = self.clock.now()
        while True:
            pause = min(0.25, self.interval / 2)
            await self.clock.sleep(pause)
            now_ = self.clock.now()
            late = now_ - tick - pause
            tick = now_
            if late > self.interval:
                self._excuse_stall(late, now_)
            for node in map(NodeView, self.objs.list("nodes")):
                nid = node.id
                if not node.ready:
                    # an open session whose "ready" was not written (the store failed then): write it now
                    if nid in self.sessions and now_ - self.last_seen.get(nid, 0.0) <= self.timeout:
                        await self.set_node_state(nid, "ready")
                    continue
                # a node not seen since this dispatcher started (a new leader) gets time to notice the old
                # leader is gone (3 intervals), reconnect, and then the usual timeout
                last = self.last_seen.get(nid, self._started + self.timeout + 1.0)
                if now_ - last > self.timeout:
                    await self.set_node_state(nid, "down", "heartbeat failure")

    async def set_node_state(self, node_id: str, state: str, message: str = "", addr: str | None = None,
                             description: dict | None = None) -> None:
        def apply(node: dict) -> bool:
            st = dict(node.get("Status") or {})
            changed = st.get("State") != state or (addr is not None and st.get("Addr") != addr)
            st["State"] = state
            if message:
                st["Message"] = message
            else:
                st.pop("Message", None)
            if addr is not None:
                st["Addr"] = addr
            node["Status"] = st
            ms = node.get("ManagerStatus")
            if ms is not None and not ms.get("Leader"):
                reach = "reachable" if state == "ready" else "unreachable"
                if ms.get("Reachability") != reach:
                    node["ManagerStatus"] = {**ms, "Reachability": reach}
                    changed = True
            if description is not None and node.get("Description") != description:
                node["Description"] = description
                changed = True
            if changed:
                node["UpdatedAt"] = now()
            return changed

        with contextlib.suppress(Exception):
            await self.objs.modify("nodes", node_id, apply)

    async def update_description(self, node_id: str, description: dict) -> bool:
        """Store a node's new description (its agent described itself again); no write when it is the
        same. True if written."""
        written = False

        def apply(node: dict) -> bool:
            nonlocal written
            written = node.get("Description") != description
            if written:
                node["Description"] = description
                node["UpdatedAt"] = now()
            return written

        await self.objs.modify("nodes", node_id, apply)
        return written

    async def set_tunnel_key(self, node_id: str, key: str) -> None:
        """Record the node's WireGuard public key (the encrypted overlays' peers learn it from their maps)."""
        if not key:
            return
        if not valid_wg_key(key):
            log.warning("dispatcher: node %s sent an invalid WireGuard key", node_id)
            return
        try:
            await set_node_key(self.objs, node_id, key)
        except (StoreError, OutOfSequence) as e:  # sent again with the next session
            log.warning("dispatcher: storing the WireGuard key of node %s: %s", node_id, e)

    async def tell_role(self, s: AgentSession) -> None:
        """Tell a node whose desired role differs from its certificate's to change role (a demoted
        manager once its etcd member is gone)."""
        raw = self.objs.get("nodes", s.node_id)
        if raw is None:
            return
        node = NodeView(raw)
        want = node.role
        if want == s.role or want == s.role_sent or (want == "worker" and node.manager_status is not None):
            return
        s.role_sent = want
        with contextlib.suppress(Exception):
            await s.send(RoleChange(role=want))

    async def tell_ca(self, s: AgentSession) -> None:
        """Send the node the cluster's CA when it changed since the session last heard it."""
        update = ca_update(self.objs)
        if update != s.ca_sent:
            s.ca_sent = update
            with contextlib.suppress(Exception):
                await s.send(update)

    async def refuse_removed(self, s: AgentSession) -> None:
        """The node was removed: its session ends now (its certificate opens nothing any more)."""
        self.close(s)
        with contextlib.suppress(Exception):
            await s.send(SessionError(REMOVED))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(s.channel.close(), 1.0)

    async def open(self, node_id: str, role: str, channel: Channel, hello: Hello, addr: str) -> AgentSession:
        """A node's new session (its older one ends): the node is ready, and its tasks and network map
        are sent from now on until :meth:`close`. A session opened as leadership ends is closed at once."""
        old = self.sessions.get(node_id)
        if old is not None:
            self.close(old)
        s = AgentSession(node_id, channel, role)
        if self.stopped:  # leadership ended meanwhile
            s.closed = True
            return s
        self.sessions[node_id] = s
        self.seen(node_id)
        await self.set_node_state(node_id, "ready", addr=hello.addr or addr, description=hello.description or None)
        await self.set_tunnel_key(node_id, hello.wg_key)
        managers = sorted(v.manager_addr for v in map(NodeView, self.objs.list("nodes"))
                          if v.role == "manager" and v.manager_status is not None)
        await s.send(Welcome(node_id=node_id, heartbeat=self.interval, managers=managers))
        s.dirty.set()
        await self.tell_role(s)
        await self.tell_ca(s)
        s.pumps = [asyncio.create_task(self._pump(s), name=f"assignments-{node_id}"),
                   asyncio.create_task(self._net_pump(s), name=f"netmap-{node_id}")]
        return s

    def close(self, s: AgentSession) -> None:
        """End a session (the transport ended, or a newer session of the node replaced it)."""
        s.closed = True
        s.dirty.set()
        s.net_dirty.set()
        for t in s.pumps:
            t.cancel()
        if self.sessions.get(s.node_id) is s:
            del self.sessions[s.node_id]

    async def shutdown(self) -> None:
        """This manager stops leading: end every session so its agent finds the new leader (reports not
        written yet are not acknowledged: the agents send them again to the next leader)."""
        self.stopped = True
        await cancel_all([*self._background, *([self._writer] if self._writer else [])])
        for s in list(self.sessions.values()):
            self.close(s)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(s.channel.close(), 1.0)
            await cancel_all(s.pumps)

    async def _net_pump(self, s: AgentSession) -> None:
        """Send the node its network map whenever it changes (changes are gathered for 50 ms)."""
        s.net_dirty.set()
        while not s.closed:
            await s.net_dirty.wait()
            await asyncio.sleep(0.05)
            s.net_dirty.clear()
            if s.closed:
                return
            m = netmap.compute(self.objs, s.node_id, self.sealer)
            if m != s.netmap:
                await s.send(NetworkMap(map=m))
                s.netmap = m

    async def _pump(self, s: AgentSession) -> None:
        """Send the node its task changes until the session closes."""
        full = True
        while not s.closed:
            await s.dirty.wait()
            s.dirty.clear()
            if s.closed:
                return
            tasks = {t["ID"]: t for t in assigned_to(self.objs, s.node_id)}
            changed = [t for tid, t in tasks.items() if full or s.sent.get(tid) != _fingerprint(t)]
            removed = [tid for tid in s.sent if tid not in tasks]
            # the secrets and configs of the node's tasks go with them, each once per session
            want = needed(tasks.values())
            deps = {k: [p for oid in sorted(ids) if (full or oid not in s.deps_sent[k])
                        and (p := payload(self.objs, self.sealer, k, oid)) is not None] for k, ids in want.items()}
            gone = {k: sorted(s.deps_sent[k] - ids) for k, ids in want.items()}
            if full or changed or removed or any(deps.values()) or any(gone.values()):
                await s.send(Assignments(full=full, tasks=[for_node(self.sealer, t) for t in changed],
                                         removed=removed, secrets=deps["secrets"],
                                         configs=deps["configs"], removed_deps=gone))
            s.sent = {tid: _fingerprint(t) for tid, t in tasks.items()}
            s.deps_sent = {k: {p["ID"] for p in deps[k]} | (set() if full else s.deps_sent[k] & want[k])
                           for k in want}
            full = False

    async def receive(self, s: AgentSession, msg: Message) -> None:
        """A message from the node's agent. Never waits for the store: heartbeats are answered at once
        whatever the store is doing (a stalled etcd must not make a live node look silent)."""
        self.seen(s.node_id)
        if isinstance(msg, Heartbeat):  # answered, so the agent can tell a dead manager from a quiet one
            await s.send(Heartbeat())
        elif isinstance(msg, StatusReport):
            try:
                check_assigned(self.objs.get("tasks", msg.id), s.node_id)
            except NotAssigned as e:
                log.warning("dispatcher: refused a status report: %s", e)
                await s.send(Refused(seq=msg.seq, message=str(e)))
                return
            self._queue_status(s, msg)
        elif isinstance(msg, Hello):
            self._in_background(self.set_node_state(s.node_id, "ready", description=msg.description or None))
        elif isinstance(msg, Description) and isinstance(msg.description, dict):
            self._in_background(self._store_description(s, msg.description))

    async def flush(self) -> None:
        """Return once everything agents sent so far is written and answered (or failed)."""
        while self._background or self._reports or self._writing:
            if self._background:
                await asyncio.gather(*self._background, return_exceptions=True)
            else:
                await asyncio.sleep(0.01)

    def _in_background(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _store_description(self, s: AgentSession, description: dict) -> None:
        try:
            await self.update_description(s.node_id, description)
        except (StoreError, OutOfSequence, Deposed):  # the agent sends it again next period
            with contextlib.suppress(Exception):
                await s.send(DescribeAgain())

    def _queue_status(self, s: AgentSession, msg: StatusReport) -> None:
        report = self._reports.get(msg.id)
        if report is None:
            self._reports[msg.id] = _Report(msg.status, [(s, msg.seq)])
        else:
            if not states.before(msg.status["State"], report.status["State"]):
                report.status = msg.status
            report.acks.append((s, msg.seq))
        self._reported.set()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_statuses(), name="status-writer")

    async def _write_statuses(self) -> None:
        """Write the status reports gathered over each :data:`STATUS_WINDOW`, then answer every report
        (Ack once written, Nack when the store failed: the agent keeps it and sends it again)."""
        while True:
            await self._reported.wait()
            await self.clock.sleep(STATUS_WINDOW)
            self._reported.clear()
            batch, self._reports = self._reports, {}
            self._writing = True
            try:
                written = await self._store_statuses(batch)
                for report in batch.values():
                    for s, seq in report.acks:
                        if not s.closed:
                            with contextlib.suppress(Exception):
                                await s.send(Ack(seq=seq) if written else Nack(seq=seq))
            finally:
                self._writing = False

    async def _store_statuses(self, batch: dict[str, _Report]) -> bool:
        """Apply the reports in as few transactions as possible; False if the store failed."""
        changes = []
        for tid, report in batch.items():
            task = self.objs.get("tasks", tid)
            if task is None:
                continue  # gone: nothing to write, the report is answered all the same
            task = orjson.loads(orjson.dumps(task))
            if apply_status(task, report.status):
                changes.append(Change("tasks", task))
        try:
            for i in range(0, len(changes), 128):
                chunk = changes[i:i + 128]
                if not await self.objs.commit(chunk):  # one task changed meanwhile: each on its own
                    for ch in chunk:
                        await update_status(self.objs, ch.obj["ID"], batch[ch.obj["ID"]].status)
        except (StoreError, OutOfSequence, Deposed) as e:
            log.warning("dispatcher: %d status reports not written: %s", len(batch), e)
            return False
        return True
