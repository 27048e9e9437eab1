"""The shape every leader-only controller shares: watch the store, reconcile, write back."""

from __future__ import annotations

import asyncio
import logging

from shoal.aio import Pacer
from shoal.model.errors import APIError, OutOfSequence
from shoal.store.base import StoreError
from shoal.store.objects import Change, Objects

log = logging.getLogger(__name__)


class Controller:
    """Level-triggered: :meth:`reconcile` gets the (kind, id) pairs that changed, or None for
    "look at everything" (at start, after an error, on a timer). A pass over many objects calls
    ``await self.pace.tick()`` between them, so that it shares the leader's event loop."""

    kinds: tuple[str, ...] = ()
    name = "controller"

    def __init__(self, objs: Objects) -> None:
        self.objs = objs
        self.watcher = objs.watcher(self.kinds)
        self.pace = Pacer()

    def next_timer(self) -> float | None:
        """Seconds until the controller wants to run again without a change (None: no timer)."""
        return None

    async def reconcile(self, changes: set[tuple[str, str]] | None) -> None:
        raise NotImplementedError

    async def run(self) -> None:
        changes: set[tuple[str, str]] | None = None
        try:
            while True:
                self.pace.reset()
                try:
                    await self.reconcile(changes)
                except (StoreError, APIError) as e:
                    log.warning("%s: %s; retrying", self.name, e)
                    await asyncio.sleep(0.2)
                    changes = None
                    continue
                except Exception:
                    log.exception("%s failed; retrying", self.name)
                    await asyncio.sleep(1)
                    changes = None
                    continue
                changes = await self.watcher.wait(self.next_timer())
                if not changes:
                    changes = None
        finally:
            self.objs.unwatch(self.watcher)


async def commit_all(objs: Objects, changes: list[Change], batch: int = 128, pace: Pacer | None = None) -> None:
    """Write changes in transactions of ``batch``, letting the event loop in between (``pace``); a stale
    object raises :class:`OutOfSequence` (the controller then looks again once its cache has caught up)."""
    stale = False
    pace = pace or Pacer()
    for i in range(0, len(changes), batch):
        if not await objs.commit(changes[i:i + batch]):
            stale = True
        await pace.tick()
    if stale:
        raise OutOfSequence()
