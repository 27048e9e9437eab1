"""Store behaviour checks, run here against MemoryStore and in tests/integration against etcd.

:class:`StoreChecks` holds the backend-independent checks; a subclass only provides the ``store``
fixture (a fresh, empty store).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from shoal.store import KV, CompactedError, Compare, Delete, Event, MemoryStore, Put, Store, StoreError

WAIT = 10.0  # generous: etcd expires leases on a 500 ms tick, with a 2 s minimum TTL


async def take(watch: AsyncIterator[list[Event]], n_events: int) -> list[list[Event]]:
    """Read batches until ``n_events`` events arrived."""
    batches: list[list[Event]] = []
    count = 0
    while count < n_events:
        batch = await asyncio.wait_for(anext(watch), WAIT)
        batches.append(batch)
        count += len(batch)
    return batches


def summary(batches: list[list[Event]]) -> list[list[tuple[str, str, bytes]]]:
    return [[(e.type, e.kv.key, e.kv.value) for e in batch] for batch in batches]


class StoreChecks:
    """Behaviour every :class:`~shoal.store.base.Store` backend must show."""

    async def test_revisions_and_versions(self, store: Store) -> None:
        r0 = await store.revision()
        r1 = await store.put("/a", b"1")
        assert r1 == r0 + 1
        assert await store.get("/a") == KV("/a", b"1", r1, r1, 1, 0)
        r2 = await store.put("/a", b"2")
        assert r2 == r1 + 1
        assert await store.get("/a") == KV("/a", b"2", r1, r2, 2, 0)
        assert await store.delete("/a") is True
        r3 = await store.revision()
        assert r3 == r2 + 1
        assert await store.get("/a") is None
        assert await store.delete("/a") is False
        assert await store.revision() == r3  # deleting nothing writes nothing
        r4 = await store.put("/a", b"3")
        assert await store.get("/a") == KV("/a", b"3", r4, r4, 1, 0)  # a new life: version restarts

    async def test_cas_success_and_failure(self, store: Store) -> None:
        created = await store.txn([Compare("/k", 0)], [Put("/k", b"v1")])
        assert created.succeeded and created.failed == []
        kv = await store.get("/k")
        assert kv is not None and kv.mod_revision == created.revision
        again = await store.txn([Compare("/k", 0)], [Put("/k", b"other")])
        assert not again.succeeded
        assert again.failed == ["/k"]
        assert again.revision == created.revision
        assert (await store.get("/k")) == kv
        updated = await store.txn([Compare("/k", kv.mod_revision)], [Put("/k", b"v2")])
        assert updated.succeeded and updated.revision == created.revision + 1
        stale = await store.txn([Compare("/k", kv.mod_revision)], [Delete("/k")])
        assert not stale.succeeded and stale.failed == ["/k"]
        assert (await store.get("/k")).value == b"v2"  # type: ignore[union-attr]

    async def test_txn_is_atomic_and_reports_failed_compares(self, store: Store) -> None:
        r = await store.put("/x", b"x")
        res = await store.txn(
            [Compare("/x", r), Compare("/y", 0)], [Put("/y", b"y"), Put("/z", b"z"), Delete("/x")]
        )
        assert res.succeeded and res.revision == r + 1  # one revision for the whole txn
        y, z = await store.get("/y"), await store.get("/z")
        assert y is not None and z is not None
        assert y.mod_revision == z.mod_revision == res.revision
        assert await store.get("/x") is None
        bad = await store.txn(
            [Compare("/y", res.revision), Compare("/z", 1), Compare("/x", 5)], [Put("/w", b"w")]
        )
        assert not bad.succeeded
        assert bad.failed == ["/z", "/x"]
        assert bad.revision == res.revision
        assert await store.get("/w") is None
        empty = await store.txn([Compare("/y", res.revision)], [])
        assert empty.succeeded and empty.revision == res.revision

    async def test_invalid_requests_raise(self, store: Store) -> None:
        with pytest.raises(StoreError):
            await store.txn([], [Put("/d", b"1"), Put("/d", b"2")])
        with pytest.raises(StoreError):
            await store.txn([], [Put("/d", b"1"), Delete("/d")])
        with pytest.raises(StoreError):
            await store.put("/d", b"1", lease=0x7777)
        assert await store.get("/d") is None

    async def test_range_is_sorted_and_prefix_bound(self, store: Store) -> None:
        for key in ["/r/b", "/r/a", "/r/c/1", "/rx", "/q"]:
            await store.put(key, key.encode())
        kvs, rev = await store.range("/r/")
        assert [kv.key for kv in kvs] == ["/r/a", "/r/b", "/r/c/1"]
        assert rev == await store.revision()
        await store.delete("/r/a")
        await store.put("/r/0", b"")
        await store.put("/r/b", b"new")
        kvs, _ = await store.range("/r/")
        assert [(kv.key, kv.value) for kv in kvs] == [("/r/0", b""), ("/r/b", b"new"), ("/r/c/1", b"/r/c/1")]
        everything, _ = await store.range("")
        assert [kv.key for kv in everything] == ["/q", "/r/0", "/r/b", "/r/c/1", "/rx"]
        assert (await store.range("/nothing/"))[0] == []

    async def test_watch_replays_history_then_goes_live(self, store: Store) -> None:
        await store.put("/w/a", b"0")
        _, rev = await store.range("/w/")
        await store.put("/w/b", b"1")
        await store.put("/other", b"x")
        await store.delete("/w/a")
        await store.txn([], [Put("/w/c", b"2"), Put("/w/d", b"3")])
        watch = aiter(store.watch("/w/", rev + 1))
        batches = await take(watch, 4)
        assert summary(batches) == [
            [("put", "/w/b", b"1")],
            [("delete", "/w/a", b"")],
            [("put", "/w/c", b"2"), ("put", "/w/d", b"3")],
        ]
        deleted = batches[1][0]
        assert deleted.prev is not None and deleted.prev.value == b"0"
        assert deleted.kv.mod_revision == batches[0][0].kv.mod_revision + 2
        r = await store.put("/w/e", b"4")
        live = await take(watch, 1)
        assert summary(live) == [[("put", "/w/e", b"4")]]
        assert live[0][0].kv == KV("/w/e", b"4", r, r, 1, 0)
        await watch.aclose()  # type: ignore[attr-defined]

    async def test_no_gap_across_range_watch_boundary(self, store: Store) -> None:
        n = 150
        base = await store.revision()

        async def writer() -> None:
            for i in range(n):
                await store.put(f"/g/{i:04d}", b"x")
                await asyncio.sleep(0)

        task = asyncio.create_task(writer())
        for _ in range(10_000):  # let a third of the writes land first
            if await store.revision() >= base + n // 3:
                break
            await asyncio.sleep(0)
        kvs, rev = await store.range("/g/")
        seen = {kv.key for kv in kvs}
        assert 0 < len(seen) < n
        watch = aiter(store.watch("/g/", rev + 1))
        revs: list[int] = []
        while len(seen) < n:
            for ev in await asyncio.wait_for(anext(watch), WAIT):
                assert ev.kv.key not in seen, "duplicate"
                seen.add(ev.kv.key)
                revs.append(ev.kv.mod_revision)
        assert revs == list(range(rev + 1, rev + 1 + len(revs))), "gap or disorder"
        await task
        await watch.aclose()  # type: ignore[attr-defined]

    async def test_concurrent_watchers(self, store: Store) -> None:
        rev = await store.revision()
        n = 40
        prefixes = ["/c/", "/c/a/", "/c/b/", "/c/"]
        watches = [aiter(store.watch(p, rev + 1)) for p in prefixes]
        expected = [2 * n, n, n, 2 * n]
        readers = [asyncio.create_task(take(w, e)) for w, e in zip(watches, expected, strict=True)]
        await asyncio.sleep(0.2)
        await asyncio.gather(*(store.put(f"/c/{ab}/{i:03d}", b"v") for i in range(n) for ab in "ab"))
        results = await asyncio.gather(*readers)
        for prefix, batches in zip(prefixes, results, strict=True):
            events = [e for b in batches for e in b]
            assert all(e.kv.key.startswith(prefix) for e in events)
            revs = [e.kv.mod_revision for e in events]
            assert revs == sorted(set(revs))
        assert results[0] == results[3]
        for w in watches:
            await w.aclose()  # type: ignore[attr-defined]

    async def test_watch_from_now(self, store: Store) -> None:
        await store.put("/n/old", b"")
        watch = aiter(store.watch("/n/", 0))
        first = asyncio.create_task(anext(watch))
        await asyncio.sleep(0.3)  # let the watch register
        await store.put("/n/new", b"")
        batch = await asyncio.wait_for(first, WAIT)
        assert [e.kv.key for e in batch] == ["/n/new"]
        await watch.aclose()  # type: ignore[attr-defined]

    async def test_watch_cancel_ends_cleanly(self, store: Store) -> None:
        rev = await store.revision()
        got: list[list[Event]] = []

        async def consume() -> None:
            async for batch in store.watch("/x/", rev + 1):
                got.append(batch)

        task = asyncio.create_task(consume())
        await store.put("/x/1", b"")
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.05)
        assert len(got) == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await store.put("/x/2", b"")  # the store still works, as do new watches
        assert summary(await take(aiter(store.watch("/x/", rev + 1)), 2)) == [
            [("put", "/x/1", b"")],
            [("put", "/x/2", b"")],
        ]

    async def test_lease_expiry_deletes_keys(self, store: Store) -> None:
        lease = await store.lease_grant(1)
        await store.put("/l/a", b"1", lease=lease)
        await store.put("/l/b", b"2", lease=lease)
        await store.put("/l/keep", b"3")
        kv = await store.get("/l/a")
        assert kv is not None and kv.lease == lease
        watch = aiter(store.watch("/l/", await store.revision() + 1))
        batch = await asyncio.wait_for(anext(watch), WAIT)
        assert [(e.type, e.kv.key) for e in batch] == [("delete", "/l/a"), ("delete", "/l/b")]
        assert len({e.kv.mod_revision for e in batch}) == 1  # one revision
        assert await store.get("/l/a") is None
        assert await store.get("/l/keep") is not None
        with pytest.raises(StoreError):
            await store.lease_keepalive(lease)
        await watch.aclose()  # type: ignore[attr-defined]

    async def test_lease_keepalive_and_revoke(self, store: Store) -> None:
        lease = await store.lease_grant(1)
        await store.put("/k/a", b"1", lease=lease)
        await store.put("/k/b", b"1", lease=lease)
        await store.put("/k/b", b"2")  # re-put without the lease detaches it
        loop = asyncio.get_running_loop()  # the event loop's clock: real for etcd, virtual for MemoryStore
        deadline = loop.time() + 2.5
        while loop.time() < deadline:
            await store.lease_keepalive(lease)
            await asyncio.sleep(0.3)
        assert await store.get("/k/a") is not None
        await store.lease_revoke(lease)
        assert await store.get("/k/a") is None
        assert await store.get("/k/b") is not None
        await store.lease_revoke(lease)  # revoking twice is harmless
        with pytest.raises(StoreError):
            await store.lease_keepalive(lease)
        with pytest.raises(StoreError):
            await store.put("/k/c", b"", lease=lease)

    async def test_compaction(self, store: Store) -> None:
        r1 = await store.put("/p/a", b"1")
        r2 = await store.put("/p/a", b"2")
        await store.put("/p/b", b"3")
        await store.compact(r2)
        await store.compact(r1)  # already compacted: no-op
        with pytest.raises(CompactedError):
            await anext(aiter(store.watch("/p/", r1)))
        watch = aiter(store.watch("/p/", r2))
        assert summary(await take(watch, 2)) == [[("put", "/p/a", b"2")], [("put", "/p/b", b"3")]]
        await watch.aclose()  # type: ignore[attr-defined]
        with pytest.raises(StoreError):
            await store.compact(await store.revision() + 10)
        assert (await store.get("/p/a")).value == b"2"  # type: ignore[union-attr]


@pytest.mark.looptime  # lease timers run on virtual time: the checks take milliseconds, not seconds
class TestMemoryStore(StoreChecks):
    @pytest.fixture
    async def store(self) -> AsyncIterator[MemoryStore]:
        s = MemoryStore()
        yield s
        await s.close()

    async def test_history_is_bounded(self) -> None:
        s = MemoryStore(history=10)
        start = await s.revision()
        for i in range(30):
            await s.put(f"/h/{i}", b"")
        with pytest.raises(CompactedError):
            await anext(aiter(s.watch("/h/", start + 1)))
        rev = await s.revision()
        batches = await take(aiter(s.watch("/h/", rev - 9)), 10)
        assert [b[0].kv.key for b in batches] == [f"/h/{i}" for i in range(20, 30)]

    async def test_lagging_watcher_is_compacted(self) -> None:
        s = MemoryStore(history=10)
        watch = aiter(s.watch("/s/", 0))
        first = asyncio.create_task(anext(watch))
        await asyncio.sleep(0)
        await s.put("/s/0", b"")
        await first
        for i in range(20):  # nobody reads
            await s.put(f"/s/{i + 1}", b"")
        with pytest.raises(CompactedError):
            await anext(watch)

    async def test_close_ends_watches(self) -> None:
        s = MemoryStore()
        watch = aiter(s.watch("/", 0))
        pending = asyncio.create_task(anext(watch))
        await asyncio.sleep(0)
        await s.close()
        with pytest.raises(StopAsyncIteration):
            await pending
        with pytest.raises(StoreError):
            await s.get("/x")

    async def test_many_watchers_and_keys_are_cheap(self) -> None:
        """A simulation-sized load: thousands of per-node watches, tens of thousands of writes."""
        s = MemoryStore()
        nodes = 2000
        watches = [aiter(s.watch(f"/tasks/node{i:05d}/", 0)) for i in range(nodes)]
        readers = [asyncio.create_task(anext(w)) for w in watches]
        await asyncio.sleep(0)
        t0 = time.perf_counter()
        for j in range(20):
            for i in range(nodes):
                await s.put(f"/tasks/node{i:05d}/t{j}", b"spec")
            kvs, _ = await s.range(f"/tasks/node{j:05d}/")
            assert len(kvs) == j + 1
        elapsed = time.perf_counter() - t0
        first = await asyncio.gather(*readers)
        assert all(b[0].kv.key.endswith("/t0") for b in first)
        assert elapsed < 5.0, f"40k puts with {nodes} watchers took {elapsed:.1f}s"
        await s.close()
