"""A manager joins as an etcd learner: it costs the quorum nothing until it has caught up, the leader then
promotes it, and a joiner that never comes up is removed. On real etcd members (loopback, tmp dirs)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from test_etcd_ha import members, retry, stores, url  # noqa: F401 (fixtures)

from shoal.manager.membership import Learners, add_etcd_member
from shoal.store import EtcdMember, EtcdStore
from shoal.store.etcd_member import ETCD_BINARY
from shoal.store.objects import Objects

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.access(ETCD_BINARY, os.X_OK), reason=f"{ETCD_BINARY} not installed"),
]


async def test_a_joiner_is_a_learner_until_promoted_and_removed_if_it_never_comes(
        tmp_path: Path, members: list[EtcdMember], stores: list[EtcdStore]) -> None:  # noqa: F811
    m1 = EtcdMember("m1", tmp_path / "m1", url(), (peer := url()), f"m1={peer}")
    members.append(m1)
    await m1.start()
    s1 = m1.store()
    stores.append(s1)
    objs = Objects(s1)
    await objs.start()
    learners = Learners(s1, objs, timeout=2.0)
    try:
        # a manager joins: its member is added, but it has not started yet
        peer2, client2 = url(), url()
        cluster = await retry(lambda: add_etcd_member(s1, "m2", peer2))
        assert [m.is_learner for m in await s1.member_list() if peer2 in m.peer_urls] == [True]
        await asyncio.wait_for(s1.put("/ha/during-join", b"1"), 5)  # the quorum is still 1 of 1: writes go on
        m2 = EtcdMember("m2", tmp_path / "m2", client2, peer2, cluster, "existing")
        members.append(m2)
        starting = asyncio.create_task(m2.start(ready_within=60))  # ready once promoted
        while not starting.done():
            await learners.step()
            await asyncio.sleep(0.3)
        await starting
        listed = await s1.member_list()
        assert sorted(m.name for m in listed) == ["m1", "m2"] and not any(m.is_learner for m in listed)
        s2 = m2.store()
        stores.append(s2)
        assert (await retry(lambda: s2.get("/ha/during-join"))).value == b"1"  # type: ignore[union-attr]

        # a joiner that never comes up: added, never started, removed after the timeout
        peer3 = url()
        await retry(lambda: add_etcd_member(s1, "m3", peer3))
        await asyncio.wait_for(s1.put("/ha/during-failed-join", b"1"), 5)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while any(peer3 in m.peer_urls for m in await s1.member_list()):
            assert loop.time() < deadline, "the learner that never came up was not removed"
            await learners.step()
            await asyncio.sleep(0.3)
        listed = await s1.member_list()
        assert sorted(m.name for m in listed) == ["m1", "m2"] and not any(m.is_learner for m in listed)
    finally:
        await objs.stop()
