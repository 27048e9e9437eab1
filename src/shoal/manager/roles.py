"""Manager membership: quorum arithmetic and the leader's role manager.

A manager is a node whose etcd member belongs to the store's cluster. ``docker node demote`` only
changes the node's desired role (after a quorum check); the :class:`RoleManager` on the leader then
removes the node's etcd member and its ``ManagerStatus``, and the dispatcher tells the node's agent to
carry on as a worker. Promotion goes the other way round: the dispatcher tells the worker, which asks
the leader (``POST /promote`` on the cluster port) for a manager certificate and an etcd member.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable

from shoal.manager.controller import Controller
from shoal.model.errors import FailedPrecondition
from shoal.model.ids import now
from shoal.model.views import NodeView
from shoal.store.objects import Objects

log = logging.getLogger(__name__)

LOSS_OF_QUORUM = "can't remove member from the raft: this would result in a loss of quorum"


def _members(objs: Objects) -> list[NodeView]:
    """The managers that are etcd members (they have a ManagerStatus)."""
    return [v for v in map(NodeView, objs.list("nodes")) if v.manager_status is not None]


def manager_stats(objs: Objects, self_id: str) -> tuple[int, int]:
    """(reachable, unreachable) managers with a ManagerStatus, counting this node as reachable."""
    reachable = sum(1 for m in _members(objs) if m.id == self_id or m.reachable)
    return reachable, len(_members(objs)) - reachable


def can_remove(objs: Objects, self_id: str, node_id: str) -> bool:
    """swarmkit's CanRemoveMember: the reachable managers left after removing ``node_id`` are a quorum
    of the members left."""
    left = [m for m in _members(objs) if m.id != node_id]
    reachable = sum(1 for m in left if m.id == self_id or m.reachable)
    return reachable >= len(left) // 2 + 1


def check_demote(objs: Objects, self_id: str, node: dict) -> None:
    """Refuse a demotion that would leave no manager or break quorum (swarmkit's messages)."""
    view = NodeView(node)
    managers = [v for v in map(NodeView, objs.list("nodes")) if v.role == "manager"]
    if len(managers) <= 1 and view.role == "manager":
        raise FailedPrecondition("attempting to demote the last manager of the swarm")
    if view.manager_status is not None and not can_remove(objs, self_id, view.id):
        raise FailedPrecondition(LOSS_OF_QUORUM)


def _demoting(objs: Objects) -> list[NodeView]:
    """Nodes whose desired role is worker and which are still etcd members."""
    return [m for m in _members(objs) if m.role == "worker"]


class RoleManager(Controller):
    """Leader only: finishes demotions — removes the etcd member of a node whose desired role is worker,
    then its ManagerStatus. A demoted leader hands over first (it stops campaigning), so the member
    removed is never the one doing the removing."""

    kinds = ("nodes",)
    name = "roles"

    def __init__(self, objs: Objects, self_id: str, remove_member: Callable[[str], Awaitable[None]]) -> None:
        super().__init__(objs)
        self.self_id = self_id
        self.remove_member = remove_member

    async def reconcile(self, changes: set[tuple[str, str]] | None) -> None:
        for node in _demoting(self.objs):
            if node.id == self.self_id:
                continue  # the next leader does it
            if not can_remove(self.objs, self.self_id, node.id):
                log.info("roles: not demoting %s yet: removing its member would lose quorum", node.id)
                continue
            await self.remove_member(node.id)
            log.info("roles: %s is no longer a manager", node.id)

            def drop(n: dict) -> bool:
                if n.get("ManagerStatus") is None:
                    return False
                n.pop("ManagerStatus", None)
                n["UpdatedAt"] = now()
                return True

            with contextlib.suppress(Exception):
                await self.objs.modify("nodes", node.id, drop)

    def next_timer(self) -> float | None:
        # a demotion waiting for quorum is retried as reachability changes (a nodes change) or on a timer
        return 2.0 if _demoting(self.objs) else None
