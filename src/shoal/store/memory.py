"""An in-process :class:`~shoal.store.base.Store` with etcd v3 semantics, for tests and simulations.

Everything runs on the event loop without awaiting, so each call is atomic. Point operations are
O(1) (plus O(key length) to dispatch an event to watchers); :meth:`MemoryStore.range` sorts keys
lazily. A bounded history of recent revisions serves watches from the past; older revisions raise
:class:`~shoal.store.base.CompactedError`, as does a watcher that falls that far behind.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from itertools import islice

from shoal.store.base import (
    KV,
    CompactedError,
    Compare,
    Delete,
    Event,
    Op,
    Put,
    StoreError,
    TxnResult,
)

__all__ = ["MemoryStore"]

_Batch = tuple[int, list[Event]]


class _Lease:
    __slots__ = ("id", "ttl", "deadline", "keys", "timer")

    def __init__(self, lease_id: int, ttl: int, deadline: float) -> None:
        self.id = lease_id
        self.ttl = ttl
        self.deadline = deadline
        self.keys: set[str] = set()
        self.timer: asyncio.TimerHandle | None = None


class _Watcher:
    """One live watch: a queue of per-revision batches filled by the writer."""

    __slots__ = ("prefix", "min_rev", "limit", "pending", "count", "waiter", "error", "closed")

    def __init__(self, prefix: str, min_rev: int, limit: int) -> None:
        self.prefix = prefix
        self.min_rev = min_rev
        self.limit = limit
        self.pending: deque[_Batch] = deque()
        self.count = 0
        self.waiter: asyncio.Future[None] | None = None
        self.error: StoreError | None = None
        self.closed = False

    def push(self, rev: int, events: list[Event]) -> None:
        if self.error is not None or rev < self.min_rev:
            return
        self.pending.append((rev, events))
        self.count += len(events)
        if self.count > self.limit:
            self.pending.clear()
            self.error = CompactedError(f"watch on {self.prefix!r} fell more than {self.limit} events behind")
        self.wake()

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class MemoryStore:
    """In-memory store. ``history`` bounds how many past events watches can replay."""

    def __init__(self, history: int = 100_000) -> None:
        self._kv: dict[str, KV] = {}
        self._rev = 1  # like etcd: an empty store is at revision 1
        self._history: deque[_Batch] = deque()
        self._history_events = 0
        self._history_limit = history
        self._first_rev = 1  # oldest revision a watch may start from
        # Lazily sorted key index for range().
        self._sorted: list[str] = []
        self._added: set[str] = set()
        self._removed: set[str] = set()
        # Watchers indexed by prefix; _prefix_lens counts watchers per prefix length.
        self._watchers: dict[str, set[_Watcher]] = {}
        self._prefix_lens: dict[int, int] = {}
        self._leases: dict[int, _Lease] = {}
        self._next_lease = 0x5E0A_0000_0001
        self._closed = False

    # ---- reads -------------------------------------------------------------------------------

    async def get(self, key: str) -> KV | None:
        self._check_open()
        return self._kv.get(key)

    async def range(self, prefix: str) -> tuple[list[KV], int]:
        """All keys under ``prefix`` (sorted by key) and the revision they were read at."""
        self._check_open()
        keys = self._sorted_keys()
        kv = self._kv
        out: list[KV] = []
        for key in islice(keys, bisect_left(keys, prefix), None):
            if not key.startswith(prefix):
                break
            out.append(kv[key])
        return out, self._rev

    async def revision(self) -> int:
        self._check_open()
        return self._rev

    # ---- writes ------------------------------------------------------------------------------

    async def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        """Apply ``ops`` atomically (one revision) if every compare holds; otherwise change nothing."""
        self._check_open()
        self._validate(ops)
        kv = self._kv
        failed: list[str] = []
        for c in compares:
            cur = kv.get(c.key)
            if (cur.mod_revision if cur is not None else 0) != c.mod_revision:
                failed.append(c.key)
        if failed:
            return TxnResult(False, self._rev, failed)
        rev = self._rev + 1
        events: list[Event] = []
        for op in ops:
            if isinstance(op, Put):
                events.append(self._put(op.key, op.value, op.lease, rev))
            else:
                ev = self._delete(op.key, rev)
                if ev is not None:
                    events.append(ev)
        if events:
            self._commit(rev, events)
        return TxnResult(True, self._rev)

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Unconditional put; returns the new revision."""
        self._check_open()
        if not key:
            raise StoreError("key is not provided")
        if lease and lease not in self._leases:
            raise StoreError(f"lease {lease:x} not found")
        rev = self._rev + 1
        self._commit(rev, [self._put(key, value, lease, rev)])
        return rev

    async def delete(self, key: str) -> bool:
        """Delete ``key``; False (and no new revision) if it did not exist."""
        self._check_open()
        rev = self._rev + 1
        ev = self._delete(key, rev)
        if ev is None:
            return False
        self._commit(rev, [ev])
        return True

    async def compact(self, revision: int) -> None:
        """Forget history before ``revision``; watches may still start at ``revision``."""
        self._check_open()
        if revision > self._rev:
            raise StoreError(f"compaction revision {revision} is in the future (current {self._rev})")
        if revision <= self._first_rev:
            return
        hist = self._history
        while hist and hist[0][0] < revision:
            self._history_events -= len(hist.popleft()[1])
        self._first_rev = revision

    # ---- watches -----------------------------------------------------------------------------

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[list[Event]]:
        """Batches of events under ``prefix`` from ``start_revision`` (<= 0: from the next revision).

        Past revisions are replayed from history, then live ones follow with no gap or duplicate.
        """
        self._check_open()
        start = start_revision if start_revision > 0 else self._rev + 1
        if start < self._first_rev:
            raise CompactedError(f"revision {start} is compacted (oldest available {self._first_rev})")
        # Snapshot the replay and register for live events in one synchronous step.
        replay: list[_Batch] = []
        if start <= self._rev and self._history:
            skip = max(0, start - self._history[0][0])
            for rev, evs in islice(self._history, skip, None):
                mine = [e for e in evs if e.kv.key.startswith(prefix)]
                if mine:
                    replay.append((rev, mine))
        watcher = _Watcher(prefix, start, self._history_limit)
        self._register(watcher)
        loop = asyncio.get_running_loop()
        try:
            for _, evs in replay:
                yield evs
            del replay
            pending = watcher.pending
            while True:
                while not pending:
                    if watcher.error is not None:
                        raise watcher.error
                    if watcher.closed:
                        return
                    watcher.waiter = loop.create_future()
                    try:
                        await watcher.waiter
                    finally:
                        watcher.waiter = None
                _, evs = pending.popleft()
                watcher.count -= len(evs)
                yield evs
        finally:
            self._unregister(watcher)

    # ---- leases ------------------------------------------------------------------------------

    async def lease_grant(self, ttl: int) -> int:
        """A lease of ``ttl`` seconds, expired by an event-loop timer unless kept alive."""
        self._check_open()
        if ttl <= 0:
            raise StoreError("lease TTL must be positive")
        loop = asyncio.get_running_loop()
        lease_id = self._next_lease
        self._next_lease += 1
        lease = _Lease(lease_id, ttl, loop.time() + ttl)
        lease.timer = loop.call_at(lease.deadline, self._on_lease_timer, lease_id)
        self._leases[lease_id] = lease
        return lease_id

    async def lease_keepalive(self, lease: int) -> None:
        """Refresh the lease once. Raises :class:`StoreError` if it has expired or was revoked."""
        self._check_open()
        entry = self._leases.get(lease)
        if entry is None:
            raise StoreError(f"lease {lease:x} not found (expired or revoked)")
        entry.deadline = asyncio.get_running_loop().time() + entry.ttl

    async def lease_revoke(self, lease: int) -> None:
        """Revoke the lease, deleting its keys in one revision. Unknown leases are ignored."""
        self._check_open()
        entry = self._leases.get(lease)
        if entry is not None:
            self._expire(entry)

    async def close(self) -> None:
        """Stop lease timers and end all watches (after they drain what they already received)."""
        if self._closed:
            return
        self._closed = True
        for lease in self._leases.values():
            if lease.timer is not None:
                lease.timer.cancel()
        for watchers in self._watchers.values():
            for w in watchers:
                w.closed = True
                w.wake()

    # ---- internals ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("store is closed")

    def _validate(self, ops: Sequence[Op]) -> None:
        puts: set[str] = set()
        dels: set[str] = set()
        for op in ops:
            if not op.key:
                raise StoreError("key is not provided")
            if isinstance(op, Put):
                if op.key in puts or op.key in dels:
                    raise StoreError(f"duplicate key given in txn request: {op.key!r}")
                if op.lease and op.lease not in self._leases:
                    raise StoreError(f"lease {op.lease:x} not found")
                puts.add(op.key)
            elif isinstance(op, Delete):
                if op.key in puts:
                    raise StoreError(f"duplicate key given in txn request: {op.key!r}")
                dels.add(op.key)
            else:
                raise TypeError(f"not a store op: {op!r}")

    def _put(self, key: str, value: bytes, lease: int, rev: int) -> Event:
        prev = self._kv.get(key)
        if prev is None:
            kv = KV(key, value, rev, rev, 1, lease)
            self._key_added(key)
        else:
            kv = KV(key, value, prev.create_revision, rev, prev.version + 1, lease)
            if prev.lease and prev.lease != lease:
                old = self._leases.get(prev.lease)
                if old is not None:
                    old.keys.discard(key)
        if lease:
            self._leases[lease].keys.add(key)
        self._kv[key] = kv
        return Event("put", kv, prev)

    def _delete(self, key: str, rev: int) -> Event | None:
        prev = self._kv.pop(key, None)
        if prev is None:
            return None
        if prev.lease:
            lease = self._leases.get(prev.lease)
            if lease is not None:
                lease.keys.discard(key)
        self._key_removed(key)
        return Event("delete", KV(key, b"", 0, rev, 0, 0), prev)

    def _commit(self, rev: int, events: list[Event]) -> None:
        """Make ``rev`` current, record it in history and hand it to matching watchers."""
        self._rev = rev
        hist = self._history
        hist.append((rev, events))
        self._history_events += len(events)
        while self._history_events > self._history_limit and len(hist) > 1:
            old_rev, old = hist.popleft()
            self._history_events -= len(old)
            self._first_rev = old_rev + 1
        if not self._prefix_lens:
            return
        if len(events) == 1:
            ev = events[0]
            for w in self._matching(ev.kv.key):
                w.push(rev, [ev])
            return
        per: dict[_Watcher, list[Event]] = {}
        for ev in events:
            for w in self._matching(ev.kv.key):
                per.setdefault(w, []).append(ev)
        for w, evs in per.items():
            w.push(rev, evs)

    def _matching(self, key: str) -> Iterator[_Watcher]:
        """Watchers whose prefix matches ``key``: one dict lookup per distinct prefix length."""
        watchers = self._watchers
        size = len(key)
        for n in self._prefix_lens:
            if n <= size:
                found = watchers.get(key[:n])
                if found:
                    yield from found

    def _register(self, w: _Watcher) -> None:
        self._watchers.setdefault(w.prefix, set()).add(w)
        n = len(w.prefix)
        self._prefix_lens[n] = self._prefix_lens.get(n, 0) + 1

    def _unregister(self, w: _Watcher) -> None:
        group = self._watchers.get(w.prefix)
        if group is None or w not in group:
            return
        group.discard(w)
        if not group:
            del self._watchers[w.prefix]
        n = len(w.prefix)
        left = self._prefix_lens[n] - 1
        if left:
            self._prefix_lens[n] = left
        else:
            del self._prefix_lens[n]

    def _on_lease_timer(self, lease_id: int) -> None:
        lease = self._leases.get(lease_id)
        if lease is None or self._closed:
            return
        loop = asyncio.get_running_loop()
        if loop.time() < lease.deadline:  # kept alive meanwhile: check again at the new deadline
            lease.timer = loop.call_at(lease.deadline, self._on_lease_timer, lease_id)
        else:
            self._expire(lease)

    def _expire(self, lease: _Lease) -> None:
        """Drop ``lease`` and delete its keys in a single revision."""
        del self._leases[lease.id]
        if lease.timer is not None:
            lease.timer.cancel()
        rev = self._rev + 1
        events = [ev for key in sorted(lease.keys) if (ev := self._delete(key, rev)) is not None]
        if events:
            self._commit(rev, events)

    def _key_added(self, key: str) -> None:
        if key in self._removed:
            self._removed.discard(key)  # still present in self._sorted
        else:
            self._added.add(key)

    def _key_removed(self, key: str) -> None:
        if key in self._added:
            self._added.discard(key)
        else:
            self._removed.add(key)

    def _sorted_keys(self) -> list[str]:
        if self._removed:
            removed = self._removed
            self._sorted = [k for k in self._sorted if k not in removed]
            self._removed = set()
        if self._added:
            merged = self._sorted + sorted(self._added)
            merged.sort()  # two sorted runs: timsort merges them in linear time
            self._sorted = merged
            self._added = set()
        return self._sorted
