"""shoald: one host's daemon. Serves the Engine API, and once in a swarm runs the store member, the
manager controllers (on managers) and the agent.

Local state (which swarm, which node, the etcd member) is in ``<data-dir>/state.json``; desired state
is in the store. A restart reads both and carries on: controllers rebuild from the store, the agent
re-adopts its containers.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from shoal import autolock
from shoal.agent import attachments as attached
from shoal.agent.agent import Agent
from shoal.agent.executor.docker import DockerExecutor
from shoal.agent.files import TaskFiles
from shoal.agent.files import unmount as unmount_task_files
from shoal.agent.session import RemoteSession
from shoal.api.cluster import make_cluster_app
from shoal.api.proxy import EngineProxy
from shoal.api.server import make_app, not_manager
from shoal.manager import roles
from shoal.manager.allocator import Allocator, NetworkAllocator
from shoal.manager.ca import ca_digest, join_token, make_root_ca, tls_info
from shoal.manager.dispatcher import Dispatcher
from shoal.manager.events import SwarmEvents
from shoal.manager.orchestrator import orchestrators
from shoal.manager.roles import RoleManager
from shoal.manager.scheduler.controller import SchedulerController
from shoal.manager.secrets import cached_sealer
from shoal.model.errors import APIError, BadRequest, OutOfSequence, Unavailable
from shoal.model.ids import new_id, now
from shoal.model.network import ingress_spec, new_network
from shoal.model.service import SECOND
from shoal.network import gwbridge
from shoal.network.agent import NetworkAgent
from shoal.store.base import StoreError
from shoal.store.election import Election
from shoal.store.etcd import initial_cluster
from shoal.store.etcd_member import EtcdMember
from shoal.store.etcd_tls import issue_etcd_cert
from shoal.store.housekeeping import housekeep
from shoal.store.objects import Objects
from shoal.tls import NodeTLS, ca_only_context, insecure_context, key_pem, make_csr, new_key, sign_csr

log = logging.getLogger(__name__)

JOIN_READY_WAIT = 20.0  # seconds `swarm join` waits for the node's session (moby: swarmConnectTimeout)

ALREADY_IN_SWARM = ('This node is already part of a swarm. Use "docker swarm leave" to leave this swarm '
                    "and join another one.")
LEAVE_MANAGER = "You are attempting to leave the swarm on a node that is participating as a manager. "
LEAVE_LAST_MANAGER = ("Removing the last manager erases all current state of the swarm. Use `--force` to ignore "
                      "this message. ")
LEAVE_CONSENSUS = ("The only way to restore a swarm that has lost consensus is to reinitialize it with "
                   "`--force-new-cluster`. Use `--force` to suppress this message.")


def default_cluster_spec() -> dict:
    return {
        "Name": "default", "Labels": {},
        "Orchestration": {"TaskHistoryRetentionLimit": 5},
        "Raft": {"SnapshotInterval": 10000, "KeepOldSnapshots": 0, "LogEntriesForSlowFollowers": 500,
                 "ElectionTick": 10, "HeartbeatTick": 1},
        "Dispatcher": {"HeartbeatPeriod": 5 * SECOND},
        "CAConfig": {"NodeCertExpiry": 90 * 24 * 3600 * SECOND},
        "TaskDefaults": {},
        "EncryptionConfig": {"AutoLockManagers": False},
    }


def _merge_spec(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (override or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge_spec(out[k], v)
        elif v is not None:
            out[k] = v
    return out


def _init_overrides(spec: dict) -> dict:
    """``swarm init`` keeps the defaults and takes only the request's non-zero values (Docker merges
    non-nil, non-zero fields; the two pointer fields count when set, even to 0)."""
    out: dict = {}
    for k, v in (spec or {}).items():
        if isinstance(v, dict):
            out[k] = _init_overrides(v)
        elif v or (k in ("TaskHistoryRetentionLimit", "KeepOldSnapshots") and v is not None):
            out[k] = v
    return out


def detect_addr() -> str:
    """The address other hosts would reach us at: the source address of the default route."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # UDP connect only picks a route; nothing is sent
        return s.getsockname()[0]
    return "127.0.0.1"


