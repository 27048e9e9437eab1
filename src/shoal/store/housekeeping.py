"""Keeping a manager's etcd member healthy and small.

- etcd compacts history itself (``--auto-compaction-*``, see :mod:`shoal.store.etcd_member`); compaction
  frees pages inside the backend file but does not shrink it, so each manager defragments its own member
  when most of the file is free space;
- when the store's quota is reached, etcd raises its NOSPACE alarm and refuses every write (reads go on):
  a manager then compacts all history, defragments its member and disarms the alarm, and writes resume
  with the live data untouched;
- etcd's log (``<data-dir>/etcd/etcd.log``) is kept to :data:`LOG_MAX` bytes plus one older copy.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from shoal.store.base import StoreError
from shoal.store.etcd import EtcdStore

log = logging.getLogger(__name__)

MIN_SIZE = 64 * 1024 * 1024  # below this a defragmentation is not worth the stall
FREE_RATIO = 0.5  # defragment when at least this share of the file is free
LOG_MAX = 10 * 1024 * 1024  # etcd.log is rotated past this size
TICK = 2.0  # s between alarm checks; the other chores run every so many ticks
DEFRAG_EVERY = 300  # ticks (10 min)
ROTATE_EVERY = 30  # ticks (1 min)


def needs_defrag(status: dict, min_size: int = MIN_SIZE, free_ratio: float = FREE_RATIO) -> bool:
    """Whether a member's ``status`` (:meth:`EtcdStore.status`) calls for a defragmentation."""
    size, used = status.get("db_size", 0), status.get("db_size_in_use", 0)
    return size >= min_size and size - used >= free_ratio * size


async def defragment_if_worth_it(store: EtcdStore, min_size: int = MIN_SIZE) -> None:
    st = await store.status()
    if needs_defrag(st, min_size):
        log.info("defragmenting the etcd member (%d of %d bytes in use)", st["db_size_in_use"], st["db_size"])
        await store.defragment()
        after = await store.status()
        log.info("defragmented: %d -> %d bytes", st["db_size"], after["db_size"])


async def recover_space(store: EtcdStore) -> bool:
    """If the store is full (NOSPACE alarm): compact all history, defragment this member, disarm the alarm.
    True when it was full. (Every manager does it for its own member; the first to disarm lets writes
    resume, as soon as the members' files are under the quota again.)"""
    if not any(name == "NOSPACE" for _, name in await store.alarms()):
        return False
    log.warning("the cluster store is full (NOSPACE): compacting its history and defragmenting")
    try:
        await store.compact(await store.revision())
    except StoreError as e:  # already compacted to here
        log.info("compaction: %s", e)
    await store.defragment()
    st = await store.status()
    disarmed = await store.disarm()
    log.warning("store space recovered (%d of %d bytes in use); alarms disarmed: %s",
                st.get("db_size_in_use", 0), st.get("db_size", 0), disarmed)
    return True


def rotate_log(path: Path, max_size: int = LOG_MAX) -> bool:
    """Keep ``path`` under ``max_size``: copy it to ``<path>.1`` and truncate it in place (etcd appends to
    the file it was given, so it goes on writing at the new end). True if it was rotated."""
    try:
        if path.stat().st_size <= max_size:
            return False
        with path.open("r+b") as f:
            path.with_name(path.name + ".1").write_bytes(f.read())
            f.truncate(0)
    except OSError as e:
        log.warning("rotating %s: %s", path, e)
        return False
    return True


async def housekeep(store: EtcdStore, log_path: Path | None = None, tick: float = TICK) -> None:
    """Forever: watch for a full store, defragment when worth it, rotate etcd's log."""
    n = 0
    while True:
        await asyncio.sleep(tick)
        n += 1
        try:
            await recover_space(store)
            if n % DEFRAG_EVERY == 0:
                await defragment_if_worth_it(store)
        except StoreError as e:
            log.warning("etcd housekeeping: %s", e)
        if log_path is not None and n % ROTATE_EVERY == 0:
            rotate_log(log_path)
