"""Election on MemoryStore: winning, waiting, resigning, failover and prompt loss of leadership."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from shoal.store import KV, Compare, Event, MemoryStore, Op, StoreError, TxnResult
from shoal.store.election import Election

pytestmark = pytest.mark.looptime  # leases and timeouts run on virtual time (looptime)

TTL = 1


class CutStore:
    """A view of a shared store that can be cut off (calls fail) or made to hang (calls never answer)."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.cut = False
        self.hang = False

    async def _gate(self) -> None:
        if self.hang:
            await asyncio.Event().wait()
        if self.cut:
            raise StoreError("cut off")

    async def get(self, key: str) -> KV | None:
        await self._gate()
        return await self.store.get(key)

    async def range(self, prefix: str) -> tuple[list[KV], int]:
        await self._gate()
        return await self.store.range(prefix)

    async def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        await self._gate()
        return await self.store.txn(compares, ops)

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        await self._gate()
        return await self.store.put(key, value, lease)

    async def delete(self, key: str) -> bool:
        await self._gate()
        return await self.store.delete(key)

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[list[Event]]:
        await self._gate()
        async for batch in self.store.watch(prefix, start_revision):
            yield batch

    async def lease_grant(self, ttl: int) -> int:
        await self._gate()
        return await self.store.lease_grant(ttl)

    async def lease_keepalive(self, lease: int) -> None:
        await self._gate()
        await self.store.lease_keepalive(lease)

    async def lease_revoke(self, lease: int) -> None:
        await self._gate()
        await self.store.lease_revoke(lease)

    async def compact(self, revision: int) -> None:
        await self.store.compact(revision)

    async def revision(self) -> int:
        return await self.store.revision()

    async def close(self) -> None:
        pass


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    s = MemoryStore()
    yield s
    await s.close()


async def test_first_candidate_wins_and_holds(store: MemoryStore) -> None:
    a = Election(store, ttl=TTL, value=b"a")
    token = await asyncio.wait_for(a.campaign(), 1)
    kv = await store.get("/shoal/leader")
    assert kv is not None and kv.value == b"a" and kv.lease == a.lease
    assert token == kv.create_revision == a.fencing_token
    assert a.is_leader and await a.leader() == b"a"
    assert await a.campaign() == token  # already leading: no-op
    await asyncio.sleep(TTL * 2.5)  # kept alive well past the TTL
    assert a.is_leader and not a.lost.is_set()
    await a.resign()
    assert a.lost.is_set() and a.lost_reason == "resigned" and a.fencing_token is None
    assert await a.leader() is None


async def test_second_candidate_waits_then_takes_over_on_resign(store: MemoryStore) -> None:
    a, b = Election(store, ttl=TTL, value=b"a"), Election(store, ttl=TTL, value=b"b")
    ta = await a.campaign()
    pending = asyncio.create_task(b.campaign())
    await asyncio.sleep(0.2)
    assert not pending.done() and await b.leader() == b"a"
    await a.resign()
    tb = await asyncio.wait_for(pending, 1)
    assert tb > ta and b.is_leader and await b.leader() == b"b"
    await b.resign()


async def test_failover_when_leader_is_cut_off(store: MemoryStore) -> None:
    view = CutStore(store)
    a, b = Election(view, ttl=TTL, value=b"a"), Election(store, ttl=TTL, value=b"b")
    await a.campaign()
    pending = asyncio.create_task(b.campaign())
    await asyncio.sleep(0.1)
    loop = asyncio.get_running_loop()
    view.cut = True
    t0 = loop.time()
    await asyncio.wait_for(a.lost.wait(), TTL)  # the next keepalive (within ttl/3) fails
    assert loop.time() - t0 <= TTL / 3 + 0.2
    assert not a.is_leader and "keepalive failed" in (a.lost_reason or "")
    await asyncio.wait_for(pending, TTL + 1)  # a's lease expires in the store, b takes over
    assert loop.time() - t0 <= TTL + 0.5
    assert await b.leader() == b"b"
    await b.resign()


async def test_lost_when_keepalive_hangs(store: MemoryStore) -> None:
    view = CutStore(store)
    a = Election(view, ttl=TTL)
    await a.campaign()
    loop = asyncio.get_running_loop()
    view.hang = True
    t0 = loop.time()
    await asyncio.wait_for(a.lost.wait(), TTL + 0.5)
    assert loop.time() - t0 <= TTL  # by the local deadline: last keepalive sent + 0.9 ttl
    assert await store.get("/shoal/leader") is not None  # stepped down before the store expired the lease
    assert "before the lease ran out" in (a.lost_reason or "")


async def test_lost_when_key_deleted_or_lease_revoked(store: MemoryStore) -> None:
    a = Election(store, ttl=TTL)
    await a.campaign()
    old_lease = a.lease
    await store.delete("/shoal/leader")
    await asyncio.wait_for(a.lost.wait(), 1)
    assert a.lost_reason == "leader key deleted"
    await asyncio.sleep(0.05)
    assert old_lease not in store._leases and a.lease == 0  # no keepalive for a useless lease

    await a.campaign()  # a new term with a new lease
    assert a.is_leader and not a.lost.is_set()
    await store.lease_revoke(a.lease)
    await asyncio.wait_for(a.lost.wait(), TTL)
    assert not a.is_leader


async def test_cancelled_campaign_leaves_nothing_behind(store: MemoryStore) -> None:
    a, b = Election(store, ttl=TTL, value=b"a"), Election(store, ttl=TTL, value=b"b")
    await a.campaign()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(b.campaign(), 0.2)
    assert b.lease == 0 and not b.is_leader
    assert len(store._leases) == 1  # only a's
    await a.resign()
    assert await a.leader() is None


async def test_campaign_fails_when_candidate_is_cut_off(store: MemoryStore) -> None:
    view = CutStore(store)
    a, b = Election(store, ttl=TTL), Election(view, ttl=TTL)
    await a.campaign()
    pending = asyncio.create_task(b.campaign())
    await asyncio.sleep(0.1)
    view.cut = True
    with pytest.raises(StoreError, match="lease lost while campaigning"):
        await asyncio.wait_for(pending, TTL + 1)
    assert not b.lost.is_set()  # it never led
    await a.resign()
