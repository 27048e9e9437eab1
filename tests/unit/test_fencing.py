"""Two races of the store path, each shown with the real Objects cache on a MemoryStore:

- a deposed leader's write lands after a new leader took over (no fencing);
- a cache that misses other writers' changes for good when its watch fails (resumed after its own writes).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shoal.model.errors import Deposed, StoreError
from shoal.model.ids import new_id, now
from shoal.store.base import Compare, Event
from shoal.store.election import LEADER_KEY, Election
from shoal.store.memory import MemoryStore
from shoal.store.objects import Objects

pytestmark = pytest.mark.looptime  # the election's lease runs on virtual time


def secret(name: str) -> dict:
    ts = now()
    return {"ID": new_id(), "CreatedAt": ts, "UpdatedAt": ts, "Spec": {"Name": name}}


async def test_a_deposed_leaders_write_fails_and_changes_nothing() -> None:
    store = MemoryStore()
    a, b = Objects(store), Objects(store)  # two managers' caches of one store
    await a.start()
    await b.start()
    try:
        first = Election(store, ttl=2, value=b"a")
        a.fence = Compare(LEADER_KEY, await first.campaign())
        await a.create("configs", secret("while-leading"))  # a leader's write lands
        # a loses its lease (its keepalives stopped: a stalled process), b wins the election
        await store.lease_revoke(first.lease)
        second = Election(store, ttl=2, value=b"b")
        b.fence = Compare(LEADER_KEY, await second.campaign())
        # the old leader's write still in flight: refused, nothing written
        with pytest.raises(Deposed):
            await a.create("configs", secret("deposed"))
        kvs, _ = await store.range("/shoal/objects/configs/")
        assert len(kvs) == 1
        await b.create("configs", secret("new-leader"))  # the new leader writes
        await second.resign()
    finally:
        await a.stop()
        await b.stop()
        await store.close()


class FlakyWatch:
    """A MemoryStore whose watches can be held (events wait) and then broken, and whose next range fails."""

    def __init__(self) -> None:
        self.inner = MemoryStore()
        self.hold = asyncio.Event()
        self.hold.set()
        self.broken = asyncio.Event()
        self.fail_range = False

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[list[Event]]:
        self.broken.clear()
        async for batch in self.inner.watch(prefix, start_revision):
            held = asyncio.ensure_future(self.hold.wait())
            broken = asyncio.ensure_future(self.broken.wait())
            await asyncio.wait({held, broken}, return_when=asyncio.FIRST_COMPLETED)
            held.cancel()
            broken.cancel()
            if self.broken.is_set():
                raise StoreError("etcdserver: mvcc: watch cancelled (member lost its leader)")
            yield batch

    async def range(self, prefix: str) -> Any:
        if self.fail_range:
            self.fail_range = False
            raise StoreError("etcdserver: request timed out")
        return await self.inner.range(prefix)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_a_broken_watch_resumes_where_it_left_off() -> None:
    store = FlakyWatch()
    cache, other = Objects(store), Objects(store.inner)  # this manager's cache, and another writer
    await cache.start()
    await other.start()
    try:
        store.hold.clear()  # the watch is slow: it has not brought the other writer's change yet
        theirs = await other.create("configs", secret("theirs"))
        mine = await cache.create("configs", secret("mine"))  # our own write, later, is in our cache at once
        assert mine["Version"]["Index"] > theirs["Version"]["Index"]
        store.fail_range = True  # the watch breaks, and the reload after it fails too
        store.broken.set()
        store.hold.set()
        for _ in range(100):
            await asyncio.sleep(0.1)
            if cache.get("configs", theirs["ID"]) is not None:
                break
        assert cache.get("configs", theirs["ID"]) is not None, "the other writer's change was skipped"
        assert cache.get("configs", mine["ID"]) is not None
    finally:
        await cache.stop()
        await other.stop()
        await store.inner.close()
