"""The worker outlives its engine: when dockerd dies under a live shoald and comes back, tasks assigned
meanwhile still run. Found by the chaos suite (dockerd killed on a worker): the worker's loop ended on
the first failed container listing, and the tasks assigned to the node stayed ``assigned`` for good."""

from __future__ import annotations

import asyncio

import pytest
from aiodocker.exceptions import DockerError

from shoal.agent import worker as worker_mod
from shoal.agent.worker import Worker

pytestmark = pytest.mark.looptime  # the worker's pauses run on virtual time


class Runner:
    """Stands in for TaskRunner: records that the worker started one."""

    def __init__(self, task: dict, *args: object, **kwargs: object) -> None:
        self.task = task

    def start(self) -> None: ...

    def update(self, task: dict) -> None: ...

    def poke(self) -> None: ...

    async def cancel(self) -> None: ...

    async def remove(self) -> None: ...


class Session:
    def __init__(self) -> None:
        self.tasks: list[dict] = []
        self.event = asyncio.Event()

    def assigned(self) -> list[dict]:
        return list(self.tasks)

    async def changed(self, timeout: float | None) -> None:
        try:
            await asyncio.wait_for(self.event.wait(), timeout)
        except TimeoutError:
            pass
        self.event.clear()

    async def report(self, task_id: str, status: dict) -> None: ...

    def assign(self, tid: str) -> None:
        self.tasks.append({"ID": tid, "Status": {"State": "assigned"}})
        self.event.set()


class Engine:
    """The executor's engine side: ``down`` makes every call fail as a dead dockerd does."""

    def __init__(self) -> None:
        self.down = False
        self.on_event = None

    def watch_events(self, node_id: str, callback) -> None:
        self.on_event = callback

    async def containers(self, node_id: str) -> dict[str, dict]:
        if self.down:
            raise DockerError(900, {"message": "Cannot connect to Docker Engine via unix:///engine.sock"})
        return {}


async def test_tasks_assigned_while_the_engine_was_down_run_once_it_is_back(monkeypatch) -> None:
    monkeypatch.setattr(worker_mod, "TaskRunner", Runner)
    session, engine = Session(), Engine()
    w = Worker("node1", session, engine)  # type: ignore[arg-type]
    run = asyncio.create_task(w.run())
    try:
        session.assign("t1")
        await asyncio.sleep(1)
        assert set(w.runners) == {"t1"}
        engine.down = True  # dockerd killed: its event stream ends, the worker re-reads its containers
        engine.on_event("", "reconnect", {})
        await asyncio.sleep(1)
        assert not run.done(), run.exception()
        engine.down = False  # dockerd back
        session.assign("t2")
        await asyncio.sleep(3)
        assert not run.done()
        assert set(w.runners) == {"t1", "t2"}
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
