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
import json
import logging
import ssl
from collections.abc import Awaitable, Callable

import aiohttp

from shoal.aio import cancel_all
from shoal.model import states

log = logging.getLogger(__name__)

DESCRIBE_PERIOD = 20.0  # how often the node describes itself again (swarmkit's nodeUpdatePeriod)


class SessionRejected(Exception):
    """The manager refused this node (removed, or from another swarm)."""


class RemoteSession:
    def __init__(self, managers: list[str], ssl_ctx: ssl.SSLContext,
                 describe: Callable[[], Awaitable[dict]], addr: str = "") -> None:
        self.managers = list(managers)
        self.ssl = ssl_ctx
        self.describe = describe
        self.addr = addr
        self.tasks: dict[str, dict] = {}
        self.connected = asyncio.Event()
        self.synced = asyncio.Event()
        self.rejected: str | None = None
        self._changed = asyncio.Event()
        self._pending: dict[str, dict] = {}  # task id -> latest unacknowledged status
        self._outbox: asyncio.Queue[dict] = asyncio.Queue()
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
        self.on_role: Callable[[str, str], None] | None = None  # (role, leader address): promoted/demoted
        self.describe_period = DESCRIBE_PERIOD
        self._described: dict | None = None  # the description the manager has (as far as we know)
        self._unsent_description: dict | None = None  # a changed description waiting for the sender

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
        self._outbox.put_nowait({"id": task_id})

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
                await self._connect(addr)
                delay = 0.1
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

    async def _connect(self, addr: str) -> None:
        timeout = aiohttp.ClientTimeout(total=None, connect=3, sock_connect=3)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            try:
                ws = await http.ws_connect(f"https://{addr}/session", ssl=self.ssl, heartbeat=None,
                                           max_msg_size=64 * 1024 * 1024)
            except aiohttp.WSServerHandshakeError as e:
                leader = (e.headers or {}).get("X-Shoal-Leader") if e.status == 421 else None
                if leader:
                    self._next = leader  # a follower: go to the leader
                    raise
                if e.status == 403:
                    raise SessionRejected("this node has been removed from the swarm (or its certificate is "
                                          "not from this swarm)") from None
                raise
            async with ws:
                self.current = addr
                await self._serve(ws)

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        description = await self.describe()
        self._unsent_description = None
        await ws.send_str(json.dumps({"type": "hello", "description": description, "addr": self.addr}))
        self._described = description
        welcome = await ws.receive_json(timeout=10)
        if welcome.get("type") == "error":
            raise SessionRejected(welcome.get("message", "refused"))
        self.interval = float(welcome.get("heartbeat", 1.0))
        if welcome.get("managers"):
            self.managers = list(welcome["managers"])
        self.connected.set()
        # resend what was not acknowledged
        self._inflight.clear()
        for tid in list(self._pending):
            self._outbox.put_nowait({"id": tid})
        sender = asyncio.create_task(self._send_loop(ws))
        describer = asyncio.create_task(self._describe_loop())
        try:
            while True:
                # every heartbeat is answered: silence means the manager (or the way to it) is gone
                msg = await ws.receive(timeout=max(3 * self.interval, 1.0) + 0.5)
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                self._on_message(json.loads(msg.data))
        finally:
            await cancel_all((sender, describer))

    async def _describe_loop(self) -> None:
        """Describe this node again every ``describe_period``; queue the description when it changed."""
        while True:
            await asyncio.sleep(self.describe_period)
            try:
                description = await self.describe()
            except Exception as e:  # e.g. the engine is restarting: try again next period
                log.info("describing this node failed: %s", e)
                continue
            if description != self._described and description != self._unsent_description:
                self._unsent_description = description
                self._outbox.put_nowait({"describe": True})

    async def _send_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            try:
                item = await asyncio.wait_for(self._outbox.get(), self.interval)
            except TimeoutError:
                await ws.send_str('{"type":"heartbeat"}')
                continue
            if "describe" in item:
                description, self._unsent_description = self._unsent_description, None
                if description is not None and description != self._described:
                    self._described = description
                    await ws.send_str(json.dumps({"type": "description", "description": description}))
                continue
            tid = item["id"]
            status = self._pending.get(tid)
            if status is None:
                continue
            self._seq += 1
            self._inflight[self._seq] = (tid, status)
            await ws.send_str(json.dumps({"type": "status", "id": tid, "status": status, "seq": self._seq}))

    def _on_message(self, msg: dict) -> None:
        kind = msg.get("type")
        if kind == "assignments":
            if msg.get("full"):
                self.tasks = {}
                self.deps = {"secrets": {}, "configs": {}}
            for dkind, known in self.deps.items():
                known.update((d["ID"], d) for d in msg.get(dkind) or [])
                for did in (msg.get("removed_deps") or {}).get(dkind) or []:
                    known.pop(did, None)
            for t in msg.get("tasks", []):
                mine = self._pending.get(t["ID"])
                if mine is not None and states.before(t["Status"]["State"], mine["State"]):
                    t["Status"] = mine
                self.tasks[t["ID"]] = t
            for tid in msg.get("removed", []):
                self.tasks.pop(tid, None)
                self._pending.pop(tid, None)
            self.synced.set()
            self._changed.set()
        elif kind == "netmap":
            self.netmap = msg.get("map")
            self.netmap_changed.set()
        elif kind == "role":
            if self.on_role is not None:
                self.on_role(msg.get("role", ""), self.current)
        elif kind == "describe-again":  # the manager could not store our description: send it next period
            self._described = None
        elif kind == "config":
            self.interval = float(msg.get("heartbeat", self.interval))
        elif kind == "ack":
            sent = self._inflight.pop(msg.get("seq"), None)
            if sent is not None and self._pending.get(sent[0]) is sent[1]:
                del self._pending[sent[0]]
        elif kind == "nack":  # the manager could not store it: try again shortly
            sent = self._inflight.pop(msg.get("seq"), None)
            if sent is not None and self._pending.get(sent[0]) is sent[1]:
                asyncio.get_running_loop().call_later(0.5, self._outbox.put_nowait, {"id": sent[0]})
        elif kind == "error":
            self.rejected = msg.get("message")
            log.error("manager: %s", self.rejected)
