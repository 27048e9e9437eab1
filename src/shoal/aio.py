"""Small asyncio helpers shared across the daemon."""

from __future__ import annotations

import asyncio
import contextlib
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
