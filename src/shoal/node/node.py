"""A node (swarmkit's node/): this host's membership of a swarm.

The :class:`Node` owns the host's state (:class:`NodeState`, saved in ``<data-dir>/state.json``), its
certificates and key files, joining and leaving, and role changes. Once in a swarm it runs the
:class:`Agent` and its cluster port; while it is a manager it also has a :class:`Manager` (the etcd
member, the election, the leader components). A restart reads the saved state and carries on: the
manager's store catches up, the agent re-adopts its containers.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import shutil
import socket
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import aiohttp

from shoal.agent.agent import Agent, AgentConfig
from shoal.agent.files import unmount as unmount_task_files
from shoal.aio import cancel_all
from shoal.cluster.client import ClusterClient
from shoal.cluster.messages import (
    JoinRequest,
    ManagerKeys,
    Message,
    RenewAnswer,
    RenewRequest,
    RoleAnswer,
    RoleRequest,
    from_wire,
)
from shoal.cluster.server import ClusterServer, Peer
from shoal.engine import Engine
from shoal.manager import autolock, ca
from shoal.manager.ca_rotation import root_for_init
from shoal.manager.events import SwarmEvents
from shoal.manager.manager import ApiHandler, Manager, ManagerConfig
from shoal.manager.membership import cluster_of
from shoal.manager.secrets import Sealer, new_data_key
from shoal.model.cluster import default_cluster_spec, init_overrides, merge_spec
from shoal.model.errors import NOT_A_MANAGER, WORKER_NOT_MANAGER, APIError, BadRequest, Conflict, Unavailable
from shoal.model.ids import new_id, now
from shoal.model.logs import LogLine, LogQuery
from shoal.model.views import NodeView
from shoal.node.describe import describe
from shoal.node.keylock import LEAVE_LOCKED, LOCKED, NOT_LOCKED, KeyLock
from shoal.node.renewal import Renewer
from shoal.node.state import NodeState
from shoal.store.base import StoreError
from shoal.tls.certs import issue_node_cert, key_pem, make_csr, make_root_ca, new_key
from shoal.tls.contexts import ServerContexts, client_context
from shoal.tls.files import NodeTLS, private_dir

log = logging.getLogger(__name__)

JOIN_READY_WAIT = 20.0  # seconds `swarm join` waits for the node's session (moby: swarmConnectTimeout)
ETCD_CA_CN = "shoal-etcd-ca"  # the managers' own CA for etcd's member certificates
ALREADY_IN_SWARM = ('This node is already part of a swarm. Use "docker swarm leave" to leave this swarm '
                    "and join another one.")
NOT_IN_SWARM = "This node is not part of a swarm"
M = TypeVar("M", bound=Message)


@dataclass
class NodeConfig:
    data_dir: Path = Path("/var/lib/shoal")
    engine: str = "/var/run/docker.sock"
    etcd_client_port: int = 2379
    etcd_peer_port: int = 2380
    listen_addr: str = ""  # cluster port; overrides the request's default 0.0.0.0:2377
    advertise_addr: str = ""  # used when a request names none
    networking: bool = True  # overlay networks, VIPs, routing mesh, DNS on this host
    plugin_dir: Path = Path("/run/docker/plugins")
    overlay_key_rotation: float = 12 * 3600.0  # seconds between the encrypted networks' keys (leader)


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


class Node:
    def __init__(self, cfg: NodeConfig) -> None:
        self.cfg = cfg
        self.state = NodeState(etcd_peer_port=cfg.etcd_peer_port)
        self.status = "inactive"  # inactive | pending | active | locked
        self.tls = NodeTLS(cfg.data_dir / "certificates")
        self.keylock = KeyLock(cfg.data_dir)  # a manager's keys with --autolock
        self.engine = Engine(cfg.engine)
        self.client = ClusterClient(lambda: client_context(self.tls))
        self.events = SwarmEvents()  # for `docker events` (managers); the history outlives role changes
        self.agent: Agent | None = None
        self.manager: Manager | None = None  # while this node is a manager
        self._api_handler: ApiHandler | None = None  # the Engine API, for writes other managers forward here
        self._server: ClusterServer | None = None
        self._server_tls: ServerContexts | None = None  # the cluster port's certificate, reloaded on renewal
        self.renewer: Renewer | None = None  # keeps this node's certificate current while in a swarm
        self._lock = asyncio.Lock()  # one membership change at a time
        self._tasks: list[asyncio.Task] = []
        self._role_task: asyncio.Task | None = None

    # -- this host's state ---------------------------------------------------------------------------
    @property
    def node_id(self) -> str:
        return self.state.node_id

    @property
    def role(self) -> str:
        return self.state.role

    @property
    def state_file(self) -> Path:
        return self.cfg.data_dir / "state.json"

    @property
    def task_files_dir(self) -> Path:
        """The tmpfs with the secret and config files of this node's tasks (see shoal.agent.files)."""
        return self.cfg.data_dir / "task-files"

    def _save(self) -> None:
        self.state.save(self.state_file)

    def _forget(self) -> None:
        """Out of the swarm: nothing of it stays on disk."""
        self.state_file.unlink(missing_ok=True)
        self.keylock.forget()
        for sub in ("etcd", "certificates", "etcd-tls"):
            shutil.rmtree(self.cfg.data_dir / sub, ignore_errors=True)
        self.state = NodeState(etcd_peer_port=self.cfg.etcd_peer_port)
        self.status = "inactive"

    def _addresses(self, req: dict) -> None:
        """Decide listen and advertise addresses from an init/join request and our flags."""
        listen = self.cfg.listen_addr or req.get("ListenAddr") or "0.0.0.0:2377"
        lhost, lport = split_addr(listen)
        adv = req.get("AdvertiseAddr") or self.cfg.advertise_addr
        ahost, aport = split_addr(adv, lport) if adv else ("", lport)
        if not ahost and lhost not in ("", "0.0.0.0", "::"):
            ahost = lhost
        self.state.addr = ahost or detect_addr()
        self.state.port = aport
        self.state.listen = f"{lhost or '0.0.0.0'}:{lport}"

    @property
    def peer_url(self) -> str:
        return f"https://{self.state.addr}:{self.cfg.etcd_peer_port}"

    async def describe(self) -> dict:
        return await describe(self.engine, self.tls)

    # -- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Come back into the swarm this node was in (if any): a manager with autolock waits for
        ``swarm unlock``; the rest resume in the background (a manager's store may take a while)."""
        private_dir(self.cfg.data_dir)  # 0700, as Docker keeps /var/lib/docker/swarm
        saved = NodeState.load(self.state_file)
        if saved is None:
            return
        self.state = saved
        if self.role == "manager" and self.keylock.enabled:  # autolock: wait for `docker swarm unlock`
            self.keylock.wipe()
            self.status = "locked"
            return
        self.status = "pending"
        self._tasks.append(asyncio.create_task(self._resume(), name="resume"))

    async def stop(self) -> None:
        await self._stop_roles()
        if self.keylock.enabled:
            self.keylock.wipe()  # the keys were only in memory: a restarted manager is locked
        unmount_task_files(self.task_files_dir)
        await self.engine.close()

    async def _resume(self) -> None:
        """Rejoin the swarm this node was in before it stopped (retrying until the store answers)."""
        async with self._lock:
            if self.role == "manager":
                while True:
                    manager = self._new_manager()
                    try:
                        await manager.start_store(new=False)
                        if self.state.restored:  # `shoal restore` made a one-member cluster of a snapshot
                            await manager.become_sole_manager()
                            self.state.managers = [self.state.cluster_addr]
                            self.state.restored = False
                            self._save()
                        break
                    except StoreError as e:
                        log.warning("the local etcd member is not ready (%s); retrying", e)
                        await manager.stop_store()
                        await asyncio.sleep(1)
                self.manager = manager
            await self._start_roles()
            self.status = "active"

    def _new_manager(self) -> Manager:
        cfg = ManagerConfig(node_id=self.node_id, addr=self.state.addr, cluster_addr=self.state.cluster_addr,
                            data_dir=self.cfg.data_dir, etcd_client_port=self.cfg.etcd_client_port,
                            etcd_peer_port=self.cfg.etcd_peer_port, etcd_cluster=self.state.etcd_cluster,
                            overlay_key_rotation=self.cfg.overlay_key_rotation)
        return Manager(cfg, self.tls, self.client, self.events, self.local_logs, self._follow_cluster,
                       self._api_handler)

    def _receive_manager_keys(self, keys: ManagerKeys) -> None:
        """Keep what a manager needs: with autolock the keys go to memory (and sealed) before any touches
        the disk."""
        if keys.unlock_key and not self.keylock.enabled:
            self.keylock.enable(autolock.parse(keys.unlock_key))
        self.tls.write_manager_keys(base64.b64decode(keys.data_key), keys.etcd_ca.encode(), keys.etcd_ca_key.encode())
        self.keylock.reseal()

    async def _join_store(self, keys: ManagerKeys) -> None:
        """Become a manager of an existing swarm: its keys, and an etcd member joining the others."""
        self._receive_manager_keys(keys)
        self.state.etcd_cluster = keys.etcd_cluster
        shutil.rmtree(self.cfg.data_dir / "etcd", ignore_errors=True)
        manager = self._new_manager()
        await manager.start_store(new=False)
        self.manager = manager

    def serve_forwarded(self, handler: ApiHandler) -> None:
        """The Engine API that answers writes other managers forward to this one (set before :meth:`start`)."""
        self._api_handler = handler

    # -- roles -----------------------------------------------------------------------------------------
    async def _start_roles(self) -> None:
        """Run what this node's role needs: the cluster port, the agent, and as a manager the manager."""
        host, port = split_addr(self.cfg.listen_addr or self.state.listen or "0.0.0.0:2377")
        self._server_tls = ServerContexts(self.tls)
        self._server = ClusterServer(self, self.manager, self._server_tls.context, host, port)
        try:
            await self._server.start()
        except OSError as e:
            if self.manager is not None:
                raise
            # a worker's port only serves the managers' log requests (e.g. a second shoald on one host)
            log.warning("worker log port %s:%d: %s", host or "0.0.0.0", port, e)
            self._server = None
        if self.manager is not None:
            self.manager.start()
            self._tasks.append(asyncio.create_task(self._autolock_loop(), name="autolock"))
            managers = sorted({self.state.cluster_addr, *self.state.managers})
        else:
            managers = self.state.managers
        agent_cfg = AgentConfig(node_id=self.node_id, addr=self.state.addr, engine=self.cfg.engine,
                                task_files=self.task_files_dir, networking=self.cfg.networking,
                                plugin_dir=self.cfg.plugin_dir, tunnel_key=self.cfg.data_dir / "wireguard.key")
        self.renewer = Renewer(self.tls, self._ask_renewal, self._certificate_changed, self._lock,
                               written=self.keylock.reseal)
        self._tasks.append(asyncio.create_task(self.renewer.run(), name="certificate-renewal"))
        self.agent = Agent(agent_cfg, managers, self.client, self.engine, self.describe, self._on_role,
                           self.ask_leader, on_ca=self.renewer.ca_update)
        await self.agent.start()

    async def _ask_renewal(self, req: RenewRequest) -> RenewAnswer:
        return await self.ask_leader(req, RenewAnswer)

    async def _certificate_changed(self) -> None:
        """The node's certificate or trusted root changed: the cluster port takes it for the next handshake,
        a manager's etcd certificate is renewed with it, and the node describes itself again."""
        if self._server_tls is not None:
            self._server_tls.reload()
        if self.manager is not None:
            self.manager.issue_etcd_cert()
        if self.agent is not None:
            await self.agent.session.describe_now()

    async def _stop_roles(self) -> None:
        """Stop the agent, the cluster port and the manager (its store too); containers keep running."""
        if self.agent is not None:
            await self.agent.stop()
        await cancel_all(self._tasks)
        self._tasks.clear()
        if self._server is not None:
            await self._server.stop()
            self._server = None
        manager, self.manager = self.manager, None
        if manager is not None:
            await manager.stop()

    # -- swarm init, join, leave -------------------------------------------------------------------------
    async def init(self, req: dict) -> str:
        if req.get("ForceNewCluster") and self.role == "manager" and self.status in ("active", "pending"):
            return await self._force_new_cluster()
        async with self._lock:
            if self.status != "inactive":
                raise Unavailable(ALREADY_IN_SWARM)
            avail = req.get("Availability") or "active"
            if avail not in ("active", "pause", "drain"):
                raise BadRequest(f"invalid Availability: {avail!r}")
            spec = merge_spec(default_cluster_spec(), init_overrides(req.get("Spec") or {}))
            if req.get("AutoLockManagers"):  # InitRequest's own flag (docker swarm init --autolock sends both)
                spec["EncryptionConfig"]["AutoLockManagers"] = True
            ca.check_node_cert_expiry(spec)
            root = root_for_init(spec.get("CAConfig") or {})
            spec["CAConfig"] = {k: v for k, v in spec["CAConfig"].items() if k not in ("SigningCACert", "SigningCAKey")}
            self._addresses(req)
            self.state.node_id = new_id()
            self.state.role = "manager"
            self.state.etcd_cluster = ""
            shutil.rmtree(self.cfg.data_dir / "etcd", ignore_errors=True)
            try:
                return await self._new_swarm(req, spec, root, avail)
            except BaseException:
                with contextlib.suppress(Exception):
                    await self._stop_roles()
                self._forget()  # no half-made swarm stays on disk
                raise

    async def _new_swarm(self, req: dict, spec: dict, root: ca.RootCA, avail: str) -> str:
        """``swarm init`` once the request is checked: the cluster's keys and CA, this manager's identity
        and store, the first objects."""
        ts, data_key = now(), new_data_key()
        sealer = Sealer(data_key)
        cluster = {
            "ID": new_id(), "CreatedAt": ts, "UpdatedAt": ts, "Spec": spec, "TLSInfo": {},
            "RootRotationInProgress": False, "DefaultAddrPool": req.get("DefaultAddrPool") or ["10.0.0.0/8"],
            "SubnetSize": req.get("SubnetSize") or 24, "DataPathPort": req.get("DataPathPort") or 4789,
        }
        ca.save(cluster, sealer, root)
        ca.new_tokens(cluster, sealer, root.cert)
        autolock.update_cluster(cluster, sealer)
        unlock = autolock.unlock_key(cluster, sealer)
        if unlock is not None:  # --autolock: no key ever touches the disk in the clear
            self.keylock.enable(unlock)
        node_key = new_key()
        cert = issue_node_cert(root.signer(), make_csr(node_key), self.node_id, "manager", cluster["ID"],
                               ca.node_cert_expiry(cluster))
        self.tls.write(root.cert, cert, key_pem(node_key))
        etcd_ca, etcd_ca_key = make_root_ca(ETCD_CA_CN)
        self.tls.write_manager_keys(data_key, etcd_ca, etcd_ca_key)
        self.keylock.reseal()
        manager = self.manager = self._new_manager()
        await manager.start_store(new=True)
        node = {
            "ID": self.node_id, "CreatedAt": ts, "UpdatedAt": ts,
            "Spec": {"Labels": {}, "Role": "manager", "Availability": avail},
            "Description": await self.describe(),
            "Status": {"State": "ready", "Addr": self.state.addr},
            "ManagerStatus": {"Leader": True, "Reachability": "reachable", "Addr": self.state.cluster_addr},
        }
        await manager.bootstrap(cluster, node)
        self.state.managers = [self.state.cluster_addr]
        self._save()
        await self._start_roles()
        self.status = "active"
        self._follow_cluster()
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
            self.state.etcd_cluster = ""
            manager = self._new_manager()
            await manager.start_store(new=False, force_new=True)
            await manager.become_sole_manager()
            self.manager = manager
            self.state.managers = [self.state.cluster_addr]
            self._save()
            await self._start_roles()
            self.status = "active"
            log.warning("forced a new one-manager cluster from this manager's data")
            return self.node_id

    async def join(self, req: dict) -> None:
        async with self._lock:
            if self.status != "inactive":
                raise Unavailable(ALREADY_IN_SWARM)
            token = req.get("JoinToken") or ""
            parts = token.split("-") if isinstance(token, str) else []
            if len(parts) != 4 or parts[0] != "SWMTKN" or parts[1] != "1":
                raise BadRequest("invalid join token")
            remotes = req.get("RemoteAddrs") or []
            if not remotes:
                raise BadRequest("at least 1 RemoteAddr is required to join")
            self._addresses(req)
            remote = remotes[0] if ":" in remotes[0] else f"{remotes[0]}:2377"
            ca_pem = await self.client.fetch_ca(remote)
            if ca.ca_digest(ca_pem) != parts[2]:
                raise BadRequest(f"error while validating Root CA Certificate: remote CA does not match "
                                 f"fingerprint. Expected: {parts[2]}")
            key = new_key()
            answer = await self.client.join(remote, ca_pem, JoinRequest(
                token=token, csr=make_csr(key).decode(), addr=self.state.addr, peer_url=self.peer_url,
                cluster_addr=self.state.cluster_addr, availability=req.get("Availability") or "active",
                description=await self.describe()))
            self.state.node_id, self.state.role = answer.node_id, answer.role
            keys = from_wire(answer.keys, ManagerKeys) if answer.role == "manager" else None
            if keys is not None and keys.unlock_key:  # autolock: the keys go to memory from the start
                self.keylock.enable(autolock.parse(keys.unlock_key))
            self.tls.write(ca_pem, answer.cert.encode(), key_pem(key))
            self.state.managers = answer.managers or [remote]
            if keys is not None:
                await self._join_store(keys)
            self._save()
            await self._start_roles()
            self.status = "active"
            agent = self.agent
        # like Docker, answer once the node is part of the swarm: its session is open, so the leader has
        # marked it Ready (a slow swarm: it goes on joining in the background, as Docker's does)
        if agent is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(agent.session.connected.wait(), JOIN_READY_WAIT)

    async def leave(self, force: bool) -> None:
        async with self._lock:
            if self.status == "locked":  # only with --force; nothing of the swarm stays
                if not force:
                    raise Unavailable(LEAVE_LOCKED)
                self._forget()
                return
            if self.status != "active":
                raise Unavailable(NOT_IN_SWARM)
            manager = self.manager
            if manager is not None and not force:
                raise Unavailable(manager.leave_refusal())
            if manager is not None:
                await manager.leave()
            agent = self.agent
            await self._stop_roles()
            if agent is not None:
                await agent.clean_up()
            self.agent = None
            self._forget()

    # -- autolock ----------------------------------------------------------------------------------
    def _follow_cluster(self) -> None:
        """Make this manager's key files match the cluster's autolock setting and unlock key."""
        manager = self.manager
        if manager is None or manager.objs is None or self.status != "active":
            return
        self.keylock.follow(autolock.unlock_key(cluster_of(manager.objs), manager.sealer()))

    async def _autolock_loop(self) -> None:
        """Every manager follows the cluster object (another manager may have changed it)."""
        while True:
            try:
                self._follow_cluster()
            except Exception as e:  # the store may be briefly unavailable; try again
                log.debug("autolock: %s", e)
            await asyncio.sleep(0.5)

    async def unlock(self, text: str) -> None:
        """``POST /swarm/unlock``: open a locked manager's keys and start it."""
        if self.status != "locked":
            if self.status == "active" and self.role == "manager":
                raise Conflict(NOT_LOCKED)
            if self.status == "inactive":
                raise Unavailable(NOT_IN_SWARM)
            raise Unavailable(WORKER_NOT_MANAGER if self.status == "active" else NOT_A_MANAGER)
        self.keylock.unlock(autolock.parse(text))
        self.status = "pending"
        task = asyncio.create_task(self._resume(), name="resume")
        self._tasks.append(task)
        await asyncio.shield(task)

    # -- promotion and demotion (this node) ----------------------------------------------------------
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
                    if self.status != "active" or self.role == role:
                        return
                    key = new_key()
                    answer = await self.client.request(leader, RoleRequest(
                        csr=make_csr(key).decode(), peer_url=self.peer_url, cluster_addr=self.state.cluster_addr),
                        RoleAnswer)
                    if answer.role != role:
                        return
                    log.info("this node becomes a %s", role)
                    ca_pem = self.tls.ca.read_bytes()
                    await self._stop_roles()
                    keys = from_wire(answer.keys, ManagerKeys) if role == "manager" else None
                    if keys is None:  # a worker keeps no manager key, and is never locked
                        self.keylock.disable()
                        self.tls.remove_manager_keys()
                        for sub in ("etcd", "etcd-tls"):
                            shutil.rmtree(self.cfg.data_dir / sub, ignore_errors=True)
                    elif keys.unlock_key and not self.keylock.enabled:
                        self.keylock.enable(autolock.parse(keys.unlock_key))
                    self.tls.write(ca_pem, answer.cert.encode(), key_pem(key))
                    self.keylock.reseal()
                    self.state.role = role
                    self.state.managers = answer.managers or self.state.managers
                    if keys is not None:
                        await self._join_store(keys)
                    else:
                        self.state.etcd_cluster = ""
                    self._save()
                    await self._start_roles()
                    return
            except (APIError, StoreError, aiohttp.ClientError, TimeoutError) as e:
                log.warning("changing role to %s failed (attempt %d): %s", role, attempt + 1, e)
                await asyncio.sleep(1)

    # -- asking the leader -------------------------------------------------------------------------
    async def ask_leader(self, msg: Message, answer: type[M]) -> M:
        """A request to the leader: answered here when this node leads, else over the cluster port."""
        manager = self.manager
        if manager is not None and manager.is_leader:
            got = await manager.request(Peer(self.node_id, self.role, manager.cluster_id(), self.state.addr), msg)
            assert isinstance(got, answer)
            return got
        leader = manager.leader_addr if manager is not None else ""
        leader = leader or (self.agent.session.current if self.agent else "") or next(iter(self.state.managers), "")
        if not leader:
            raise Unavailable("no manager is known to this node")
        return await self.client.request(leader, msg, answer)

    # -- what the cluster port answers for this node (NodeEndpoints) -------------------------------
    def local_logs(self, query: LogQuery) -> AsyncGenerator[LogLine, None]:
        if self.agent is None:
            raise Unavailable(NOT_IN_SWARM)
        return self.agent.local_logs(query)

    # -- what the API shows ------------------------------------------------------------------------
    def not_manager(self) -> Unavailable:
        """Docker's answer to a manager request on a node that cannot take it."""
        if self.status == "locked":
            return Unavailable(LOCKED)
        return Unavailable(WORKER_NOT_MANAGER if self.status == "active" else NOT_A_MANAGER)

    def swarm_info(self) -> dict:
        if self.status != "active":
            return {"NodeID": self.node_id, "NodeAddr": self.state.addr, "LocalNodeState": self.status,
                    "ControlAvailable": False, "Error": LOCKED if self.status == "locked" else "",
                    "RemoteManagers": None}
        out: dict = {
            "NodeID": self.node_id, "NodeAddr": self.state.addr, "LocalNodeState": "active",
            "ControlAvailable": self.role == "manager", "Error": "",
            "RemoteManagers": [{"NodeID": "", "Addr": a} for a in self.state.managers],
        }
        manager = self.manager
        if manager is not None and manager.objs is not None:
            nodes = [NodeView(n) for n in manager.objs.list("nodes")]
            managers = [n for n in nodes if n.role == "manager"]
            out["RemoteManagers"] = [{"NodeID": n.id, "Addr": n.manager_addr} for n in managers]
            out["Nodes"], out["Managers"] = len(nodes), len(managers)
            out["Cluster"] = manager.control.cluster(with_tokens=False)
        return out
