"""Small asyncio helpers shared across the daemon."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any, Protocol


async def cancel_all(tasks: Iterable[asyncio.Task]) -> None:
    """Cancel ``tasks`` and wait until each has ended, whatever it ended with."""
    tasks = list(tasks)
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await t


async def drain(out: asyncio.Queue, producers: set[asyncio.Task]) -> AsyncIterator[Any]:
    """Yield what the producers put on ``out`` until all of them are done and it is empty (the set may
    grow meanwhile)."""
    while True:
        if not out.empty():
            yield out.get_nowait()
            continue
        pending = {p for p in producers if not p.done()}
        if not pending:
            return
        get = asyncio.ensure_future(out.get())
        await asyncio.wait({get, *pending}, return_when=asyncio.FIRST_COMPLETED)
        if get.done():
            yield get.result()
        else:
            get.cancel()


class Clock(Protocol):
    """Monotonic time and sleeping on it; tests give controllers a clock they move by hand."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class MonotonicClock:
    """The real clock: ``time.monotonic`` and ``asyncio.sleep``."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


MONOTONIC = MonotonicClock()


class Pacer:
    """Slices long synchronous work for the event loop it shares: :meth:`tick`, called between items,
    yields once ``budget`` seconds have passed since the last yield. The leader's API, dispatcher, DNS
    and election lease share one loop with its controllers; a pass over 100,000 tasks paced this way
    holds none of them up for more than a few milliseconds at a time."""

    def __init__(self, budget: float = 0.002) -> None:
        self.budget = budget
        self._since = time.perf_counter()

    def reset(self) -> None:
        """A new step begins (the caller was just woken): its budget starts now."""
        self._since = time.perf_counter()

    async def tick(self) -> None:
        if time.perf_counter() - self._since >= self.budget:
            await asyncio.sleep(0)
            self._since = time.perf_counter()


class FrozenSurvivors:
    """Keeps the cyclic garbage collector's pauses short in a process holding many objects (a leader's
    cache of 100,000 tasks is millions of dicts; Python's full collections of them, which come each
    time the heap has grown by a quarter, hold the event loop for seconds): what survives a collection
    of the middle generation is frozen (:func:`gc.freeze`: out of the collector's sight, still freed
    by reference counting as usual), so no collection looks at long-lived objects again. Reference
    cycles that become garbage after they were frozen are freed at the thaw every ``thaw_every``
    seconds (:meth:`thaw`: one full collection, as long as Python's own)."""

    def __init__(self, thaw_every: float = 3600.0) -> None:
        self.thaw_every = thaw_every

    def install(self) -> None:
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)

    def remove(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._on_gc)
        gc.unfreeze()

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "stop" and info["generation"] >= 1:
            gc.freeze()

    @staticmethod
    def collect_all() -> None:
        """Thaw and collect everything once (the frozen objects are frozen again afterwards)."""
        gc.unfreeze()
        gc.collect()
        gc.freeze()

    async def thaw(self) -> None:
        """:meth:`collect_all` every ``thaw_every`` seconds, until cancelled."""
        while True:
            await asyncio.sleep(self.thaw_every)
            self.collect_all()