def split_addr(value: str, default_port: int = 2377) -> tuple[str, int]:
    """``host[:port]`` → (host, port); an empty host stays empty."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        return value, default_port
    return host.strip("[]"), int(port)


@dataclass
class Options:
    data_dir: Path = Path("/var/lib/shoal")
    socket: str = "/run/shoal/shoal.sock"
    engine: str = "/var/run/docker.sock"
    etcd_client_port: int = 2379
    etcd_peer_port: int = 2380
    listen_addr: str = ""  # cluster port; overrides the request's default 0.0.0.0:2377
    advertise_addr: str = ""  # used when a request names none
    networking: bool = True  # overlay networks, VIPs, routing mesh, DNS on this host
    plugin_dir: Path = Path("/run/docker/plugins")


class Daemon:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.proxy = EngineProxy(opts.engine)
        self.state = "inactive"
        self.role = "worker"
        self.node_id = ""
        self.addr = ""  # advertised IP
        self.cluster_port = 2377
        self.listen = ""
        self.managers: list[str] = []  # host:port of managers' cluster ports
        self.objs: Objects = None  # type: ignore[assignment]  # only on managers
        self.etcd: EtcdMember | None = None
        self.executor: DockerExecutor | None = None
        self.session: RemoteSession | None = None
        self.netagent: NetworkAgent | None = None
        self.is_leader = False
        self.leader_addr = ""  # cluster address of the current leader (managers only)
        self.api_dispatch = None  # the Engine-API dispatcher, for writes forwarded from other managers
        self._leader_tasks: list[asyncio.Task] = []
        self.etcd_cluster = ""  # --initial-cluster for a manager joining an existing etcd cluster
        self.dispatcher: Dispatcher | None = None
        self.netalloc: NetworkAllocator = None  # type: ignore[assignment]  # leader only
        self.alloc_lock = asyncio.Lock()
        self.tls = NodeTLS(opts.data_dir / "certificates")
        self._tasks: list[asyncio.Task] = []
        self._lock = asyncio.Lock()
        self._role_task: asyncio.Task | None = None
        self._restored = False
        self._runner: web.AppRunner | None = None
        self._cluster_runner: web.AppRunner | None = None
        self.swarm_events = SwarmEvents()  # for `docker events` (managers)
        self.keylock = autolock.KeyLock(opts.data_dir)  # a manager's keys with --autolock

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.opts.data_dir / "state.json"

    def _save_state(self) -> None:
        self.state_file.write_text(json.dumps({
            "node_id": self.node_id, "role": self.role, "addr": self.addr, "port": self.cluster_port,
            "listen": self.listen, "managers": self.managers, "etcd_cluster": self.etcd_cluster,
            "etcd_peer_port": self.opts.etcd_peer_port}))

    async def start(self) -> None:
        self.opts.data_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(Exception):
            ver = await self.proxy.get_json("/version")
            major, minor = (int(x) for x in ver.get("ApiVersion", "1.41").split(".")[:2])
            self.proxy.engine_api = (major, minor)
        await self._serve()  # answer at once; a manager's store may take a while to catch up
        if self.state_file.exists():
            st = json.loads(self.state_file.read_text())
            self.node_id, self.role, self.addr = st["node_id"], st["role"], st.get("addr", "")
            self.cluster_port, self.listen = st.get("port", 2377), st.get("listen", "")
            self.managers = st.get("managers", [])
            self.etcd_cluster = st.get("etcd_cluster", "")
            self._restored = bool(st.get("restored"))
            if self.role == "manager" and self.keylock.enabled:  # autolock: wait for `docker swarm unlock`
                self.keylock.wipe()
                self.state = "locked"
                return
            self.state = "pending"
            self._tasks.append(asyncio.create_task(self._resume(), name="resume"))

    async def resume(self) -> None:
        """Start a manager that was locked, once ``swarm unlock`` has opened its keys."""
        task = asyncio.create_task(self._resume(), name="resume")
        self._tasks.append(task)
        await asyncio.shield(task)

    async def _resume(self) -> None:
        """Rejoin the swarm this node was in before it stopped (retrying until the store answers)."""
        async with self._lock:
            if self.role == "manager":
                while True:
                    try:
                        await self._start_store(new=False)
                        if self._restored:  # `shoal restore` made a one-member cluster of a snapshot
                            await self._sole_manager()
                            self._restored = False
                            self._save_state()
                        break
                    except StoreError as e:
                        log.warning("the local etcd member is not ready (%s); retrying", e)
                        if self.etcd:
                            await self.etcd.stop()
                        await asyncio.sleep(1)
            await self._start_roles()
            self.state = "active"

    async def _serve(self) -> None:
        sock = Path(self.opts.socket)
        sock.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        app = make_app(self)
        self.api_dispatch = app["dispatch"]
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.UnixSite(self._runner, str(sock))
        await site.start()
        os.chmod(sock, 0o660)
        log.info("shoald listening on unix://%s", sock)

    @property
    def task_files_dir(self) -> Path:
        """The tmpfs with the secret and config files of this node's tasks (see shoal.agent.files)."""
        return self.opts.data_dir / "task-files"

    async def stop(self) -> None:
        await self._stop_roles()
        if self.keylock.enabled:
            self.keylock.wipe()  # the keys were only in memory: a restarted manager is locked
        unmount_task_files(self.task_files_dir)
        if self._runner:
            await self._runner.cleanup()
        await self._stop_store()
        await self.proxy.close()

    # -- store (managers) ---------------------------------------------------------------------------
    async def _start_store(self, new: bool, force_new: bool = False) -> None:
        """Start this manager's etcd member (mutual TLS from the cluster CA, peers on the advertised
        address) and the object cache over it."""
        edir = self.opts.data_dir / "etcd"
        client_tls, peer_tls = issue_etcd_cert(self.ca_cert_pem(), self.ca_key_pem(), self.opts.data_dir / "etcd-tls",
                                               ips=sorted({"127.0.0.1", self.addr}), name=self.node_id)
        client = f"https://127.0.0.1:{self.opts.etcd_client_port}"
        name = self.node_id
        cluster = self.etcd_cluster or f"{name}={self.peer_url}"
        self.etcd = EtcdMember(name, edir, client, self.peer_url, cluster, "new" if new else "existing",
                               client_tls=client_tls, peer_tls=peer_tls, force_new_cluster=force_new)
        await self.etcd.start(ready_within=60)
        self.objs = Objects(self.etcd.store())
        await self.objs.start()

    @property
    def peer_url(self) -> str:
        return f"https://{self.addr}:{self.opts.etcd_peer_port}"

    async def _stop_store(self) -> None:
        if self.objs is not None:
            await self.objs.stop()
            await self.objs.store.close()
            self.objs = None  # type: ignore[assignment]
        if self.etcd:
            await self.etcd.stop()
            self.etcd = None

    # -- roles ------------------------------------------------------------------------------------
    async def _start_roles(self) -> None:
        if self.role == "manager":
            assert self.objs is not None
            await self._serve_cluster_port()
            self._tasks.append(asyncio.create_task(self._leadership(), name="leadership"))
            self._tasks.append(asyncio.create_task(self._track_leader(), name="track-leader"))
            self._tasks.append(asyncio.create_task(self.swarm_events.run(self.objs), name="swarm-events"))
            self._tasks.append(asyncio.create_task(housekeep(self.objs.store), name="housekeeping"))  # type: ignore[arg-type]
            self._tasks.append(asyncio.create_task(autolock.follow(self), name="autolock"))
            managers = sorted({f"{self.addr}:{self.cluster_port}", *self.managers})
        else:
            managers = self.managers
            await self._serve_worker_port()
        self.executor = DockerExecutor(f"unix://{self.opts.engine}")
        self.session = RemoteSession(managers, self.tls.client_context(), self._describe, self.addr)
        self.session.on_role = self._on_role
        self.session.start()
        if self.opts.networking:
            self.netagent = NetworkAgent(self.node_id, f"unix://{self.opts.engine}", self.opts.plugin_dir)
            await self.netagent.start()
            await gwbridge.ensure(self.proxy)
            self._tasks.append(asyncio.create_task(attached.collect(self), name="attachments"))
            self._tasks.append(asyncio.create_task(self._follow_netmap(self.session, self.netagent),
                                                   name="netmap"))
        agent = Agent(self.node_id, self.session, self.executor, network=self.netagent,
                      files=TaskFiles(self.task_files_dir, self.session))
        self._tasks.append(asyncio.create_task(agent.run(), name="agent"))

    # -- promotion and demotion (this node) -------------------------------------------------------
    def _on_role(self, role: str, leader: str) -> None:
        if role not in ("manager", "worker") or role == self.role:
            return
        if self._role_task is None or self._role_task.done():
            self._role_task = asyncio.create_task(self._change_role(role, leader), name="change-role")

    async def _change_role(self, role: str, leader: str) -> None:
        """Become ``role``: ask the leader for a certificate (and, to be a manager, an etcd member), then
        restart this node's roles around it. Task containers and networking are left running."""
        for attempt in range(30):
            try:
                async with self._lock:
                    if self.state != "active" or self.role == role:
                        return
                    key = new_key()
                    body = {"csr": make_csr(key).decode(), "peer_url": self.peer_url,
                            "cluster_addr": self.my_cluster_addr}
                    answer = await self._ask_leader(leader, "/role", body)
                    if answer.get("role") != role:
                        return
                    log.info("this node becomes a %s", role)
                    await self._stop_roles()
                    if role == "worker":
                        await self._stop_store()
                        for sub in ("etcd", "etcd-tls"):
                            shutil.rmtree(self.opts.data_dir / sub, ignore_errors=True)
                        (self.tls.dir / "swarm-root-ca.key").unlink(missing_ok=True)
                    self.tls.write(self.ca_cert_pem(), answer["cert"].encode(), key_pem(key))
                    self.role = role
                    self.managers = answer.get("managers") or self.managers
                    if role == "manager":
                        (self.tls.dir / "swarm-root-ca.key").write_bytes(answer["ca_key"].encode())
                        os.chmod(self.tls.dir / "swarm-root-ca.key", 0o600)
                        self.etcd_cluster = answer["etcd_cluster"]
                        shutil.rmtree(self.opts.data_dir / "etcd", ignore_errors=True)
                        await self._start_store(new=False)
                    else:
                        self.etcd_cluster = ""
                    self._save_state()
                    await self._start_roles()
                    return
            except (APIError, StoreError, aiohttp.ClientError, TimeoutError) as e:
                log.warning("changing role to %s failed (attempt %d): %s", role, attempt + 1, e)
                await asyncio.sleep(1)

    async def ask_leader(self, path: str, body: dict) -> dict:
        """POST to the current leader's cluster port (from a worker or a follower)."""
        leader = self.leader_addr if self.role == "manager" else ""
        leader = leader or (self.session.current if self.session else "") or next(iter(self.managers), "")
        if not leader:
            raise Unavailable("no manager is known to this node")
        return await self._ask_leader(leader, path, body)

    async def _ask_leader(self, leader: str, path: str, body: dict) -> dict:
        """POST to the leader's cluster port with this node's certificate (following a redirect)."""
        for _ in range(3):
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http, http.post(
                    f"https://{leader}{path}", json=body, ssl=self.tls.client_context()) as resp:
                answer = await resp.json()
                if resp.status == 421 and resp.headers.get("X-Shoal-Leader"):
                    leader = resp.headers["X-Shoal-Leader"]
                    continue
                if resp.status != 200:
                    raise APIError(answer.get("message", f"{path} refused ({resp.status})"), resp.status)
                return answer
        raise Unavailable("could not find the leader")

    # -- leadership (managers) ------------------------------------------------------------------
    @property
    def my_cluster_addr(self) -> str:
        return f"{self.addr}:{self.cluster_port}"

    async def _leadership(self) -> None:
        """Campaign for leadership; while leading, run the controllers and the dispatcher."""
        value = json.dumps({"node_id": self.node_id, "addr": self.my_cluster_addr}).encode()
        while True:
            if self._demoted():  # being demoted: leave leading to the managers that stay
                await asyncio.sleep(0.5)
                continue
            election = Election(self.objs.store, ttl=2, value=value)
            try:
                await election.campaign()
            except StoreError as e:
                log.info("campaign failed (%s); trying again", e)
                await asyncio.sleep(0.5)
                continue
            log.info("this node is the leader")
            self.leader_addr = self.my_cluster_addr
            try:
                await self._lead()
                self.is_leader = True  # only now: writes need the leader's allocators (until then they wait)
                while not self._demoted():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(election.lost.wait(), 0.5)
                    if election.lost.is_set():
                        log.warning("leadership lost: %s", election.lost_reason)
                        break
                else:
                    log.info("this manager is being demoted: handing leadership over")
            finally:
                self.is_leader = False
                await self._stop_leading()
                with contextlib.suppress(Exception):
                    await election.resign()

    def _demoted(self) -> bool:
        node = self.objs.get("nodes", self.node_id) if self.objs is not None else None
        return node is not None and node["Spec"].get("Role") == "worker"

    async def _lead(self) -> None:
        assert self.objs is not None
        # the store may still be catching up after an election: read it fresh
        await self.objs._load()
        self.dispatcher = Dispatcher(self.objs)
        try:  # without the CA key no secret can be opened (tasks needing one are then refused), the rest runs
            self.dispatcher.sealer = cached_sealer(self.ca_key_pem())
        except (OSError, ValueError, TypeError) as e:  # TypeError: a passphrase-protected key
            log.error("cannot derive the secrets data key from the cluster CA key: %s", e)
        self.netalloc = NetworkAllocator(self.objs)
        self.netalloc.load()
        for name, coro in (("dispatcher", self.dispatcher.run()),
                           *((c.name, c.run()) for c in (*orchestrators(self.objs), Allocator(self.objs, self.netalloc),
                                                         SchedulerController(self.objs),
                                                         RoleManager(self.objs, self.node_id,
                                                                     self.remove_etcd_member)))):
            self._leader_tasks.append(asyncio.create_task(coro, name=name))
        await self._mark_leader()

    async def _stop_leading(self) -> None:
        for t in self._leader_tasks:
            t.cancel()
        for t in self._leader_tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._leader_tasks.clear()
        dispatcher, self.dispatcher = self.dispatcher, None
        if dispatcher is not None:
            await dispatcher.shutdown()

    async def _mark_leader(self) -> None:
        """ManagerStatus.Leader on this node only."""
        for node in self.objs.list("nodes"):
            ms = node.get("ManagerStatus")
            if ms is None:
                continue
            want = node["ID"] == self.node_id
            if ms.get("Leader", False) != want or (want and ms.get("Reachability") != "reachable"):
                def apply(n: dict, want: bool = want) -> None:
                    n["ManagerStatus"] = {**n["ManagerStatus"], "Leader": want}
                    if want:
                        n["ManagerStatus"]["Reachability"] = "reachable"
                with contextlib.suppress(Exception):
                    await self.objs.modify("nodes", node["ID"], apply)

    async def _track_leader(self) -> None:
        """Followers: know where the leader is (for forwarded writes and redirected agents)."""
        while True:
            if not self.is_leader and self.objs is not None:
                with contextlib.suppress(Exception):
                    kv = await self.objs.store.get("/shoal/leader")
                    self.leader_addr = json.loads(kv.value)["addr"] if kv else ""
            await asyncio.sleep(0.1)

    async def _catch_up(self, rev: int, within: float = 3.0) -> None:
        """Read your writes: wait until this manager's cache has seen the leader's write (revision ``rev``),
        so a client reading right after a forwarded write finds what it wrote."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while self.objs is not None and self.objs.revision < rev and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    async def forward(self, request: web.Request) -> web.StreamResponse:
        """A write on a follower: pass it to the leader over the cluster port (mutual TLS)."""
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "x-registry-auth")}
        deadline = asyncio.get_running_loop().time() + 15  # a leader change takes a few seconds
        timeout = aiohttp.ClientTimeout(total=60, sock_connect=0.5)
        while True:
            leader = self.leader_addr
            if self.is_leader:
                return await self.api_dispatch(request)  # we won meanwhile
            try:
                if not leader:
                    raise aiohttp.ClientConnectionError("no leader")
                async with aiohttp.ClientSession(timeout=timeout) as http, http.request(
                        request.method, f"https://{leader}/api{request.rel_url.path_qs}", data=body,
                        headers=headers, ssl=self.tls.client_context()) as resp:
                    data = await resp.read()
                    if resp.status != 503 or asyncio.get_running_loop().time() > deadline:
                        if resp.status < 400:
                            await self._catch_up(int(resp.headers.get("X-Shoal-Revision", "0")))
                        return web.Response(status=resp.status, body=data, headers={
                            "Content-Type": resp.headers.get("Content-Type", "application/json")})
            except (aiohttp.ClientError, TimeoutError) as e:
                if asyncio.get_running_loop().time() > deadline:
                    raise Unavailable(f"rpc error: code = Unavailable desc = the swarm has no reachable leader "
                                      f"({leader or 'none elected'}: {e}); a majority of managers must be up") from None
            await asyncio.sleep(0.2)

    @staticmethod
    async def _follow_netmap(session: RemoteSession, netagent: NetworkAgent) -> None:
        """Apply every network map the managers push."""
        while True:
            await session.netmap_changed.wait()
            session.netmap_changed.clear()
            if session.netmap is not None:
                await netagent.apply(session.netmap)

    async def _serve_cluster_port(self) -> None:
        host, port = split_addr(self.opts.listen_addr or self.listen or "0.0.0.0:2377")
        self._cluster_runner = web.AppRunner(make_cluster_app(self), access_log=None)
        await self._cluster_runner.setup()
        site = web.TCPSite(self._cluster_runner, host or "0.0.0.0", port, ssl_context=self.tls.server_context(),
                           reuse_address=True)
        await site.start()
        log.info("cluster port listening on %s:%d (mutual TLS)", host or "0.0.0.0", port)

    async def _serve_worker_port(self) -> None:
        """A worker's cluster port answers only the managers' log requests (``docker service logs``)."""
        from shoal.agent.logs import make_node_app

        host, port = split_addr(self.opts.listen_addr or self.listen or "0.0.0.0:2377")
        self._cluster_runner = web.AppRunner(make_node_app(self), access_log=None, handler_cancellation=True)
        await self._cluster_runner.setup()
        site = web.TCPSite(self._cluster_runner, host or "0.0.0.0", port, ssl_context=self.tls.server_context(),
                           reuse_address=True)
        try:
            await site.start()
        except OSError as e:  # e.g. a second shoald on one host: its logs just cannot be gathered
            log.warning("worker log port %s:%d: %s", host or "0.0.0.0", port, e)

    async def _stop_roles(self) -> None:
        if self.session:
            await self.session.close()
            self.session = None
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        await self._stop_leading()
        self.is_leader = False
        if self._cluster_runner:
            await self._cluster_runner.cleanup()
            self._cluster_runner = None
        self.dispatcher = None
        if self.netagent:
            await self.netagent.stop()
        if self.executor:
            await self.executor.close()
            self.executor = None

    async def _describe(self) -> dict:
        info = await self.proxy.get_json("/info")
        labels = {}
        for item in info.get("Labels") or []:
            k, _, v = item.partition("=")
            labels[k] = v
        plugins = info.get("Plugins") or {}
        return {
            "Hostname": info.get("Name") or socket.gethostname(),
            "Platform": {"Architecture": info.get("Architecture", "x86_64"), "OS": info.get("OSType", "linux")},
            "Resources": {"NanoCPUs": int(info.get("NCPU", 1)) * SECOND, "MemoryBytes": int(info.get("MemTotal", 0))},
            "Engine": {"EngineVersion": info.get("ServerVersion", ""), "Labels": labels,
                       "Plugins": [{"Type": kind, "Name": n} for kind in ("Log", "Network", "Volume")
                                   for n in plugins.get(kind) or []]},
            "TLSInfo": self._tls_info(),
        }

    def _tls_info(self) -> dict:
        with contextlib.suppress(OSError):
            return tls_info(self.tls.ca.read_bytes())
        return {}

    # -- swarm ------------------------------------------------------------------------------------
    def require_manager(self) -> None:
        if self.state != "active" or self.role != "manager" or self.objs is None:
            raise not_manager(self)

    def _addresses(self, req: dict) -> None:
        """Decide listen and advertise addresses from a init/join request and our flags."""
        listen = self.opts.listen_addr or req.get("ListenAddr") or "0.0.0.0:2377"
        lhost, lport = split_addr(listen)
        adv = req.get("AdvertiseAddr") or self.opts.advertise_addr
        ahost, aport = split_addr(adv, lport) if adv else ("", lport)
        if not ahost and lhost not in ("", "0.0.0.0", "::"):
            ahost = lhost
        self.addr = ahost or detect_addr()
        self.cluster_port = aport
        self.listen = f"{lhost or '0.0.0.0'}:{lport}"

    async def init_swarm(self, req: dict) -> str:
        if req.get("ForceNewCluster") and self.role == "manager" and self.state in ("active", "pending"):
            return await self._force_new_cluster()
        async with self._lock:
            if self.state != "inactive":
                raise Unavailable(ALREADY_IN_SWARM)
            avail = req.get("Availability") or "active"
            if avail not in ("active", "pause", "drain"):
                raise BadRequest(f"invalid Availability: {avail!r}")
            self._addresses(req)
            self.node_id = new_id()
            self.role = "manager"
            edir = self.opts.data_dir / "etcd"
            if edir.exists():
                shutil.rmtree(edir)
            cert, key = make_root_ca()
            cluster_id = new_id()
            node_key = new_key()
            node_cert = sign_csr(make_csr(node_key), cert, key, self.node_id, "manager", cluster_id)
            self.tls.write(cert, node_cert, key_pem(node_key))
            (self.tls.dir / "swarm-root-ca.key").write_bytes(key)
            os.chmod(self.tls.dir / "swarm-root-ca.key", 0o600)
            self.etcd_cluster = ""
            await self._start_store(new=True)
            ts = now()
            cluster = {
                "ID": cluster_id, "CreatedAt": ts, "UpdatedAt": ts,
                "Spec": _merge_spec(default_cluster_spec(), _init_overrides(req.get("Spec") or {})),
                "TLSInfo": tls_info(cert), "RootRotationInProgress": False,
                "DefaultAddrPool": req.get("DefaultAddrPool") or ["10.0.0.0/8"],
                "SubnetSize": req.get("SubnetSize") or 24,
                "DataPathPort": req.get("DataPathPort") or 4789,
                "JoinTokens": {"Worker": join_token(cert), "Manager": join_token(cert)},
            }
            node = {
                "ID": self.node_id, "CreatedAt": ts, "UpdatedAt": ts,
                "Spec": {"Labels": {}, "Role": "manager", "Availability": avail},
                "Description": await self._describe(),
                "Status": {"State": "ready", "Addr": self.addr},
                "ManagerStatus": {"Leader": True, "Reachability": "reachable", "Addr": self.my_cluster_addr},
            }
            autolock.update_cluster(cluster, key)
            await self.objs.create("clusters", cluster)
            await self.objs.create("nodes", node)
            ingress = NetworkAllocator(self.objs).allocate_network(new_network(ingress_spec()),
                                                                    cluster["DefaultAddrPool"], cluster["SubnetSize"])
            await self.objs.create("networks", ingress)
            self.managers = [f"{self.addr}:{self.cluster_port}"]
            self._save_state()
            await self._start_roles()
            self.state = "active"
            autolock.apply(self)
            return self.node_id

    async def _force_new_cluster(self) -> str:
        """``swarm init --force-new-cluster`` on a manager: restart its etcd member as a one-member cluster
        holding all its data (the way out of a lost quorum). The other managers become workers: once back,
        they are told to change role (or leave and join again)."""
        for t in self._tasks:
            if t.get_name() == "resume":  # still waiting for a store that has no quorum
                t.cancel()
        async with self._lock:
            await self._stop_roles()
            await self._stop_store()
            self.etcd_cluster = ""
            await self._start_store(new=False, force_new=True)
            await self._sole_manager()
            self._save_state()
            await self._start_roles()
            self.state = "active"
            log.warning("forced a new one-manager cluster from this manager's data")
            return self.node_id

    async def _sole_manager(self) -> None:
        """After a forced new cluster or a restore: this manager is the only one; the others are workers."""
        for node in self.objs.list("nodes"):
            if node["ID"] == self.node_id or node.get("ManagerStatus") is None:
                continue

            def to_worker(n: dict) -> bool:
                n.pop("ManagerStatus", None)
                n["Spec"] = {**n["Spec"], "Role": "worker"}
                n["UpdatedAt"] = now()
                return True

            await self.objs.modify("nodes", node["ID"], to_worker)
        self.managers = [self.my_cluster_addr]

    async def join_swarm(self, req: dict) -> None:
        async with self._lock:
            if self.state != "inactive":
                raise Unavailable(ALREADY_IN_SWARM)
            token = req.get("JoinToken") or ""
            parts = token.split("-")
            if len(parts) != 4 or parts[0] != "SWMTKN" or parts[1] != "1":
                raise BadRequest("invalid join token")
            remotes = req.get("RemoteAddrs") or []
            if not remotes:
                raise BadRequest("at least 1 RemoteAddr is required to join")
            self._addresses(req)
            remote = remotes[0] if ":" in remotes[0] else f"{remotes[0]}:2377"
            ca_pem = await self._fetch_ca(remote)
            if ca_digest(ca_pem) != parts[2]:
                raise BadRequest(f"error while validating Root CA Certificate: remote CA does not match "
                                 f"fingerprint. Expected: {parts[2]}")
            key = new_key()
            body = {"token": token, "csr": make_csr(key).decode(), "addr": self.addr, "peer_url": self.peer_url,
                    "cluster_addr": self.my_cluster_addr,
                    "availability": req.get("Availability") or "active", "description": await self._describe()}
            try:
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http, http.post(
                        f"https://{remote}/join", json=body, ssl=ca_only_context(ca_pem)) as resp:
                    answer = await resp.json()
                    if resp.status != 200:
                        raise APIError(answer.get("message", f"join refused ({resp.status})"), resp.status)
            except aiohttp.ClientError as e:
                raise Unavailable(f"could not join the swarm at {remote}: {e}") from None
            self.tls.write(ca_pem, answer["cert"].encode(), key_pem(key))
            self.node_id, self.role = answer["node_id"], answer["role"]
            self.managers = answer.get("managers") or [remote]
            if self.role == "manager":
                (self.tls.dir / "swarm-root-ca.key").write_bytes(answer["ca_key"].encode())
                os.chmod(self.tls.dir / "swarm-root-ca.key", 0o600)
                self.etcd_cluster = answer["etcd_cluster"]
                shutil.rmtree(self.opts.data_dir / "etcd", ignore_errors=True)
                await self._start_store(new=False)
            self._save_state()
            await self._start_roles()
            self.state = "active"
            session = self.session
        # like Docker, answer once the node is part of the swarm: its session is open, so the leader has
        # marked it Ready (a slow swarm: it goes on joining in the background, as Docker's does)
        if session is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(session.connected.wait(), JOIN_READY_WAIT)

    async def _fetch_ca(self, remote: str) -> bytes:
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http, http.get(
                    f"https://{remote}/ca", ssl=insecure_context()) as resp:
                return (await resp.json())["ca"].encode()
        except (aiohttp.ClientError, TimeoutError, KeyError, ValueError) as e:
            raise Unavailable(f"could not reach the swarm manager at {remote}: {e or type(e).__name__}") from None

    async def leave(self, force: bool) -> None:
        async with self._lock:
            if self.state == "locked":
                return await autolock.leave_locked(self, force)
            if self.state != "active":
                raise Unavailable("This node is not part of a swarm")
            if self.role == "manager" and not force:
                raise Unavailable(self._leave_manager_message())
            if self.role == "manager" and self.objs is not None:
                await self._leave_membership()
            netagent = self.netagent
            await self._stop_roles()
            await self._stop_store()
            if netagent is not None:  # the engine calls the network plugin while it removes task containers
                await netagent.plugin.start()
            try:
                await self._remove_task_containers()
                unmount_task_files(self.task_files_dir)
                if netagent is not None:
                    await netagent.cleanup()
            finally:
                if netagent is not None:
                    await netagent.plugin.stop()
            self.netagent = None
            self.state_file.unlink(missing_ok=True)
            self.keylock.forget()
            for sub in ("etcd", "certificates"):
                shutil.rmtree(self.opts.data_dir / sub, ignore_errors=True)
            self.state, self.role, self.node_id, self.managers = "inactive", "worker", "", []

    def _leave_manager_message(self) -> str:
        """Docker's refusal of a manager's ``swarm leave`` without ``--force``."""
        msg = LEAVE_MANAGER
        if self.objs is not None:
            reachable, unreachable = roles.manager_stats(self.objs, self.node_id)
            if reachable - 1 <= unreachable:  # leaving would lose the quorum
                if reachable == 1 and unreachable == 0:
                    return msg + LEAVE_LAST_MANAGER
                msg += (f"Removing this node leaves {reachable - 1} managers out of {reachable + unreachable}. "
                        "Without a Raft quorum your swarm will be inaccessible. ")
        return msg + LEAVE_CONSENSUS

    async def _leave_membership(self) -> None:
        """A manager leaving a swarm that has other managers takes its etcd member out (when the store
        answers), so the others keep their quorum arithmetic right."""
        others = [n for n in self.objs.list("nodes") if n.get("ManagerStatus") and n["ID"] != self.node_id]
        if not others:
            return

        def gone(n: dict) -> bool:
            n.pop("ManagerStatus", None)
            n["Status"] = {**n.get("Status", {}), "State": "down", "Message": "node left the swarm"}
            n["UpdatedAt"] = now()
            return True

        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.objs.modify("nodes", self.node_id, gone), 5)
            await asyncio.wait_for(self.remove_etcd_member(self.node_id), 5)

    async def _remove_task_containers(self) -> None:
        ex = DockerExecutor(f"unix://{self.opts.engine}")
        try:
            for c in (await ex.containers(self.node_id)).values():
                with contextlib.suppress(Exception):
                    await ex.remove(c["Id"])
        finally:
            await ex.close()

    # -- cluster facts ------------------------------------------------------------------------------
    def ca_cert_pem(self) -> bytes:
        return self.tls.ca.read_bytes()

    def ca_key_pem(self) -> bytes:
        return (self.tls.dir / "swarm-root-ca.key").read_bytes()

    async def role_request(self, node_id: str, cert_role: str, body: dict) -> dict:
        """The leader's side of a node changing role: a certificate for the node's desired role, and for a
        new manager its ManagerStatus, an etcd member, the CA key and the etcd cluster to join."""
        node = self.objs.get("nodes", node_id)
        if node is None:
            raise APIError("rpc error: code = PermissionDenied desc = node has been removed from the swarm", 403)
        want = node["Spec"].get("Role", "worker")
        answer: dict = {"role": want, "managers": self.manager_addrs()}
        if want == "worker" and node.get("ManagerStatus") is not None:
            raise Unavailable("rpc error: code = Unavailable desc = the demotion is not finished yet")
        if want == "manager":
            addr = body.get("cluster_addr") or ""

            def add_status(n: dict) -> bool:
                if n.get("ManagerStatus") is not None:
                    return False
                n["ManagerStatus"] = {"Leader": False, "Reachability": "reachable", "Addr": addr}
                n["UpdatedAt"] = now()
                return True

            await self.objs.modify("nodes", node_id, add_status)
            answer["etcd_cluster"] = await self.add_etcd_member(node_id, body["peer_url"])
            answer["ca_key"] = self.ca_key_pem().decode()
            answer["managers"] = sorted({*self.manager_addrs(), addr})
        try:
            cert = sign_csr(body["csr"].encode(), self.ca_cert_pem(), self.ca_key_pem(), node_id, want,
                        self.cluster()["ID"])
        except (KeyError, ValueError) as e:
            raise BadRequest(f"invalid certificate request: {e}") from None
        answer["cert"] = cert.decode()
        return answer

    def can_add_manager(self) -> bool:
        return True

    async def add_etcd_member(self, name: str, peer_url: str) -> str:
        """Add a joining manager's etcd member; returns its ``--initial-cluster``. etcd refuses changes
        until every member has been up for 5 s ("unhealthy cluster"): retry for a while. A member already
        added for ``peer_url`` (a retried join or promotion) is reused."""
        store = self.objs.store
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            try:
                members = await store.member_list()  # type: ignore[attr-defined]
                existing = next((m for m in members if peer_url in m.peer_urls), None)
                if existing is not None:
                    return initial_cluster(members, existing, name)
                new, members = await store.member_add([peer_url])  # type: ignore[attr-defined]
                return initial_cluster(members, new, name)
            except (StoreError, ValueError) as e:
                if asyncio.get_running_loop().time() > deadline:
                    raise Unavailable(f"rpc error: code = Unavailable desc = could not add an etcd member: {e}") from e
                await asyncio.sleep(0.5)

    async def remove_etcd_member(self, name: str) -> None:
        """Remove the etcd member of manager ``name`` (a node ID), if there is one."""
        store = self.objs.store
        for m in await store.member_list():  # type: ignore[attr-defined]
            if m.name == name:
                await store.member_remove(m.id)  # type: ignore[attr-defined]
                return

    def manager_addrs(self) -> list[str]:
        out = []
        for n in self.objs.list("nodes"):
            ms = n.get("ManagerStatus") or {}
            if n["Spec"].get("Role") == "manager" and ms.get("Addr"):
                out.append(ms["Addr"])
        return out

    def cluster(self) -> dict:
        if self.objs is None:
            raise not_manager(self)
        clusters = self.objs.list("clusters")
        if not clusters:
            raise Unavailable("shoal: the cluster object is missing from the store")
        return clusters[0]

    def cluster_view(self, with_tokens: bool) -> dict:
        c = copy.deepcopy(self.cluster())
        c.pop(autolock.FIELD, None)
        if not with_tokens:
            c.pop("JoinTokens", None)
        return c

    async def update_swarm(self, spec: dict, version: int, rotate_worker: bool, rotate_manager: bool,
                           rotate_unlock: bool = False) -> None:
        c = copy.deepcopy(self.cluster())
        if version != c["Version"]["Index"]:
            raise OutOfSequence()
        c["Spec"] = _merge_spec(default_cluster_spec(), spec)
        cert = c["TLSInfo"]["TrustRoot"].encode()
        if rotate_worker:
            c["JoinTokens"]["Worker"] = join_token(cert)
        if rotate_manager:
            c["JoinTokens"]["Manager"] = join_token(cert)
        autolock.update_cluster(c, self.ca_key_pem(), rotate=rotate_unlock)
        c["UpdatedAt"] = now()
        await self.objs.update("clusters", c)
        autolock.apply(self)  # this manager at once; the others follow the cluster object

    def swarm_info(self) -> dict:
        if self.state != "active":
            return {"NodeID": self.node_id, "NodeAddr": self.addr, "LocalNodeState": self.state,
                    "ControlAvailable": False, "Error": autolock.LOCKED if self.state == "locked" else "",
                    "RemoteManagers": None}
        out: dict = {
            "NodeID": self.node_id, "NodeAddr": self.addr, "LocalNodeState": "active",
            "ControlAvailable": self.role == "manager", "Error": "",
            "RemoteManagers": [{"NodeID": "", "Addr": a} for a in self.managers],
        }
        if self.role == "manager" and self.objs is not None:
            nodes = self.objs.list("nodes")
            managers = [n for n in nodes if n["Spec"].get("Role") == "manager"]
            out["RemoteManagers"] = [{"NodeID": n["ID"], "Addr": (n.get("ManagerStatus") or {}).get("Addr", "")}
                                     for n in managers]
            out["Nodes"], out["Managers"] = len(nodes), len(managers)
            out["Cluster"] = self.cluster_view(with_tokens=False)
        return out

    # -- hooks for later subsystems (networks, secrets) ----------------------------------------------
    def check_spec_refs(self, spec: dict, exclude: str | None = None) -> None:
        """Check and normalise what a service spec refers to (networks by name become IDs; secrets and
        configs must exist)."""
        from shoal.manager.secrets import check_refs
        from shoal.model.secrets import validate_refs

        validate_refs(spec)
        self.netalloc.normalise_networks(spec)
        check_refs(self.objs, spec)

    async def allocate_endpoint(self, svc: dict, old: dict | None) -> None:
        """Fill the service's Endpoint: published ports and a virtual IP per network."""
        self.netalloc.allocate_service(svc)

    async def check_demote(self, node: dict) -> None:
        roles.check_demote(self.objs, self.node_id, node)

    async def remove_node(self, node: dict) -> None:
        if not await self.objs.delete("nodes", node):
            raise OutOfSequence()
