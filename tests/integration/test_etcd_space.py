"""A full store (etcd's NOSPACE alarm): writes are refused with a clear error, reads go on, and the
manager's housekeeping compacts, defragments and disarms so that writes resume with nothing lost; etcd's
log is kept small. On a real etcd member with a small quota."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_etcd_ha import members, stores, url  # noqa: F401 (fixtures)

from shoal.store import EtcdMember, EtcdStore, StoreError
from shoal.store.etcd_member import ETCD_BINARY
from shoal.store.housekeeping import recover_space, rotate_log

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.access(ETCD_BINARY, os.X_OK), reason=f"{ETCD_BINARY} not installed"),
]

QUOTA = 16 * 1024 * 1024


async def test_a_full_store_refuses_writes_clearly_then_recovers(
        tmp_path: Path, members: list[EtcdMember], stores: list[EtcdStore]) -> None:  # noqa: F811
    m = EtcdMember("m1", tmp_path / "m1", url(), (peer := url()), f"m1={peer}",
                   extra_args=[f"--quota-backend-bytes={QUOTA}", "--auto-compaction-retention=0"])
    members.append(m)
    await m.start()
    s = m.store()
    stores.append(s)
    await s.put("/live/service", b"the live data")
    blob = os.urandom(512 * 1024)
    with pytest.raises(StoreError) as full:  # history of one key fills the quota
        for i in range(200):
            await s.put("/churn/task", blob + str(i).encode())
    assert "the cluster store is full" in str(full.value)
    assert ("NOSPACE" in {name for _, name in await s.alarms()})
    with pytest.raises(StoreError, match="the cluster store is full"):
        await s.put("/live/other", b"x")
    assert (await s.get("/live/service")).value == b"the live data"  # type: ignore[union-attr]

    assert await recover_space(s)  # what each manager's housekeeping does when it sees the alarm
    assert await s.alarms() == []
    await s.put("/live/after", b"writes resume")
    assert (await s.get("/live/service")).value == b"the live data"  # type: ignore[union-attr]
    assert (await s.get("/churn/task")) is not None  # the latest value of every key is kept
    assert not await recover_space(s)  # nothing to do when not full

    big = (tmp_path / "m1" / "etcd.log").stat().st_size
    assert big > 0
    assert rotate_log(tmp_path / "m1" / "etcd.log", max_size=1)
    assert (tmp_path / "m1" / "etcd.log.1").stat().st_size >= big
    await s.put("/live/logged", b"etcd goes on writing its log")
    assert (await s.get("/live/logged")) is not None
