"""Keeping a manager's etcd member small: etcd compacts history itself (``--auto-compaction-*``, see
:mod:`shoal.store.etcd_member`); compaction frees pages inside the backend file but does not shrink it,
so each manager defragments its own member when most of the file is free space."""

from __future__ import annotations

import asyncio
import logging

from shoal.store.base import StoreError
from shoal.store.etcd import EtcdStore

log = logging.getLogger(__name__)

MIN_SIZE = 64 * 1024 * 1024  # below this a defragmentation is not worth the stall
FREE_RATIO = 0.5  # defragment when at least this share of the file is free


def needs_defrag(status: dict, min_size: int = MIN_SIZE, free_ratio: float = FREE_RATIO) -> bool:
    """Whether a member's ``status`` (:meth:`EtcdStore.status`) calls for a defragmentation."""
    size, used = status.get("db_size", 0), status.get("db_size_in_use", 0)
    return size >= min_size and size - used >= free_ratio * size


async def housekeep(store: EtcdStore, interval: float = 600.0, min_size: int = MIN_SIZE) -> None:
    """Forever: every ``interval`` seconds, defragment the local member if it needs it."""
    while True:
        await asyncio.sleep(interval)
        try:
            st = await store.status()
            if needs_defrag(st, min_size):
                log.info("defragmenting the etcd member (%d of %d bytes in use)", st["db_size_in_use"], st["db_size"])
                await store.defragment()
                after = await store.status()
                log.info("defragmented: %d -> %d bytes", st["db_size"], after["db_size"])
        except StoreError as e:
            log.warning("etcd housekeeping: %s", e)
