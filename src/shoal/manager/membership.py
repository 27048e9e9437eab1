"""Joining and changing role: the leader's answers to ``/join`` and ``/role`` on the cluster port, and the
etcd members behind managers (quorum arithmetic and the role manager are in :mod:`shoal.manager.roles`).

A joining node sends a token and a CSR: the token says its role, the CA signs its certificate, its node
object is written, and a manager also gets an etcd member (added before it starts its own, as etcd wants)
and its :class:`~shoal.cluster.messages.ManagerKeys` (the cluster's data key, the unlock key, the etcd CA
and the etcd cluster to join). A promoted or demoted node asks the same way for what its new role needs;
every node renews its certificate the same way before it expires (:func:`renew`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
from collections.abc import Callable
from urllib.parse import urlsplit

from shoal.aio import MONOTONIC, Clock
from shoal.cluster.messages import (
    JoinAnswer,
    JoinRequest,
    ManagerKeys,
    RenewAnswer,
    RenewRequest,
    RoleAnswer,
    RoleRequest,
)
from shoal.manager.ca import ClusterCA
from shoal.model.errors import APIError, BadRequest, Unavailable
from shoal.model.ids import new_id, now
from shoal.model.views import NodeView
from shoal.store.base import StoreError
from shoal.store.etcd import EtcdStore, initial_cluster
from shoal.store.objects import Objects

log = logging.getLogger(__name__)

INVALID_TOKEN = "rpc error: code = InvalidArgument desc = A valid join token is necessary to join this cluster"
REMOVED = "rpc error: code = PermissionDenied desc = node has been removed from the swarm"


def manager_addrs(objs: Objects) -> list[str]:
    """The cluster addresses of the managers."""
    return [v.manager_addr for v in map(NodeView, objs.list("nodes")) if v.role == "manager" and v.manager_addr]


def cluster_of(objs: Objects) -> dict:
    clusters = objs.list("clusters")
    if not clusters:
        raise Unavailable("shoal: the cluster object is missing from the store")
    return clusters[0]


async def add_etcd_member(store: EtcdStore, name: str, peer_url: str) -> str:
    """Add a joining manager's etcd member, as a learner; returns its ``--initial-cluster``. A learner
    does not vote, so a joiner that never comes up costs the quorum nothing; the leader promotes it once
    it has caught up (:class:`Learners`). etcd takes one learner at a time and refuses changes until
    every member has been up for 5 s ("unhealthy cluster"): joins wait and retry for a while. A member
    already added for ``peer_url`` (a retried join or promotion) is reused."""
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        try:
            members = await store.member_list()
            existing = next((m for m in members if peer_url in m.peer_urls), None)
            if existing is not None:
                return initial_cluster(members, existing, name)
            new, members = await store.member_add([peer_url], learner=True)
            return initial_cluster(members, new, name)
        except (StoreError, ValueError) as e:
            if asyncio.get_running_loop().time() > deadline:
                raise Unavailable(f"rpc error: code = Unavailable desc = could not add an etcd member: {e}") from e
            await asyncio.sleep(0.5)


async def remove_etcd_member(store: EtcdStore, name: str) -> None:
    """Remove the etcd member of manager ``name`` (a node ID), if there is one."""
    for m in await store.member_list():
        if m.name == name:
            await store.member_remove(m.id)
            return


Keys = Callable[[], ManagerKeys]  # what a new manager receives, from the manager answering


def _sign(ca: ClusterCA, csr: str, node_id: str, role: str) -> str:
    try:
        return ca.sign(csr.encode(), node_id, role).decode()
    except ValueError as e:
        raise BadRequest(f"invalid certificate request: {e}") from None


async def join(objs: Objects, store: EtcdStore, ca: ClusterCA, tokens: dict[str, str], keys: Keys,
               req: JoinRequest, peer_addr: str) -> JoinAnswer:
    """A node joins with a token (``tokens``: the cluster's, opened): its identity, certificate and node
    object (and, for a manager, its etcd member and :class:`ManagerKeys`)."""
    role = next((r for r, key in (("worker", "Worker"), ("manager", "Manager"))
                 if tokens.get(key) and hmac.compare_digest(str(req.token).encode(), tokens[key].encode())), None)
    if role is None:
        raise BadRequest(INVALID_TOKEN)
    node_id = new_id()
    cert = _sign(ca, req.csr, node_id, role)
    addr = req.addr or peer_addr
    avail = req.availability or "active"
    if avail not in ("active", "pause", "drain"):
        raise BadRequest(f"invalid Availability: {avail!r}")
    ts = now()
    node = {
        "ID": node_id, "CreatedAt": ts, "UpdatedAt": ts,
        "Spec": {"Labels": {}, "Role": role, "Availability": avail},
        "Description": req.description or {},
        "Status": {"State": "unknown", "Addr": addr},
    }
    answer = JoinAnswer(node_id=node_id, role=role, cert=cert, ca=ca.cert_pem().decode(),
                        managers=manager_addrs(objs))
    if role == "manager":
        node["ManagerStatus"] = {"Leader": False, "Reachability": "reachable",
                                 "Addr": req.cluster_addr or f"{addr}:2377"}
    # the node first: once its etcd member is added, writes wait for it to start (quorum)
    await objs.create("nodes", node)
    if role == "manager":
        try:
            mk = keys()
            mk.etcd_cluster = await add_etcd_member(store, node_id, req.peer_url)
        except Exception:
            with contextlib.suppress(Exception):
                await objs.delete("nodes", objs.get("nodes", node_id) or node)
            raise
        answer.keys = mk.to_wire()
    return answer


async def change_role(objs: Objects, store: EtcdStore, ca: ClusterCA, keys: Keys, node_id: str,
                      req: RoleRequest) -> RoleAnswer:
    """A node whose desired role changed asks for it: a certificate for the role, and for a new manager its
    ManagerStatus, an etcd member and :class:`ManagerKeys`."""
    raw = objs.get("nodes", node_id)
    if raw is None:
        raise APIError(REMOVED, 403)
    node = NodeView(raw)
    answer = RoleAnswer(role=node.role, managers=manager_addrs(objs))
    if node.role == "worker" and node.manager_status is not None:
        raise Unavailable("rpc error: code = Unavailable desc = the demotion is not finished yet")
    if node.role == "manager":
        addr = req.cluster_addr

        def add_status(n: dict) -> bool:
            if n.get("ManagerStatus") is not None:
                return False
            n["ManagerStatus"] = {"Leader": False, "Reachability": "reachable", "Addr": addr}
            n["UpdatedAt"] = now()
            return True

        await objs.modify("nodes", node_id, add_status)
        mk = keys()
        mk.etcd_cluster = await add_etcd_member(store, node_id, req.peer_url)
        answer.keys = mk.to_wire()
        answer.managers = sorted({*manager_addrs(objs), addr})
    answer.cert = _sign(ca, req.csr, node_id, node.role)
    return answer


def renew(objs: Objects, ca: ClusterCA, node_id: str, cert_role: str, req: RenewRequest) -> RenewAnswer:
    """A node renews its certificate (swarmkit: a CSR to a manager's CA server). The role stays the one it
    holds: a manager's while its certificate says manager and it is still an etcd member, else a
    worker's (a promotion goes through :func:`change_role`). A removed node gets nothing."""
    raw = objs.get("nodes", node_id)
    if raw is None:
        raise APIError(REMOVED, 403)
    role = "manager" if cert_role == "manager" and NodeView(raw).manager_status is not None else "worker"
    return RenewAnswer(cert=_sign(ca, req.csr, node_id, role), role=role, trust_root=ca.cert_pem().decode())
LEARNER_TIMEOUT = float(os.environ.get("SHOAL_ETCD_LEARNER_TIMEOUT", "60"))  # s; tests set it lower


class Learners:
    """Leader only: promotes each learner etcd member once it has caught up with the leader, and removes
    one that has not come up within :data:`LEARNER_TIMEOUT` (its join or promotion failed), so the next
    joiner can go on (etcd takes one learner at a time)."""

    name = "etcd-learners"

    def __init__(self, store: EtcdStore, objs: Objects, clock: Clock = MONOTONIC,
                 timeout: float = LEARNER_TIMEOUT) -> None:
        self.store = store
        self.objs = objs
        self.clock = clock
        self.timeout = timeout
        self._since: dict[int, float] = {}  # learner member ID -> when this leader first saw it

    async def run(self) -> None:
        while True:
            try:
                await self.step()
            except StoreError as e:
                log.info("etcd learners: %s", e)
            await self.clock.sleep(0.5)

    async def step(self) -> None:
        learners = [m for m in await self.store.member_list() if m.is_learner]
        now_ = self.clock.now()
        self._since = {m.id: self._since.get(m.id, now_) for m in learners}
        for m in learners:
            try:
                await self.store.member_promote(m.id)
                log.info("etcd member %s (%s) caught up: now a voting member", m.name or "?", ", ".join(m.peer_urls))
                del self._since[m.id]
                continue
            except StoreError as e:  # "can only promote a learner member which is in sync with leader"
                if now_ - self._since[m.id] < self.timeout:
                    log.debug("etcd learner %x not promoted yet: %s", m.id, e)
                    continue
            log.warning("etcd learner %s (%s) did not come up within %.0f s: removing it", m.name or "?",
                        ", ".join(m.peer_urls), self.timeout)
            await self.store.member_remove(m.id)
            del self._since[m.id]
            await self._not_a_manager(m.name, m.peer_urls)

    async def _not_a_manager(self, name: str, peer_urls: list[str]) -> None:
        """The node behind a removed learner is no manager: it keeps no ManagerStatus and its desired role
        is worker (it can be removed, or promoted again)."""
        hosts = {urlsplit(u).hostname for u in peer_urls}

        def behind(node: NodeView) -> bool:
            if node.manager_status is None:
                return False
            if name:  # the learner started: it is named after its node
                return node.id == name
            return node.addr in hosts and not node.ready  # it never started: the manager that never came

        for node in filter(behind, map(NodeView, self.objs.list("nodes"))):

            def demote(n: dict) -> bool:
                n.pop("ManagerStatus", None)
                n["Spec"] = {**n["Spec"], "Role": "worker"}
                n["UpdatedAt"] = now()
                return True

            await self.objs.modify("nodes", node.id, demote)
