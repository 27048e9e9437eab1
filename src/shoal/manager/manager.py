"""A manager (swarmkit's manager/): the etcd member and the object cache over it, the leader election, and
while leading the one list of leader components. A follower tracks where the leader is, forwards writes
to it, and sends agents there.

The node (shoal.node) has a :class:`Manager` only while it is a manager; it gives it the cluster port's
manager endpoints (this class implements :class:`shoal.cluster.server.ManagerEndpoints`) and the API
handler for writes forwarded by other managers.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from shoal.aio import cancel_all
from shoal.cluster.client import ClusterClient
from shoal.cluster.messages import (
    AttachAnswer,
    AttachRequest,
    DetachAnswer,
    DetachRequest,
    ForwardedAnswer,
    JoinAnswer,
    JoinRequest,
    ManagerKeys,
    Message,
    RenewRequest,
    RoleRequest,
)
from shoal.cluster.server import Peer
from shoal.control import Forwarded
from shoal.manager import attachments, autolock, ca, logs, membership, roles
from shoal.manager.allocator import Allocator, allocate_network
from shoal.manager.ca import ClusterCA
from shoal.manager.ca_rotation import RotationReconciler
from shoal.manager.control import ControlAPI
from shoal.manager.controller import Controller
from shoal.manager.dispatcher import Dispatcher
from shoal.manager.events import SwarmEvents
from shoal.manager.netkeys import ROTATION, NetworkKeys
from shoal.manager.orchestrator import orchestrators
from shoal.manager.roles import RoleManager
from shoal.manager.scheduler.controller import SchedulerController
from shoal.manager.secrets import Sealer, cached_sealer
from shoal.model.errors import NO_LONGER_LEADER, BadRequest, Unavailable
from shoal.model.ids import now
from shoal.model.logs import LogLine, LogQuery
from shoal.model.network import ingress_spec, new_network
from shoal.model.views import NodeView
from shoal.store.base import Compare, StoreError
from shoal.store.election import LEADER_KEY, Election
from shoal.store.etcd import EtcdStore
from shoal.store.etcd_member import EtcdMember
from shoal.store.etcd_tls import MEMBER_CN, issue_etcd_cert
from shoal.store.housekeeping import housekeep
from shoal.store.objects import Objects
from shoal.tls.certs import validity
from shoal.tls.files import NodeTLS

log = logging.getLogger(__name__)

FORWARD_PATIENCE = 15.0  # seconds a forwarded write waits for a leader (an election takes a few)


class _NoLeader(Exception):
    """No leader is known to forward to."""


def _not_leader(answer: ForwardedAnswer) -> bool:
    """The answer of a manager that does not lead (any more): it changed nothing."""
    return answer.status == 503 and NO_LONGER_LEADER.encode() in answer.body
LEAVE_MANAGER = "You are attempting to leave the swarm on a node that is participating as a manager. "
LEAVE_LAST_MANAGER = ("Removing the last manager erases all current state of the swarm. Use `--force` to ignore "
                      "this message. ")
LEAVE_CONSENSUS = ("The only way to restore a swarm that has lost consensus is to reinitialize it with "
                   "`--force-new-cluster`. Use `--force` to suppress this message.")

LocalLogs = Callable[[LogQuery], AsyncGenerator[LogLine, None]]
ApiHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def store_controllers(objs: Objects, allocator: Allocator) -> list[Controller]:
    """The leader's controllers that talk only through the store, in the order they start (the control
    plane's unit tests run this same list)."""
    return [*orchestrators(objs, allocator.update_service), allocator, SchedulerController(objs)]


@dataclass
class ManagerConfig:
    node_id: str
    addr: str  # the advertised address (etcd peers)
    cluster_addr: str  # this manager's cluster port, host:port
    data_dir: Path
    etcd_client_port: int = 2379
    etcd_peer_port: int = 2380
    etcd_cluster: str = ""  # --initial-cluster of a member joining an existing etcd cluster ("": its own)
    overlay_key_rotation: float = ROTATION  # seconds between an encrypted network's pre-shared keys


