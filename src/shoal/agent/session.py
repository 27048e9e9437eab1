"""The agent's end of its session with a manager over the cluster port (mutual TLS WebSocket).

Assignments arrive as a full list on (re)connect and as changes after; status reports are queued
(latest per task), sent, and kept until acknowledged, so none is lost across reconnects. Heartbeats
go at the interval the manager asks for. The node describes itself (hostname, platform, resources,
engine) when a session opens and again every ``DESCRIBE_PERIOD`` seconds; the manager hears the new
description only when it changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from shoal.aio import cancel_all
from shoal.cluster.client import ClusterClient, Redirected, SessionRejected, SessionSocket
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
from shoal.model import states

log = logging.getLogger(__name__)

DESCRIBE_PERIOD = 20.0  # how often the node describes itself again (swarmkit's nodeUpdatePeriod)


class RemoteSession:
    """The agent's session with the leader (any manager sends it there)."""

    def __init__(self, managers: list[str], client: ClusterClient, describe: Callable[[], Awaitable[dict]],
                 addr: str = "", on_role: Callable[[str, str], None] | None = None,
                 on_ca: Callable[[CAUpdate], None] | None = None, wg_key: str = "") -> None:
        self.managers = list(managers)
        self.wg_key = wg_key  # this node's WireGuard public key (encrypted overlays)
        self.client = client
        self.describe = describe
        self.addr = addr
        self.tasks: dict[str, dict] = {}
        self.connected = asyncio.Event()
        self.synced = asyncio.Event()
        self.rejected: str | None = None
        self._changed = asyncio.Event()
        self._pending: dict[str, dict] = {}  # task id -> latest unacknowledged status
        self._outbox: asyncio.Queue[str | None] = asyncio.Queue()  # task IDs to report; None: describe
        self._seq = 0
        self._inflight: dict[int, tuple[str, dict]] = {}
        self._task: asyncio.Task | None = None
        self.interval = 1.0  # heartbeat period the manager asked for
        self._next = ""  # the leader, when a follower redirected us
        self.netmap: dict | None = None
        self.netmap_changed = asyncio.Event()
        # secrets and configs of the assigned tasks, in memory only: {"secrets": {id: {ID, Name, Data}}, ...}
        self.deps: dict[str, dict[str, dict]] = {"secrets": {}, "configs": {}}
        self.current = ""  # the manager (the leader) this session is with
        self.on_role = on_role  # (role, leader address): the node was promoted or demoted
        self.on_ca = on_ca  # the cluster's CA, as the manager tells it (shoal.node.renewal)
        self.describe_period = DESCRIBE_PERIOD
        self._described: dict | None = None  # the description the manager has (as far as we know)
        self._unsent_description: dict | None = None  # a changed description waiting for the sender
        self._latest: dict = {}  # the description last made

    @property
    def description(self) -> dict:
        """This node's description, as last made (hostname, platform, resources, engine)."""
        return self._latest

    # -- the Session protocol the Agent uses -------------------------------------------------------
    def assigned(self) -> list[dict]:
        return list(self.tasks.values())

    async def changed(self, timeout: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)
        self._changed.clear()

    async def report(self, task_id: str, status: dict) -> None:
        t = self.tasks.get(task_id)
        if t is not None and not states.before(status["State"], t["Status"]["State"]):
            t["Status"] = status
        self._pending[task_id] = status
        self._outbox.put_nowait(task_id)

    # -- connection ------------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="agent-session")

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        delay = 0.1
        i = 0
        while True:
            addr = self._next or self.managers[i % len(self.managers)]
            self._next = ""
            i += 1
            try:
                async with self.client.session(addr) as sock:
                    self.current = addr
                    await self._serve(sock)
                delay = 0.1
            except Redirected as e:
                self._next = e.leader  # a follower: go to the leader
                log.info("session with %s ended: %s", addr, e)
            except SessionRejected as e:
                self.rejected = str(e)
                log.error("manager refused this node: %s", e)
                self._changed.set()
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.info("session with %s ended: %s", addr, e)
            self.connected.clear()
            if self._next and self._next != addr:  # redirected to another manager: go at once
                continue
            self._next = ""
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _serve(self, sock: SessionSocket) -> None:
        description = self._latest = await self.describe()
        self._unsent_description = None
        await sock.send(Hello(description=description, addr=self.addr, wg_key=self.wg_key))
        self._described = description
        welcome = await sock.receive(timeout=10)
        if isinstance(welcome, SessionError):
            raise SessionRejected(welcome.message or "refused")
        if not isinstance(welcome, Welcome):
            raise ConnectionError(f"the manager did not welcome this node: {welcome}")
        self.interval = float(welcome.heartbeat)
        if welcome.managers:
            self.managers = list(welcome.managers)
        self.connected.set()
        # resend what was not acknowledged
        self._inflight.clear()
        for tid in list(self._pending):
            self._outbox.put_nowait(tid)
        sender = asyncio.create_task(self._send_loop(sock))
        describer = asyncio.create_task(self._describe_loop())
        try:
            while True:
                # every heartbeat is answered: silence means the manager (or the way to it) is gone
                msg = await sock.receive(timeout=max(3 * self.interval, 1.0) + 0.5)
                if msg is None:
                    break
                self._on_message(msg)
        finally:
            await cancel_all((sender, describer))

    async def _describe_loop(self) -> None:
        """Describe this node again every ``describe_period``; queue the description when it changed."""
        while True:
            await asyncio.sleep(self.describe_period)
            await self.describe_now()

    async def describe_now(self) -> None:
        """Describe this node (now: e.g. its certificate changed) and queue the description if it changed."""
        try:
            description = self._latest = await self.describe()
        except Exception as e:  # e.g. the engine is restarting: try again next period
            log.info("describing this node failed: %s", e)
            return
        if description != self._described and description != self._unsent_description:
            self._unsent_description = description
            self._outbox.put_nowait(None)

    async def _send_loop(self, sock: SessionSocket) -> None:
        while True:
            try:
                tid = await asyncio.wait_for(self._outbox.get(), self.interval)
            except TimeoutError:
                await sock.send(Heartbeat())
                continue
            if tid is None:  # describe again
                description, self._unsent_description = self._unsent_description, None
                if description is not None and description != self._described:
                    self._described = description
                    await sock.send(Description(description=description))
                continue
            status = self._pending.get(tid)
            if status is None:
                continue
            self._seq += 1
            self._inflight[self._seq] = (tid, status)
            await sock.send(StatusReport(id=tid, status=status, seq=self._seq))

    def _on_message(self, msg: Message) -> None:
        if isinstance(msg, Assignments):
            if msg.full:
                self.tasks = {}
                self.deps = {"secrets": {}, "configs": {}}
            for dkind, known in self.deps.items():
                known.update((d["ID"], d) for d in getattr(msg, dkind))
                for did in msg.removed_deps.get(dkind) or []:
                    known.pop(did, None)
            for t in msg.tasks:
                mine = self._pending.get(t["ID"])
                if mine is not None and states.before(t["Status"]["State"], mine["State"]):
                    t["Status"] = mine
                self.tasks[t["ID"]] = t
            for tid in msg.removed:
                self.tasks.pop(tid, None)
                self._pending.pop(tid, None)
            self.synced.set()
            self._changed.set()
        elif isinstance(msg, NetworkMap):
            self.netmap = msg.map
            self.netmap_changed.set()
        elif isinstance(msg, CAUpdate):
            if self.on_ca is not None:
                self.on_ca(msg)
        elif isinstance(msg, RoleChange):
            if self.on_role is not None:
                self.on_role(msg.role, self.current)
        elif isinstance(msg, DescribeAgain):  # the manager could not store our description: send it next period
            self._described = None
        elif isinstance(msg, SessionConfig):
            self.interval = float(msg.heartbeat)
        elif isinstance(msg, Ack):
            sent = self._inflight.pop(msg.seq, None)
            if sent is not None and self._pending.get(sent[0]) is sent[1]:
                del self._pending[sent[0]]
        elif isinstance(msg, Refused):  # never to be stored: drop it
            sent = self._inflight.pop(msg.seq, None)
            if sent is not None and self._pending.get(sent[0]) is sent[1]:
                del self._pending[sent[0]]
            log.warning("manager refused a status report: %s", msg.message)
        elif isinstance(msg, Nack):  # the manager could not store it: try again shortly
            sent = self._inflight.pop(msg.seq, None)
            if sent is not None and self._pending.get(sent[0]) is sent[1]:
                asyncio.get_running_loop().call_later(0.5, self._outbox.put_nowait, sent[0])
        elif isinstance(msg, SessionError):
            self.rejected = msg.message
            log.error("manager: %s", self.rejected)
