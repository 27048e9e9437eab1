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
from shoal.store.objects import Objects

log = logging.getLogger(__name__)

LOSS_OF_QUORUM = "can't remove member from the raft: this would result in a loss of quorum"


def manager_stats(objs: Objects, self_id: str) -> tuple[int, int]:
    """(reachable, unreachable) managers with a ManagerStatus, counting this node as reachable."""
    reachable = unreachable = 0
    for n in objs.list("nodes"):
        ms = n.get("ManagerStatus")
        if ms is None:
            continue
        if n["ID"] == self_id or ms.get("Leader") or ms.get("Reachability") == "reachable":
            reachable += 1
        else:
            unreachable += 1
    return reachable, unreachable


def can_remove(objs: Objects, self_id: str, node_id: str) -> bool:
    """swarmkit's CanRemoveMember: the reachable managers left after removing ``node_id`` are a quorum
    of the members left."""
    members = [n for n in objs.list("nodes") if n.get("ManagerStatus") is not None]
    left = [n for n in members if n["ID"] != node_id]
    reachable = sum(1 for n in left if n["ID"] == self_id or n["ManagerStatus"].get("Leader")
                    or n["ManagerStatus"].get("Reachability") == "reachable")
    return reachable >= len(left) // 2 + 1


def check_demote(objs: Objects, self_id: str, node: dict) -> None:
    """Refuse a demotion that would leave no manager or break quorum (swarmkit's messages)."""
    managers = [n for n in objs.list("nodes") if n["Spec"].get("Role") == "manager"]
    if len(managers) <= 1 and node["Spec"].get("Role") == "manager":
        raise FailedPrecondition("attempting to demote the last manager of the swarm")
    if node.get("ManagerStatus") is not None and not can_remove(objs, self_id, node["ID"]):
        raise FailedPrecondition(LOSS_OF_QUORUM)


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
        for node in self.objs.list("nodes"):
            if node["Spec"].get("Role") != "worker" or node.get("ManagerStatus") is None:
                continue
            if node["ID"] == self.self_id:
                continue  # the next leader does it
            if not can_remove(self.objs, self.self_id, node["ID"]):
                log.info("roles: not demoting %s yet: removing its member would lose quorum", node["ID"])
                continue
            await self.remove_member(node["ID"])
            log.info("roles: %s is no longer a manager", node["ID"])

            def drop(n: dict) -> bool:
                if n.get("ManagerStatus") is None:
                    return False
                n.pop("ManagerStatus", None)
                n["UpdatedAt"] = now()
                return True

            with contextlib.suppress(Exception):
                await self.objs.modify("nodes", node["ID"], drop)

    def next_timer(self) -> float | None:
        # a demotion waiting for quorum is retried as reachability changes (a nodes change) or on a timer
        pending = any(n["Spec"].get("Role") == "worker" and n.get("ManagerStatus") is not None
                      for n in self.objs.list("nodes"))
        return 2.0 if pending else None
