"""Virtual time for unit tests: controllers take a clock (shoal.aio.Clock); this one only moves when the
test moves it, so a test of a 5 s timeout takes milliseconds and never depends on the machine's load."""

from __future__ import annotations

import asyncio
import heapq
import itertools


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        fut = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.t + max(0.0, seconds), next(self._order), fut))
        await fut

    def jump(self, seconds: float) -> None:
        """Time passes and nothing runs (the event loop is held up); sleepers wake at the next advance."""
        self.t += seconds

    async def advance(self, seconds: float, step: float = 0.01) -> None:
        """Move time forward ``step`` by ``step``, waking due sleepers (earliest first) and letting the
        event loop run everything that is ready after each step."""
        end = self.t + seconds
        while True:
            while self._sleepers and self._sleepers[0][0] <= self.t:
                _, _, fut = heapq.heappop(self._sleepers)
                if not fut.done():
                    fut.set_result(None)
            await settle()
            if self.t >= end:
                return
            self.t = min(end, self.t + step)

    async def until(self, predicate, timeout: float, step: float = 0.01) -> float:
        """Virtual seconds until ``predicate()`` holds; fails after ``timeout`` virtual seconds."""
        start = self.t
        while not predicate():
            if self.t - start > timeout:
                raise AssertionError(f"not within {timeout} s (virtual)")
            await self.advance(step, step)
        return self.t - start


async def settle(rounds: int = 20) -> None:
    """Let every task that is ready run (a few turns of the loop each: store writes, watch wake-ups)."""
    for _ in range(rounds):
        await asyncio.sleep(0)
