"""Cluster objects (Docker's JSON shapes) on top of a :class:`~shoal.store.base.Store`.

Objects live at ``/shoal/objects/<kind>/<id>`` as JSON; ``Version.Index`` is the key's mod_revision.
Names of services, networks, secrets and configs are kept unique by a second key in the same
transaction. A write-through cache, fed by a gap-free watch, gives controllers and the API fast reads;
watchers are woken with the (kind, id) pairs that changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from shoal.model.errors import Deposed, NameConflict, OutOfSequence
from shoal.model.kinds import KINDS, NAMED, name_of
from shoal.store.base import KV, CompactedError, Compare, Delete, Op, Put, Store, StoreError

log = logging.getLogger(__name__)

PREFIX = "/shoal/objects/"
NAMES = "/shoal/names/"


def obj_key(kind: str, oid: str) -> str:
    return f"{PREFIX}{kind}/{oid}"


def name_key(kind: str, name: str) -> str:
    return f"{NAMES}{kind}/{name}"


def _encode(obj: dict) -> bytes:
    """An object as stored: compact JSON without ``Version`` (that is the key's revision). orjson: the
    manager encodes every write and decodes every watched change, so this is the store path's hot spot."""
    body = {k: v for k, v in obj.items() if k != "Version"}
    return orjson.dumps(body)


def _decode(kv: KV) -> tuple[str, str, dict]:
    kind, _, oid = kv.key[len(PREFIX):].partition("/")
    obj = orjson.loads(kv.value)
    obj["Version"] = {"Index": kv.mod_revision}
    return kind, oid, obj


@dataclass(slots=True)
class Change:
    """One object write in a batch: ``obj`` is put (CAS on its Version.Index) or deleted."""

    kind: str
    obj: dict
    delete: bool = False
    create: bool = False


class Watcher:
    """Collects the (kind, id) pairs that changed since the last :meth:`wait`."""

    def __init__(self, kinds: Iterable[str]) -> None:
        self.kinds = set(kinds)
        self._pending: set[tuple[str, str]] = set()
        self._event = asyncio.Event()

    def _notify(self, kind: str, oid: str) -> None:
        if kind in self.kinds:
            self._pending.add((kind, oid))
            self._event.set()

    def poke(self) -> None:
        """Wake the watcher with no particular change (timers, shutdown)."""
        self._event.set()

    async def wait(self, timeout: float | None = None) -> set[tuple[str, str]]:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation that arrives
        # just as the event fires, and the cancelled controller would then never stop.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._event.wait()
        self._event.clear()
        out, self._pending = self._pending, set()
        return out


class Objects:
    """Typed access to cluster objects with a write-through cache."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.cache: dict[str, dict[str, dict]] = {k: {} for k in KINDS}
        self.revision = 0
        self._watched = 0  # revision up to which the watch has been applied to the cache
        self._watchers: list[Watcher] = []
        self.fence: Compare | None = None  # while leading: every write also compares the leader key
        self._task: asyncio.Task | None = None
        self.loaded = asyncio.Event()
        # secondary indexes: service id -> task ids, node id -> task ids, (service id, slot) -> task ids
        self.tasks_by_service: dict[str, set[str]] = {}
        self.tasks_by_node: dict[str, set[str]] = {}
        self.tasks_by_slot: dict[tuple[str, int], set[str]] = {}

    def _index(self, kind: str, oid: str, old: dict | None, new: dict | None) -> None:
        if kind != "tasks":
            return
        before_slot = (old["ServiceID"], old.get("Slot") or 0) if old and old.get("ServiceID") else None
        after_slot = (new["ServiceID"], new.get("Slot") or 0) if new and new.get("ServiceID") else None
        if before_slot != after_slot:
            if before_slot is not None:
                ids = self.tasks_by_slot.get(before_slot)
                if ids is not None:
                    ids.discard(oid)
                    if not ids:
                        del self.tasks_by_slot[before_slot]
            if after_slot is not None:
                self.tasks_by_slot.setdefault(after_slot, set()).add(oid)
        for idx, field in ((self.tasks_by_service, "ServiceID"), (self.tasks_by_node, "NodeID")):
            before = old.get(field) if old else None
            after = new.get(field) if new else None
            if before == after:
                continue
            # tasks without a service (network attachments) are indexed under ""; unassigned ones are not
            if before or (before == "" and field == "ServiceID"):
                ids = idx.get(before)
                if ids is not None:
                    ids.discard(oid)
                    if not ids:
                        del idx[before]
            if after or (after == "" and field == "ServiceID"):
                idx.setdefault(after, set()).add(oid)

    def _set(self, kind: str, oid: str, obj: dict | None) -> None:
        """Put (or, with None, drop) one cached object, keeping the indexes, and wake watchers."""
        bucket = self.cache.setdefault(kind, {})
        old = bucket.get(oid)
        if obj is None:
            if old is None:
                return
            del bucket[oid]
        else:
            bucket[oid] = obj
        self._index(kind, oid, old, obj)
        self._notify(kind, oid)

    # -- cache maintenance -------------------------------------------------------------------
    async def start(self) -> None:
        await self.reload()
        self._task = asyncio.create_task(self._follow(), name="objects-watch")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def reload(self) -> None:
        """Read every object from the store again (at start, and when the watch cannot go on)."""
        kvs, rev = await self.store.range(PREFIX)
        fresh: dict[str, dict[str, dict]] = {k: {} for k in KINDS}
        for kv in kvs:
            kind, oid, obj = _decode(kv)
            fresh.setdefault(kind, {})[oid] = obj
        for kind in KINDS:
            for oid in set(self.cache.get(kind, {})) - set(fresh.get(kind, {})):
                self._set(kind, oid, None)
            for oid, obj in fresh.get(kind, {}).items():
                self._set(kind, oid, obj)
        self.revision = self._watched = rev
        self.loaded.set()

    async def _follow(self) -> None:
        while True:
            try:
                # from the last revision the watch delivered: this manager's own writes move `revision`
                # ahead of revisions other writers made before them, which the watch has yet to bring
                async for events in self.store.watch(PREFIX, self._watched + 1):
                    for ev in events:
                        self._apply_event(ev.type, ev.kv)
            except CompactedError:
                log.warning("watch compacted; reloading the cache")
                await self.reload()
            except StoreError as e:
                log.warning("store watch failed (%s); retrying", e)
                await asyncio.sleep(0.5)
                with contextlib.suppress(StoreError):
                    await self.reload()

    def _apply_event(self, etype: str, kv: KV) -> None:
        self.revision = max(self.revision, kv.mod_revision)
        self._watched = max(self._watched, kv.mod_revision)
        kind, _, oid = kv.key[len(PREFIX):].partition("/")
        current = self.cache.setdefault(kind, {}).get(oid)
        if etype == "delete":
            if current is not None and current["Version"]["Index"] <= kv.mod_revision:
                self._set(kind, oid, None)
            return
        if current is not None and current["Version"]["Index"] >= kv.mod_revision:
            return  # already applied by write-through
        self._set(kind, oid, _decode(kv)[2])

    def _notify(self, kind: str, oid: str) -> None:
        for w in self._watchers:
            w._notify(kind, oid)

    def watcher(self, kinds: Iterable[str]) -> Watcher:
        w = Watcher(kinds)
        self._watchers.append(w)
        return w

    def unwatch(self, w: Watcher) -> None:
        with contextlib.suppress(ValueError):
            self._watchers.remove(w)

    # -- reads ---------------------------------------------------------------------------------
    def get(self, kind: str, oid: str) -> dict | None:
        return self.cache[kind].get(oid)

    def list(self, kind: str) -> list[dict]:
        return list(self.cache[kind].values())

    def tasks_of_service(self, sid: str) -> list[dict]:
        tasks = self.cache["tasks"]
        return [tasks[t] for t in self.tasks_by_service.get(sid, ())]

    def tasks_of_slot(self, sid: str, slot: int) -> list[dict]:
        """The tasks of one slot of a service (global services' tasks are all in slot 0)."""
        tasks = self.cache["tasks"]
        return [tasks[t] for t in self.tasks_by_slot.get((sid, slot), ())]

    def tasks_of_node(self, nid: str) -> list[dict]:
        tasks = self.cache["tasks"]
        return [tasks[t] for t in self.tasks_by_node.get(nid, ())]

    def by_name(self, kind: str, name: str) -> dict | None:
        for obj in self.cache[kind].values():
            if name_of(kind, obj) == name:
                return obj
        return None

    async def fetch(self, kind: str, oid: str) -> dict | None:
        """Read one object from the store itself (not the cache)."""
        kv = await self.store.get(obj_key(kind, oid))
        return None if kv is None else _decode(kv)[2]

    # -- writes --------------------------------------------------------------------------------
    async def commit(self, changes: list[Change]) -> bool:
        """Apply all changes atomically; False (nothing written) if any object was stale."""
        compares: list[Compare] = []
        ops: list[Op] = []
        for ch in changes:
            oid = ch.obj["ID"]
            key = obj_key(ch.kind, oid)
            index = 0 if ch.create else ch.obj.get("Version", {}).get("Index", 0)
            compares.append(Compare(key, index))
            name = name_of(ch.kind, ch.obj)
            if ch.delete:
                ops.append(Delete(key))
                if name:
                    ops.append(Delete(name_key(ch.kind, name)))
            else:
                ops.append(Put(key, _encode(ch.obj)))
                if ch.create and name:
                    compares.append(Compare(name_key(ch.kind, name), 0))
                    ops.append(Put(name_key(ch.kind, name), oid.encode()))
        if not ops:
            return True
        fence = self.fence
        if fence is not None:
            compares.append(fence)
        res = await self.store.txn(compares, ops)
        if not res.succeeded:
            if fence is not None and fence.key in res.failed:
                raise Deposed()
            for key in res.failed:
                if key.startswith(NAMES):
                    kind, _, name = key[len(NAMES):].partition("/")
                    raise NameConflict(NAMED[kind], name)
            return False
        for ch in changes:
            oid = ch.obj["ID"]
            if not ch.delete:
                ch.obj["Version"] = {"Index": res.revision}
            # Write through only what is not already superseded: replies to concurrent writes may come
            # back out of order, after the watch (or another write) has cached a later version.
            current = self.cache.get(ch.kind, {}).get(oid)
            if res.revision <= self._watched or (current is not None
                                                 and current["Version"]["Index"] > res.revision):
                continue
            self._set(ch.kind, oid, None if ch.delete else ch.obj)
        self.revision = max(self.revision, res.revision)
        return True

    async def create(self, kind: str, obj: dict) -> dict:
        if not await self.commit([Change(kind, obj, create=True)]):
            raise OutOfSequence()
        return obj

    async def update(self, kind: str, obj: dict) -> dict:
        """CAS on ``obj["Version"]["Index"]``; raises :class:`OutOfSequence` if stale."""
        if not await self.commit([Change(kind, obj)]):
            raise OutOfSequence()
        return obj

    async def delete(self, kind: str, obj: dict) -> bool:
        return await self.commit([Change(kind, obj, delete=True)])

    async def modify(self, kind: str, oid: str, fn: Callable[[dict], Any], tries: int = 20) -> dict | None:
        """Read-modify-write with retries. ``fn`` edits the object in place; returning False skips
        the write. Returns the written object (or None if it no longer exists)."""
        obj = self.get(kind, oid)
        for _ in range(tries):
            if obj is None:
                obj = await self.fetch(kind, oid)
                if obj is None:
                    return None
            obj = json.loads(json.dumps(obj))
            if fn(obj) is False:
                return obj
            if await self.commit([Change(kind, obj)]):
                return obj
            obj = await self.fetch(kind, oid)
        raise OutOfSequence()