class Manager:
    def __init__(self, cfg: ManagerConfig, tls: NodeTLS, client: ClusterClient, events: SwarmEvents,
                 local_logs: LocalLogs, cluster_changed: Callable[[], None], api_handler: ApiHandler | None = None
                 ) -> None:
        self.cfg = cfg
        self.node_id = cfg.node_id
        self.data_dir = cfg.data_dir
        self.tls = tls
        self.ca = ClusterCA(lambda: self.objs, self.sealer)
        self.client = client
        self.events = events  # kept by the node: the history outlives a manager
        self._local_logs = local_logs
        self._cluster_changed = cluster_changed
        self.objs: Objects = None  # type: ignore[assignment]  # once the store is started
        self.etcd: EtcdMember | None = None
        self.is_leader = False
        self.leader_addr = ""  # the leader's cluster address (ours while leading)
        self.dispatcher: Dispatcher | None = None  # leader only
        self.allocator: Allocator | None = None  # leader only
        self.control = ControlAPI(self)
        self.api_handler = api_handler  # answers writes forwarded by other managers
        self._tasks: list[asyncio.Task] = []
        self._leader_tasks: list[asyncio.Task] = []

    # -- the store ---------------------------------------------------------------------------------
    @property
    def peer_url(self) -> str:
        return f"https://{self.cfg.addr}:{self.cfg.etcd_peer_port}"

    @property
    def store(self) -> EtcdStore:
        return self.objs.store  # type: ignore[return-value]

    def data_key(self) -> bytes:
        """The cluster's data key (OSError without it: a locked manager)."""
        return self.tls.data_key()

    def sealer(self) -> Sealer:
        """What seals the cluster's secrets in the store and opens them."""
        return cached_sealer(self.data_key())

    def issue_etcd_cert(self) -> tuple:
        """This member's etcd certificate, from the managers' etcd CA, as long-lived as the node's own
        (issued at each start and again at each renewal of the node's certificate; etcd reads the files
        again at each new connection)."""
        nb, na = validity(self.tls.cert.read_bytes())
        return issue_etcd_cert(self.tls.etcd_ca.read_bytes(), self.tls.etcd_ca_key.read_bytes(),
                               self.data_dir / "etcd-tls", ips=sorted({"127.0.0.1", self.cfg.addr}),
                               name=self.node_id, cn=MEMBER_CN, expiry=na - nb)

    async def start_store(self, new: bool, force_new: bool = False) -> None:
        """Start this manager's etcd member (mutual TLS from the managers' etcd CA: peers must show a
        manager's etcd certificate; peers on the advertised address) and the object cache over it."""
        client_tls, peer_tls = self.issue_etcd_cert()
        cluster = self.cfg.etcd_cluster or f"{self.node_id}={self.peer_url}"
        self.etcd = EtcdMember(self.node_id, self.data_dir / "etcd", f"https://127.0.0.1:{self.cfg.etcd_client_port}",
                               self.peer_url, cluster, "new" if new else "existing",
                               client_tls=client_tls, peer_tls=peer_tls, force_new_cluster=force_new,
                               peer_allowed_cn=MEMBER_CN)
        await self.etcd.start(ready_within=60)
        self.objs = Objects(self.etcd.store())
        await self.objs.start()

    async def stop_store(self) -> None:
        if self.objs is not None:
            await self.objs.stop()
            await self.objs.store.close()
            self.objs = None  # type: ignore[assignment]
        if self.etcd is not None:
            await self.etcd.stop()
            self.etcd = None

    # -- running -----------------------------------------------------------------------------------
    def start(self) -> None:
        """Campaign, follow the leader, record events, look after the store (the store is up)."""
        etcd_log = self.etcd.log_path if self.etcd is not None else None
        for name, coro in (("leadership", self._leadership()), ("track-leader", self._track_leader()),
                           ("swarm-events", self.events.run(self.objs)),
                           ("housekeeping", housekeep(self.store, etcd_log))):
            self._tasks.append(asyncio.create_task(coro, name=name))

    async def stop(self) -> None:
        await cancel_all(self._tasks)
        self._tasks.clear()
        await self.become_follower()
        self.is_leader = False
        await self.stop_store()

    # -- leadership --------------------------------------------------------------------------------
    def leader_components(self) -> list[Controller | Dispatcher | membership.Learners]:
        """Everything that runs only on the leader, in the order it starts."""
        assert self.dispatcher is not None and self.allocator is not None
        components: list[Controller | Dispatcher | membership.Learners] = [
            self.dispatcher, *store_controllers(self.objs, self.allocator),
            RoleManager(self.objs, self.node_id, self.remove_etcd_member),
            membership.Learners(self.store, self.objs),
            NetworkKeys(self.objs, self.dispatcher.sealer, self.cfg.overlay_key_rotation)]
        if self.dispatcher.sealer is not None:
            components.append(RotationReconciler(self.objs, self.dispatcher.sealer))
        return components

    async def become_leader(self) -> None:
        """Start the leader components on a freshly read cache; mark this manager the leader."""
        await self.objs.reload()  # the store may still be catching up after an election: read it fresh
        try:  # without the data key no secret can be opened (tasks needing one are then refused), the rest runs
            sealer: Sealer | None = self.sealer()
        except (OSError, ValueError) as e:
            log.error("this manager has no data key: %s", e)
            sealer = None
        self.dispatcher = Dispatcher(self.objs, sealer)
        self.allocator = Allocator(self.objs)
        for component in self.leader_components():
            self._leader_tasks.append(asyncio.create_task(component.run(), name=component.name))
        await self._mark_leader()

    async def become_follower(self) -> None:
        """Stop the leader components; end the agents' sessions so they find the new leader."""
        await cancel_all(self._leader_tasks)
        self._leader_tasks.clear()
        dispatcher, self.dispatcher, self.allocator = self.dispatcher, None, None
        if dispatcher is not None:
            await dispatcher.shutdown()

    def _demoted(self) -> bool:
        node = self.objs.get("nodes", self.node_id) if self.objs is not None else None
        return node is not None and NodeView(node).role == "worker"

    async def _leadership(self) -> None:
        """Campaign for leadership; while leading, run the leader components."""
        value = json.dumps({"node_id": self.node_id, "addr": self.cfg.cluster_addr}).encode()
        while True:
            if self._demoted():  # being demoted: leave leading to the managers that stay
                await asyncio.sleep(0.5)
                continue
            election = Election(self.objs.store, ttl=2, value=value)
            try:
                token = await election.campaign()
            except StoreError as e:
                log.info("campaign failed (%s); trying again", e)
                await asyncio.sleep(0.5)
                continue
            log.info("this node is the leader")
            self.leader_addr = self.cfg.cluster_addr
            # fencing: every write this manager makes while it leads also compares the leader key it won,
            # so a write still in flight when another manager has taken over fails instead of landing
            self.objs.fence = Compare(LEADER_KEY, token)
            try:
                await self.become_leader()
                self.is_leader = True  # only now: writes need the leader's allocator (until then they wait)
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
                await self.become_follower()
                if self.objs is not None:
                    self.objs.fence = None
                with contextlib.suppress(Exception):
                    await election.resign()

    async def _mark_leader(self) -> None:
        """ManagerStatus.Leader on this node only."""
        for raw in self.objs.list("nodes"):
            node = NodeView(raw)
            ms = node.manager_status
            if ms is None:
                continue
            want = node.id == self.node_id
            if ms.get("Leader", False) != want or (want and ms.get("Reachability") != "reachable"):
                def apply(n: dict, want: bool = want) -> None:
                    n["ManagerStatus"] = {**n["ManagerStatus"], "Leader": want}
                    if want:
                        n["ManagerStatus"]["Reachability"] = "reachable"
                with contextlib.suppress(Exception):
                    await self.objs.modify("nodes", node.id, apply)

    async def _track_leader(self) -> None:
        """Followers: know where the leader is (for forwarded writes and redirected agents)."""
        while True:
            if not self.is_leader and self.objs is not None:
                with contextlib.suppress(Exception):
                    kv = await self.objs.store.get(LEADER_KEY)
                    self.leader_addr = json.loads(kv.value)["addr"] if kv else ""
            await asyncio.sleep(0.1)

    # -- writes made on a follower -----------------------------------------------------------------
    async def forward(self, method: str, path_qs: str, body: bytes, headers: dict[str, str]) -> Forwarded:
        """Pass an API write to the leader over the cluster port; once it answers, wait until this manager's
        cache has read the write, so a client reading here right after finds it.

        It is sent again (for up to FORWARD_PATIENCE, while a leader change is under way) only when it surely
        did not reach a leader: no leader known, no connection made, or the answer that the manager does not
        lead. Once sent, a lost answer is not retried: the leader may have applied the write, and sending it
        again could apply it twice or answer a conflict with itself; the client is told the outcome is
        unknown."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FORWARD_PATIENCE
        while True:
            leader = self.leader_addr
            try:
                if not leader:
                    raise _NoLeader("none elected")
                answer = await self.client.forward(leader, method, path_qs, body, headers)
            except (_NoLeader, aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as e:
                if loop.time() > deadline:  # it never reached a leader
                    raise Unavailable(f"rpc error: code = Unavailable desc = the swarm has no reachable leader "
                                      f"({leader or 'none elected'}: {e}); a majority of managers must be up") from None
            except (aiohttp.ClientError, TimeoutError) as e:
                raise Unavailable(f"rpc error: code = Unavailable desc = the leader ({leader}) did not answer "
                                  f"({type(e).__name__}: {e}); the write may or may not have been applied") from None
            else:
                if not (_not_leader(answer) and loop.time() <= deadline):
                    if answer.status < 400:
                        await self._catch_up(answer.revision)
                    return Forwarded(answer.status, answer.body, answer.content_type)
            await asyncio.sleep(0.2)

    async def _catch_up(self, rev: int, within: float = 3.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while self.objs is not None and self.objs.revision < rev and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    def logs(self, service: dict, task: dict | None, query: LogQuery) -> AsyncGenerator[LogLine, None]:
        port = int(self.cfg.cluster_addr.rpartition(":")[2] or 2377)
        return logs.gather(self.objs, self.node_id, self._local_logs, self.client, port, service, task, query)

    def cluster_changed(self) -> None:
        self._cluster_changed()

    # -- the cluster port (ManagerEndpoints) -------------------------------------------------------
    def ca_pem(self) -> bytes:
        return self.ca.cert_pem()

    def cluster_id(self) -> str:
        return membership.cluster_of(self.objs)["ID"]

    def has_node(self, node_id: str) -> bool:
        return self.objs.get("nodes", node_id) is not None

    def role_of(self, node_id: str) -> str | None:
        """The node's role in the store now (its desired role: a demoted manager is a worker at once);
        None when it was removed."""
        raw = self.objs.get("nodes", node_id)
        return None if raw is None else NodeView(raw).role

    def manager_keys(self) -> ManagerKeys:
        """What a new manager receives (the etcd cluster to join is added by the caller)."""
        unlock = autolock.unlock_key(membership.cluster_of(self.objs), self.sealer())
        return ManagerKeys(data_key=base64.b64encode(self.tls.data_key()).decode(),
                           unlock_key=autolock.human(unlock) if unlock else "",
                           etcd_ca=self.tls.etcd_ca.read_text(), etcd_ca_key=self.tls.etcd_ca_key.read_text())

    def leader(self) -> str | None:
        return None if self.is_leader else self.leader_addr

    def sessions(self) -> Dispatcher | None:
        return self.dispatcher

    @property
    def revision(self) -> int:
        return self.objs.revision

    async def join(self, req: JoinRequest, peer_addr: str) -> JoinAnswer:
        tokens = ca.tokens(membership.cluster_of(self.objs), self.sealer())
        return await membership.join(self.objs, self.store, self.ca, tokens, self.manager_keys, req, peer_addr)

    async def request(self, peer: Peer, msg: Message) -> Message:
        """A node's request to the leader (from the cluster port, or from this node itself)."""
        if isinstance(msg, RoleRequest):
            return await membership.change_role(self.objs, self.store, self.ca, self.manager_keys, peer.node_id, msg)
        if isinstance(msg, RenewRequest):
            return membership.renew(self.objs, self.ca, peer.node_id, peer.role, msg)
        allocator = self.allocator
        if allocator is None:
            raise Unavailable("rpc error: code = Unavailable desc = this manager is no longer the leader")
        if isinstance(msg, AttachRequest):
            return AttachAnswer(task=await attachments.attach(self.objs, allocator, peer.node_id, msg.network,
                                                              msg.container))
        if isinstance(msg, DetachRequest):
            return DetachAnswer(detached=await attachments.detach(self.objs, allocator, peer.node_id, msg.id))
        raise BadRequest(f"unexpected request {msg.TYPE!r}")

    async def api(self, request: web.Request) -> web.StreamResponse:
        if self.api_handler is None:
            raise Unavailable("rpc error: code = Unavailable desc = this manager does not answer the API yet")
        return await self.api_handler(request)

    # -- membership of this manager ----------------------------------------------------------------
    async def bootstrap(self, cluster: dict, node: dict) -> None:
        """``swarm init``: the new store's first objects — the cluster, this node, the ingress network."""
        await self.objs.create("clusters", cluster)
        await self.objs.create("nodes", node)
        ingress = allocate_network(new_network(ingress_spec()), [], cluster["DefaultAddrPool"], cluster["SubnetSize"])
        await self.objs.create("networks", ingress)

    async def add_etcd_member(self, name: str, peer_url: str) -> str:
        return await membership.add_etcd_member(self.store, name, peer_url)

    async def remove_etcd_member(self, name: str) -> None:
        await membership.remove_etcd_member(self.store, name)

    def manager_addrs(self) -> list[str]:
        return membership.manager_addrs(self.objs)

    async def become_sole_manager(self) -> None:
        """After a forced new cluster or a restore: this manager is the only one; the others are workers."""
        for node in map(NodeView, self.objs.list("nodes")):
            if node.id == self.node_id or node.manager_status is None:
                continue

            def to_worker(n: dict) -> bool:
                n.pop("ManagerStatus", None)
                n["Spec"] = {**n["Spec"], "Role": "worker"}
                n["UpdatedAt"] = now()
                return True

            await self.objs.modify("nodes", node.id, to_worker)

    def leave_refusal(self) -> str:
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

    async def leave(self) -> None:
        """A manager leaving a swarm that has other managers takes its etcd member out (when the store
        answers), so the others keep their quorum arithmetic right."""
        if self.objs is None:
            return
        others = [v for v in map(NodeView, self.objs.list("nodes")) if v.manager_status and v.id != self.node_id]
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
