"""Manager membership arithmetic: swarmkit's quorum safeguard for demotion, and Docker's leave counts."""

from __future__ import annotations

import pytest

from shoal.manager.roles import LOSS_OF_QUORUM, can_remove, check_demote, manager_stats
from shoal.model.errors import FailedPrecondition
from shoal.store.memory import MemoryStore
from shoal.store.objects import Objects


def _node(nid: str, role: str, reach: str | None = None, leader: bool = False) -> dict:
    node: dict = {"ID": nid, "Spec": {"Role": role, "Availability": "active", "Labels": {}},
                  "Status": {"State": "ready"}, "Description": {"Hostname": nid}}
    if reach is not None:
        node["ManagerStatus"] = {"Leader": leader, "Reachability": reach, "Addr": f"{nid}:2377"}
    return node


async def _objs(*nodes: dict) -> Objects:
    objs = Objects(MemoryStore())
    await objs.start()
    for n in nodes:
        await objs.create("nodes", n)
    return objs


async def test_three_managers_one_down() -> None:
    objs = await _objs(_node("m1", "manager", "reachable", leader=True), _node("m2", "manager", "reachable"),
                       _node("m3", "manager", "unreachable"), _node("w1", "worker"))
    try:
        assert manager_stats(objs, "m1") == (2, 1)
        # removing the down one leaves 2 members, both reachable: fine
        assert can_remove(objs, "m1", "m3")
        # removing a reachable one leaves m1 (reachable) and m3 (down): 1 of 2 is no quorum
        assert not can_remove(objs, "m1", "m2")
        with pytest.raises(FailedPrecondition) as e:
            check_demote(objs, "m1", objs.get("nodes", "m2"))
        assert LOSS_OF_QUORUM in e.value.message
        check_demote(objs, "m1", objs.get("nodes", "m3"))
    finally:
        await objs.stop()


async def test_last_manager_cannot_be_demoted() -> None:
    objs = await _objs(_node("m1", "manager", "reachable", leader=True), _node("w1", "worker"))
    try:
        with pytest.raises(FailedPrecondition) as e:
            check_demote(objs, "m1", objs.get("nodes", "m1"))
        assert e.value.message.endswith("attempting to demote the last manager of the swarm")
        assert manager_stats(objs, "m1") == (1, 0)
    finally:
        await objs.stop()


async def test_all_reachable_any_one_may_go() -> None:
    objs = await _objs(*(_node(f"m{i}", "manager", "reachable", leader=i == 1) for i in range(1, 4)))
    try:
        assert all(can_remove(objs, "m1", f"m{i}") for i in range(1, 4))
    finally:
        await objs.stop()
